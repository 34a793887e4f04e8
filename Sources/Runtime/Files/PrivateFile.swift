public import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Files and folders only their owner may read: what Capstan writes into its home (state, node
/// configs with job settings, logs, keys), whatever the process's umask. `Data.write(to:)` would
/// create them 0644 under the usual umask 022.
public enum PrivateFile {
    /// Writes `data` to `path` atomically (a temp file beside it, then a rename), mode 0600.
    public static func write(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw failure("create", tmp) }
        // O_CREAT's mode is masked by the umask and ignored for an existing file: state it.
        fchmod(fd, 0o600)
        let ok = Spawn.writeAll(fd, data)
        let error = errno
        close(fd)
        guard ok else {
            unlink(tmp)
            errno = error
            throw failure("write", tmp)
        }
        guard rename(tmp, path) == 0 else {
            let e = failure("rename into place", path)
            unlink(tmp)
            throw e
        }
    }

    /// Creates the folder `path` (and missing parents) with mode 0700; an existing folder is
    /// left as it is.
    public static func createFolder(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    /// Takes group and other permissions away from `path` if it exists and has any (a file an
    /// older Capstan, or another umask, created). Best effort.
    public static func restrict(_ path: String) {
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & 0o077 != 0, st.st_uid == geteuid() else { return }
        chmod(path, st.st_mode & 0o700)
    }

    static func failure(_ what: String, _ path: String) -> CapstanError {
        CapstanError(.io, "Cannot \(what) \(path): \(String(cString: strerror(errno))).", hint: "Check the folder's permissions and free space.")
    }
}
