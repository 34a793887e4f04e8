public import CapstanCore
public import Foundation
import AsyncHTTPClient
import CapstanAWS
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// One HTTP answer with its body in memory (control-plane answers are small).
public struct CloudHTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: Data

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// `Retry-After` in seconds (a number, clamped to 0…3600; an HTTP date or NaN is read as 1 s).
    public var retryAfterSeconds: Double? {
        guard let v = header("Retry-After") else { return nil }
        return CapstanError.clampedRetryAfter(Double(v.trimmingCharacters(in: .whitespaces))) ?? 1
    }

    /// The body as a JSON object, or nil.
    public var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] }
}

/// The small HTTP client the RunPod and GCP plugins share: one try per call (throttling and
/// 5xx are the host's to retry: the plugin maps them to `rateLimited`/`transient`), connection
/// failures as `transient`, and endpoints checked so that credentials never cross the network
/// in the clear.
public enum CloudHTTP {
    /// Checks `url` is https, or http to this machine (127.0.0.0/8, ::1, localhost) — where a
    /// test server listens — unless `allowInsecureHTTP`. `setting` names it for the error.
    public static func checkEndpoint(_ url: String, setting: String, allowInsecureHTTP: Bool = false) throws {
        guard let u = URL(string: url), let scheme = u.scheme?.lowercased(), let host = u.host, ["http", "https"].contains(scheme) else {
            throw CapstanError(.config, "\(setting) '\(url)' is not an http(s) URL.", hint: "Use an https:// URL (or http://127.0.0.1:PORT for a test server).")
        }
        if scheme == "http", !allowInsecureHTTP, !AWSEndpoint.isLoopback(host: host) {
            throw CapstanError(.config, "\(setting) \(url) is plain HTTP to \(host), another machine: the API key or token would cross the network unencrypted.", hint: "Use https://\(url.dropFirst(7)).")
        }
    }

    /// Sends one request. A connection failure is a `transient` error naming the URL (never a
    /// header: they hold credentials).
    public static func send(
        _ method: String, _ url: String, headers: [(String, String)] = [], body: Data? = nil,
        timeout: Duration = .seconds(60), provider: String, maxResponseBytes: Int = 32 << 20
    ) async throws -> CloudHTTPResponse {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        for (k, v) in headers { request.headers.add(name: k, value: v) }
        if let body { request.body = .bytes(ByteBuffer(data: body)) }
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .nanoseconds(Int64(timeout.seconds * 1e9)))
            let data = try await response.body.collect(upTo: maxResponseBytes)
            return CloudHTTPResponse(status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) }, body: Data(buffer: data))
        } catch {
            if Task.isCancelled { throw CancellationError() }
            let where_ = url.split(separator: "?", maxSplits: 1).first.map(String.init) ?? url
            throw CapstanError(.transient, "\(method) \(where_) failed: \(error).", hint: "Check the endpoint and the network.", provider: provider)
        }
    }

    /// Reads a secret (API key, key file) from `path`, trimmed. Errors name the file, never its
    /// contents.
    public static func readSecret(_ path: String, what: String, provider: String) throws -> String {
        let expanded = (path as NSString).expandingTildeInPath
        guard let data = FileManager.default.contents(atPath: expanded) else {
            throw CapstanError(.auth, "Cannot read the \(what) file \(expanded).", hint: "Check the path and its permissions.", provider: provider)
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { throw CapstanError(.auth, "The \(what) file \(expanded) is empty.", provider: provider) }
        return text
    }

    /// A JSON body.
    public static func json(_ object: Any) throws -> Data {
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    }
}
