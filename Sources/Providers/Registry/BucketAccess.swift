public import CapstanCore
public import CapstanRuntime
public import CapstanAWS
public import CapstanStorage
import CapstanCloudKit
public import Foundation

/// Everything a node's agent needs to open a job's bucket, resolved once by the controller
/// (``ProviderRegistry/bucketAccess(for:environment:)``): the same endpoint, region, path style
/// and credentials `capstan storage` uses. It holds secrets, so it only ever travels on an
/// agent's stdin: never in a file, an argument or a log line (`description` redacts them).
public struct BucketAccess: Sendable, Hashable, Codable, CustomStringConvertible {
    public struct S3: Sendable, Hashable, Codable {
        public var endpoint: String?
        public var region: String
        public var pathStyle: Bool?
        public var accessKeyID: String
        public var secretAccessKey: String
        public var sessionToken: String?
        /// The user allowed a plain `http://` endpoint on another machine (nil: not allowed).
        public var allowInsecureHTTP: Bool?

        public init(endpoint: String?, region: String, pathStyle: Bool?, accessKeyID: String, secretAccessKey: String, sessionToken: String?) {
            self.endpoint = endpoint
            self.region = region
            self.pathStyle = pathStyle
            self.accessKeyID = accessKeyID
            self.secretAccessKey = secretAccessKey
            self.sessionToken = sessionToken
        }
    }

    /// A `gs://` bucket: Cloud Storage's JSON API at `endpoint`, with a service account's key
    /// (the JSON key file's text) that the node exchanges for access tokens itself.
    public struct GCS: Sendable, Hashable, Codable {
        public var endpoint: String
        public var serviceAccountKey: String
        public var allowInsecureHTTP: Bool?

        public init(endpoint: String, serviceAccountKey: String, allowInsecureHTTP: Bool? = nil) {
            self.endpoint = endpoint
            self.serviceAccountKey = serviceAccountKey
            self.allowInsecureHTTP = allowInsecureHTTP
        }
    }

    /// The bucket URI (`s3://bucket/prefix`, `file:///path`, `gs://bucket/prefix`).
    public var location: String
    /// Set for `s3://`.
    public var s3: S3?
    /// Set for `gs://`.
    public var gcs: GCS?

    public init(location: String, s3: S3? = nil, gcs: GCS? = nil) {
        self.location = location
        self.s3 = s3
        self.gcs = gcs
    }

    /// The secret strings in it, for redaction: the S3 secret and token; the whole GCS key and
    /// each line of its private key (a line of a log holds one line of it at most).
    public var secrets: [String] {
        var out = [s3?.secretAccessKey, s3?.sessionToken, gcs?.serviceAccountKey].compactMap { $0 }
        if let key = gcs.flatMap({ try? ServiceAccountKey.parse($0.serviceAccountKey, source: "") }) {
            // Each base64 line of the PEM (the last one too, however short), and each as JSON
            // writes it (`/` as `\/`): output may hold the key re-encoded.
            let lines = key.private_key.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("-----") }
            let kept = lines.enumerated().filter { $0.element.count >= 16 || ($0.offset == lines.count - 1 && $0.element.count >= 4) }.map(\.element)
            out += kept + kept.map { $0.replacingOccurrences(of: "/", with: "\\/") }.filter { !kept.contains($0) }
        }
        return out.filter { !$0.isEmpty }.sorted { $0.count > $1.count }
    }

    public var description: String {
        "BucketAccess(\(location)\(s3.map { ", endpoint \($0.endpoint ?? "AWS"), region \($0.region), key \($0.accessKeyID), secret: <redacted>" } ?? "")\(gcs.map { ", endpoint \($0.endpoint), service-account key: <redacted>" } ?? ""))"
    }

    /// Opens the bucket with the built-in clients.
    public func open(home: CapstanHome) throws -> any ObjectStore {
        if let gcs {
            let key = try ServiceAccountKey.parse(gcs.serviceAccountKey, source: "The service-account key for \(location)")
            let allow = gcs.allowInsecureHTTP ?? false
            return try GCSStore(location: location, base: gcs.endpoint, auth: GCPTokenSource(key: key, allowInsecureHTTP: allow), allowInsecureHTTP: allow)
        }
        if let s3 {
            var configuration = S3Configuration(endpoint: s3.endpoint, region: s3.region, pathStyle: s3.pathStyle, uploadStateFolder: home.path("uploads"))
            configuration.allowInsecureHTTP = s3.allowInsecureHTTP ?? false
            return try S3ObjectStore(
                location: location,
                credentials: AWSCredentials(accessKeyID: s3.accessKeyID, secretAccessKey: s3.secretAccessKey, sessionToken: s3.sessionToken),
                configuration: configuration)
        }
        return try ProviderRegistry.builtInStore(for: location, home: home, environment: [:])
    }
}
