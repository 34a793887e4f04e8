import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A loopback port nothing listens on now (the kernel's pick): bound, read, released.
public func freeLoopbackPort() throws -> Int {
    let (fd, port) = try boundLoopbackSocket(listening: false)
    close(fd)
    return port
}

/// A TCP socket bound to a port of 127.0.0.1 the kernel picks (listening, with a backlog of
/// 64, when `listening`), and that port.
func boundLoopbackSocket(listening: Bool) throws -> (Int32, Int) {
    struct NoSocket: Error, CustomStringConvertible {
        var what: String
        var description: String { "\(what) failed: \(String(cString: strerror(errno)))" }
    }
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { throw NoSocket(what: "socket()") }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    guard bound == 0 else { let e = NoSocket(what: "bind() on 127.0.0.1"); close(fd); throw e }
    guard !listening || listen(fd, 64) == 0 else { let e = NoSocket(what: "listen() on 127.0.0.1"); close(fd); throw e }
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return (fd, Int(UInt16(bigEndian: addr.sin_port)))
}

/// A socket on 127.0.0.1 that listens and never accepts: the kernel completes every connection
/// (up to its backlog) and nothing ever answers — a server that hangs. Held until ``stop()``,
/// so no other test can take its port meanwhile.
public final class SilentListener: @unchecked Sendable {
    public let port: Int
    private let fd: Int32

    public init() throws { (fd, port) = try boundLoopbackSocket(listening: true) }

    public var url: String { "http://127.0.0.1:\(port)" }

    /// Closes the socket (connections waiting in its backlog are reset).
    public func stop() { close(fd) }
}
