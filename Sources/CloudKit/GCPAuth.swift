public import CapstanCore
import Crypto
public import Foundation
import _CryptoExtras

/// A service-account key file (the JSON a GCP console download holds). Only `client_email`,
/// `private_key`, `private_key_id`, `project_id` and `token_uri` are read.
public struct ServiceAccountKey: Decodable, Sendable {
    public var type: String?
    public var project_id: String?
    public var private_key_id: String?
    public var private_key: String
    public var client_email: String
    public var token_uri: String?

    /// Reads and checks the key file. Errors name the file and the field, never the key.
    public static func load(_ path: String) throws -> ServiceAccountKey {
        let text = try CloudHTTP.readSecret(path, what: "GCP service-account key", provider: "gcp")
        return try parse(text, source: (path as NSString).expandingTildeInPath)
    }

    /// The key file's text (`source` names it in errors).
    public static func parse(_ text: String, source: String) throws -> ServiceAccountKey {
        let key: ServiceAccountKey
        do { key = try JSONDecoder().decode(ServiceAccountKey.self, from: Data(text.utf8)) } catch {
            throw CapstanError(.auth, "\(source) is not a GCP service-account key file (JSON with client_email and private_key).", hint: "Download a key: console.cloud.google.com → IAM → Service accounts → Keys → Add key → JSON.", provider: "gcp")
        }
        if let t = key.type, t != "service_account" {
            throw CapstanError(.auth, "\(source) holds credentials of type '\(t)', not a service account's key.", hint: "Use a service-account JSON key (type service_account).", provider: "gcp")
        }
        return key
    }
}

/// OAuth2 access tokens for a service account: an RS256-signed JWT assertion exchanged at the
/// key's `token_uri`, cached and refreshed before it expires (a tenth of its life, at most
/// 5 minutes, ahead). Neither the key nor a token is ever logged or put in an error.
public actor GCPTokenSource {
    private let key: ServiceAccountKey
    private let signer: _RSA.Signing.PrivateKey
    public let tokenURI: String
    static let scope = "https://www.googleapis.com/auth/cloud-platform"
    private var token: (value: String, refreshAt: Date)?
    /// Tokens fetched so far (for tests and logs).
    private(set) var fetched = 0

    public init(key: ServiceAccountKey, allowInsecureHTTP: Bool) throws {
        self.key = key
        do { signer = try _RSA.Signing.PrivateKey(pemRepresentation: key.private_key) } catch {
            throw CapstanError(.auth, "The service-account key of \(key.client_email) has a private_key that is not an RSA key in PEM form.", hint: "Download a new JSON key for the service account.", provider: "gcp")
        }
        tokenURI = key.token_uri ?? "https://oauth2.googleapis.com/token"
        try CloudHTTP.checkEndpoint(tokenURI, setting: "the key file's token_uri", allowInsecureHTTP: allowInsecureHTTP)
    }

    /// The signed assertion for `now` (header.claims.signature, base64url).
    func assertion(now: Date) throws -> String {
        let iat = Int(now.timeIntervalSince1970)
        var header: [String: Any] = ["alg": "RS256", "typ": "JWT"]
        if let kid = key.private_key_id { header["kid"] = kid }
        let claims: [String: Any] = ["iss": key.client_email, "scope": Self.scope, "aud": tokenURI, "iat": iat, "exp": iat + 3600]
        let input = try Self.b64url(CloudHTTP.json(header)) + "." + Self.b64url(CloudHTTP.json(claims))
        let signature = try signer.signature(for: Data(input.utf8), padding: .insecurePKCS1v1_5)
        return input + "." + Self.b64url(signature.rawRepresentation)
    }

    static func b64url(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// Drops the cached token (after a 401: it was revoked or the clock is off).
    public func invalidate() { token = nil }

    /// A valid access token, fetched when none is cached or the cached one is near its end.
    public func accessToken() async throws -> String {
        let now = Date()
        if let token, now < token.refreshAt { return token.value }
        let form = "grant_type=" + "urn:ietf:params:oauth:grant-type:jwt-bearer".addingPercentEncoding(withAllowedCharacters: .alphanumerics)! + "&assertion=" + (try assertion(now: now))
        let r = try await CloudHTTP.send("POST", tokenURI, headers: [("Content-Type", "application/x-www-form-urlencoded")], body: Data(form.utf8), provider: "gcp")
        let doc = r.json
        guard r.status == 200, let value = doc?["access_token"] as? String else {
            let code = doc?["error"] as? String
            let description = doc?["error_description"] as? String
            if r.status == 429 { throw CapstanError(.rateLimited, "Google's token endpoint throttled the token request.", provider: "gcp", retryAfterSeconds: r.retryAfterSeconds ?? 1) }
            if r.status >= 500 { throw CapstanError(.transient, "Google's token endpoint answered HTTP \(r.status).", provider: "gcp") }
            throw CapstanError(.auth, "Google refused the service account \(key.client_email)'s token request (HTTP \(r.status)\(description.map { ": \($0)" } ?? "")).", hint: "The key may be deleted or disabled, or this machine's clock off by minutes; create a new key, or check the clock.", provider: "gcp", cloudCode: code, cloudMessage: description)
        }
        let life = (doc?["expires_in"] as? Double) ?? Double(doc?["expires_in"] as? Int ?? 3600)
        token = (value, now.addingTimeInterval(life - min(300, life / 10)))
        fetched += 1
        return value
    }
}
