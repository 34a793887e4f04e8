public import CapstanCore
import Crypto
public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// CRC32C (Castagnoli), as Cloud Storage reports an object's `crc32c` (big-endian, base64).
struct CRC32C {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }
    private(set) var value: UInt32 = 0xFFFF_FFFF

    mutating func update(_ data: Data) {
        var c = value
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            for b in raw { c = Self.table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        }
        value = c
    }

    /// The checksum as GCS writes it: base64 of the 4 big-endian bytes.
    var base64: String {
        let v = value ^ 0xFFFF_FFFF
        return Data([UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]).base64EncodedString()
    }
}

/// A `gs://bucket/prefix` store on Cloud Storage's JSON API: resumable uploads in 8 MiB chunks
/// (multiples of 256 KiB), `ifGenerationMatch=0` for a put that must not overwrite, the object's
/// CRC32C and MD5 checked against the file's after the upload and after every download, and
/// Capstan's SHA-256 kept in the object's metadata (`capstan-sha256`).
public struct GCSStore: ObjectStore {
    public let location: String
    let bucket: String
    let prefix: String
    let base: String
    let auth: GCPTokenSource
    static let chunk = 8 << 20

    public init(location: String, base: String, auth: GCPTokenSource, allowInsecureHTTP: Bool) throws {
        guard location.hasPrefix("gs://") else {
            throw CapstanError(.invalidRequest, "'\(location)' is not a gs:// bucket URI.", hint: "Use gs://BUCKET or gs://BUCKET/PREFIX.", provider: "gcp")
        }
        let rest = location.dropFirst(5).split(separator: "/", maxSplits: 1).map(String.init)
        guard let b = rest.first, !b.isEmpty else {
            throw CapstanError(.invalidRequest, "'\(location)' names no bucket.", hint: "Use gs://BUCKET or gs://BUCKET/PREFIX.", provider: "gcp")
        }
        try CloudHTTP.checkEndpoint(base, setting: "providers.gcp.storageEndpoint", allowInsecureHTTP: allowInsecureHTTP)
        self.location = location
        bucket = b
        prefix = rest.count > 1 ? rest[1].hasSuffix("/") ? rest[1] : rest[1] + "/" : ""
        self.base = base
        self.auth = auth
    }

    static func enc(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-_.~")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    /// Tries of one request on 429/5xx/a dropped connection (the last failure is thrown), and
    /// the longest `Retry-After` honoured between them.
    static let tries = 4
    static let maxRetryAfter = 10.0

    /// One request with the token: a 401 drops the cached token and tries once more with a
    /// fresh one; 429, 5xx and connection failures are tried `tries` times with backoff (a
    /// `Retry-After` capped at `maxRetryAfter`) unless `retry` is false. 2xx/3xx, 404, 412 and
    /// `pass` are answered; every other status throws.
    func send(_ method: String, _ url: String, headers: [(String, String)] = [], body: Data? = nil, what: String, pass: Set<Int> = [], retry: Bool = true) async throws -> CloudHTTPResponse {
        var attempt = 0, reauthorized = false
        while true {
            attempt += 1
            do {
                return try await sendOnce(method, url, headers: headers, body: body, what: what, pass: pass)
            } catch let e as CapstanError where e.code == .auth && e.cloudCode == "HTTP 401" && !reauthorized {
                reauthorized = true
                attempt -= 1
                await auth.invalidate()
            } catch let e as CapstanError where (e.code == .rateLimited || e.code == .transient) && retry && attempt < Self.tries {
                let wait = e.retryAfterSeconds.map { min($0, Self.maxRetryAfter) } ?? 0.2 * Double(1 << attempt)
                try await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
            }
        }
    }

    func sendOnce(_ method: String, _ url: String, headers: [(String, String)], body: Data?, what: String, pass: Set<Int>) async throws -> CloudHTTPResponse {
        let token = try await auth.accessToken()
        let r = try await CloudHTTP.send(method, url, headers: [("Authorization", "Bearer \(token)")] + headers, body: body, provider: "gcp")
        switch r.status {
        case 200..<400, 404, 412: return r
        case _ where pass.contains(r.status): return r
        default:
            let e = r.json?["error"] as? [String: Any]
            let message = e?["message"] as? String ?? "HTTP \(r.status)"
            let text = "Cloud Storage could not \(what) in \(location): \(message)"
            switch r.status {
            case 429: throw CapstanError(.rateLimited, text, provider: "gcp", retryAfterSeconds: r.retryAfterSeconds ?? 1, cloudCode: "HTTP 429")
            case 401, 403: throw CapstanError(.auth, text, hint: "Grant the service account roles/storage.objectAdmin on gs://\(bucket).", provider: "gcp", cloudCode: "HTTP \(r.status)", cloudMessage: message)
            case 500...: throw CapstanError(.transient, text, provider: "gcp", retryAfterSeconds: r.retryAfterSeconds, cloudCode: "HTTP \(r.status)")
            default: throw CapstanError(.invalidRequest, text, provider: "gcp", cloudCode: "HTTP \(r.status)", cloudMessage: message)
            }
        }
    }

    /// The bytes a resumable session holds after a 308: `Range: bytes=0-N` is N+1; no `Range`
    /// is none.
    static func kept(_ range: String?) -> Int64 {
        range.flatMap { Int64($0.split(separator: "-").last ?? "") }.map { $0 + 1 } ?? 0
    }

    func info(_ o: [String: Any]) -> ObjectInfo {
        let name = o["name"] as? String ?? ""
        var metadata = o["metadata"] as? [String: String] ?? [:]
        let sha = metadata.removeValue(forKey: "capstan-sha256")
        let size = Int64(o["size"] as? String ?? "") ?? Int64(o["size"] as? Int ?? 0)
        let updated = (o["updated"] as? String).flatMap { ISO8601DateFormatter.withFractions.date(from: $0) ?? ISO8601DateFormatter().date(from: $0) }
        return ObjectInfo(key: String(name.dropFirst(prefix.count)), size: size, sha256: sha, etag: o["md5Hash"] as? String, lastModified: updated, metadata: metadata)
    }

    public func put(file path: String, key: String, options: PutOptions, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        try ObjectKey.validate(key)
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CapstanError(.io, "Cannot read \(path) to upload it.", hint: "Check the file exists and is readable.")
        }
        defer { try? handle.close() }
        // The file's digests first (one pass), so the upload can be checked end to end.
        var sha = SHA256(), md5 = Insecure.MD5(), crc = CRC32C()
        var size: Int64 = 0
        while let d = try handle.read(upToCount: Self.chunk), !d.isEmpty {
            sha.update(data: d); md5.update(data: d); crc.update(d)
            size += Int64(d.count)
        }
        let digest = sha.finalize().map { String(format: "%02x", $0) }.joined()
        if let expected = options.expectedSHA256, expected != digest {
            throw CapstanError(.io, "\(path) changed before its upload (SHA-256 \(digest), expected \(expected)).", hint: "Do not modify a file while it is uploaded.")
        }
        let md5b64 = Data(md5.finalize()).base64EncodedString()
        let name = prefix + key
        var url = "\(base)/upload/storage/v1/b/\(Self.enc(bucket))/o?uploadType=resumable&name=\(Self.enc(name))"
        if options.ifNoneMatch {
            url += "&ifGenerationMatch=0"
            if try await head(key: key) != nil { throw exists(key) }
        }
        var metadata = options.metadata
        metadata["capstan-sha256"] = digest
        let start = try await send("POST", url, headers: [("Content-Type", "application/json"), ("X-Upload-Content-Length", "\(size)")], body: CloudHTTP.json(["name": name, "metadata": metadata, "md5Hash": md5b64, "crc32c": crc.base64]), what: "start the upload of \(key)")
        if start.status == 412 { throw exists(key) }
        guard start.status == 200 || start.status == 201, let session = start.header("Location") else {
            if start.status == 404 { throw CapstanError(.notFound, "No bucket gs://\(bucket) to upload \(key) to.", hint: "Create it (gcloud storage buckets create gs://\(bucket)).", provider: "gcp") }
            throw CapstanError(.transient, "Cloud Storage started no upload session for \(key) (HTTP \(start.status)\(start.header("Location") == nil ? ", no Location header" : "")).", provider: "gcp")
        }
        // The chunks: 308 with Range for all but the last; the last answers the object (200/201).
        // A chunk that fails is not sent again blindly: the session is asked what it holds
        // (`bytes */size`) and the upload goes on from there.
        var offset: Int64 = 0
        var object: [String: Any]?
        var failures = 0, stalls = 0  // chunks that failed; 308s that kept nothing new
        var query = false
        while object == nil {
            let d: Data
            if query || offset >= size {
                d = Data()
            } else {
                try handle.seek(toOffset: UInt64(offset))
                d = try handle.read(upToCount: Self.chunk) ?? Data()
            }
            let end = offset + Int64(d.count)
            let range = d.isEmpty ? "bytes */\(size)" : "bytes \(offset)-\(end - 1)/\(size)"
            let r: CloudHTTPResponse
            do {
                r = try await send("PUT", session, headers: [("Content-Range", range)], body: d, what: "upload \(key)", pass: [410], retry: query)
            } catch let e as CapstanError where (e.code == .transient || e.code == .rateLimited) && !query && failures < Self.tries {
                failures += 1
                query = true
                continue
            }
            query = false
            switch r.status {
            case 200, 201:
                guard let doc = r.json else {
                    throw CapstanError(.transient, "Cloud Storage finished the upload of \(key) to \(location) but answered no object (HTTP \(r.status)).", hint: "Upload it again.", provider: "gcp")
                }
                object = doc
                offset = size
            case 308:
                let have = Self.kept(r.header("Range"))
                guard have <= size else {
                    throw CapstanError(.transient, "Cloud Storage says it holds \(have) bytes of \(key), more than the file's \(size).", hint: "Upload it again.", provider: "gcp")
                }
                if have <= offset { stalls += 1 }  // no progress: bounded, never a loop
                if stalls > Self.tries {
                    throw CapstanError(.transient, "Cloud Storage did not finish the upload of \(key) to \(location): it holds \(have) of \(size) bytes and takes no more.", hint: "Upload it again.", provider: "gcp")
                }
                offset = have
            case 412:
                throw exists(key)
            case 404, 410:
                throw CapstanError(.transient, "The upload session of \(key) to \(location) has expired or was cancelled (HTTP \(r.status)); the object was not written.", hint: "Upload it again (a new session starts).", provider: "gcp", cloudCode: "HTTP \(r.status)")
            default:
                throw CapstanError(.transient, "Cloud Storage answered HTTP \(r.status) to a chunk of \(key)'s upload to \(location), neither the object (200/201) nor the bytes it holds (308).", hint: "Upload it again.", provider: "gcp", cloudCode: "HTTP \(r.status)")
            }
            progress?(TransferProgress(bytesDone: UInt64(offset), bytesTotal: UInt64(size)))
        }
        guard let object else { throw CapstanError(.transient, "Cloud Storage did not finish the upload of \(key).", provider: "gcp") }
        // End to end: what the bucket holds must be what the file held.
        let gotCRC = object["crc32c"] as? String, gotMD5 = object["md5Hash"] as? String
        guard gotCRC != nil || gotMD5 != nil else {
            throw CapstanError(.io, "Cloud Storage's object \(key) in \(location) carries neither a CRC32C nor an MD5, so its upload cannot be checked.", hint: "Upload it again; check providers.gcp.storageEndpoint is Cloud Storage.", provider: "gcp")
        }
        if let got = gotCRC, got != crc.base64 {
            throw CapstanError(.io, "The upload of \(key) to \(location) arrived corrupted (CRC32C \(got), the file's \(crc.base64)).", hint: "Upload it again.")
        }
        if let got = gotMD5, got != md5b64 {
            throw CapstanError(.io, "The upload of \(key) to \(location) arrived corrupted (MD5 \(got), the file's \(md5b64)).", hint: "Upload it again.")
        }
        let gotSize = Int64(object["size"] as? String ?? "") ?? (object["size"] as? Int).map(Int64.init)
        if gotSize != size {
            throw CapstanError(.io, "The upload of \(key) to \(location) arrived with \(gotSize.map(String.init) ?? "no") size, the file's is \(size) bytes.", hint: "Upload it again.")
        }
        var out = info(object)
        out.sha256 = out.sha256 ?? digest
        return out
    }

    func exists(_ key: String) -> CapstanError {
        CapstanError(.invalidRequest, "Object \(key) already exists in \(location) and the upload asked not to overwrite it.", provider: "gcp", cloudCode: "PreconditionFailed")
    }

    public func get(key: String, to path: String, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        guard let meta = try await headRaw(key: key) else {
            throw CapstanError(.notFound, "No object \(key) in \(location).", provider: "gcp")
        }
        let object = info(meta)
        let tmp = path + ".capstan-part"
        guard FileManager.default.createFile(atPath: tmp, contents: nil), let out = FileHandle(forWritingAtPath: tmp) else {
            throw CapstanError(.io, "Cannot write \(tmp).", hint: "Check the folder exists and is writable.")
        }
        var sha = SHA256(), md5 = Insecure.MD5(), crc = CRC32C()
        var offset: Int64 = 0
        do {
            defer { try? out.close() }
            let url = "\(base)/storage/v1/b/\(Self.enc(bucket))/o/\(Self.enc(prefix + key))?alt=media"
            while offset < object.size {
                let end = min(offset + Int64(Self.chunk), object.size) - 1
                let r = try await send("GET", url, headers: [("Range", "bytes=\(offset)-\(end)")], what: "download \(key)")
                guard r.status == 200 || r.status == 206, !r.body.isEmpty else {
                    throw CapstanError(.transient, "Cloud Storage answered HTTP \(r.status) for bytes \(offset)-\(end) of \(key).", provider: "gcp")
                }
                try out.write(contentsOf: r.body)
                sha.update(data: r.body); md5.update(data: r.body); crc.update(r.body)
                offset += Int64(r.body.count)
                progress?(TransferProgress(bytesDone: UInt64(offset), bytesTotal: UInt64(object.size)))
            }
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
        let digest = sha.finalize().map { String(format: "%02x", $0) }.joined()
        let problems = [
            (meta["crc32c"] as? String).flatMap { $0 != crc.base64 ? "CRC32C" : nil },
            (meta["md5Hash"] as? String).flatMap { $0 != Data(md5.finalize()).base64EncodedString() ? "MD5" : nil },
            object.sha256.flatMap { $0 != digest ? "SHA-256" : nil },
        ].compactMap { $0 }
        if !problems.isEmpty {
            try? FileManager.default.removeItem(atPath: tmp)
            throw CapstanError(.io, "The download of \(key) from \(location) does not match the object's \(problems.joined(separator: ", ")).", hint: "Download it again; if it persists, the object is corrupt.")
        }
        if rename(tmp, path) != 0 {
            try? FileManager.default.removeItem(atPath: tmp)
            throw CapstanError(.io, "Cannot move the download of \(key) to \(path).")
        }
        return object
    }

    public func list(prefix p: String) async throws -> [ObjectInfo] {
        var out: [ObjectInfo] = []
        var token: String?
        repeat {
            var url = "\(base)/storage/v1/b/\(Self.enc(bucket))/o?prefix=\(Self.enc(prefix + p))"
            if let token { url += "&pageToken=\(Self.enc(token))" }
            let r = try await send("GET", url, what: "list \(p)")
            if r.status == 404 { throw CapstanError(.notFound, "No bucket gs://\(bucket).", hint: "Create it (gcloud storage buckets create gs://\(bucket)).", provider: "gcp") }
            let doc = r.json ?? [:]
            out += (doc["items"] as? [[String: Any]] ?? []).map(info)
            token = doc["nextPageToken"] as? String
        } while token != nil
        return out.sorted { $0.key < $1.key }
    }

    func headRaw(key: String) async throws -> [String: Any]? {
        try ObjectKey.validate(key)
        let r = try await send("GET", "\(base)/storage/v1/b/\(Self.enc(bucket))/o/\(Self.enc(prefix + key))", what: "read \(key)")
        return r.status == 404 ? nil : r.json
    }

    public func head(key: String) async throws -> ObjectInfo? {
        try await headRaw(key: key).map(info)
    }

    public func delete(key: String) async throws {
        try ObjectKey.validate(key)
        _ = try await send("DELETE", "\(base)/storage/v1/b/\(Self.enc(bucket))/o/\(Self.enc(prefix + key))", what: "delete \(key)")
    }
}

extension ISO8601DateFormatter {
    nonisolated(unsafe) static let withFractions: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()
}
