package import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A child's output on its way to a log file with every secret in it replaced by
/// `<redacted>` (``Redactor``): the child writes into a pipe, a thread of its own reads it and
/// appends what is safe to the file as soon as it arrives (a line is not held back unless its
/// end could be the start of a secret).
///
/// So a job's command that prints a secret leaves no trace of it on the node's disk, and a
/// controller that copies the log home needs none of the values. The price: the child's
/// output has a reader that lives in this process; if this process is killed, the child's
/// next write fails (SIGPIPE), which ends a command whose agent is gone anyway.
package final class RedactingPipe: @unchecked Sendable {
    /// The pipe's write end, for the child's stdout and stderr (close-on-exec here; the child
    /// gets it as fd 1 and 2).
    package let writeEnd: Int32
    let readEnd: Int32
    let file: String
    let done = LockedBox<Bool>(false)
    let finished = DispatchSemaphore(value: 0)

    /// Starts reading; the caller starts the child with ``writeEnd`` and then calls
    /// ``closeWriteEnd()``.
    package init(secrets: [String], appendingTo file: String) throws {
        // The file first: output with nowhere to go is an error now, never dropped later.
        let out = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw CapstanError(.io, "Cannot open \(file) for a command's output: \(String(cString: strerror(errno))).") }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            let why = String(cString: strerror(errno))
            close(out)
            throw CapstanError(.io, "Cannot make a pipe for a command's output: \(why).")
        }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        readEnd = fds[0]
        writeEnd = fds[1]
        self.file = file
        let redactor = Redactor(secrets)
        let (readEnd, done, finished) = (readEnd, done, finished)
        Thread.detachNewThread {
            var redactor = redactor
            var buffer = [UInt8](repeating: 0, count: 65536)
            func write(_ data: Data) {
                if !data.isEmpty { _ = Spawn.writeAll(out, data) }
            }
            while true {
                let n = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                write(redactor.feed(Data(buffer[0..<n])))
            }
            write(redactor.finish())
            close(out)
            close(readEnd)
            done.withLock { $0 = true }
            finished.signal()
        }
    }

    /// Closes this process's copy of the write end (after the child started), so the reader
    /// sees the end of the stream once the child and everything it left behind are gone.
    package func closeWriteEnd() {
        close(writeEnd)
    }

    /// Waits up to `seconds` for the whole output to be in the file (the child and every
    /// process that shares its output ended); false if something still holds the pipe open
    /// (its later output still reaches the file, redacted).
    package func drained(within seconds: Double) async -> Bool {
        if done.withLock({ $0 }) { return true }
        let sem = finished
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            Thread.detachNewThread {
                let ok = sem.wait(timeout: .now() + seconds) == .success
                if ok { sem.signal() }
                c.resume(returning: ok)
            }
        }
    }
}
