import CapstanCore
import CapstanRuntime
import CapstanTestSupport
import Foundation
import Testing

/// GCSStore (through the gcp plugin) against a scripted Cloud Storage on a FakeHTTPServer, for
/// the answers gcp-storage-emulator never gives: an expired upload session, a 308 without
/// `Range`, a 401, a 503 on a chunk, an object without checksums.
@Suite("GCS resumable uploads against a scripted server", .serialized)
struct GCSStoreFaultTests {
    /// The scripted server: `session(n, request)` answers the n-th PUT to an upload session
    /// (nil: the object, finished); POSTs start a session; everything else is 404.
    final class FakeGCS: @unchecked Sendable {
        var server: FakeHTTPServer!
        let object: @Sendable (Int) -> [String: Any]
        let session: @Sendable (Int, FakeHTTPServer.Request) -> (Int, [(String, String)], [String: Any]?)?
        let puts = LockedBox(0)
        let posts = LockedBox(0)
        let firstStatus: Int?
        let firstCount = LockedBox(0)
        /// What a GET of the object answers (nil: 404); `landed` sets it.
        let stored = LockedBox<[String: Any]?>(nil)
        /// The last session's start (its JSON: name, metadata, checksums).
        let started = LockedBox<[String: Any]>([:])

        init(firstStatus: Int? = nil, object: @escaping @Sendable (Int) -> [String: Any], session: @escaping @Sendable (Int, FakeHTTPServer.Request) -> (Int, [(String, String)], [String: Any]?)?) throws {
            self.object = object
            self.session = session
            self.firstStatus = firstStatus
            server = try FakeHTTPServer { [unowned self] r in self.answer(r) }
        }

        static func response(_ status: Int, _ headers: [(String, String)], _ body: [String: Any]?) -> [Data] {
            let data = body.map { try! JSONSerialization.data(withJSONObject: $0) } ?? Data()
            var head = "HTTP/1.1 \(status) X\r\nContent-Length: \(data.count)\r\nConnection: close\r\n"
            if body != nil { head += "Content-Type: application/json\r\n" }
            for (k, v) in headers { head += "\(k): \(v)\r\n" }
            return [Data((head + "\r\n").utf8) + data]
        }

        func answer(_ r: FakeHTTPServer.Request) -> [Data] {
            if let s = firstStatus, firstCount.withLock({ n in n += 1; return n }) == 1 {
                return Self.response(s, [], ["error": ["code": s, "message": "scripted \(s)"]])
            }
            if r.method == "POST", r.target.contains("uploadType=resumable") {
                let n = posts.withLock { n in n += 1; return n }
                started.withLock { $0 = (try? JSONSerialization.jsonObject(with: r.body)) as? [String: Any] ?? [:] }
                return Self.response(200, [("Location", "\(server.url)/upload/session/\(n)")], nil)
            }
            if r.method == "PUT", r.target.hasPrefix("/upload/session/") {
                let n = puts.withLock { n in n += 1; return n }
                if let (status, headers, body) = session(n, r) { return Self.response(status, headers, body) }
                return Self.response(200, [], object(n))
            }
            if r.method == "GET", r.target.hasPrefix("/storage/v1/b/"), let o = stored.withLock({ $0 }) {
                return Self.response(200, [], o)
            }
            return Self.response(404, [], ["error": ["code": 404, "message": "No such object"]])
        }

        /// The object the last session started, as if it had landed (`size`, `crc32c` given).
        func land(size: Int, crc32c: String) {
            var o = started.withLock { $0 }
            o["size"] = "\(size)"
            o["crc32c"] = crc32c
            o.removeValue(forKey: "md5Hash")
            stored.withLock { $0 = o }
        }
    }

    /// CRC32C as GCS reports it (base64 of the big-endian value).
    static func crc32c(_ data: Data) -> String {
        var c: UInt32 = 0xFFFF_FFFF
        for b in data {
            c ^= UInt32(b)
            for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        }
        c ^= 0xFFFF_FFFF
        return Data([UInt8(c >> 24), UInt8((c >> 16) & 0xFF), UInt8((c >> 8) & 0xFF), UInt8(c & 0xFF)]).base64EncodedString()
    }

    static func store(_ gcp: GCPServer, _ dir: TempDir, _ fake: FakeGCS) throws -> PluginObjectStore {
        var store = try PluginObjectStore(PluginLibrary.load(path: GCPServer.pluginPath).instantiate(config: gcp.config(dir, storage: fake.server.url)), location: "gs://b/p")
        store.retry.pause = { _ in }
        return store
    }

    static func contentRanges(_ fake: FakeGCS) -> [String] {
        fake.server.requests.filter { $0.method == "PUT" }.map { $0.headers["content-range"] ?? "-" }
    }

    @Test("an expired session (404/410) or an odd status is an error, never a loop; the host's retry starts a new session")
    func expiredSession() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        dir.write("small", "hello gcs")
        let data = Data("hello gcs".utf8)
        let good: @Sendable (Int) -> [String: Any] = { _ in ["name": "p/k", "size": "\(data.count)", "crc32c": Self.crc32c(data)] }
        for status in [404, 410, 204] {
            let fake = try FakeGCS(object: good) { n, _ in n == 1 ? (status, [], nil) : nil }
            defer { fake.server.stop() }
            let info = try await Self.store(gcp, dir, fake).put(file: dir.file("small"), key: "k", options: PutOptions(), progress: nil)
            #expect(info.size == Int64(data.count))
            #expect(fake.posts.withLock { $0 } == 2 && fake.puts.withLock { $0 } == 2, "HTTP \(status): one failed session, one new")
        }
        // Every try expired: the error says so, after the host's bounded retries.
        let fake = try FakeGCS(object: good) { _, _ in (410, [], nil) }
        defer { fake.server.stop() }
        let e = await #expect(throws: CapstanError.self) { try await Self.store(gcp, dir, fake).put(file: dir.file("small"), key: "k", options: PutOptions(), progress: nil) }
        #expect(e?.message.contains("upload session of k") == true && e?.message.contains("expired") == true, "\(String(describing: e))")
        #expect(fake.puts.withLock { $0 } == 5, "one PUT per try, never a loop")
    }

    @Test("a 308 without Range keeps nothing: the chunk is sent again from byte 0")
    func rangeless308() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let data = Data("twelve bytes".utf8)
        dir.write("f", "twelve bytes")
        let fake = try FakeGCS(object: { _ in ["name": "p/k", "size": "12", "crc32c": Self.crc32c(data)] }) { n, _ in n == 1 ? (308, [], nil) : nil }
        defer { fake.server.stop() }
        _ = try await Self.store(gcp, dir, fake).put(file: dir.file("f"), key: "k", options: PutOptions(), progress: nil)
        #expect(Self.contentRanges(fake) == ["bytes 0-11/12", "bytes 0-11/12"])
    }

    @Test("the finished object must carry a CRC32C or MD5 of the file, and its size")
    func finalObjectChecked() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let data = Data("twelve bytes".utf8)
        dir.write("f", "twelve bytes")
        let cases: [([String: Any], String)] = [
            (["name": "p/k", "size": "12"], "neither a CRC32C nor an MD5"),
            (["name": "p/k", "size": "11", "crc32c": Self.crc32c(data)], "size"),
            (["name": "p/k", "size": "12", "crc32c": "AAAAAA=="], "corrupted"),
        ]
        for (object, says) in cases {
            nonisolated(unsafe) let answer = object
            let fake = try FakeGCS(object: { _ in answer }) { _, _ in nil }
            defer { fake.server.stop() }
            let e = await #expect(throws: CapstanError.self) { try await Self.store(gcp, dir, fake).put(file: dir.file("f"), key: "k", options: PutOptions(), progress: nil) }
            #expect(e?.code == .io && e?.message.contains(says) == true, "\(String(describing: e))")
        }
    }

    @Test("a 401 refreshes the token and tries once more; a 503 on a chunk resumes the same session after a `bytes */size` query")
    func reauthAndResume() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let size = 9 << 20
        try makeFile(dir.file("f"), size: size)
        let data = try Data(contentsOf: URL(fileURLWithPath: dir.file("f")))
        let first = (8 << 20) - 1
        let fake = try FakeGCS(firstStatus: 401, object: { _ in ["name": "p/k", "size": "\(size)", "crc32c": Self.crc32c(data)] }) { n, _ in
            switch n {
            case 1: (308, [("Range", "bytes=0-\(first)")], nil)
            case 2: (503, [], ["error": ["code": 503, "message": "backend"]])
            case 3: (308, [("Range", "bytes=0-\(first)")], nil)
            default: nil
            }
        }
        defer { fake.server.stop() }
        let tokens = (try await gcp.server.admin("state")["counters"] as? [String: Int])?["tokens"] ?? 0
        let info = try await Self.store(gcp, dir, fake).put(file: dir.file("f"), key: "k", options: PutOptions(), progress: nil)
        #expect(info.size == Int64(size))
        #expect(fake.posts.withLock { $0 } == 1, "one session")
        #expect(Self.contentRanges(fake) == ["bytes 0-\(first)/\(size)", "bytes \(first + 1)-\(size - 1)/\(size)", "bytes */\(size)", "bytes \(first + 1)-\(size - 1)/\(size)"])
        let after = (try await gcp.server.admin("state")["counters"] as? [String: Int])?["tokens"] ?? 0
        #expect(after == tokens + 2, "the 401 fetched a fresh token")
    }

    @Test("a retried no-overwrite put that finds its own earlier try's object (same SHA-256) succeeds; a different object stays PreconditionFailed")
    func retriedPutFindsItsObject() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let data = Data("twelve bytes".utf8)
        dir.write("f", "twelve bytes")
        let box = LockedBox<FakeGCS?>(nil)
        // The first try's last chunk lands, but its answer is lost (the session then says 410).
        let fake = try FakeGCS(object: { _ in [:] }) { _, _ in
            box.withLock { $0 }?.land(size: 12, crc32c: Self.crc32c(data))
            return (410, [], nil)
        }
        defer { fake.server.stop() }
        box.withLock { $0 = fake }
        let info = try await Self.store(gcp, dir, fake).put(file: dir.file("f"), key: "k", options: PutOptions(ifNoneMatch: true), progress: nil)
        #expect(info.size == 12 && info.sha256?.count == 64)
        #expect(fake.posts.withLock { $0 } == 1, "the second try found the object and did not upload again")

        // Someone else's object under the key: still PreconditionFailed.
        dir.write("g", "other bytes!")
        let e = await #expect(throws: CapstanError.self) { try await Self.store(gcp, dir, fake).put(file: dir.file("g"), key: "k", options: PutOptions(ifNoneMatch: true), progress: nil) }
        #expect(e?.cloudCode == "PreconditionFailed")
    }
}
