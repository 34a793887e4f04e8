public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A tiny HTTP/1.1 server on 127.0.0.1 for client tests: each connection's request is read
/// (head and body, `Content-Length` or chunked), handed to `respond`, and answered with the
/// byte chunks it returns, written one at a time with a pause between them so the client sees
/// them arrive apart; then the connection is closed. Runs on threads of its own.
public final class FakeHTTPServer: @unchecked Sendable {
    public struct Request: Sendable {
        public var method: String
        public var target: String
        /// Header names lower-cased.
        public var headers: [String: String]
        /// The body, de-chunked.
        public var body: Data
    }

    public let port: Int
    public var url: String { "http://127.0.0.1:\(port)" }
    private let listener: Int32
    private let lock = NSLock()
    private var seen: [Request] = []

    /// The requests answered so far.
    public var requests: [Request] { lock.withLock { seen } }

    public init(_ respond: @escaping @Sendable (Request) -> [Data]) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
        listener = fd
        Thread.detachNewThread { [self] in
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 {
                    if errno == EINTR { continue }
                    return  // closed by stop()
                }
                Thread.detachNewThread { self.serve(client, respond) }
            }
        }
    }

    /// Stops listening (connections being answered finish).
    public func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// A port nothing listens on (bound, then closed).
    public static func closedPort() throws -> Int {
        let s = try FakeHTTPServer { _ in [] }
        s.stop()
        return s.port
    }

    private func serve(_ fd: Int32, _ respond: @Sendable (Request) -> [Data]) {
        defer { close(fd) }
        guard let request = readRequest(fd) else { return }
        lock.withLock { seen.append(request) }
        for (i, chunk) in respond(request).enumerated() {
            if i > 0 { usleep(30_000) }
            let ok = chunk.withUnsafeBytes { buf -> Bool in
                var off = 0
                while off < buf.count {
                    let n = send(fd, buf.baseAddress! + off, buf.count - off, Int32(MSG_NOSIGNAL))
                    if n <= 0 { return false }
                    off += n
                }
                return true
            }
            if !ok { return }
        }
    }

    private func readRequest(_ fd: Int32) -> Request? {
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        func more() -> Bool {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { return false }
            data.append(contentsOf: buf[0..<n])
            return true
        }
        let separator = Data("\r\n\r\n".utf8)
        while data.range(of: separator) == nil { if !more() { return nil } }
        let headEnd = data.range(of: separator)!
        let head = String(decoding: data[..<headEnd.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let first = head[0].split(separator: " ")
        guard first.count >= 2 else { return nil }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var rest = Data(data[headEnd.upperBound...])
        var body = Data()
        if let length = headers["content-length"].flatMap(Int.init) {
            while rest.count < length {
                data = Data()
                if !more() { break }
                rest.append(data)
            }
            body = rest.prefix(length)
        } else if headers["transfer-encoding"]?.lowercased() == "chunked" {
            // size CRLF bytes CRLF … 0 CRLF CRLF
            let crlf = Data("\r\n".utf8)
            while true {
                while rest.range(of: crlf) == nil {
                    data = Data()
                    if !more() { return nil }
                    rest.append(data)
                }
                let line = rest.range(of: crlf)!
                let size = Int(String(decoding: rest[..<line.lowerBound], as: UTF8.self).split(separator: ";")[0], radix: 16) ?? 0
                let start = line.upperBound
                while rest.count - (start - rest.startIndex) < size + 2 {
                    data = Data()
                    if !more() { return nil }
                    rest.append(data)
                }
                if size == 0 { break }
                body.append(rest[start..<(start + size)])
                rest = Data(rest[(start + size + 2)...])
            }
        }
        return Request(method: String(first[0]), target: String(first[1]), headers: headers, body: body)
    }

    /// A whole response: status line, `headers`, `Content-Length`, `body`.
    public static func response(_ status: Int, _ reason: String = "OK", headers: [String: String] = ["Content-Type": "application/json"], body: String) -> Data {
        var text = "HTTP/1.1 \(status) \(reason)\r\n"
        for (k, v) in headers.sorted(by: { $0.key < $1.key }) { text += "\(k): \(v)\r\n" }
        text += "Content-Length: \(Data(body.utf8).count)\r\nConnection: close\r\n\r\n"
        return Data(text.utf8) + Data(body.utf8)
    }

    /// A response head whose body follows in chunks (no length: it ends when the connection
    /// closes), and the body's pieces as they are to be sent.
    public static func streamed(_ pieces: [String], contentType: String = "application/x-ndjson") -> [Data] {
        [Data("HTTP/1.1 200 OK\r\nContent-Type: \(contentType)\r\nConnection: close\r\n\r\n".utf8)] + pieces.map { Data($0.utf8) }
    }
}
