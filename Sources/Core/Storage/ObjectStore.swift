public import Foundation

/// What a store knows about one object.
public struct ObjectInfo: Sendable, Hashable, Codable {
    public var key: String
    public var size: Int64
    /// Hex SHA-256 of the whole object, when the store recorded one.
    public var sha256: String?
    /// The store's entity tag (S3 ETag, without quotes).
    public var etag: String?
    public var lastModified: Date?
    public var metadata: [String: String]

    public init(key: String, size: Int64, sha256: String? = nil, etag: String? = nil, lastModified: Date? = nil, metadata: [String: String] = [:]) {
        self.key = key
        self.size = size
        self.sha256 = sha256
        self.etag = etag
        self.lastModified = lastModified
        self.metadata = metadata
    }
}

/// Progress of one transfer.
public struct TransferProgress: Sendable, Hashable, Codable {
    public var bytesDone: UInt64
    /// 0 when unknown.
    public var bytesTotal: UInt64
    public init(bytesDone: UInt64, bytesTotal: UInt64) {
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
    }
}

/// Called as a transfer advances; may be called from any thread.
public typealias TransferProgressHandler = @Sendable (TransferProgress) -> Void

/// How to write an object.
public struct PutOptions: Sendable, Hashable, Codable {
    /// User metadata stored with the object.
    public var metadata: [String: String]
    /// Fail with `.invalidRequest` (code `PreconditionFailed`) if the key already exists.
    public var ifNoneMatch: Bool
    /// Refuse the upload if the file's SHA-256 differs (the file changed under us).
    public var expectedSHA256: String?
    /// Part size for multipart uploads, in bytes; the store picks when nil.
    public var partSize: Int?
    /// Parts in flight at once; the store picks when nil.
    public var concurrency: Int?
    /// Average upload rate cap in bytes per second (so a checkpoint upload leaves the node's
    /// link to training traffic); nil: as fast as the store takes it. Network stores honour it;
    /// `file://` copies are local and ignore it.
    public var maxBytesPerSecond: Int64?

    public init(metadata: [String: String] = [:], ifNoneMatch: Bool = false, expectedSHA256: String? = nil, partSize: Int? = nil, concurrency: Int? = nil, maxBytesPerSecond: Int64? = nil) {
        self.metadata = metadata
        self.ifNoneMatch = ifNoneMatch
        self.expectedSHA256 = expectedSHA256
        self.partSize = partSize
        self.concurrency = concurrency
        self.maxBytesPerSecond = maxBytesPerSecond
    }
}

/// A bucket (or a prefix in one) where checkpoints and weights live: the user's own S3, GCS, R2,
/// or a local folder.
///
/// Keys are `/`-separated relative paths (`jobs/j1/step-100/model.safetensors`). Writes are
/// atomic: a reader sees the whole old object or the whole new one, never a partial upload.
/// Built for multi-GB files: implementations stream from and to disk with bounded memory.
public protocol ObjectStore: Sendable {
    /// Where the store points, as a URI (`file:///data/bucket`, `s3://bucket/prefix`).
    var location: String { get }
    /// Uploads the file at `path` to `key`, atomically, and returns what was stored.
    func put(file path: String, key: String, options: PutOptions, progress: TransferProgressHandler?) async throws -> ObjectInfo
    /// Downloads `key` to `path` (written atomically, checksum verified where recorded).
    func get(key: String, to path: String, progress: TransferProgressHandler?) async throws -> ObjectInfo
    /// Objects whose key starts with `prefix`, sorted by key.
    func list(prefix: String) async throws -> [ObjectInfo]
    /// The object at `key`, or nil when there is none.
    func head(key: String) async throws -> ObjectInfo?
    /// Deletes `key`; deleting a missing key is not an error.
    func delete(key: String) async throws
}

extension ObjectStore {
    public func put(file path: String, key: String, options: PutOptions = .init()) async throws -> ObjectInfo {
        try await put(file: path, key: key, options: options, progress: nil)
    }
    public func get(key: String, to path: String) async throws -> ObjectInfo {
        try await get(key: key, to: path, progress: nil)
    }
}

/// Rules every store and every bucket URI obeys, so a key valid for one store is valid for all
/// and no key, prefix or URI can name anything outside its bucket. Capstan never resolves `.` or
/// `..`; it refuses them before any I/O.
public enum ObjectKey {
    /// Throws `.invalidRequest` unless `key` is a clean relative path: non-empty, no leading
    /// `/`, no `.` or `..` or empty segments, no NUL, at most 1024 UTF-8 bytes (S3's limit).
    public static func validate(_ key: String) throws {
        if key.isEmpty { throw bad("object key", key, "it is empty") }
        try check(key, what: "object key", allowTrailingSlash: false)
    }

    /// Throws `.invalidRequest` unless `prefix` can start a valid key: empty, or a key that may
    /// end with `/` (`jobs/`, `jobs/j1/step-`).
    public static func validatePrefix(_ prefix: String) throws {
        if prefix.isEmpty { return }
        try check(prefix, what: "key prefix", allowTrailingSlash: true)
    }

    /// Throws `.invalidRequest` unless the part of bucket URI `location` after `scheme://` is
    /// free of `.` and `..` segments and NUL bytes (`file:///data/bucket`, `s3://bucket/prefix`).
    /// Empty segments (`file:///a//b`, a trailing `/`) are harmless there and allowed.
    public static func validateLocation(_ location: String) throws {
        let rest = location.range(of: "://").map { location[$0.upperBound...] } ?? location[...]
        if rest.contains("\0") { throw bad("bucket URI", location, "it contains a NUL byte") }
        for segment in rest.split(separator: "/") where segment == "." || segment == ".." {
            throw bad("bucket URI", location, "it has a '\(segment)' path segment", hint: locationHint)
        }
    }

    static let keyHint = "Use a relative path like 'jobs/name/step-100/model.safetensors'; Capstan never resolves '.' or '..', so a key cannot reach outside its bucket."
    static let locationHint = "Write the bucket path without '.' or '..' segments, e.g. file:///data/bucket/run/model.bin; Capstan never resolves them, so a URI cannot reach outside its bucket."

    static func check(_ text: String, what: String, allowTrailingSlash: Bool) throws {
        if text.utf8.count > 1024 { throw bad(what, text, "it is longer than 1024 bytes") }
        if text.hasPrefix("/") { throw bad(what, text, "it starts with '/'") }
        if text.contains("\0") { throw bad(what, text, "it contains a NUL byte") }
        var segments = text.split(separator: "/", omittingEmptySubsequences: false)
        if allowTrailingSlash, segments.count > 1, segments.last?.isEmpty == true { segments.removeLast() }
        for segment in segments {
            if segment.isEmpty { throw bad(what, text, "it has an empty path segment") }
            if segment == "." || segment == ".." { throw bad(what, text, "it has a '\(segment)' segment") }
        }
    }

    static func bad(_ what: String, _ text: String, _ why: String, hint: String = keyHint) -> CapstanError {
        let shown = text.replacingOccurrences(of: "\0", with: "\\0")
        return CapstanError(.invalidRequest, "Invalid \(what) '\(shown)': \(why).", hint: hint)
    }
}

/// Path text that never traps. Foundation's `NSString.deletingLastPathComponent` crashes the
/// process (SIGILL) on Linux for a one-character relative path such as `y`: `storage rm` of key
/// `y`, or `storage cp file:///bucket/k y`, died that way. Shared by the stores and the CLI.
package enum LocalPath {
    /// The folder holding `path`: "." for a bare name, "/" for an entry of the root.
    package static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
