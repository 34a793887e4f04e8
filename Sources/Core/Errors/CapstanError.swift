public import Foundation

/// Every error Capstan raises: a stable ``Code`` over a private enum (so codes can grow without
/// breaking users), what happened, to what, and what to do next.
///
/// The same shape crosses the plugin ABI as JSON (see docs/plugin-abi.md), so a cloud's capacity
/// error is as readable from a C plugin as from Swift code.
public struct CapstanError: Error, Sendable, Hashable, Codable, CustomStringConvertible {
    /// The kind of failure. Compare with the static members (`.capacity`, `.auth`, …).
    public struct Code: Sendable, Hashable, Codable, CustomStringConvertible {
        enum Base: String, Sendable, CaseIterable {
            case capacity, quota, auth, rateLimited, invalidRequest, notFound, transient
            case unsupported, pluginFailure, timeout, config, io, internalError = "internal"
        }
        let base: Base
        init(_ base: Base) { self.base = base }

        /// The cloud has no capacity for the offer right now: try another offer or later.
        public static let capacity = Code(.capacity)
        /// An account limit (instances, vCPUs, GPUs) would be exceeded.
        public static let quota = Code(.quota)
        /// Credentials are missing, wrong or lack permission.
        public static let auth = Code(.auth)
        /// The cloud throttled the request; see ``CapstanError/retryAfter``.
        public static let rateLimited = Code(.rateLimited)
        /// The request is malformed or names something that cannot exist.
        public static let invalidRequest = Code(.invalidRequest)
        /// The thing asked for does not exist.
        public static let notFound = Code(.notFound)
        /// A network or server hiccup: retrying the same request may succeed.
        public static let transient = Code(.transient)
        /// The provider does not implement this operation.
        public static let unsupported = Code(.unsupported)
        /// A plugin could not be loaded, or broke the ABI contract (bad JSON, no answer).
        public static let pluginFailure = Code(.pluginFailure)
        /// An operation did not finish within its time limit.
        public static let timeout = Code(.timeout)
        /// The user's configuration or job spec is invalid.
        public static let config = Code(.config)
        /// A local file or folder could not be read or written.
        public static let io = Code(.io)
        /// A bug in Capstan or a plugin.
        public static let internalError = Code(.internalError)

        /// The stable wire name (`"capacity"`, `"rateLimited"`, …). Safe as a metric label.
        public var name: String { base.rawValue }
        public var description: String { name }

        /// Whether retrying elsewhere (another offer, region or provider) is the right response.
        public var movesToNextOffer: Bool { [.capacity, .quota].contains(base) }
        /// Whether retrying the same call later may succeed.
        public var isRetryable: Bool { [.rateLimited, .transient, .timeout].contains(base) }

        public init(from decoder: any Decoder) throws {
            let raw = try decoder.singleValueContainer().decode(String.self)
            // Unknown codes from a newer plugin degrade to a plugin failure rather than failing.
            self.base = Base(rawValue: raw) ?? .pluginFailure
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            try c.encode(base.rawValue)
        }
    }

    public var code: Code
    /// What happened, to what. One or two sentences a user can act on.
    public var message: String
    /// What to do next, when Capstan knows.
    public var hint: String?
    /// The provider (plugin name) the error came from, if any.
    public var provider: String?
    /// How long the caller should wait before retrying (rate limits), in seconds.
    public var retryAfterSeconds: Double?
    /// The cloud's own error code (`InsufficientInstanceCapacity`, `global/invalid-api-key`, …).
    public var cloudCode: String?
    /// The cloud's own message, verbatim.
    public var cloudMessage: String?

    public init(
        _ code: Code, _ message: String, hint: String? = nil, provider: String? = nil,
        retryAfterSeconds: Double? = nil, cloudCode: String? = nil, cloudMessage: String? = nil
    ) {
        self.code = code
        self.message = message
        self.hint = hint
        self.provider = provider
        self.retryAfterSeconds = Self.clampedRetryAfter(retryAfterSeconds)
        self.cloudCode = cloudCode
        self.cloudMessage = cloudMessage
    }

    /// `text` ending with exactly one full stop: a message built as "…: \(what)." whose `what`
    /// (a hint, a cloud's message) already ends in ".", "?" or "!" gets none added.
    public static func sentence(_ text: String) -> String {
        guard let last = text.last else { return text }
        return ".?!".contains(last) ? text : text + "."
    }

    /// `retryAfterSeconds` as a `Duration` (clamped to 0…3600 s: a plugin or a `Retry-After`
    /// header may send anything).
    public var retryAfter: Duration? { Self.clampedRetryAfter(retryAfterSeconds).map { .milliseconds(Int64($0 * 1000)) } }

    /// A wait in seconds made safe to turn into a `Duration`: NaN is no wait given (nil),
    /// anything else is clamped to 0…3600 (infinity → 3600).
    public static func clampedRetryAfter(_ seconds: Double?) -> Double? {
        guard let seconds, !seconds.isNaN else { return nil }
        return min(max(seconds, 0), 3600)
    }

    public var description: String {
        var s = ""
        if let provider { s += "[\(provider)] " }
        s += message
        if let cloudCode {
            s += " (cloud error \(cloudCode)\(cloudMessage.map { ": \($0)" } ?? ""))"
        }
        if let retryAfterSeconds { s += " Retry after \(String(format: "%.1f", retryAfterSeconds)) s." }
        if let hint { s += "\n  → \(hint)" }
        return s
    }

    /// A copy attributed to `provider` (kept if already set).
    public func attributed(to provider: String) -> CapstanError {
        var copy = self
        if copy.provider == nil { copy.provider = provider }
        return copy
    }
}

extension CapstanError: LocalizedError {
    public var errorDescription: String? { description }
}
