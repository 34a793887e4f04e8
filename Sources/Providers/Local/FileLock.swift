public import CapstanCore
public import CapstanRuntime
public import CapstanAWS
public import CapstanStorage
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An exclusive `flock` on `<folder>/.lock` around `body`: how the built-in providers keep their
/// state files consistent across `capstan` processes.
func withFolderLock<T>(_ folder: String, provider: String, _ body: () throws -> T) throws -> T {
    let lock: FileLock
    do { lock = try FileLock.exclusive(folder + "/.lock") } catch let e as CapstanError { throw e.attributed(to: provider) }
    defer { lock.release() }
    return try body()
}
