import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing

/// A store that serves any key it is asked for, by writing a payload wherever the caller says:
/// what a store without a key check of its own (another plugin, a bug) would do. Records every
/// `get`.
final class PermissiveStore: ObjectStore, @unchecked Sendable {
    let inner: any ObjectStore
    let lock = NSLock()
    private(set) var gets: [String] = []
    var location: String { inner.location }
    init(_ inner: any ObjectStore) { self.inner = inner }

    func put(file path: String, key: String, options: PutOptions, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        try await inner.put(file: path, key: key, options: options, progress: progress)
    }
    func get(key: String, to path: String, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        lock.withLock { gets.append(key) }
        if (try? await inner.head(key: key)) != nil { return try await inner.get(key: key, to: path, progress: progress) }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data("planted".utf8).write(to: URL(fileURLWithPath: path))
        return ObjectInfo(key: key, size: 7, sha256: CheckpointPathTests.plantedSHA)
    }
    func list(prefix: String) async throws -> [ObjectInfo] { try await inner.list(prefix: prefix) }
    func head(key: String) async throws -> ObjectInfo? {
        if let info = try? await inner.head(key: key) { return info }
        return ObjectInfo(key: key, size: 7, sha256: CheckpointPathTests.plantedSHA)
    }
    func delete(key: String) async throws { try await inner.delete(key: key) }
}

@Suite("Checkpoint manifests: a path that could leave the restore folder refuses the checkpoint")
struct CheckpointPathTests {
    /// SHA-256 of "planted".
    static let plantedSHA = "372eb3774802a8d97badd0f3afdabbf7a17ef8a1f900b394db99a460b893406c"

    /// A bucket with a real step-10 checkpoint, then a step-20 manifest listing `path` (as a
    /// crafted or damaged manifest would), both put through the store as Capstan puts them.
    func bucket(_ dir: TempDir, path: String) async throws -> (FileObjectStore, CheckpointManifest) {
        let store = try FileObjectStore(root: dir.file("bucket"))
        let cs = CheckpointStore(store: store, prefix: "jobs/j1/checkpoints")
        dir.write("node0/step-10/model.bin", "weights")
        dir.write("node0/step-10/.done", "")
        try await cs.uploadPart(folder: dir.file("node0/step-10"), step: 10, node: 0)
        let real = try #require(try await cs.commit(step: 10, job: "j1", attempt: 1, nodes: 1))
        // Step 20: step 10's manifest with a second file whose path is `path`.
        var manifest = real
        manifest.step = 20
        var planted = manifest.parts[0].files[0]
        planted.path = path
        planted.size = 7
        planted.sha256 = Self.plantedSHA
        manifest.parts[0].files[0].sha256 = Self.plantedSHA
        manifest.parts[0].files.append(planted)
        dir.write("manifest.json", String(decoding: try PluginWire.encoder.encode(manifest), as: UTF8.self))
        _ = try await store.put(file: dir.file("manifest.json"), key: "jobs/j1/checkpoints/step-20/manifest.json")
        return (store, manifest)
    }

    @Test("restore refuses the whole checkpoint as corrupt, before downloading anything, whatever the store", arguments: [
        ("../../etc/x", "has a '..' path segment"), ("/etc/x", "is absolute"), ("a/./b", "has a '.' path segment"),
        ("a//b", "has an empty path segment"), ("sub/", "has an empty path segment"), ("", "is empty"), ("a\u{0}b", "contains a NUL byte"),
        ("..", "has a '..' path segment"),
    ] as [(String, String)])
    func restoreRefuses(path: String, why: String) async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let (files, manifest) = try await bucket(dir, path: path)
        let into = dir.file("n/o/d/e/resume")
        try FileManager.default.createDirectory(atPath: into, withIntermediateDirectories: true)
        let permissive = PermissiveStore(files)
        for store in [permissive as any ObjectStore, files] {
            let cs = CheckpointStore(store: store, prefix: "jobs/j1/checkpoints")
            let bad = await #expect(throws: CorruptCheckpoint.self) { try await cs.restore(manifest, node: 0, into: into) }
            #expect(bad?.step == 20 && bad?.reason.contains(why) == true && bad?.reason.contains("the whole checkpoint is refused") == true, "\(String(describing: bad))")
        }
        #expect(permissive.gets.isEmpty, "downloaded \(permissive.gets) before refusing")
        #expect(!FileManager.default.fileExists(atPath: dir.file("n/o/d/etc/x")) && !FileManager.default.fileExists(atPath: "/etc/x"))
        #expect((try? FileManager.default.contentsOfDirectory(atPath: into)) == [])
    }

    @Test("a crafted manifest never verifies: verified() says corrupt, --verify says why, the previous checkpoint is used")
    func neverVerifies() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let (files, _) = try await bucket(dir, path: "../../../outside.txt")
        for store in [PermissiveStore(files) as any ObjectStore, files] {
            let cs = CheckpointStore(store: store, prefix: "jobs/j1/checkpoints")
            let bad = await #expect(throws: CorruptCheckpoint.self) { try await cs.verified(step: 20) }
            #expect(bad?.reason.contains("'../../../outside.txt' for node 0, which has a '..' path segment") == true, "\(String(describing: bad))")
            #expect(try await cs.latestVerified()?.step == 10)
            let check = try await cs.check(step: 20, scratch: dir.file("scratch"))
            #expect(!check.ok && check.reason?.contains("'..' path segment") == true, "\(check)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir.file("outside.txt")))
    }

    @Test("a clean manifest still restores (nested paths, dots inside names)")
    func cleanPathsRestore() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try FileObjectStore(root: dir.file("bucket"))
        let cs = CheckpointStore(store: store, prefix: "ck")
        dir.write("s/step-5/optim/shard..0.pt", "a")
        dir.write("s/step-5/.hidden/model.v1.bin", "b")
        dir.write("s/step-5/.done", "")
        try await cs.uploadPart(folder: dir.file("s/step-5"), step: 5, node: 0)
        let m = try #require(try await cs.commit(step: 5, job: "j", attempt: 1, nodes: 1))
        try await cs.restore(m, node: 0, into: dir.file("r"))
        #expect(try String(contentsOfFile: dir.file("r/optim/shard..0.pt"), encoding: .utf8) == "a")
        #expect(try String(contentsOfFile: dir.file("r/.hidden/model.v1.bin"), encoding: .utf8) == "b")
    }
}
