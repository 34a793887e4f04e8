public import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The checks on a plugin candidate's file that come before anything reads it. Opening a FIFO
/// for reading blocks until a writer appears, and reading a character device may never end, so
/// a candidate must be a regular file (symbolic links followed) before it is opened, and every
/// open is non-blocking besides.
enum PluginFile {
    /// What is wrong with the file at `path` as a plugin, and what to do, from `stat` alone
    /// (never an open): nil for a regular file or a symbolic link to one.
    static func typeProblem(path: String) -> (what: String, hint: String)? {
        guard let what = describeType(path: path) else { return nil }
        let hint = what == noSuchFile
            ? "Check the path, CAPSTAN_PLUGIN_PATH and ~/.capstan/plugins."
            : "Remove it from the plugin folder (or rename it so it does not end in .so), or point at the plugin's .so file; a plugin must be a regular file."
        return (what, hint)
    }

    static let noSuchFile = "no such file"

    static func describeType(path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let err = errno
            var lst = stat()
            if lstat(path, &lst) == 0, (lst.st_mode & S_IFMT) == S_IFLNK {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
                return "it is a symbolic link to \(target), which \(err == ENOENT ? "does not exist" : "cannot be read (\(String(cString: strerror(err))))")"
            }
            return err == ENOENT ? noSuchFile : "it cannot be examined (\(String(cString: strerror(err))))"
        }
        let kind = st.st_mode & S_IFMT
        if kind == S_IFREG { return nil }
        let what: String
        switch kind {
        case S_IFDIR: what = "a folder"
        case S_IFIFO: what = "a FIFO (named pipe)"
        case S_IFCHR: what = "a character device"
        case S_IFBLK: what = "a block device"
        case S_IFSOCK: what = "a socket"
        default: what = "not a regular file"
        }
        var lst = stat()
        let viaLink = lstat(path, &lst) == 0 && (lst.st_mode & S_IFMT) == S_IFLNK
        let target = viaLink ? (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) : nil
        return "\(target.map { "it is a symbolic link to \($0), which is" } ?? "it is") \(what), not a shared library"
    }

    /// Opens `path` for reading without blocking (O_NONBLOCK) and only if it is a regular file
    /// once open; nil otherwise.
    static func openForReading(path: String) -> FileHandle? {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            return nil
        }
        return FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    }
}
