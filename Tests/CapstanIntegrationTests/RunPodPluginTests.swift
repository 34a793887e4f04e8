import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanProviders
import Foundation
import Testing

/// The runpod plugin (.so built by the package) against the RunPod GraphQL test server.
@Suite("RunPod plugin on its API test server", .serialized)
struct RunPodPluginTests {
    static func provider(_ server: TestServerProcess, dir: TempDir) throws -> PluginComputeProvider {
        try PluginComputeProvider(PluginLibrary.load(path: RunPodServer.pluginPath).instantiate(config: RunPodServer.config(server, dir: dir)))
    }

    @Test("offers: GPU types × counts with on-demand and interruptible prices, canonical GPUs, stock as availability")
    func offers() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let server = try await RunPodServer.start(faults: ["stock": ["NVIDIA H100 PCIe": "None", "NVIDIA L4": "Low"]]); defer { server.stop() }
        let runpod = try Self.provider(server, dir: dir)
        #expect(runpod.offerCacheTTL == .seconds(60))
        let offers = try await runpod.offers(for: ResourceRequest())
        let h100 = try #require(offers.first { $0.instanceType == "8x NVIDIA H100 80GB HBM3" })
        #expect(h100.gpu == "H100-SXM" && h100.gpusPerNode == 8 && h100.provider == "runpod" && h100.region == "secure")
        #expect(h100.onDemandPricePerHour == 21.52 && h100.spotPricePerHour == 14.0 && h100.availability == .available && h100.maxNodes == nil)
        #expect(offers.first { $0.instanceType == "8x NVIDIA H100 PCIe" }?.availability == .unavailable)
        #expect(offers.first { $0.instanceType == "8x NVIDIA H100 PCIe" }?.gpu == "H100-PCIe")
        #expect(offers.first { $0.instanceType == "1x NVIDIA A100-SXM4-80GB" }?.gpu == "A100-80GB-SXM")
        #expect(offers.first { $0.instanceType == "2x NVIDIA L4" }?.availability == .limited)
        #expect(Set(offers.map(\.gpusPerNode)) == [1, 2, 4, 8])
        // Spot where allowed: the interruptible price ranks.
        let ranked = try OfferRanking.rank(offers, for: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2, spot: .allowed)).ranked
        #expect(ranked.first?.offer.instanceType == "8x NVIDIA H100 80GB HBM3" && ranked.first?.spot == true && ranked.first?.clusterPricePerHour == 28.0)
    }

    @Test("launch: one pod per node named by node index, tags and SSH key in its env, idempotent per key; describe by tag; preemption of an interruptible pod; terminate idempotently")
    func lifecycle() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let server = try await RunPodServer.start(); defer { server.stop() }
        let runpod = try Self.provider(server, dir: dir)
        let offer = try #require(try await runpod.offers(for: ResourceRequest(gpu: "H100", gpusPerNode: 8)).first { $0.gpu == "H100-SXM" })
        let key = "cap-" + UUID().uuidString.lowercased()
        let tags = [CapstanTags.managed: "true", CapstanTags.intent: key, CapstanTags.owner: "owner-1", "team": "ml"]
        let sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEexampleEXAMPLEexampleEXAMPLEexam capstan"
        let request = LaunchRequest(offer: offer, count: 2, idempotencyKey: key, tags: tags, sshPublicKey: sshKey, name: "capstan-t", nodeIndices: [0, 1])
        let launched = try await runpod.launch(request)
        #expect(launched.count == 2 && launched.allSatisfy { $0.tags == tags && $0.sshUser == "root" && !$0.spot })
        #expect(Set(launched.map { $0.details["name"] ?? "" }) == ["capstan-t-0", "capstan-t-1"])
        let state = try await server.admin("state")
        let pods = state["pods"] as? [[String: Any]] ?? []
        #expect(pods.count == 2 && pods.allSatisfy { ($0["env"] as? [String] ?? []).contains("PUBLIC_KEY=\(sshKey)") })
        #expect(pods.allSatisfy { $0["imageName"] as? String != nil && $0["ports"] as? String == "22/tcp" })
        // The same key again: the same pods, no new ones.
        #expect(Set(try await runpod.launch(request).map(\.id)) == Set(launched.map(\.id)))
        #expect((try await server.admin("state")["counters"] as? [String: Any])?["launched"] as? Int == 2)
        // Running once booted, with the SSH port mapping as address.
        var seen: [Instance] = []
        for _ in 0..<100 {
            seen = try await runpod.describe(InstanceQuery(tags: ["team": "ml", CapstanTags.owner: "owner-1"]))
            if seen.count == 2, seen.allSatisfy({ $0.state == .running }) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(seen.count == 2 && seen.allSatisfy { $0.state == .running && $0.publicAddress == "127.0.0.1" && ($0.sshPort ?? 0) >= 20000 && $0.privateAddress != nil })
        #expect(try await runpod.describe(InstanceQuery(tags: ["team": "other"])).isEmpty)
        #expect(try await runpod.describe(InstanceQuery(ids: [launched[0].id], tags: ["team": "ml"])).map(\.id) == [launched[0].id])

        // Interruptible: the spot price, and RunPod stopping it reads as preemption.
        let spotKey = "cap-" + UUID().uuidString.lowercased()
        let spot = try await runpod.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: spotKey, tags: [CapstanTags.intent: spotKey], spot: true))
        #expect(spot.count == 1 && spot[0].spot && spot[0].pricePerHour == 14.0)
        try await server.admin("preempt", ["podId": spot[0].id])
        let preempted = try #require(try await runpod.describe(InstanceQuery(ids: [spot[0].id], includeTerminated: true)).first)
        #expect(preempted.state == .preempted && preempted.stateReason?.contains("interruptible pod stopped by RunPod") == true)
        #expect(try await runpod.describe(InstanceQuery(ids: [spot[0].id])).isEmpty, "a preempted pod is gone unless asked for")

        let gone = try await runpod.terminate(ids: launched.map(\.id) + [spot[0].id, "nosuchpod"])
        #expect(gone.count == 4 && gone.allSatisfy { $0.state == .terminated })
        #expect(try await runpod.describe(InstanceQuery(tags: ["team": "ml"])).isEmpty)
        let forgotten = try await runpod.describe(InstanceQuery(ids: launched.map(\.id), includeTerminated: true))
        #expect(forgotten.count == 2 && forgotten.allSatisfy { $0.state == .terminated })
    }

    @Test("errors: no capacity (and a partial gang torn down), an exhausted balance, a wrong key, bad settings")
    func errors() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let server = try await RunPodServer.start(faults: ["capacity_after": 1]); defer { server.stop() }
        let runpod = try Self.provider(server, dir: dir)
        let offer = try #require(try await runpod.offers(for: ResourceRequest(gpu: "A100", gpusPerNode: 8)).first)
        let key = "cap-" + UUID().uuidString.lowercased()
        let e = await #expect(throws: CapstanError.self) { try await runpod.launch(LaunchRequest(offer: offer, count: 2, idempotencyKey: key, tags: [CapstanTags.intent: key])) }
        #expect(e?.code == .capacity && e?.message.contains("There are no longer any instances available") == true && e?.provider == "runpod")
        #expect(try await runpod.describe(InstanceQuery(tags: [CapstanTags.intent: key])).isEmpty, "the first pod of the gang was left running")
        try await server.admin("faults", ["capacity_after": NSNull(), "balance_exhausted": true])
        let quota = await #expect(throws: CapstanError.self) { try await runpod.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k2")) }
        #expect(quota?.code == .quota && quota?.hint?.contains("Billing") == true)

        dir.write("wrong-key", "rp_wrong\n")
        let wrong = try PluginComputeProvider(PluginLibrary.load(path: RunPodServer.pluginPath).instantiate(config: .object(["endpoint": .string(server.base + "/graphql"), "apiKeyFile": .string(dir.file("wrong-key"))])))
        let auth = await #expect(throws: CapstanError.self) { try await wrong.offers(for: ResourceRequest()) }
        #expect(auth?.code == .auth && auth?.message.contains("rp_wrong") == false && auth?.hint?.contains("API Keys") == true)

        let lib = try PluginLibrary.load(path: RunPodServer.pluginPath)
        let missing = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["apiKeyFile": .string(dir.file("nope"))])) }
        #expect(missing?.code == .auth && missing?.message.contains(dir.file("nope")) == true)
        let typo = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["apikeyfile": .string("x")])) }
        #expect(typo?.message.contains("providers.runpod.apikeyfile") == true)
        let plain = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["endpoint": .string("http://api.runpod.example/graphql"), "apiKeyFile": .string(dir.file("wrong-key"))])) }
        #expect(plain?.code == .config && plain?.message.contains("plain HTTP") == true)
        let cloud = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["cloudType": .string("CHEAP"), "apiKeyFile": .string(dir.file("wrong-key"))])) }
        #expect(cloud?.message.contains("SECURE or COMMUNITY") == true)
    }

    @Test("plugins inspect prints the schema's URLs unescaped; plugins sdk writes the header and the LSan suppressions")
    func inspectAndSDK() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let inspect = try await runProcess(BuildProducts.capstan, ["plugins", "inspect", RunPodServer.pluginPath], environment: ["CAPSTAN_HOME": dir.path])
        #expect(inspect.status == 0, "\(inspect.stderr)")
        #expect(inspect.stdout.contains("https://api.runpod.io/graphql") && !inspect.stdout.contains("\\/"), "\(inspect.stdout)")
        let sdk = try await runProcess(BuildProducts.capstan, ["plugins", "sdk", dir.file("include")])
        #expect(sdk.status == 0, "\(sdk.stderr)")
        let supp = try String(contentsOfFile: dir.file("include/lsan-capstan-host.supp"), encoding: .utf8)
        #expect(supp.contains("leak:") && FileManager.default.fileExists(atPath: dir.file("include/capstan_plugin.h")))
        let header = try String(contentsOfFile: dir.file("include/capstan_plugin.h"), encoding: .utf8)
        #expect(["timeout", "config", "io", "pluginFailure"].allSatisfy { header.contains($0) })
    }

    @Test("the host retries offers, describe and terminate on 429 (waiting Retry-After) and 5xx, and gives up after its retries")
    func hostRetries() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let server = try await RunPodServer.start(faults: ["retry_after": 0.3]); defer { server.stop() }
        var runpod = try Self.provider(server, dir: dir)
        let waits = LockedBox<[Duration]>([])
        runpod.retry.pause = { d in waits.withLock { $0.append(d) }; try await Task.sleep(for: d) }
        func counters() async throws -> [String: Int] { (try await server.admin("state")["counters"] as? [String: Int]) ?? [:] }

        try await server.admin("faults", ["rate_limited": 3])
        #expect(try await runpod.offers(for: ResourceRequest(gpu: "H100")).isEmpty == false)
        #expect(try await counters()["rate_limited"] == 3)
        #expect(waits.withLock { $0 } == [.milliseconds(300), .milliseconds(300), .milliseconds(300)], "Retry-After was not honoured")
        let offer = try #require(try await runpod.offers(for: ResourceRequest(gpu: "L4", gpusPerNode: 1)).first)
        let pod = try await runpod.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k-retry", tags: ["t": "retry"]))

        try await server.admin("faults", ["rate_limited": 2, "server_errors": 0])
        #expect(try await runpod.describe(InstanceQuery(tags: ["t": "retry"])).count == 1)
        try await server.admin("faults", ["server_errors": 2])
        #expect(try await runpod.describe(InstanceQuery(tags: ["t": "retry"])).count == 1)
        try await server.admin("faults", ["rate_limited": 2])
        #expect(try await runpod.terminate(ids: pod.map(\.id)).first?.state == .terminated)
        #expect(try await counters()["rate_limited"] == 7)

        // Throttled for longer than the retries last: the error, with the cloud's wait.
        try await server.admin("faults", ["rate_limited": 50, "retry_after": 0.05])
        let e = await #expect(throws: CapstanError.self) { try await runpod.describe(InstanceQuery()) }
        #expect(e?.code == .rateLimited && e?.retryAfterSeconds == 0.05)
        #expect(try await counters()["rate_limited"] == 7 + runpod.retry.maxRetries + 1)
    }
}

@Suite("capstan up/down on RunPod (test server)", .serialized)
struct RunPodProvisioningTests {
    static func home(_ server: TestServerProcess) -> TempDir {
        let home = TempDir("capstan-runpod")
        home.write("config.yaml", "providers:\n  local:\n    enabled: false\n" + RunPodServer.section(server, home: home))
        return home
    }

    static func env(_ home: TempDir) -> [String: String] {
        ["CAPSTAN_HOME": home.path, "CAPSTAN_PLUGIN_PATH": RunPodServer.pluginPath]
    }

    /// Live pods this home owns, and those no running cluster of it claims.
    static func leaked(_ server: TestServerProcess, home: TempDir) async throws -> (live: [Instance], leaked: [Instance]) {
        let dir = TempDir(); defer { dir.cleanup() }
        return try await ownedInstances(RunPodPluginTests.provider(server, dir: dir), home: home)
    }

    @Test("up (spot, failing over past no capacity), status with node indices, down; up's output readable in a file")
    func upDown() async throws {
        let server = try await RunPodServer.start(faults: ["capacity_failures": 1]); defer { server.stop() }
        let home = Self.home(server); defer { home.cleanup() }
        let up = try await runProcess(BuildProducts.capstan, ["up", "rp", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2", "--spot"], environment: Self.env(home))
        #expect(up.status == 0, "\(up.stderr)\n\(up.stdout)")
        // The OUTCOME column holds the code; the cloud's message goes below the table.
        #expect(up.stdout.contains("capacity") && up.stdout.contains("#1 capacity: RunPod could not deploy"), "\(up.stdout)")
        let table = up.stdout.split(separator: "\n").filter { $0.contains("OUTCOME") || $0.contains("on-demand") || $0.contains("spot") }
        #expect(table.allSatisfy { $0.count < 140 }, "\(table)")
        #expect(up.stdout.contains("node 0") && up.stdout.contains("node 1"))
        let status = try await runProcess(BuildProducts.capstan, ["status"], environment: Self.env(home))
        #expect(status.status == 0, "\(status.stderr)")
        let pods = (try await server.admin("state")["pods"] as? [[String: Any]]) ?? []
        // Each pod on its own line under its node index (RunPod echoes no `capstan:node`).
        for (k, id) in pods.compactMap({ $0["id"] as? String }).enumerated() {
            #expect(status.stdout.split(separator: "\n").contains { $0.contains(id) && ($0.hasPrefix("  0 ") || $0.hasPrefix("  1 ")) }, "pod \(k): \(status.stdout)")
        }
        #expect(pods.count == 2 && pods.allSatisfy { $0["podType"] as? String == "INTERRUPTABLE" })
        #expect(Set(pods.compactMap { $0["name"] as? String }) == ["capstan-rp-0", "capstan-rp-1"])
        let down = try await runProcess(BuildProducts.capstan, ["down", "rp"], environment: Self.env(home))
        #expect(down.status == 0, "\(down.stderr)")
        #expect(try await Self.leaked(server, home: home).live.isEmpty)
    }

    @Test("down terminates an interruptible pod RunPod stopped (EXITED, preempted: its disk is billed)")
    func downTerminatesPreempted() async throws {
        let server = try await RunPodServer.start(); defer { server.stop() }
        let home = Self.home(server); defer { home.cleanup() }
        let up = try await runProcess(BuildProducts.capstan, ["up", "rq", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "1", "--spot"], environment: Self.env(home))
        #expect(up.status == 0, "\(up.stderr)\n\(up.stdout)")
        let pod = try #require(try await Self.leaked(server, home: home).live.first)
        try await server.admin("preempt", ["podId": pod.id])
        try await recordPreempted(pod.id, home: home)
        let down = try await runProcess(BuildProducts.capstan, ["down", "rq"], environment: Self.env(home))
        #expect(down.status == 0, "\(down.stderr)")
        let pods = (try await server.admin("state")["pods"] as? [[String: Any]]) ?? []
        #expect(!pods.contains { $0["desiredStatus"] as? String == "EXITED" }, "\(pods.map { "\($0["id"] ?? "?") \($0["desiredStatus"] ?? "?")" })")
    }

    @Test("kill -9 of up and of down on RunPod, then reconcile: no live pod that no cluster owns")
    func crashes() async throws {
        let server = try await RunPodServer.start(); defer { server.stop() }
        try await killUpAndDownThenReconcile(provider: "runpod", makeHome: { Self.home(server) }, env: Self.env, owned: { try await Self.leaked(server, home: $0) })
    }
}
