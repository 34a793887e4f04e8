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

/// A cloud that keeps no order and no node tags: launch and describe return their instances
/// shuffled, with `capstan:node` dropped or set to whatever the cloud likes (here: all "0"),
/// as a plugin for a cloud without per-instance tags might.
struct ScramblingCloud: ComputeProvider {
    let inner: SimulatedCloud
    /// `drop`: no node tag at all; `garbage`: every instance claims node 0.
    let mode: String
    var name: String { inner.name }

    func scramble(_ instances: [Instance]) -> [Instance] {
        instances.map { i in
            var i = i
            i.tags[CapstanTags.node] = mode == "garbage" ? "0" : nil
            return i
        }.shuffled()
    }
    func offers(for request: ResourceRequest) async throws -> [Offer] { try await inner.offers(for: request) }
    func launch(_ request: LaunchRequest) async throws -> [Instance] { scramble(try await inner.launch(request)) }
    func describe(_ query: InstanceQuery) async throws -> [Instance] { scramble(try await inner.describe(query)) }
    func terminate(ids: [String]) async throws -> [Instance] { scramble(try await inner.terminate(ids: ids)) }
}

/// Keeps every launch request it is sent (a real SimulatedCloud behind it).
final class RecordingCloud: ComputeProvider, @unchecked Sendable {
    let inner: SimulatedCloud
    let requests = LockedBox<[LaunchRequest]>([])
    init(_ inner: SimulatedCloud) { self.inner = inner }
    var name: String { inner.name }
    func offers(for request: ResourceRequest) async throws -> [Offer] { try await inner.offers(for: request) }
    func launch(_ request: LaunchRequest) async throws -> [Instance] {
        requests.withLock { $0.append(request) }
        return try await inner.launch(request)
    }
    func describe(_ query: InstanceQuery) async throws -> [Instance] { try await inner.describe(query) }
    func terminate(ids: [String]) async throws -> [Instance] { try await inner.terminate(ids: ids) }
}

@Suite("Node indices are Capstan's, whatever the plugin returns")
struct NodeIndexTests {
    @Test("the launch request says which node index each instance serves: 0..<n for a gang, the lost index for a replacement; the k-th instance returned is recorded as that node")
    func launchRequestCarriesIndices() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = RecordingCloud(SimulatedCloud(configuration: .init(offers: threeRegions, bootSeconds: 0.05)))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "c", request: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 3), search: OfferSearch(providers: [cloud]))
        let gang = try #require(cloud.requests.withLock { $0.first })
        #expect(gang.nodeIndices == [0, 1, 2] && gang.count == 3)
        #expect(report.instances.map(\.nodeIndex) == [0, 1, 2])
        let fresh = try await p.replaceNode(cluster: "c", node: 1)
        #expect(cloud.requests.withLock { $0.last?.nodeIndices } == [1])
        #expect(fresh.nodeIndex == 1)
        // On the wire: the field a plugin reads.
        let wire = String(decoding: try JSONEncoder().encode(gang), as: UTF8.self)
        #expect(wire.contains(#""nodeIndices":[0,1,2]"#))
    }

    @Test("assign: kept indices stand, the rest take the lowest free ones in order")
    func assign() {
        #expect(NodeIndices.assign([nil, nil, nil], nodes: 3) == [0, 1, 2])
        #expect(NodeIndices.assign([nil, 1, nil], nodes: 3) == [0, 1, 2])
        #expect(NodeIndices.assign([2, nil, nil], nodes: 3) == [2, 0, 1])
        #expect(NodeIndices.assign([nil], nodes: 3, taken: [0, 2]) == [1])
        // Out of range, taken or repeated: renumbered.
        #expect(NodeIndices.assign([7, 0, 0], nodes: 3) == [1, 0, 2])
        #expect(NodeIndices.assign([0], nodes: 2, taken: [0]) == [1])
        // More instances than free indices: no numbering.
        #expect(NodeIndices.assign([nil, nil, nil], nodes: 2) == nil)
        #expect(NodeIndices.assign([nil], nodes: 1, taken: [0]) == nil)
    }

    @Test("a gang launched on a cloud that shuffles its answers and drops or garbles node tags gets ranks 0..<n, kept on every later look, and a replacement takes the lost index", arguments: ["drop", "garbage"])
    func scrambled(mode: String) async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = ScramblingCloud(inner: SimulatedCloud(configuration: .init(offers: threeRegions, bootSeconds: 0.05)), mode: mode)
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "c", request: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 4), search: OfferSearch(providers: [cloud]))
        #expect(report.instances.map(\.nodeIndex) == [0, 1, 2, 3], "\(report.instances.map { $0.tags[CapstanTags.node] ?? "-" })")
        let ranks = Dictionary(uniqueKeysWithValues: report.instances.map { ($0.id, $0.nodeIndex) })
        // Every tag of the launch is on every node, whatever the cloud echoed.
        for i in report.instances {
            #expect(i.tags[CapstanTags.clusterID] == report.cluster.id && i.tags[CapstanTags.nodes] == "4" && i.tags[CapstanTags.cluster] == "c")
        }
        // Later looks (reconcile describes and records every instance) change no rank.
        for _ in 0..<3 { _ = await p.reconcile() }
        let recorded = try await p.store.instances(cluster: report.cluster.id).filter { !$0.state.isGone }
        #expect(Dictionary(uniqueKeysWithValues: recorded.map { ($0.id, $0.instance.nodeIndex) }) == ranks)
        // Node 2 is replaced: the new instance is node 2, the others keep theirs.
        let fresh = try await p.replaceNode(cluster: "c", node: 2)
        #expect(fresh.nodeIndex == 2)
        _ = await p.reconcile()
        let after = try await p.store.instances(cluster: report.cluster.id).filter { !$0.state.isGone }
        #expect(after.map(\.instance.nodeIndex).sorted() == [0, 1, 2, 3])
        #expect(after.first { $0.instance.nodeIndex == 2 }?.id == fresh.id)
        for r in after where r.id != fresh.id { #expect(ranks[r.id] == r.instance.nodeIndex) }
    }

    @Test("a cluster rebuilt from a cloud that keeps no node tags (the database lost) still numbers its nodes 0..<n")
    func rebuiltWithoutTags() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = ScramblingCloud(inner: SimulatedCloud(configuration: .init(offers: threeRegions)), mode: "drop")
        var options = ProvisionOptions()
        options.waitMinDelay = .milliseconds(10)
        options.waitMaxDelay = .milliseconds(50)
        let open = { try SQLiteStateStore(path: dir.file("state/capstan.db"), identityFile: dir.file("owner-id")) }
        let p = Provisioner(providers: [cloud], store: try open(), locks: ClusterLocks(folder: dir.file("state/locks")), options: options)
        let report = try await p.up(name: "c", request: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 3), search: OfferSearch(providers: [cloud]))
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: dir.file("state/capstan.db" + suffix)) }
        // The new database must be younger than the instances it rebuilds from.
        try await Task.sleep(for: .milliseconds(20))
        let q = Provisioner(providers: [cloud], store: try open(), locks: ClusterLocks(folder: dir.file("state/locks")), options: options)
        let r = await q.reconcile()
        #expect(r.rebuiltClusters == ["c"], "\(r)")
        let rebuilt = try await q.store.instances(cluster: report.cluster.id).filter { !$0.state.isGone }
        #expect(rebuilt.map(\.instance.nodeIndex).sorted() == [0, 1, 2])
    }
}
