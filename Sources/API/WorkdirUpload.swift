import CapstanCore
import CapstanRuntime
import Foundation
import NIOCore
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A job's workdir on its way to `POST /v1/uploads`: checked (a folder, not larger than the
/// server takes), then packed by `tar -C DIR -cf - .` into a pipe that the request body reads a
/// chunk at a time, so a large folder is never held in memory.
struct WorkdirUpload {
    let folder: String
    let bytes: Int64

    init(folder: String, maxBytes: Int64) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
            throw CapstanError(.invalidRequest, "The job's workdir \(folder) is not a folder.", hint: "workdir is relative to the spec file's folder.")
        }
        self.folder = folder
        self.bytes = try Self.size(of: folder, limit: maxBytes)
    }

    /// The bytes of the regular files under `folder` (links not followed); past `limit`, an
    /// error saying so (counting stops there).
    static func size(of folder: String, limit: Int64) throws -> Int64 {
        guard let walk = FileManager.default.enumerator(atPath: folder) else {
            throw CapstanError(.io, "Cannot list the workdir \(folder).", hint: "Check its permissions.")
        }
        var total: Int64 = 0
        while let name = walk.nextObject() as? String {
            var st = stat()
            guard lstat(folder + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            total += Int64(st.st_size)
            if total > limit {
                throw CapstanError(
                    .invalidRequest,
                    "The job's workdir \(folder) holds more than \(humanSize(limit)) (counted \(humanSize(total)) so far), more than a Capstan server takes as an upload.",
                    hint: "Keep data sets, models and outputs out of the workdir (put them in the bucket, or on the nodes with an absolute path), or raise server.maxUploadMB in the server's config.yaml.")
            }
        }
        return total
    }

    static func humanSize(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f", v) + " " + units[i]
    }

    /// Starts `tar`, its output on a pipe that ``TarProcess/chunks`` reads.
    func start() throws -> TarProcess {
        guard let tar = Spawn.which("tar") else {
            throw CapstanError(.unsupported, "No `tar` on PATH; it packs the job's workdir for the server.", hint: "Install tar (GNU or BSD), or give the spec an absolute workdir on the server's machine.")
        }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw CapstanError(.io, "Cannot make a pipe: \(String(cString: strerror(errno))).") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let errors = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-tar-\(UUID().uuidString).err").path
        #if os(Linux)
        let out = "/proc/self/fd/\(fds[1])"
        #else
        let out = "/dev/fd/\(fds[1])"
        #endif
        let pid: pid_t
        do {
            // The child opens its stdout through the write end's name (before the spawn closes
            // every other descriptor), so the pipe is its stdout and nothing else leaks to it.
            pid = try Spawn.spawn([tar, "-C", folder, "-cf", "-", "."], environment: ProcessInfo.processInfo.environment, streams: Spawn.Streams(stdout: out, stderr: errors, append: false), newSession: false)
        } catch {
            close(fds[0]); close(fds[1])
            throw error
        }
        close(fds[1])
        return TarProcess(pid: pid, readFD: fds[0], folder: folder, errorFile: errors)
    }
}

/// A running `tar` whose output is read as the upload's body.
final class TarProcess: Sendable {
    struct State {
        var readFD: Int32
        var reaped: ExitStatus?
        var failure: CapstanError?
    }
    let pid: pid_t
    let folder: String
    let errorFile: String
    private let state: Mutex<State>

    init(pid: pid_t, readFD: Int32, folder: String, errorFile: String) {
        self.pid = pid
        self.folder = folder
        self.errorFile = errorFile
        self.state = Mutex(State(readFD: readFD))
    }

    /// Why packing failed, if it did (set once `tar` has exited non-zero).
    var failure: CapstanError? { state.withLock { $0.failure } }

    /// The pipe's bytes, 1 MiB at a time, read on a thread of their own; at the end, `tar`'s
    /// exit is checked, and a failure ends the body with an error (the upload is not completed).
    var chunks: Chunks { Chunks(process: self) }

    struct Chunks: AsyncSequence, Sendable {
        typealias Element = ByteBuffer
        let process: TarProcess
        struct AsyncIterator: AsyncIteratorProtocol {
            let process: TarProcess
            mutating func next() async throws -> ByteBuffer? { try await process.read() }
        }
        func makeAsyncIterator() -> AsyncIterator { AsyncIterator(process: process) }
    }

    func read() async throws -> ByteBuffer? {
        let fd = state.withLock { $0.readFD }
        guard fd >= 0 else { return nil }
        let chunk: [UInt8] = try await Spawn.onThread {
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let n = buffer.withUnsafeMutableBytes { posixRead(fd, $0.baseAddress, $0.count) }
                if n >= 0 { return Array(buffer.prefix(n)) }
                if errno != EINTR { throw CapstanError(.io, "Cannot read tar's output: \(String(cString: strerror(errno))).") }
            }
        }
        if !chunk.isEmpty { return ByteBuffer(bytes: chunk) }
        // End of the archive: tar's verdict decides whether the body ends or fails.
        closeRead()
        let status = await Spawn.wait(pid)
        let failure = describe(status)
        state.withLock {
            $0.reaped = status
            $0.failure = failure
        }
        if let failure { throw failure }
        return nil
    }

    private func closeRead() {
        state.withLock {
            if $0.readFD >= 0 { close($0.readFD) }
            $0.readFD = -1
        }
    }

    private func describe(_ status: ExitStatus) -> CapstanError? {
        if case .exited(0) = status { return nil }
        let stderr = (FileManager.default.contents(atPath: errorFile).map { String(decoding: $0, as: UTF8.self) } ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return CapstanError(.io, "Packing the workdir \(folder) with tar failed (\(status)): \(stderr.isEmpty ? "no message" : String(stderr.suffix(500)))", hint: "Check that every file under it can be read.")
    }

    /// Ends `tar` if it still runs (the server answered before reading it all), reaps it, and
    /// removes its error file.
    func stop() async {
        closeRead()
        let done = state.withLock { $0.reaped != nil }
        if !done {
            kill(pid, SIGTERM)
            let status = await Spawn.wait(pid)
            state.withLock { $0.reaped = status }
        }
        unlink(errorFile)
    }
}

/// `read(2)` (a free function: inside ``TarProcess`` the name is its own method's).
private func posixRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, buffer, count) }
