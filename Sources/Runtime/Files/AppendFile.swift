public import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Appending to files that several processes write (node logs, `pids` files): each call is one
/// `write(2)` on an `O_APPEND` descriptor, so concurrent lines never interleave mid-line.
/// Files are created 0600: logs quote jobs' output.
public enum AppendFile {
    /// Appends `bytes` to `path`, creating the file; false when it cannot be opened.
    @discardableResult
    public static func append(_ bytes: Data, to path: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
    }

    @discardableResult
    public static func append(_ text: String, to path: String) -> Bool { append(Data(text.utf8), to: path) }
}
