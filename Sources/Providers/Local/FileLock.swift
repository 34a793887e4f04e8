import CapstanCore
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An exclusive `flock` on `<folder>/.lock` around `body`: how the built-in providers keep their
/// state files consistent across `capstan` processes.
func withFolderLock<T>(_ folder: String, provider: String, _ body: () throws -> T) throws -> T {
    let path = folder + "/.lock"
    let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw CapstanError(.io, "Cannot open \(path): \(String(cString: strerror(errno))).", provider: provider) }
    defer { close(fd) }
    while flock(fd, LOCK_EX) != 0 {
        if errno != EINTR { throw CapstanError(.io, "Cannot lock \(path): \(String(cString: strerror(errno))).", provider: provider) }
    }
    defer { flock(fd, LOCK_UN) }
    return try body()
}
