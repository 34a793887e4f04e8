import CapstanCore
import CapstanRuntime
import Foundation
import Testing

/// A cluster's SSH key pair: its own, by cluster id, gone with the cluster.
@Suite("Cluster keys")
struct ClusterKeysTests {
    func temp() -> String {
        let p = NSTemporaryDirectory() + "capstan-keys-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    func node(_ cluster: Cluster) -> Instance {
        Instance(id: "i-1", provider: "sim", instanceType: "t", region: "r", state: .running,
                 tags: [CapstanTags.cluster: cluster.name, CapstanTags.clusterID: cluster.id])
    }

    @Test("two clusters of one name get two key pairs, kept by cluster id; remove deletes the pair and its known_hosts")
    func perCluster() async throws {
        guard Spawn.which("ssh-keygen") != nil else { return }
        let root = temp()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let keys = ClusterKeys(folder: root)
        let a = Cluster(name: "train", request: ResourceRequest(nodes: 1)), b = Cluster(name: "train", request: ResourceRequest(nodes: 1))
        let pubA = try await keys.publicKey(for: a)
        await #expect(try keys.publicKey(for: a) == pubA)  // the same cluster: the same key
        #expect(keys.folder(for: node(a)) == root + "/" + a.id)
        FileManager.default.createFile(atPath: keys.folder(clusterID: a.id) + "/known_hosts", contents: Data("10.0.0.5 ssh-ed25519 AAAA\n".utf8))
        await keys.remove(a)
        #expect(!FileManager.default.fileExists(atPath: keys.folder(clusterID: a.id)))
        let pubB = try await keys.publicKey(for: b)
        #expect(pubB != pubA && pubB.hasSuffix(" capstan-train"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == [b.id])
    }

    @Test("a cluster launched when keys were kept by name still logs in with that key; its down removes it")
    func legacyFolder() async throws {
        let root = temp()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let keys = ClusterKeys(folder: root)
        let old = Cluster(name: "legacy", request: ResourceRequest(nodes: 1))
        try FileManager.default.createDirectory(atPath: root + "/legacy", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: root + "/legacy/id_ed25519", contents: Data("k".utf8))
        #expect(keys.folder(for: node(old)) == root + "/legacy")
        await keys.remove(old)
        #expect(!FileManager.default.fileExists(atPath: root + "/legacy"))
        #expect(keys.folder(for: node(old)) == root + "/" + old.id)
    }
}
