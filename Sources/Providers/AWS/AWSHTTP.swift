public import AsyncHTTPClient
public import CapstanCore
public import Foundation
public import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// An HTTP response with its body in memory (AWS control-plane answers and object parts are
/// bounded; whole objects are never read into memory).
public struct AWSResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: Data

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// Where an AWS-compatible service answers: the real one (`https://ec2.us-east-1.amazonaws.com`)
/// or a compatible server (moto, SeaweedFS, R2, MinIO) at a custom URL.
public struct AWSEndpoint: Sendable, Hashable {
    public var scheme: String
    /// Host plus `:port` when not the scheme's default.
    public var host: String

    public init(scheme: String, host: String) {
        self.scheme = scheme
        self.host = host
    }

    /// Parses `http://127.0.0.1:5000` or `https://s3.example.com`. Plain `http://` is refused
    /// unless the host is this machine (``isLoopback(host:)``) or `allowInsecureHTTP` is set:
    /// requests would cross the network unencrypted, SigV4 signatures (replayable for minutes)
    /// and data included. `setting` names where the URL came from, for the error.
    public init(url: String, allowInsecureHTTP: Bool = false, setting: String = "the endpoint", allowSetting: String = "providers.aws.allowInsecureHTTP: true") throws {
        guard let u = URL(string: url), let scheme = u.scheme?.lowercased(), let host = u.host, ["http", "https"].contains(scheme) else {
            throw CapstanError(.config, "'\(url)' is not an http(s) endpoint URL.", hint: "Use e.g. https://s3.us-east-1.amazonaws.com or http://127.0.0.1:8333.")
        }
        if scheme == "http", !allowInsecureHTTP, !Self.isLoopback(host: host) {
            throw CapstanError(
                .config, "\(setting) \(url) is plain HTTP to \(host), another machine: AWS requests would cross the network unencrypted, with their SigV4 signatures (replayable for minutes) and your data.",
                hint: "Use https://\(url.dropFirst(7)), or, only on a network you trust, set \(allowSetting) (see docs/aws.md).")
        }
        self.scheme = scheme
        let defaultPort = scheme == "https" ? 443 : 80
        self.host = u.port.map { $0 == defaultPort ? host : "\(host):\($0)" } ?? host
    }

    /// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or `::1` (plain HTTP stays
    /// allowed there: the traffic never leaves the machine).
    public static func isLoopback(host: String) -> Bool {
        var h = host.lowercased()
        if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if h.hasSuffix(".") { h.removeLast() }
        if h == "localhost" || h == "::1" || h == "0:0:0:0:0:0:0:1" { return true }
        let octets = h.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4, octets.allSatisfy({ !$0.isEmpty && $0.count <= 3 && $0.allSatisfy(\.isASCII) && UInt8($0) != nil }) else { return false }
        return octets[0] == "127"
    }
}

/// Sends SigV4-signed requests with retries: jittered exponential backoff on 5xx, throttling
/// (429, `SlowDown`, `RequestLimitExceeded`, `Throttling`) and connection errors, honouring
/// `Retry-After`. Bodies are in memory, so a retry re-sends exactly the same bytes.
public struct AWSHTTP: Sendable {
    public var signer: SigV4Signer
    public var endpoint: AWSEndpoint
    public var maxRetries = 4
    public var backoff = Backoff(initial: .milliseconds(200), max: .seconds(10))
    public var timeout: Duration = .seconds(120)
    /// Who is calling, for error messages (`aws`).
    public var provider = "aws"
    /// Waits between tries (`Task.sleep`); a test may record the delays chosen.
    public var pause: @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }

    public init(signer: SigV4Signer, endpoint: AWSEndpoint) {
        self.signer = signer
        self.endpoint = endpoint
    }

    /// Sends once per try; returns the final response whatever its status (callers map errors).
    public func send(method: String, path: String, query: [(String, String)] = [], headers: [(String, String)] = [], body: Data = Data(), payloadHash: String? = nil, maxResponseBytes: Int = 64 << 20) async throws -> AWSResponse {
        let hash = payloadHash ?? SigV4Signer.sha256Hex(body)
        var attempt = 0
        while true {
            let request = SigV4Request(method: method, scheme: endpoint.scheme, host: endpoint.host, path: path, query: query, headers: headers)
            let signed = signer.sign(request, payloadHash: hash, date: Date())
            var http = HTTPClientRequest(url: signed.url)
            http.method = .init(rawValue: method)
            for (name, value) in signed.headers where name.lowercased() != "host" {
                http.headers.add(name: name, value: value)
            }
            if !body.isEmpty || method == "PUT" || method == "POST" {
                http.body = .bytes(ByteBuffer(data: body))
            }
            var retryAfter: Duration?
            var failure: CapstanError
            do {
                let response = try await HTTPClient.shared.execute(http, timeout: .nanoseconds(Int64(timeout.seconds * 1e9)))
                let data = try await response.body.collect(upTo: maxResponseBytes)
                let out = AWSResponse(status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) }, body: Data(buffer: data))
                guard Self.isRetryable(out) else { return out }
                retryAfter = CapstanError.clampedRetryAfter(out.header("Retry-After").flatMap(Double.init)).map { .milliseconds(Int64($0 * 1000)) }
                failure = CapstanError(out.status == 429 || out.status == 503 ? .rateLimited : .transient, "\(method) \(path) answered HTTP \(out.status).", provider: provider)
                if attempt >= maxRetries { return out }
            } catch let e as CapstanError {
                throw e
            } catch {
                if Task.isCancelled { throw CancellationError() }
                failure = CapstanError(.transient, "\(method) \(endpoint.scheme)://\(endpoint.host)\(path) failed: \(error).", hint: "Check the endpoint and the network.", provider: provider)
                if attempt >= maxRetries { throw failure }
            }
            try await pause(retryAfter ?? backoff.delay(attempt))
            attempt += 1
            _ = failure
        }
    }

    static func isRetryable(_ r: AWSResponse) -> Bool {
        if r.status >= 500 || r.status == 429 { return true }
        if r.status == 400 || r.status == 403 || r.status == 503 {
            // Throttling codes come back as 400/503 with an XML body.
            let text = String(decoding: r.body.prefix(512), as: UTF8.self)
            return ["RequestLimitExceeded", "Throttling", "SlowDown", "RequestThrottled"].contains { text.contains("<Code>\($0)</Code>") }
        }
        return false
    }

    /// The `<Code>` and `<Message>` of an AWS XML error body (EC2's `<Errors><Error>` or S3's `<Error>`).
    public static func errorCode(_ body: Data) -> (code: String, message: String)? {
        guard let xml = try? XMLElement.parse(body) else { return nil }
        let error = xml.name == "Error" ? xml : xml.descendants("Error").first
        guard let error, let code = error.value("Code") else { return nil }
        return (code, error.value("Message") ?? "")
    }
}
