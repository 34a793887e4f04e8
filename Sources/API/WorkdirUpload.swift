import CapstanCore
import Foundation
import NIOCore
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
                    hint: "Keep data sets, models and outputs out of the workdir (put them in the bucket, or on the nodes with an absolute path), or raise the server's --max-upload-mb.")
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
        guard let tar = Self.which("tar") else {
            throw CapstanError(.unsupported, "No `tar` on PATH; it packs the job's workdir for the server.", hint: "Install tar (GNU or BSD), or give the spec an absolute workdir on the server's machine.")
        }
        let errors = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-tar-\(UUID().uuidString).err").path
        let (pid, readFD) = try Self.spawn([tar, "-C", folder, "-cf", "-", "."], stderr: errors)
        return TarProcess(pid: pid, readFD: readFD, folder: folder, errorFile: errors)
    }

    /// The first executable `name` on `PATH`.
    static func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Starts `argv` (posix_spawn; CapstanAPI stays off CapstanRuntime's `Spawn`) with stdin
    /// from /dev/null, stdout into a new pipe whose read end (close-on-exec) is returned, and
    /// stderr to the file `stderr`.
    static func spawn(_ argv: [String], stderr: String) throws -> (pid: pid_t, readFD: Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw CapstanError(.io, "Cannot make a pipe: \(String(cString: strerror(errno))).") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let args = argv.map { strdup($0) } + [nil]
        let env = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            args.forEach { free($0) }
            env.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, args, env)
        close(fds[1])
        guard rc == 0 else {
            close(fds[0])
            throw CapstanError(.io, "Cannot start \(argv[0]): \(String(cString: strerror(rc))).", hint: "Check that it exists and is executable.")
        }
        return (pid, fds[0])
    }
}

/// A running `tar` whose output is read as the upload's body.
final class TarProcess: Sendable {
    struct State {
        var readFD: Int32
        var reaped: ChildExit?
        var failure: CapstanError?
        /// A read is in flight on `readFD`.
        var reading = false
        /// ``stop()`` was called: no more reads.
        var stopping = false
        /// One side (the end of the stream, or ``stop()``) reaps `tar`.
        var reapClaimed = false
    }
    let pid: pid_t
    let folder: String
    let errorFile: String
    private let lock = NSLock()
    nonisolated(unsafe) private var _state: State

    init(pid: pid_t, readFD: Int32, folder: String, errorFile: String) {
        self.pid = pid
        self.folder = folder
        self.errorFile = errorFile
        self._state = State(readFD: readFD)
    }

    private func withState<T>(_ body: (inout State) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(&_state)
    }

    /// Why packing failed, if it did (set once `tar` has exited non-zero).
    var failure: CapstanError? { withState { $0.failure } }

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
        // The descriptor is closed only while no read is in flight on it (so a read never
        // lands on a number reused by something else), and `tar` is reaped by one side only.
        let fd: Int32? = withState { s in
            guard s.readFD >= 0, !s.stopping else { return nil }
            s.reading = true
            return s.readFD
        }
        guard let fd else { return nil }
        let result: Result<[UInt8], any Error>
        do {
            result = .success(try await onThread {
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                while true {
                    let n = buffer.withUnsafeMutableBytes { posixRead(fd, $0.baseAddress, $0.count) }
                    if n >= 0 { return Array(buffer.prefix(n)) }
                    if errno != EINTR { throw CapstanError(.io, "Cannot read tar's output: \(String(cString: strerror(errno))).") }
                }
            })
        } catch {
            result = .failure(error)
        }
        let stopping = withState { s in
            s.reading = false
            if s.stopping { closeRead(&s) }
            return s.stopping
        }
        if stopping { return nil }
        let chunk = try result.get()
        if !chunk.isEmpty { return ByteBuffer(bytes: chunk) }
        // End of the archive: tar's verdict decides whether the body ends or fails.
        let mine = withState { s -> Bool in
            closeRead(&s)
            defer { s.reapClaimed = true }
            return !s.reapClaimed
        }
        guard mine else { return nil }
        let status = await reap(pid)
        let failure = describe(status)
        withState {
            $0.reaped = status
            $0.failure = failure
        }
        if let failure { throw failure }
        return nil
    }

    private func closeRead(_ s: inout State) {
        if s.readFD >= 0 { close(s.readFD) }
        s.readFD = -1
    }

    private func describe(_ status: ChildExit) -> CapstanError? {
        if case .exited(0) = status { return nil }
        let stderr = (FileManager.default.contents(atPath: errorFile).map { String(decoding: $0, as: UTF8.self) } ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return CapstanError(.io, "Packing the workdir \(folder) with tar failed (\(status)): \(stderr.isEmpty ? "no message" : String(stderr.suffix(500)))", hint: "Check that every file under it can be read.")
    }

    /// Ends `tar` if it still runs (the server answered before reading it all), reaps it, and
    /// removes its error file.
    func stop() async {
        let claimed = withState { s -> Bool in
            s.stopping = true
            if !s.reading { closeRead(&s) }
            defer { s.reapClaimed = true }
            return !s.reapClaimed
        }
        if claimed {
            kill(pid, SIGTERM)
            let status = await reap(pid)
            withState { $0.reaped = status }
        }
        unlink(errorFile)
    }
}

/// `read(2)` (a free function: inside ``TarProcess`` the name is its own method's).
private func posixRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, buffer, count) }

/// Runs blocking `body` on a thread of its own (never on the cooperative pool) and awaits it.
private func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// How a child ended.
enum ChildExit: Sendable, CustomStringConvertible {
    case exited(Int32), signaled(Int32)
    var description: String {
        switch self {
        case .exited(let c): "exit status \(c)"
        case .signaled(let s): "signal \(s)"
        }
    }
}

/// Waits for child `pid` on a thread of its own.
private func reap(_ pid: pid_t) async -> ChildExit {
    await withCheckedContinuation { (continuation: CheckedContinuation<ChildExit, Never>) in
        Thread.detachNewThread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 {
                if errno != EINTR {
                    continuation.resume(returning: .exited(-1))
                    return
                }
            }
            continuation.resume(returning: status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f))
        }
    }
}
