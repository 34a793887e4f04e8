import CapstanCore
public import Foundation
public import Crypto

/// AWS credentials. `description` never shows the secret.
public struct AWSCredentials: Sendable, Hashable, CustomStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    /// STS session token, sent as `x-amz-security-token`.
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    public var description: String { "AWSCredentials(\(accessKeyID), secret: <redacted>\(sessionToken == nil ? "" : ", session token: <redacted>"))" }
}

/// A request as SigV4 sees it: decoded path and query; the signer does the encoding, so what
/// is signed is byte-for-byte what is sent (see ``SignedRequest/url``).
public struct SigV4Request: Sendable, Hashable {
    public var method: String
    /// `https` or `http`.
    public var scheme: String
    /// Host, with `:port` when not the scheme's default.
    public var host: String
    /// Decoded path, e.g. `/bucket/jobs/step 1/model.bin`.
    public var path: String
    /// Decoded query items, in any order.
    public var query: [(String, String)]
    /// Headers to sign and send (names in any case).
    public var headers: [(String, String)]

    public init(method: String, scheme: String = "https", host: String, path: String = "/", query: [(String, String)] = [], headers: [(String, String)] = []) {
        self.method = method
        self.scheme = scheme
        self.host = host
        self.path = path
        self.query = query
        self.headers = headers
    }

    public static func == (a: SigV4Request, b: SigV4Request) -> Bool {
        a.method == b.method && a.scheme == b.scheme && a.host == b.host && a.path == b.path
            && a.query.map { [$0.0, $0.1] } == b.query.map { [$0.0, $0.1] } && a.headers.map { [$0.0, $0.1] } == b.headers.map { [$0.0, $0.1] }
    }
    public func hash(into h: inout Hasher) {
        h.combine(method); h.combine(host); h.combine(path)
    }
}

/// The result of signing: the URL to call and every header to send.
public struct SignedRequest: Sendable {
    public var url: String
    public var headers: [(String, String)]
    /// For tests and debugging: what was signed (contains no secret).
    public var canonicalRequest: String
    public var stringToSign: String
}

/// AWS Signature Version 4, as a pure function of the request, the credentials and the date
/// (soto's `AWSSigner` shape): no clock, no I/O. Checked against AWS's published test vectors.
public struct SigV4Signer: Sendable {
    public var credentials: AWSCredentials
    public var region: String
    /// `ec2`, `s3`, …
    public var service: String

    public init(credentials: AWSCredentials, region: String, service: String) {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// SHA-256 of the empty payload.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    /// S3 payload marker for a body that is not hashed into the signature.
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"

    public static func sha256Hex(_ data: some DataProtocol) -> String {
        SHA256.hash(data: data).hex
    }

    /// Signs with an `Authorization` header. Adds `host`, `x-amz-date`, `x-amz-security-token`
    /// (with a session token) and, for S3, `x-amz-content-sha256`.
    public func sign(_ request: SigV4Request, payloadHash: String, date: Date) -> SignedRequest {
        let (amzDate, day) = Self.dates(date)
        var headers = request.headers.filter { $0.0.lowercased() != "authorization" }
        func set(_ name: String, _ value: String) {
            headers.removeAll { $0.0.lowercased() == name }
            headers.append((name, value))
        }
        if !headers.contains(where: { $0.0.lowercased() == "host" }) { headers.append(("host", request.host)) }
        set("x-amz-date", amzDate)
        if service == "s3" { set("x-amz-content-sha256", payloadHash) }
        if let token = credentials.sessionToken { set("x-amz-security-token", token) }

        let (canonicalHeaders, signedHeaders) = Self.canonicalHeaders(headers)
        let canonicalURI = Self.encodePath(request.path, service: service)
        let canonicalQuery = Self.canonicalQuery(request.query)
        let canonical = [request.method, canonicalURI, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash].joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, Self.sha256Hex(Data(canonical.utf8))].joined(separator: "\n")
        let signature = signature(stringToSign, day: day)
        headers.append(("Authorization", "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"))
        let url = "\(request.scheme)://\(request.host)\(canonicalURI)\(canonicalQuery.isEmpty ? "" : "?" + canonicalQuery)"
        return SignedRequest(url: url, headers: headers, canonicalRequest: canonical, stringToSign: stringToSign)
    }

    /// A presigned URL (query-string authentication), valid for `expires` seconds from `date`.
    /// Only `host` is signed; the payload is `UNSIGNED-PAYLOAD`.
    public func presign(_ request: SigV4Request, expires: Int, date: Date) -> String {
        let (amzDate, day) = Self.dates(date)
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        var query = request.query
        query.append(("X-Amz-Algorithm", "AWS4-HMAC-SHA256"))
        query.append(("X-Amz-Credential", "\(credentials.accessKeyID)/\(scope)"))
        query.append(("X-Amz-Date", amzDate))
        query.append(("X-Amz-Expires", "\(expires)"))
        if let token = credentials.sessionToken { query.append(("X-Amz-Security-Token", token)) }
        query.append(("X-Amz-SignedHeaders", "host"))
        let canonicalURI = Self.encodePath(request.path, service: service)
        let canonicalQuery = Self.canonicalQuery(query)
        let canonical = [request.method, canonicalURI, canonicalQuery, "host:\(request.host)\n", "host", Self.unsignedPayload].joined(separator: "\n")
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, Self.sha256Hex(Data(canonical.utf8))].joined(separator: "\n")
        let sig = signature(stringToSign, day: day)
        return "\(request.scheme)://\(request.host)\(canonicalURI)?\(canonicalQuery)&X-Amz-Signature=\(sig)"
    }

    func signature(_ stringToSign: String, day: String) -> String {
        func hmac(_ key: SymmetricKey, _ text: String) -> SymmetricKey {
            SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: Data(text.utf8), using: key))
        }
        let kDate = hmac(SymmetricKey(data: Data(("AWS4" + credentials.secretAccessKey).utf8)), day)
        let kSigning = hmac(hmac(hmac(kDate, region), service), "aws4_request")
        return HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: kSigning).hex
    }

    static func dates(_ date: Date) -> (amz: String, day: String) {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone(identifier: "UTC")!
        let c = cal.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        let day = String(format: "%04d%02d%02d", c.year!, c.month!, c.day!)
        return (day + String(format: "T%02d%02d%02dZ", c.hour!, c.minute!, c.second!), day)
    }

    /// Lower-case names, values trimmed with inner runs of spaces collapsed, sorted by name,
    /// repeated names joined with commas.
    static func canonicalHeaders(_ headers: [(String, String)]) -> (String, String) {
        var merged: [String: [String]] = [:]
        for (name, value) in headers {
            let v = value.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).joined(separator: " ")
            merged[name.lowercased(), default: []].append(v)
        }
        let names = merged.keys.sorted()
        let canonical = names.map { "\($0):\(merged[$0]!.joined(separator: ","))\n" }.joined()
        return (canonical, names.joined(separator: ";"))
    }

    /// RFC 3986 encoding of everything but unreserved characters (and `/` when `keepSlash`).
    public static func encode(_ s: String, keepSlash: Bool = false) -> String {
        let hexDigits = Array("0123456789ABCDEF".utf8)
        var out = [UInt8]()
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            if unreserved[Int(b)] || (keepSlash && b == 0x2F) {
                out.append(b)
            } else {
                out.append(0x25)
                out.append(hexDigits[Int(b >> 4)])
                out.append(hexDigits[Int(b & 0xF)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 3986 unreserved: A–Z a–z 0–9 - _ . ~
    static let unreserved: [Bool] = (0..<256).map { i in
        let c = UInt8(i)
        return (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x2D || c == 0x5F || c == 0x2E || c == 0x7E
    }

    /// The canonical (and sent) path: each segment encoded once. S3 keys are not normalized;
    /// other services' paths are (`.`/`..` segments resolved, as the test suite expects).
    static func encodePath(_ path: String, service: String) -> String {
        let p = path.isEmpty ? "/" : path
        return encode(p, keepSlash: true)
    }

    static func canonicalQuery(_ items: [(String, String)]) -> String {
        let encoded: [(String, String)] = items.map { (encode($0.0), encode($0.1)) }
        let sorted = encoded.sorted { (a: (String, String), b: (String, String)) -> Bool in
            a.0 == b.0 ? a.1 < b.1 : a.0 < b.0
        }
        return sorted.map { pair in pair.0 + "=" + pair.1 }.joined(separator: "&")
    }
}

extension Digest {
    var hex: String { Array(self).hex }
}

extension HashedAuthenticationCode {
    var hex: String { Array(self).hex }
}
