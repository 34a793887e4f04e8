import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanTesting
import Foundation
import Testing

/// ``Provisioner/stopIdleClusters(now:)`` on the simulated cloud: the `down` path, its event,
/// and the cases it must leave alone.
@Suite("Idle clusters (autostop)")
struct IdleClusterTests {
    let request = ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2)

    @Test("an idle cluster goes through down's path (instances terminated, an autostop event); one another process holds is left for the next call")
    func stops() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let up = try await p.up(name: "warm", request: request, search: OfferSearch(providers: [cloud]), idleMinutes: 15)
        #expect(up.cluster.idleMinutes == 15 && up.cluster.status == .running)
        #expect(try await p.store.cluster(named: "warm")?.idleMinutes == 15)
        let later = Date().addingTimeInterval(16 * 60)
        // Busy elsewhere (a `down`, a `move`): skipped, not waited for.
        let held = try #require(try await p.locks.acquire("warm"))
        #expect(await p.stopIdleClusters(now: later) == [])
        #expect(try await p.store.cluster(named: "warm")?.status == .running)
        held.release()
        #expect(await p.stopIdleClusters(now: later) == ["warm"])
        let cluster = try #require(try await p.store.cluster(named: "warm"))
        #expect(cluster.status == .terminated)
        #expect(try await p.store.instances(cluster: cluster.id).allSatisfy { $0.state.isGone })
        #expect(try await cloud.describe(InstanceQuery(tags: [CapstanTags.clusterID: cluster.id])).allSatisfy { $0.state.isGone })
        let events = try await p.store.events(cluster: cluster.id, limit: 50)
        #expect(events.contains { $0.kind == "autostop" && $0.message.hasPrefix("autostop: idle 1") && $0.message.contains("(limit 15 min;") }, "\(events.map(\.message))")
        // Nothing left to do: a second call is a no-op.
        #expect(await p.stopIdleClusters(now: later) == [])
    }

    @Test("a bad idle limit is refused before any cluster row is written", arguments: [0, -1, 525_601])
    func badLimit(minutes: Int) async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let e = await #expect(throws: CapstanError.self) { try await p.up(name: "warm", request: request, search: OfferSearch(providers: [cloud]), idleMinutes: minutes) }
        #expect(e?.code == .invalidRequest && e?.message.contains("--idle-minutes must be a whole number of minutes from 1 to 525600, got \(minutes)") == true)
        #expect(e?.hint?.contains("--idle-minutes 30") == true)
        await #expect(try p.store.clusters(includeFinished: true).isEmpty)
    }
}
