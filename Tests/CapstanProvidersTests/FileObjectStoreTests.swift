import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
import Testing

@Suite("File object store")
struct FileObjectStoreTests {
    @Test("put, head, get, list and delete with S3 semantics")
    func roundTrip() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let store = try FileObjectStore(location: "file://" + tmp.file("bucket"))
        #expect(store.location == "file://" + tmp.file("bucket"))
        let src = tmp.write("src.txt", "hello checkpoint")
        let info = try await store.put(file: src, key: "jobs/j1/step-10/model.bin", options: PutOptions(metadata: ["step": "10"]))
        #expect(info.size == 16)
        let head = try await store.head(key: "jobs/j1/step-10/model.bin")
        #expect(head?.sha256 == info.sha256)
        #expect(head?.metadata == ["step": "10"])
        #expect(try await store.head(key: "jobs/j1/missing") == nil)

        _ = try await store.put(file: src, key: "jobs/j1/step-20/model.bin")
        _ = try await store.put(file: src, key: "jobs/j2/step-10/model.bin")
        _ = try await store.put(file: src, key: "jobs/j10/x")
        #expect(try await store.list(prefix: "jobs/j1/").map(\.key) == ["jobs/j1/step-10/model.bin", "jobs/j1/step-20/model.bin"])
        #expect(try await store.list(prefix: "jobs/j1").map(\.key) == ["jobs/j1/step-10/model.bin", "jobs/j1/step-20/model.bin", "jobs/j10/x"])
        #expect(try await store.list(prefix: "").count == 4)
        #expect(try await store.list(prefix: "nothing/").isEmpty)

        let out = tmp.file("restore/model.bin")
        let got = try await store.get(key: "jobs/j1/step-10/model.bin", to: out)
        #expect(got.sha256 == info.sha256)
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "hello checkpoint")

        try await store.delete(key: "jobs/j1/step-10/model.bin")
        try await store.delete(key: "jobs/j1/step-10/model.bin")  // idempotent
        #expect(try await store.head(key: "jobs/j1/step-10/model.bin") == nil)
        #expect(!FileManager.default.fileExists(atPath: tmp.file("bucket/jobs/j1/step-10")))
    }

    @Test("the recorded checksum is the file's SHA-256")
    func checksum() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let store = try FileObjectStore(root: tmp.file("bucket"))
        let info = try await store.put(file: tmp.write("a", "abc"), key: "a")
        #expect(info.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test("a corrupt object is refused on get and the destination is untouched")
    func corrupt() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let store = try FileObjectStore(root: tmp.file("bucket"))
        _ = try await store.put(file: tmp.write("a", "original"), key: "k")
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: tmp.file("bucket/k")))
        let dest = tmp.write("dest", "keep me")
        let e = await #expect(throws: CapstanError.self) { try await store.get(key: "k", to: dest) }
        #expect(e?.message.contains("corrupt") == true)
        #expect(try String(contentsOfFile: dest, encoding: .utf8) == "keep me")
    }

    @Test("conditional create refuses to overwrite; expected checksum guards the upload")
    func conditional() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let store = try FileObjectStore(root: tmp.file("bucket"))
        let a = tmp.write("a", "one")
        _ = try await store.put(file: a, key: "manifest.json", options: PutOptions(ifNoneMatch: true))
        let e = await #expect(throws: CapstanError.self) {
            try await store.put(file: tmp.write("b", "two"), key: "manifest.json", options: PutOptions(ifNoneMatch: true))
        }
        #expect(e?.cloudCode == "PreconditionFailed")
        let got = tmp.file("got")
        _ = try await store.get(key: "manifest.json", to: got)
        #expect(try String(contentsOfFile: got, encoding: .utf8) == "one")
        await #expect(throws: CapstanError.self) {
            try await store.put(file: a, key: "other", options: PutOptions(expectedSHA256: String(repeating: "0", count: 64)))
        }
        #expect(try await store.head(key: "other") == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: tmp.file("bucket/.capstan-tmp")).isEmpty)
    }

    @Test("bad keys and missing files are clear errors", arguments: ["", "/abs", "a//b", "a/../b", "./a", ".capstan-meta/x"])
    func badKeys(key: String) async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let store = try FileObjectStore(root: tmp.file("bucket"))
        let e = await #expect(throws: CapstanError.self) { try await store.put(file: tmp.write("a", "x"), key: key) }
        #expect(e?.code == .invalidRequest)
        let d = await #expect(throws: CapstanError.self) { try await store.delete(key: key) }
        #expect(d?.code == .invalidRequest)
    }

    @Test("delete never reaches the store's own records: an object's checksum record stays")
    func deleteSparesRecords() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let store = try FileObjectStore(root: tmp.file("bucket"))
        let put = try await store.put(file: tmp.write("a", "payload"), key: "top.txt")
        await #expect(throws: CapstanError.self) { try await store.delete(key: ".capstan-meta/top.txt.json") }
        #expect(try await store.head(key: "top.txt")?.sha256 == put.sha256 && put.sha256 != nil)
    }

    @Test("'..' in a key, a list prefix or the root is refused on every operation, before any I/O", arguments: ["..", "../victim.txt", "a/../../victim.txt", "./victim.txt", "a/./b", "a\0b"])
    func dotDotKeys(key: String) async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let victim = tmp.write("victim.txt", "keep me")
        let store = try FileObjectStore(root: tmp.file("bucket"))
        let src = tmp.write("src", "payload")
        let errors: [CapstanError?] = [
            await #expect(throws: CapstanError.self) { try await store.put(file: src, key: key) },
            await #expect(throws: CapstanError.self) { try await store.get(key: key, to: tmp.file("out")) },
            await #expect(throws: CapstanError.self) { try await store.head(key: key) },
            await #expect(throws: CapstanError.self) { try await store.delete(key: key) },
            await #expect(throws: CapstanError.self) { try await store.list(prefix: key) },
            await #expect(throws: CapstanError.self) { try await store.list(prefix: key + "/") },
        ]
        #expect(errors.allSatisfy { $0?.code == .invalidRequest && ($0?.message.contains("segment") == true || $0?.message.contains("NUL") == true) }, "\(errors)")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep me")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("out")))
    }

    @Test("a bucket root with '.' or '..' segments is refused, not resolved", arguments: ["bucket/..", "bucket/../elsewhere", "./bucket", "bucket/."])
    func dotDotRoot(root: String) {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let e = #expect(throws: CapstanError.self) { try FileObjectStore(root: tmp.path + "/" + root) }
        #expect(e?.code == .invalidRequest)
        #expect(e?.message.contains("Invalid bucket URI") == true, "\(e?.message ?? "")")
        #expect(!FileManager.default.fileExists(atPath: tmp.file(".capstan-tmp")))
        #expect(!FileManager.default.fileExists(atPath: tmp.file("elsewhere")))
    }

    @Test("a symbolic link inside the bucket cannot carry a put, get, head, list or delete out of it")
    func symlinkContainment() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let secret = tmp.write("outside/secret.txt", "keep me")
        let store = try FileObjectStore(root: tmp.file("bucket"))
        _ = try await store.put(file: tmp.write("src", "payload"), key: "inside/ok.txt")
        try FileManager.default.createSymbolicLink(atPath: tmp.file("bucket/link"), withDestinationPath: tmp.file("outside"))
        try FileManager.default.createSymbolicLink(atPath: tmp.file("bucket/inside/alias.txt"), withDestinationPath: secret)

        let errors: [CapstanError?] = [
            await #expect(throws: CapstanError.self) { try await store.put(file: tmp.file("src"), key: "link/new.txt") },
            await #expect(throws: CapstanError.self) { try await store.get(key: "link/secret.txt", to: tmp.file("out")) },
            await #expect(throws: CapstanError.self) { try await store.get(key: "inside/alias.txt", to: tmp.file("out")) },
            await #expect(throws: CapstanError.self) { try await store.head(key: "link/secret.txt") },
            await #expect(throws: CapstanError.self) { try await store.delete(key: "link/secret.txt") },
            await #expect(throws: CapstanError.self) { try await store.list(prefix: "link/") },
        ]
        #expect(errors.allSatisfy { $0?.code == .invalidRequest && $0?.message.contains("outside the bucket") == true }, "\(errors)")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("outside/new.txt")))
        #expect(!FileManager.default.fileExists(atPath: tmp.file("out")))
        #expect(try String(contentsOfFile: secret, encoding: .utf8) == "keep me")
        // What is really in the bucket still works.
        #expect(try await store.list(prefix: "inside/").map(\.key) == ["inside/ok.txt"])
        try await store.delete(key: "inside/ok.txt")
        #expect(try await store.head(key: "inside/ok.txt") == nil)
    }

    @Test("uploading a missing file or getting a missing key is notFound")
    func missing() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let store = try FileObjectStore(root: tmp.file("bucket"))
        let e1 = await #expect(throws: CapstanError.self) { try await store.put(file: tmp.file("nope"), key: "k") }
        #expect(e1?.code == .notFound)
        let e2 = await #expect(throws: CapstanError.self) { try await store.get(key: "k", to: tmp.file("out")) }
        #expect(e2?.code == .notFound)
    }

    @Test("large files stream with progress and verify")
    func large() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        var store = try FileObjectStore(root: tmp.file("bucket"))
        store.bufferSize = 1 << 20
        let src = tmp.file("big")
        let chunk = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        _ = FileManager.default.createFile(atPath: src, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: src))
        for _ in 0..<20 { h.write(chunk) }
        try h.close()
        let seen = ProgressLog()
        let info = try await store.put(file: src, key: "big", options: .init(), progress: { seen.add($0) })
        #expect(info.size == 20 << 20)
        #expect(seen.count == 20)
        #expect(seen.last?.bytesDone == 20 << 20 && seen.last?.bytesTotal == 20 << 20)
        let out = tmp.file("big.out")
        let got = try await store.get(key: "big", to: out)
        #expect(got.sha256 == info.sha256)
    }
}

final class ProgressLog: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [TransferProgress] = []
    func add(_ p: TransferProgress) { lock.withLock { items.append(p) } }
    var count: Int { lock.withLock { items.count } }
    var last: TransferProgress? { lock.withLock { items.last } }
}
