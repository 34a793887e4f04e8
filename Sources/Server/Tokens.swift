public import CapstanCore
import Crypto
public import Foundation

/// The control plane's bearer tokens: created here (shown once), stored as SHA-256 only.
public struct Tokens: Sendable {
    public let store: any TokenRepository

    public init(store: any TokenRepository) { self.store = store }

    /// What `create` returns: the record, and the token itself (nowhere else, ever).
    public struct Created: Sendable {
        public var record: APIToken
        public var token: String
    }

    /// Makes a token (`cap_` + 43 characters of base64url over 32 random bytes) named `name`.
    public func create(name: String, now: Date = Date()) async throws -> Created {
        let trimmed = name.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty, trimmed.count <= 64, trimmed.allSatisfy({ $0.isLetter || $0.isNumber || "-_.@".contains($0) }) else {
            throw CapstanError(.invalidRequest, "Token name '\(name)' is not valid.", hint: "Use 1–64 letters, digits, '-', '_', '.' or '@' (e.g. laptop, ci).")
        }
        let secret = Self.base64url(Self.randomBytes(32))
        let token = "cap_" + secret
        let id = "tok_" + Self.base64url(Self.randomBytes(6))
        let record = APIToken(id: id, name: trimmed, hash: Self.hash(token), createdAt: now)
        try await store.insert(record)
        return Created(record: record, token: token)
    }

    /// Why a request's credentials were refused (said in the server's log; never the token).
    public enum Refusal: String, Error, Sendable {
        case missing = "no Authorization header"
        case malformed = "Authorization is not `Bearer <token>`"
        case unknown = "unknown token"
        case revoked = "revoked token"
    }

    /// The token a request's `Authorization` header names, or why it is refused.
    public func authenticate(header: String?) async throws -> Result<APIToken, Refusal> {
        guard let header, !header.isEmpty else { return .failure(.missing) }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return .failure(.malformed) }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        guard !token.isEmpty else { return .failure(.malformed) }
        guard let record = try await store.token(hash: Self.hash(token)) else { return .failure(.unknown) }
        if record.isRevoked { return .failure(.revoked) }
        return .success(record)
    }

    /// Hex SHA-256 of a token.
    public static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    static func randomBytes(_ n: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    static func base64url(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}
