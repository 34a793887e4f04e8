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

/// The spot-style preemption switches of the local provider and the sim cloud: a chosen node is
/// taken back once, its replacement is left alone.
@Suite("Preemption switches")
struct PreemptionSwitchTests {
    func launch(_ p: any ComputeProvider, cluster: String, node: Int) async throws -> Instance {
        let offer = try #require(try await p.offers(for: ResourceRequest()).first)
        let key = "cap-" + UUID().uuidString.lowercased()
        return try await p.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: key, tags: [
            CapstanTags.managed: "true", CapstanTags.clusterID: cluster, CapstanTags.intent: key, CapstanTags.node: "\(node)",
        ]))[0]
    }

    func check(_ p: any ComputeProvider, terminateAfter: Bool) async throws {
        let n0 = try await launch(p, cluster: "c", node: 0)
        let n1 = try await launch(p, cluster: "c", node: 1)
        _ = try await p.describe(InstanceQuery())   // both run (the sim's nodes boot on a describe)
        try await Task.sleep(for: .milliseconds(400))
        let seen = try await p.describe(InstanceQuery(includeTerminated: true))
        #expect(seen.first { $0.id == n1.id }?.state == .preempted)
        #expect(seen.first { $0.id == n1.id }?.stateReason == "Server.SpotInstanceTermination")
        #expect(seen.first { $0.id == n0.id }?.state == .running, "only preemptNodes are taken")
        // The controller terminates what is left and launches a replacement for node 1.
        if terminateAfter { _ = try await p.terminate(ids: [n1.id]) }
        let again = try await launch(p, cluster: "c", node: 1)
        try await Task.sleep(for: .milliseconds(400))
        #expect(try await p.describe(InstanceQuery(ids: [again.id])).first?.state == .running, "the replacement was preempted too")
    }

    @Test("local provider: node 1 is preempted once, its processes killed; the replacement runs on")
    func local() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let p = try LocalProvider(root: tmp.path, configuration: .init(slots: 4, preemptAfterSeconds: 0.2, preemptNodes: [1]), resources: MachineResources(cpuCores: 2, memoryGiB: 4, gpus: []))
        try await check(p, terminateAfter: true)
    }

    @Test("sim cloud: the same switch")
    func sim() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let p = SimulatedCloud(configuration: .init(stateFile: tmp.file("sim.json"), preemptAfterSeconds: 0.2, preemptNodes: [1]))
        try await check(p, terminateAfter: true)
    }
}
