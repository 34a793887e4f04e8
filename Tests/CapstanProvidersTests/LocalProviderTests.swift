import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
import Logging
import Testing

@Suite("Local provider")
struct LocalProviderTests {
    let cpuOnly = MachineResources(cpuCores: 4, memoryGiB: 16, gpus: [])

    func offer(_ p: LocalProvider) async throws -> Offer {
        try #require(try await p.offers(for: ResourceRequest()).first)
    }

    @Test("offers this machine, free, with its free slots")
    func offers() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let p = try LocalProvider(root: tmp.path, configuration: .init(slots: 3), resources: cpuOnly)
        let o = try await offer(p)
        #expect(o.instanceType == "local-cpu")
        #expect(o.onDemandPricePerHour == 0)
        #expect(o.gpusPerNode == 0 && o.vcpus == 4)
        #expect(o.maxNodes == 3)
        #expect(o.availability == .available)
    }

    @Test("a GPU machine offers its GPUs by canonical name")
    func gpuMachine() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let gpus = MachineResources.parseNvidiaSMI("NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\n")
        let p = try LocalProvider(root: tmp.path, resources: MachineResources(cpuCores: 32, memoryGiB: 512, gpus: gpus))
        let o = try await offer(p)
        #expect(o.gpu == "H100-SXM" && o.gpusPerNode == 2)
        #expect(o.instanceType == "local-2xH100-SXM")
        let ranked = try OfferRanking.rank([o], for: ResourceRequest(gpu: "H100", gpusPerNode: 2)).ranked
        #expect(ranked.count == 1)
    }

    @Test("nvidia-smi output parses, real strings and junk")
    func nvidiaSMI() {
        let gpus = MachineResources.parseNvidiaSMI("NVIDIA H200, 143771\nNVIDIA A100-SXM4-40GB, 40960\nNo devices were found\n, \n")
        #expect(gpus.map(\.model) == ["H200", "A100-40GB-SXM"])
        #expect(gpus.first?.memoryMiB == 143771)
    }

    @Test("launch gives each node its own folder and loopback address, and is idempotent")
    func launch() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let p = try LocalProvider(root: tmp.path, configuration: .init(slots: 4), resources: cpuOnly)
        let request = LaunchRequest(offer: try await offer(p), count: 2, idempotencyKey: "intent-1", tags: [CapstanTags.cluster: "c1"], sshPublicKey: "ssh-ed25519 AAAA test")
        let nodes = try await p.launch(request)
        #expect(nodes.count == 2)
        #expect(Set(nodes.compactMap(\.privateAddress)) == ["127.0.0.2", "127.0.0.3"])
        #expect(nodes.allSatisfy { $0.state == .running && $0.tags[CapstanTags.intent] == "intent-1" && $0.tags[CapstanTags.managed] == "true" })
        // The node index is Capstan's to give (NodeIndices), not the provider's.
        #expect(nodes.allSatisfy { $0.tags[CapstanTags.node] == nil })
        for n in nodes {
            guard case .local(let access)? = n.access else { Issue.record("node \(n.id) has no local access: \(String(describing: n.access))"); continue }
            let work = access.workdir
            #expect(n.details["workdir"] == nil && n.details["folder"] == nil)
            #expect(FileManager.default.fileExists(atPath: work))
            #expect(FileManager.default.fileExists(atPath: (work as NSString).deletingLastPathComponent + "/authorized_keys"))
        }
        // Retrying the same intent returns the same nodes.
        let again = try await p.launch(request)
        #expect(again.map(\.id) == nodes.map(\.id).sorted())
        // A second process (a new provider on the same root) sees them.
        let other = try LocalProvider(root: tmp.path, configuration: .init(slots: 4), resources: cpuOnly)
        #expect(try await other.describe(InstanceQuery(tags: [CapstanTags.cluster: "c1"])).count == 2)
        #expect(try await other.offers(for: ResourceRequest()).first?.maxNodes == 2)
    }

    @Test("more nodes than free slots is a capacity error")
    func capacity() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let p = try LocalProvider(root: tmp.path, configuration: .init(slots: 2), resources: cpuOnly)
        _ = try await p.launch(LaunchRequest(offer: try await offer(p), count: 1, idempotencyKey: "a"))
        let e = await #expect(throws: CapstanError.self) {
            try await p.launch(LaunchRequest(offer: try await offer(p), count: 2, idempotencyKey: "b"))
        }
        #expect(e?.code == .capacity)
        #expect(e?.message.contains("1 free node slot(s) of 2") == true)
        #expect(e?.code.movesToNextOffer == true)
    }

    @Test("terminate frees the slot, kills the node's processes, and is idempotent")
    func terminate() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let p = try LocalProvider(root: tmp.path, configuration: .init(slots: 1), resources: cpuOnly)
        let node = try #require(try await p.launch(LaunchRequest(offer: try await offer(p), count: 1, idempotencyKey: "a")).first)
        // A process "running on the node", recorded as the agent will record it.
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["300"]
        try sleeper.run()
        guard case .local(let access)? = node.access else { Issue.record("no local access: \(String(describing: node.access))"); return }
        let folder = access.folder
        try Data("\(sleeper.processIdentifier)\n".utf8).write(to: URL(fileURLWithPath: folder + "/pids"))

        let after = try await p.terminate(ids: [node.id])
        #expect(after.first?.state == .terminated)
        sleeper.waitUntilExit()
        #expect(sleeper.terminationReason == .uncaughtSignal)
        #expect(try await p.terminate(ids: [node.id]).first?.state == .terminated)
        #expect(try await p.terminate(ids: ["node-never-existed"]).first?.state == .terminated)
        #expect(try await p.describe(InstanceQuery()).isEmpty)
        #expect(try await p.describe(InstanceQuery(includeTerminated: true)).count == 1)
        // The slot is free again.
        #expect(try await p.launch(LaunchRequest(offer: try await offer(p), count: 1, idempotencyKey: "b")).count == 1)
    }

    @Test("concurrent launches never share a slot")
    func concurrent() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let p = try LocalProvider(root: tmp.path, configuration: .init(slots: 16), resources: cpuOnly)
        let o = try await offer(p)
        let all = try await withThrowingTaskGroup(of: [Instance].self) { group in
            for i in 0..<8 { group.addTask { try await p.launch(LaunchRequest(offer: o, count: 2, idempotencyKey: "k\(i)")) } }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(all.count == 16)
        #expect(Set(all.compactMap(\.privateAddress)).count == 16)
    }

    @Test("slots out of range are a config error")
    func badConfig() {
        let tmp = TempDir(); defer { tmp.cleanup() }
        #expect(throws: CapstanError.self) { try LocalProvider(root: tmp.path, configuration: .init(slots: 0), resources: cpuOnly) }
        let e = #expect(throws: CapstanError.self) { try JSONValue.object(["slot": .number(2)]).decode(LocalProvider.Configuration.self) }
        #expect(e?.message.contains("providers.local.slot") == true)
    }
}

@Suite("Plugin kit (in process)")
struct PluginKitTests {
    @Test("dispatches every method through the JSON protocol")
    func dispatch() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let services = try SimulatedCloud.pluginDefinition.make(.object(["capacityFailures": .number(1)]), .init(label: "t"))
        let kit = PluginKitInstance(name: "sim", services: services)
        let offers = try PluginWire.decoder.decode(PluginWire.OffersResponse.self, from: try await kit.handle(method: PluginWire.Method.offers, request: PluginWire.encoder.encode(ResourceRequest()), progress: nil))
        #expect(offers.offers.count == SimulatedCloud.defaultCatalog.count)
        let launch = LaunchRequest(offer: offers.offers[0], count: 2, idempotencyKey: "x")
        let e = await #expect(throws: CapstanError.self) { try await kit.handle(method: PluginWire.Method.launch, request: PluginWire.encoder.encode(launch), progress: nil) }
        #expect(e?.code == .capacity && e?.cloudCode == "InsufficientInstanceCapacity")
        let launched = try PluginWire.decoder.decode(PluginWire.InstancesResponse.self, from: try await kit.handle(method: PluginWire.Method.launch, request: PluginWire.encoder.encode(launch), progress: nil))
        #expect(launched.instances.count == 2)
        let src = tmp.write("f", "data")
        let put = PluginWire.PutRequest(location: "simfile://" + tmp.file("b"), file: src, key: "a/b", options: .init())
        let info = try PluginWire.decoder.decode(ObjectInfo.self, from: try await kit.handle(method: PluginWire.Method.put, request: PluginWire.encoder.encode(put), progress: nil))
        #expect(info.size == 4)
        let unknown = await #expect(throws: CapstanError.self) { try await kit.handle(method: "compute.frobnicate", request: Data("{}".utf8), progress: nil) }
        #expect(unknown?.code == .unsupported)
        let garbage = await #expect(throws: CapstanError.self) { try await kit.handle(method: PluginWire.Method.launch, request: Data("{".utf8), progress: nil) }
        #expect(garbage?.code == .invalidRequest)
    }
}
