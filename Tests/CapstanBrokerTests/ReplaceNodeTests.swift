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

@Suite("Replacing one node of a running cluster")
struct ReplaceNodeTests {
    let h100x2 = ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2)

    @Test("the lost node gets a new instance on the same offer with the same index; reconcile adopts it")
    func replace() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "train", request: h100x2, search: OfferSearch(providers: [cloud]))
        let old = report.instances
        #expect(old.map(\.nodeIndex) == [0, 1])
        let fresh = try await p.replaceNode(cluster: "train", node: 1)
        #expect(fresh.nodeIndex == 1 && fresh.id != old[1].id)
        #expect(fresh.region == old[0].region && fresh.instanceType == old[0].instanceType)
        #expect(fresh.tags[CapstanTags.clusterID] == report.cluster.id)
        let live = try await cloud.describe(InstanceQuery())
        #expect(Set(live.map(\.id)) == [old[0].id, fresh.id], "the replaced instance is terminated")
        // The replacement's intent is not the cluster's first one, yet reconcile keeps it.
        let r = await p.reconcile()
        #expect(r.terminated.isEmpty, "reconcile terminated \(r.terminated)")
        #expect(Set(try await cloud.describe(InstanceQuery()).map(\.id)) == [old[0].id, fresh.id])
        let recorded = try await p.store.instances(cluster: report.cluster.id).filter { !$0.state.isGone }.map(\.id)
        #expect(Set(recorded) == [old[0].id, fresh.id])
        // down takes the replacement too.
        _ = try await p.down(name: "train")
        #expect(try await cloud.describe(InstanceQuery()).isEmpty)
    }

    @Test("no capacity for the replacement: retried, then a clear error naming the node and offer")
    func noCapacity() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let state = dir.file("sim.json")
        let cloud = SimulatedCloud(configuration: .init(offers: [threeRegions[0]], stateFile: state))
        _ = try await makeProvisioner([cloud], dir: dir).up(name: "train", request: h100x2, search: OfferSearch(providers: [cloud]))
        // The same cloud, now out of capacity in the cluster's region.
        let full = SimulatedCloud(configuration: .init(offers: [threeRegions[0]], noCapacityRegions: ["r-east"], stateFile: state))
        let p = try makeProvisioner([full], dir: dir)
        let e = await #expect(throws: CapstanError.self) { try await p.replaceNode(cluster: "train", node: 0) }
        #expect(e?.code == .capacity)
        #expect(e?.message.contains("node 0") == true && e?.message.contains("r-east") == true)
        await #expect(throws: CapstanError.self) { try await p.replaceNode(cluster: "nope", node: 0) }
    }
}

@Suite("Moving a gang to another offer")
struct MoveGangTests {
    let h100x2 = ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2)

    @Test("the gang moves to the next offer that fits, on another provider; the old nodes go; reconcile keeps the new ones")
    func move() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        // `a` is cheapest but has one region; `b` has the rest of the catalog.
        let a = SimulatedCloud(name: "a", configuration: .init(offers: [threeRegions[0]]))
        let b = SimulatedCloud(name: "b", configuration: .init(offers: Array(threeRegions.dropFirst())))
        let p = try makeProvisioner([a, b], dir: dir)
        let search = OfferSearch(providers: [a, b])
        let up = try await p.up(name: "train", request: h100x2, search: search)
        #expect(up.cluster.offer?.provider == "a")
        let moved = try await p.move(cluster: "train", search: search)
        #expect(moved.cluster.status == .running && moved.cluster.offer?.provider == "b" && moved.cluster.offer?.region == "r-west")
        #expect(moved.instances.map(\.nodeIndex) == [0, 1])
        #expect(try await a.describe(InstanceQuery()).isEmpty, "the old gang is terminated")
        #expect(Set(try await b.describe(InstanceQuery()).map(\.id)) == Set(moved.instances.map(\.id)))
        #expect(moved.cluster.pricePerHour == 42)
        let r = await p.reconcile()
        #expect(r.terminated.isEmpty)
        await #expect(Set(try p.store.instances(cluster: up.cluster.id).filter { !$0.state.isGone }.map(\.id)) == Set(moved.instances.map(\.id)))
        await #expect(try p.store.events(cluster: up.cluster.id).contains { $0.kind == "moved" })
        _ = try await p.down(name: "train")
        #expect(try await b.describe(InstanceQuery()).isEmpty)
    }

    @Test("no other offer: a clear error and the cluster is left as it was")
    func nowhere() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let a = SimulatedCloud(name: "a", configuration: .init(offers: [threeRegions[0]]))
        let p = try makeProvisioner([a], dir: dir)
        let up = try await p.up(name: "train", request: h100x2, search: OfferSearch(providers: [a]))
        await #expect(throws: CapstanError.self) { try await p.move(cluster: "train", search: OfferSearch(providers: [a])) }
        await #expect(try p.store.cluster(named: "train")?.offer == up.cluster.offer)
        #expect(try await a.describe(InstanceQuery()).count == 2)
    }
}
