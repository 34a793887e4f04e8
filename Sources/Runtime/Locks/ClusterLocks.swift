public import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Per-cluster advisory locks (`flock` on `<folder>/<name>.lock`), held by the process working
/// on a cluster (`up`, `down`). The kernel drops a lock when its process dies — even by
/// `kill -9` — so a held lock always means live work, and reconcile leaves such clusters alone.
public struct ClusterLocks: LockService {
    public let folder: String

    public init(folder: String) {
        self.folder = folder
    }

    /// A held lock; `release()` (or process exit) frees it.
    public final class Held: HeldLock {
        let fd: Int32
        public let fence: Int64
        /// A `flock` is the holder's until released (or its process dies).
        public var isValid: Bool { true }
        init(fd: Int32, fence: Int64 = 0) {
            self.fd = fd
            self.fence = fence
        }
        public func release() {
            flock(fd, LOCK_UN)
            close(fd)
        }
    }

    func path(_ name: String) -> String { folder + "/" + name + ".lock" }

    /// Takes the lock for `name` without waiting; nil when another holder has it.
    public func acquire(_ name: String) async throws -> (any HeldLock)? {
        try PrivateFile.createFolder(folder)
        let fd = open(path(name), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw CapstanError(.io, "Cannot open lock file \(path(name)): \(String(cString: strerror(errno))).")
        }
        // A reconcile elsewhere may probe the lock for a moment (isHeld): retry briefly before
        // calling it taken.
        for attempt in 0..<10 {
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return Held(fd: fd, fence: Self.nextFence(fd)) }
            if attempt < 9 { try? await Task.sleep(for: .milliseconds(20)) }
        }
        close(fd)
        return nil
    }

    /// The lock file holds the last holder's fencing token (decimal): the new holder's is one
    /// more, written back before the lock is handed out.
    static func nextFence(_ fd: Int32) -> Int64 {
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = pread(fd, &buffer, 31, 0)
        let last = n > 0 ? Int64(String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 : 0
        let next = last + 1
        let text = Array("\(next)\n".utf8)
        if ftruncate(fd, 0) == 0 { _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
        return next
    }

    /// Whether some holder (this process included) has the lock for `name` right now.
    public func isHeld(_ name: String) -> Bool {
        let fd = open(path(name), O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 { return true }
        flock(fd, LOCK_UN)
        return false
    }
}

/// A blocking, exclusive `flock` on one file, for short critical sections shared by processes
/// (creating a database's schema, a provider's state file). The kernel frees it if the holder dies.
public struct FileLock: Sendable {
    let held: ClusterLocks.Held

    /// Waits until `path`'s lock is ours (creating the file as needed).
    public static func exclusive(_ path: String) throws -> FileLock {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CapstanError(.io, "Cannot open lock file \(path): \(String(cString: strerror(errno))).", hint: "Check the folder's permissions.") }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR {
                let why = String(cString: strerror(errno))
                close(fd)
                throw CapstanError(.io, "Cannot lock \(path): \(why).")
            }
        }
        return FileLock(held: ClusterLocks.Held(fd: fd))
    }

    public func release() { held.release() }
}
