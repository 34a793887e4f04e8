import CapstanRuntime
public import CapstanCore
public import Crypto
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How to reach an S3-compatible store and how to move big files.
public struct S3Configuration: Sendable, Hashable {
    /// A custom endpoint (SeaweedFS, MinIO, R2, Backblaze); nil: AWS S3 in `region`.
    public var endpoint: String?
    public var region: String
    /// Address the bucket in the path (`host/bucket/key`) instead of the host name. Default:
    /// true with a custom endpoint, false on AWS.
    public var pathStyle: Bool?
    /// Multipart part size (S3's minimum is 5 MiB, except the last part).
    public var partSize = 16 << 20
    /// Parts in flight at once. Memory in use is about `partSize × concurrency`.
    public var concurrency = 8
    /// Where interrupted multipart uploads are remembered so a retry resumes them.
    public var uploadStateFolder: String
    /// Allow a plain `http://` endpoint on another machine (off: only loopback may be plain HTTP).
    public var allowInsecureHTTP = false
    /// The setting that turns ``allowInsecureHTTP`` on, for the refusal's hint.
    public var allowInsecureHTTPSetting = "providers.aws.allowInsecureHTTP: true"

    public init(endpoint: String? = nil, region: String = "us-east-1", pathStyle: Bool? = nil, uploadStateFolder: String? = nil) {
        self.endpoint = endpoint
        self.region = region
        self.pathStyle = pathStyle
        let home = ProcessInfo.processInfo.environment["CAPSTAN_HOME"] ?? (NSHomeDirectory() + "/.capstan")
        self.uploadStateFolder = uploadStateFolder ?? home + "/uploads"
    }
}

/// An ``ObjectStore`` on S3 or any S3-compatible server (`s3://bucket/prefix`), signed with
/// SigV4.
///
/// Built for multi-GB checkpoints with bounded memory: files above one part go up as multipart
/// uploads with `concurrency` parts in flight, each part carrying `Content-MD5` (the server
/// rejects a corrupted part with BadDigest); the whole file's SHA-256 is stored
/// as `x-amz-meta-capstan-sha256` and verified on download. Downloads are parallel ranged GETs
/// into a temp file that is renamed into place only once verified. An interrupted multipart
/// upload never becomes an object (S3 shows nothing until Complete); its id and finished parts
/// are remembered in `uploadStateFolder`, so the next `put` of the same file resumes it.
public struct S3ObjectStore: ObjectStore {
    public let bucket: String
    /// Key prefix inside the bucket ("" or ending without `/`).
    public let prefix: String
    public let configuration: S3Configuration
    let http: AWSHTTP
    let pathStyle: Bool

    public var location: String { "s3://\(bucket)" + (prefix.isEmpty ? "" : "/\(prefix)") }

    public init(location: String, credentials: AWSCredentials, configuration: S3Configuration = .init()) throws {
        guard location.hasPrefix("s3://") else {
            throw CapstanError(.invalidRequest, "'\(location)' is not an s3:// URI.", hint: "Use s3://bucket or s3://bucket/prefix.")
        }
        try ObjectKey.validateLocation(location)
        let rest = location.dropFirst(5)
        let parts = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let bucket = String(parts.first ?? "")
        guard bucket.range(of: "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", options: .regularExpression) != nil else {
            throw CapstanError(.invalidRequest, "'\(bucket)' is not a valid bucket name (in \(location)).", hint: "Bucket names are 3–63 lower-case letters, digits, dots and dashes.")
        }
        self.bucket = bucket
        self.prefix = parts.count > 1 ? String(parts[1]).trimmingCharacters(in: CharacterSet(charactersIn: "/")) : ""
        self.configuration = configuration
        let endpoint: AWSEndpoint
        if let custom = configuration.endpoint {
            endpoint = try AWSEndpoint(
                url: custom, allowInsecureHTTP: configuration.allowInsecureHTTP, setting: "The S3 endpoint (s3Endpoint, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL) for \(location)",
                allowSetting: configuration.allowInsecureHTTPSetting)
            pathStyle = configuration.pathStyle ?? true
        } else {
            pathStyle = configuration.pathStyle ?? false
            endpoint = AWSEndpoint(scheme: "https", host: pathStyle ? "s3.\(configuration.region).amazonaws.com" : "\(bucket).s3.\(configuration.region).amazonaws.com")
        }
        var http = AWSHTTP(signer: SigV4Signer(credentials: credentials, region: configuration.region, service: "s3"), endpoint: endpoint)
        http.provider = "s3"
        self.http = http
    }

    func objectKey(_ key: String) -> String { prefix.isEmpty ? key : prefix + "/" + key }
    func path(_ key: String) -> String { pathStyle ? "/\(bucket)/\(objectKey(key))" : "/\(objectKey(key))" }
    var bucketPath: String { pathStyle ? "/\(bucket)" : "/" }

    // MARK: - Errors

    func failure(_ r: AWSResponse, _ what: String) -> CapstanError {
        let (code, message) = AWSHTTP.errorCode(r.body) ?? ("HTTP\(r.status)", "")
        let base: CapstanError.Code
        var hint: String?
        switch code {
        case "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken", "ExpiredToken":
            base = .auth
            hint = "Check the credentials for \(location) (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile) and the bucket's policy."
        case "NoSuchBucket":
            base = .notFound
            hint = "Create the bucket first, or fix the bucket name in \(location)."
        case "NoSuchKey", "NoSuchUpload": base = .notFound
        case "PreconditionFailed": base = .invalidRequest
        case "BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody": base = .transient
        case "SlowDown", "RequestLimitExceeded", "Throttling": base = .rateLimited
        default: base = r.status >= 500 ? .transient : (r.status == 403 ? .auth : .invalidRequest)
        }
        return CapstanError(base, "S3 refused to \(what) in \(location): \(code)\(message.isEmpty ? "" : " (\(message))").", hint: hint, provider: "s3", cloudCode: code, cloudMessage: message.isEmpty ? nil : message)
    }

    /// Creates the bucket; an existing bucket of ours is not an error.
    public func createBucket() async throws {
        var body = Data()
        if configuration.region != "us-east-1" {
            body = Data("<CreateBucketConfiguration><LocationConstraint>\(configuration.region)</LocationConstraint></CreateBucketConfiguration>".utf8)
        }
        let r = try await http.send(method: "PUT", path: pathStyle ? "/\(bucket)" : "/", body: body)
        if r.status == 200 { return }
        let e = failure(r, "create the bucket")
        if e.cloudCode == "BucketAlreadyOwnedByYou" || e.cloudCode == "BucketAlreadyExists" { return }
        throw e
    }

    // MARK: - Head, list, delete

    public func head(key: String) async throws -> ObjectInfo? {
        try ObjectKey.validate(key)
        let r = try await http.send(method: "HEAD", path: path(key))
        if r.status == 404 { return nil }
        guard r.status == 200 else { throw failure(r, "read \(key)") }
        return info(key: key, response: r)
    }

    func info(key: String, response r: AWSResponse) -> ObjectInfo {
        var metadata: [String: String] = [:]
        for (name, value) in r.headers where name.lowercased().hasPrefix("x-amz-meta-") {
            let k = String(name.lowercased().dropFirst("x-amz-meta-".count))
            if k != "capstan-sha256" { metadata[k] = value }
        }
        let size = Int64(r.header("Content-Length") ?? "") ?? 0
        let modified = r.header("Last-Modified").flatMap(Self.httpDate.date(from:))
        return ObjectInfo(key: key, size: size, sha256: r.header("x-amz-meta-capstan-sha256"), etag: r.header("ETag")?.trimmingCharacters(in: CharacterSet(charactersIn: "\"")), lastModified: modified, metadata: metadata)
    }

    static let httpDate: DateFormatter = {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return f
    }()

    public func list(prefix keyPrefix: String) async throws -> [ObjectInfo] {
        try ObjectKey.validatePrefix(keyPrefix)
        var out: [ObjectInfo] = []
        var token: String?
        let full = prefix.isEmpty ? keyPrefix : prefix + "/" + keyPrefix
        repeat {
            var query = [("list-type", "2"), ("prefix", full)]
            if let token { query.append(("continuation-token", token)) }
            let r = try await http.send(method: "GET", path: bucketPath, query: query)
            guard r.status == 200 else { throw failure(r, "list \(keyPrefix)") }
            let xml = try XMLElement.parse(r.body)
            for c in xml.all("Contents") {
                guard let k = c.value("Key") else { continue }
                let rel = prefix.isEmpty ? k : String(k.dropFirst(prefix.count + 1))
                out.append(ObjectInfo(key: rel, size: Int64(c.value("Size") ?? "") ?? 0, etag: c.value("ETag")?.trimmingCharacters(in: CharacterSet(charactersIn: "\"")), lastModified: c.value("LastModified").flatMap(AWSTimestamp.parse)))
            }
            token = xml.value("IsTruncated") == "true" ? xml.value("NextContinuationToken") : nil
        } while token != nil
        return out.sorted { $0.key < $1.key }
    }

    public func delete(key: String) async throws {
        try ObjectKey.validate(key)
        let r = try await http.send(method: "DELETE", path: path(key))
        guard r.status == 204 || r.status == 200 || r.status == 404 else { throw failure(r, "delete \(key)") }
    }

    // MARK: - Put

    public func put(file: String, key: String, options: PutOptions, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        try ObjectKey.validate(key)
        let source = try SourceFile(path: file)
        defer { source.close() }
        let digest = try source.sha256()
        if let expected = options.expectedSHA256, expected.lowercased() != digest {
            throw CapstanError(.invalidRequest, "Upload of \(file) to \(key) refused: its SHA-256 is \(digest), expected \(expected).", hint: "The file changed; write it again and retry.")
        }
        var headers: [(String, String)] = [("x-amz-meta-capstan-sha256", digest)]
        for (k, v) in options.metadata.sorted(by: { $0.key < $1.key }) { headers.append(("x-amz-meta-\(k.lowercased())", v)) }
        let partSize = max(5 << 20, options.partSize ?? configuration.partSize)
        let limiter = BandwidthLimiter(options)
        if source.size <= Int64(partSize) {
            try await limiter?.reserve(Int(source.size))
            let body = try source.read(offset: 0, count: Int(source.size))
            var h = headers
            h.append(("Content-MD5", Data(Insecure.MD5.hash(data: body)).base64EncodedString()))
            if options.ifNoneMatch { h.append(("If-None-Match", "*")) }
            let r = try await http.send(method: "PUT", path: path(key), headers: h, body: body, payloadHash: digest)
            guard r.status == 200 else { throw failure(r, "write \(key)") }
            progress?(TransferProgress(bytesDone: UInt64(source.size), bytesTotal: UInt64(source.size)))
        } else {
            if options.ifNoneMatch, try await head(key: key) != nil {
                throw CapstanError(.invalidRequest, "Object \(key) already exists in \(location) and the upload asked not to overwrite it.", provider: "s3", cloudCode: "PreconditionFailed")
            }
            try await multipart(source: source, key: key, digest: digest, headers: headers, partSize: partSize, ifNoneMatch: options.ifNoneMatch, concurrency: max(1, options.concurrency ?? configuration.concurrency), limiter: limiter, progress: progress)
        }
        guard let info = try await head(key: key) else {
            throw CapstanError(.transient, "Object \(key) is not visible in \(location) right after its upload.", hint: "Retry; the store may be eventually consistent.", provider: "s3")
        }
        return info
    }

    /// What is remembered of an unfinished multipart upload.
    struct UploadState: Codable {
        var location: String
        var key: String
        var file: String
        var size: Int64
        var sha256: String
        var partSize: Int
        var uploadID: String
        var parts: [Int: String]
    }

    func statePath(key: String, digest: String) -> String {
        let id = SigV4Signer.sha256Hex(Data("\(location)|\(key)|\(digest)".utf8)).prefix(32)
        return configuration.uploadStateFolder + "/\(id).json"
    }

    func multipart(source: SourceFile, key: String, digest: String, headers: [(String, String)], partSize: Int, ifNoneMatch: Bool, concurrency: Int, limiter: BandwidthLimiter?, progress: TransferProgressHandler?) async throws {
        let stateFile = statePath(key: key, digest: digest)
        let partCount = Int((source.size + Int64(partSize) - 1) / Int64(partSize))
        var state: UploadState
        if let data = FileManager.default.contents(atPath: stateFile), let saved = try? JSONDecoder().decode(UploadState.self, from: data),
           saved.size == source.size, saved.sha256 == digest, saved.partSize == partSize, let listed = try await listParts(key: key, uploadID: saved.uploadID) {
            // Resume: trust only parts the server still has with the same ETag.
            state = saved
            state.parts = saved.parts.filter { listed[$0.key] == $0.value }
        } else {
            let r = try await http.send(method: "POST", path: path(key), query: [("uploads", "")], headers: headers)
            guard r.status == 200, let id = try XMLElement.parse(r.body).value("UploadId") else { throw failure(r, "start an upload of \(key)") }
            state = UploadState(location: location, key: key, file: source.path, size: source.size, sha256: digest, partSize: partSize, uploadID: id, parts: [:])
        }
        try PrivateFile.createFolder(configuration.uploadStateFolder)
        let saver = UploadStateSaver(path: stateFile, state: state)
        try saver.save()

        let done = Counter64(Int64(state.parts.count) * Int64(partSize))
        let total = UInt64(source.size)
        let pending = (1...partCount).filter { state.parts[$0] == nil }
        let uploadID = state.uploadID
        try await withThrowingTaskGroup(of: (Int, String, Int).self) { group in
            var next = pending.makeIterator()
            func add() {
                guard let n = next.next() else { return }
                group.addTask {
                    let offset = Int64(n - 1) * Int64(partSize)
                    let count = Int(min(Int64(partSize), source.size - offset))
                    try await limiter?.reserve(count)
                    let body = try source.read(offset: offset, count: count)
                    let md5 = Data(Insecure.MD5.hash(data: body)).base64EncodedString()
                    // Content-MD5 guards the part; hashing it a second time (SHA-256) for the
                    // signature would cost a third pass over every byte, so the payload is unsigned.
                    let r = try await http.send(method: "PUT", path: path(key), query: [("partNumber", "\(n)"), ("uploadId", uploadID)], headers: [("Content-MD5", md5)], body: body, payloadHash: SigV4Signer.unsignedPayload)
                    guard r.status == 200, let etag = r.header("ETag") else { throw failure(r, "upload part \(n) of \(key)") }
                    return (n, etag, count)
                }
            }
            for _ in 0..<concurrency { add() }
            while let (n, etag, count) = try await group.next() {
                try saver.record(part: n, etag: etag)
                let now = done.add(Int64(count))
                progress?(TransferProgress(bytesDone: UInt64(min(Int64(total), now)), bytesTotal: total))
                add()
            }
        }
        let parts = saver.parts
        let body = "<CompleteMultipartUpload>" + (1...partCount).map { "<Part><PartNumber>\($0)</PartNumber><ETag>\(parts[$0]!.xmlEscaped)</ETag></Part>" }.joined() + "</CompleteMultipartUpload>"
        var h: [(String, String)] = []
        if ifNoneMatch { h.append(("If-None-Match", "*")) }
        let r = try await http.send(method: "POST", path: path(key), query: [("uploadId", uploadID)], headers: h, body: Data(body.utf8))
        // S3 may answer 200 with an <Error> body on Complete.
        if r.status != 200 || AWSHTTP.errorCode(r.body) != nil {
            let e = failure(r, "complete the upload of \(key)")
            if e.cloudCode == "NoSuchUpload" || e.cloudCode == "InvalidPart" { unlink(stateFile) }
            throw e
        }
        unlink(stateFile)
    }

    /// The parts the server has for an upload (number → ETag), or nil when it is gone.
    func listParts(key: String, uploadID: String) async throws -> [Int: String]? {
        var parts: [Int: String] = [:]
        var marker: String?
        repeat {
            var q = [("uploadId", uploadID)]
            if let marker { q.append(("part-number-marker", marker)) }
            let r = try await http.send(method: "GET", path: path(key), query: q)
            if r.status == 404 { return nil }
            guard r.status == 200 else { return nil }
            let xml = try XMLElement.parse(r.body)
            for p in xml.all("Part") {
                if let n = p.value("PartNumber").flatMap(Int.init), let e = p.value("ETag") { parts[n] = e }
            }
            marker = xml.value("IsTruncated") == "true" ? xml.value("NextPartNumberMarker") : nil
        } while marker != nil
        return parts
    }

    /// Aborts every unfinished upload under this store's prefix (what `capstan` runs when a
    /// job is cancelled; lifecycle rules are the belt to these braces).
    public func abortUnfinishedUploads() async throws -> Int {
        let r = try await http.send(method: "GET", path: bucketPath, query: [("uploads", ""), ("prefix", prefix)])
        guard r.status == 200 else { throw failure(r, "list unfinished uploads") }
        var n = 0
        for u in try XMLElement.parse(r.body).all("Upload") {
            guard let k = u.value("Key"), let id = u.value("UploadId") else { continue }
            let p = pathStyle ? "/\(bucket)/\(k)" : "/\(k)"
            let a = try await http.send(method: "DELETE", path: p, query: [("uploadId", id)])
            if a.status == 204 || a.status == 200 { n += 1 }
        }
        return n
    }

    // MARK: - Get

    public func get(key: String, to destination: String, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        guard let info = try await head(key: key) else {
            throw CapstanError(.notFound, "No object \(key) in \(location).", provider: "s3")
        }
        let dir = LocalPath.folder(of: destination)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tmp = dir + "/.capstan-get-" + UUID().uuidString
        let fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw CapstanError(.io, "Cannot create \(tmp): \(String(cString: strerror(errno))).") }
        var keep = false
        defer {
            close(fd)
            if !keep { unlink(tmp) }
        }
        guard ftruncate(fd, off_t(info.size)) == 0 else { throw CapstanError(.io, "Cannot size \(tmp) to \(info.size) bytes: \(String(cString: strerror(errno))).", hint: "Free disk space.") }
        let partSize = Int64(configuration.partSize)
        let count = info.size == 0 ? 0 : Int((info.size + partSize - 1) / partSize)
        let done = Counter64(0)
        let total = UInt64(info.size)
        let etag = info.etag
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = (0..<count).makeIterator()
            func add() {
                guard let i = next.next() else { return }
                group.addTask {
                    let start = Int64(i) * partSize
                    let end = min(info.size, start + partSize) - 1
                    var h = [("Range", "bytes=\(start)-\(end)")]
                    if let etag { h.append(("If-Match", "\"\(etag)\"")) }
                    let r = try await http.send(method: "GET", path: path(key), headers: h, maxResponseBytes: Int(partSize) + 1024)
                    guard r.status == 206 || (r.status == 200 && count == 1) else {
                        if r.status == 412 { throw CapstanError(.transient, "Object \(key) changed during its download.", hint: "Retry the download.", provider: "s3") }
                        throw failure(r, "read \(key)")
                    }
                    guard Int64(r.body.count) == end - start + 1 else { throw CapstanError(.transient, "Short read of \(key) bytes \(start)-\(end): got \(r.body.count).", provider: "s3") }
                    try r.body.withUnsafeBytes { raw in
                        var off = 0
                        while off < raw.count {
                            let w = pwrite(fd, raw.baseAddress! + off, raw.count - off, off_t(start) + off_t(off))
                            if w < 0 { if errno == EINTR { continue }; throw CapstanError(.io, "Cannot write \(tmp): \(String(cString: strerror(errno))).") }
                            off += w
                        }
                    }
                    let now = done.add(Int64(r.body.count))
                    progress?(TransferProgress(bytesDone: UInt64(now), bytesTotal: total))
                }
            }
            for _ in 0..<max(1, configuration.concurrency) { add() }
            while try await group.next() != nil { add() }
        }
        guard fsync(fd) == 0 else { throw CapstanError(.io, "Cannot sync \(tmp): \(String(cString: strerror(errno))).") }
        if let expected = info.sha256 {
            let actual = try SourceFile(path: tmp).withClose { try $0.sha256() }
            guard actual == expected else {
                throw CapstanError(.io, "Object \(key) in \(location) is corrupt: its SHA-256 is \(actual), the recorded one is \(expected).", hint: "Restore it from another copy; Capstan will not use it.", provider: "s3")
            }
        }
        guard rename(tmp, destination) == 0 else { throw CapstanError(.io, "Cannot move the download to \(destination): \(String(cString: strerror(errno))).") }
        keep = true
        return info
    }
}

/// A file read with `pread` from many tasks at once.
final class SourceFile: Sendable {
    let path: String
    let fd: Int32
    let size: Int64

    init(path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            if errno == ENOENT { throw CapstanError(.notFound, "No file \(path) to upload.") }
            throw CapstanError(.io, "Cannot open \(path): \(String(cString: strerror(errno))).")
        }
        var st = stat()
        fstat(fd, &st)
        size = Int64(st.st_size)
    }

    func close() { _ = Glibc.close(fd) }

    func withClose<T>(_ body: (SourceFile) throws -> T) rethrows -> T {
        defer { close() }
        return try body(self)
    }

    func read(offset: Int64, count: Int) throws -> Data {
        var data = Data(count: count)
        let n = try data.withUnsafeMutableBytes { raw -> Int in
            var got = 0
            while got < count {
                let r = pread(fd, raw.baseAddress! + got, count - got, off_t(offset) + off_t(got))
                if r < 0 { if errno == EINTR { continue }; throw CapstanError(.io, "Cannot read \(path): \(String(cString: strerror(errno))).") }
                if r == 0 { break }
                got += r
            }
            return got
        }
        guard n == count else { throw CapstanError(.io, "\(path) shrank while being read (wanted \(count) bytes at \(offset), got \(n)).", hint: "Do not modify a file while it is uploaded.") }
        return data
    }

    func sha256() throws -> String {
        var hasher = SHA256()
        let chunk = 8 << 20
        var offset: Int64 = 0
        while offset < size {
            let n = Int(min(Int64(chunk), size - offset))
            let d = try read(offset: offset, count: n)
            hasher.update(data: d)
            offset += Int64(n)
        }
        return Array(hasher.finalize()).hex
    }
}

/// A thread-safe running total.
final class Counter64: Sendable {
    private let value: LockedBox<Int64>
    init(_ v: Int64) { value = LockedBox(v) }
    func add(_ n: Int64) -> Int64 { value.withLock { $0 += n; return $0 } }
}

/// Records finished parts of a multipart upload to its state file as they complete.
final class UploadStateSaver: @unchecked Sendable {
    private let lock = NSLock()
    private let path: String
    private var state: S3ObjectStore.UploadState

    init(path: String, state: S3ObjectStore.UploadState) {
        self.path = path
        self.state = state
    }

    var parts: [Int: String] { lock.withLock { state.parts } }

    func record(part: Int, etag: String) throws {
        try lock.withLock {
            state.parts[part] = etag
            try writeLocked()
        }
    }

    func save() throws { try lock.withLock { try writeLocked() } }

    private func writeLocked() throws {
        try PrivateFile.write(JSONEncoder().encode(state), to: path)
    }
}

/// AWS timestamps (`2026-11-27T10:00:00.000Z` or without fractions), parsed with formatters
/// made once: creating an ISO8601DateFormatter per listed object or instance is costly.
enum AWSTimestamp {
    nonisolated(unsafe) static let withFractions: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()
    nonisolated(unsafe) static let plain = ISO8601DateFormatter()

    static func parse(_ s: String) -> Date? { withFractions.date(from: s) ?? plain.date(from: s) }
}
