import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanProviders
import Foundation
import Testing

/// The gcp plugin (.so built by the package) against the Compute Engine test server (and its
/// OAuth2 token endpoint) and gcp-storage-emulator.
@Suite("GCP plugin on its test servers", .serialized)
struct GCPPluginTests {
    static func provider(_ gcp: GCPServer, dir: TempDir) throws -> PluginComputeProvider {
        try PluginComputeProvider(PluginLibrary.load(path: GCPServer.pluginPath).instantiate(config: gcp.config(dir)))
    }

    @Test("offers: A3, A2 and G2 per zone with on-demand and spot prices from the dated table, canonical GPUs")
    func offers() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let compute = try Self.provider(gcp, dir: dir)
        let offers = try await compute.offers(for: ResourceRequest())
        let a3 = offers.filter { $0.instanceType == "a3-highgpu-8g" }
        #expect(Set(a3.compactMap(\.zone)) == ["us-central1-a", "us-central1-b", "europe-west4-a"])
        #expect(a3.allSatisfy { $0.gpu == "H100-SXM" && $0.gpusPerNode == 8 && $0.onDemandPricePerHour == 88.49 && $0.spotPricePerHour == 35.40 && $0.details["priceTable"] == "2026-11-27" })
        #expect(a3.first { $0.zone == "europe-west4-a" }?.region == "europe-west4")
        #expect(offers.contains { $0.instanceType == "a2-ultragpu-8g" && $0.gpu == "A100-80GB-SXM" })
        #expect(offers.contains { $0.instanceType == "a2-highgpu-8g" && $0.gpu == "A100-40GB-SXM" })
        #expect(offers.contains { $0.instanceType == "g2-standard-4" && $0.gpu == "L4" && $0.gpusPerNode == 1 })
        #expect(!offers.contains { $0.instanceType == "n2-standard-8" }, "a machine without GPUs is not offered")
        let ranked = try OfferRanking.rank(offers, for: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2, spot: .allowed)).ranked
        #expect(ranked.first?.spot == true && ranked.first?.clusterPricePerHour == 70.8)
    }

    @Test("launch: SPOT VMs with encoded labels, ssh-keys metadata and request ids, operations polled; idempotent; describe by label; preemption; delete")
    func lifecycle() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(faults: ["preempt_delete_seconds": 3600]); defer { gcp.stop() }
        let compute = try Self.provider(gcp, dir: dir)
        let offer = try #require(try await compute.offers(for: ResourceRequest(gpu: "L4", gpusPerNode: 1)).first { $0.zone == "us-central1-b" && $0.instanceType == "g2-standard-4" })
        let key = "cap-" + UUID().uuidString.lowercased()
        let tags = [CapstanTags.managed: "true", CapstanTags.intent: key, CapstanTags.owner: "Owner_1.x", "Name": "capstan-t"]
        let sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEexampleEXAMPLEexampleEXAMPLEexam capstan"
        let request = LaunchRequest(offer: offer, count: 2, idempotencyKey: key, tags: tags, sshPublicKey: sshKey, userData: "#!/bin/sh\necho hi\n", name: "capstan-t", spot: true, nodeIndices: [0, 1])
        let launched = try await compute.launch(request)
        #expect(launched.count == 2 && launched.allSatisfy { $0.spot && $0.tags == tags && $0.zone == "us-central1-b" && $0.sshUser == "capstan" && $0.pricePerHour == 0.28 }, "\(launched)")
        #expect(launched.map(\.id).allSatisfy { $0.hasPrefix("us-central1-b/capstan-t-") })
        let state = try await gcp.server.admin("state")
        let body = try #require(state["lastInsert"] as? [String: Any])
        let scheduling = body["scheduling"] as? [String: Any]
        #expect(scheduling?["provisioningModel"] as? String == "SPOT" && scheduling?["instanceTerminationAction"] as? String == "DELETE", "a preempted VM must not stay, its disk billed")
        let labels = body["labels"] as? [String: String] ?? [:]
        #expect(labels["capstan_3aowner"] == "_4fwner_5f1_2ex" && labels["z_z_4eame"] == "capstan-t", "\(labels)")
        let items = (body["metadata"] as? [String: Any])?["items"] as? [[String: String]] ?? []
        #expect(items.contains { $0["key"] == "ssh-keys" && $0["value"] == "capstan:\(sshKey)" })
        #expect(items.contains { $0["key"] == "startup-script" })
        // Retried with the same key: the same request ids, the same instances.
        #expect(Set(try await compute.launch(request).map(\.id)) == Set(launched.map(\.id)))
        #expect((try await gcp.server.admin("state")["counters"] as? [String: Any])?["inserts"] as? Int == 2)
        var seen: [Instance] = []
        for _ in 0..<100 {
            seen = try await compute.describe(InstanceQuery(tags: [CapstanTags.owner: "Owner_1.x"]))
            if seen.count == 2, seen.allSatisfy({ $0.state == .running }) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(seen.count == 2 && seen.allSatisfy { $0.state == .running && $0.publicAddress == "127.0.0.1" && $0.privateAddress?.hasPrefix("10.128.") == true })
        #expect(try await compute.describe(InstanceQuery(tags: [CapstanTags.owner: "someone-else"])).isEmpty)
        let name = try #require(launched[0].details["name"])
        try await gcp.server.admin("preempt", ["name": name])
        let preempted = try #require(try await compute.describe(InstanceQuery(ids: [launched[0].id], includeTerminated: true)).first)
        #expect(preempted.state == .preempted && preempted.stateReason?.contains("preempted") == true)
        let gone = try await compute.terminate(ids: launched.map(\.id) + ["us-central1-a/nosuch"])
        #expect(gone.count == 3 && gone.last?.state == .terminated)
        #expect(try await compute.describe(InstanceQuery(tags: [CapstanTags.intent: key])).isEmpty)
        #expect(try await compute.describe(InstanceQuery(ids: launched.map(\.id), includeTerminated: true)).allSatisfy { $0.state == .terminated })
    }

    @Test("errors: ZONE_RESOURCE_POOL_EXHAUSTED → capacity, QUOTA_EXCEEDED → quota, 403 rateLimitExceeded and 429 retried by the host, a refused key → auth without key material")
    func errors() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(faults: ["no_capacity_zones": ["us-central1-a"]]); defer { gcp.stop() }
        let compute = try Self.provider(gcp, dir: dir)
        let offers = try await compute.offers(for: ResourceRequest(gpu: "H100", gpusPerNode: 8))
        let a = try #require(offers.first { $0.zone == "us-central1-a" && $0.instanceType == "a3-highgpu-8g" })
        let key = "cap-" + UUID().uuidString.lowercased()
        let e = await #expect(throws: CapstanError.self) { try await compute.launch(LaunchRequest(offer: a, count: 2, idempotencyKey: key, tags: [CapstanTags.intent: key])) }
        #expect(e?.code == .capacity && e?.cloudCode == "ZONE_RESOURCE_POOL_EXHAUSTED" && e?.message.contains("does not have enough resources") == true)
        try await gcp.server.admin("faults", ["no_capacity_zones": [String](), "quota_exceeded": true])
        let b = try #require(offers.first { $0.zone == "us-central1-b" })
        let q = await #expect(throws: CapstanError.self) { try await compute.launch(LaunchRequest(offer: b, count: 1, idempotencyKey: "k-q")) }
        #expect(q?.code == .quota && q?.cloudCode == "QUOTA_EXCEEDED" && q?.message.contains("GPUS_ALL_REGIONS") == true)

        try await gcp.server.admin("faults", ["quota_exceeded": false, "rate_limited": 2, "rate_limited_429": 1])
        #expect(try await compute.describe(InstanceQuery()).isEmpty)
        #expect((try await gcp.server.admin("state")["counters"] as? [String: Any])?["rate_limited"] as? Int == 3)

        // A key the token endpoint does not know: auth, and the error holds no key material.
        let other = TempDir(); defer { other.cleanup() }
        let foreign = try await GCPServer(); defer { foreign.stop() }
        let badKey = try gcp.keyFile(in: other, privateKey: foreign.privateKey)
        let refused = try PluginComputeProvider(PluginLibrary.load(path: GCPServer.pluginPath).instantiate(config: .object(["credentialsFile": .string(badKey), "endpoint": .string(gcp.endpoint)])))
        let auth = await #expect(throws: CapstanError.self) { try await refused.offers(for: ResourceRequest()) }
        #expect(auth?.code == .auth && auth?.message.contains("Invalid JWT Signature") == true)
        let pemBody = foreign.privateKey.split(separator: "\n")[1]
        #expect(auth.map { !"\($0)".contains(pemBody) } == true)

        let lib = try PluginLibrary.load(path: GCPServer.pluginPath)
        dir.write("not-a-key.json", "{\"type\": \"authorized_user\", \"client_email\": \"x\", \"private_key\": \"y\"}")
        let user = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["credentialsFile": .string(dir.file("not-a-key.json"))])) }
        #expect(user?.code == .auth && user?.message.contains("authorized_user") == true)
        dir.write("garbage.json", "{\"client_email\": \"x\", \"private_key\": \"-----BEGIN PRIVATE KEY-----\\nnope\\n-----END PRIVATE KEY-----\\n\", \"project_id\": \"p\"}")
        let garbage = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["credentialsFile": .string(dir.file("garbage.json"))])) }
        #expect(garbage?.code == .auth && garbage?.message.contains("not an RSA key in PEM form") == true && garbage?.message.contains("nope") == false)
        let typo = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["zone": .string("x")])) }
        #expect(typo?.message.contains("providers.gcp.zone") == true)
    }

    @Test("tokens are refreshed before they expire, and a call that meets an expired one still succeeds")
    func tokenRefresh() async throws {
        // Counted, not timed: every call succeeds (a token that expired in flight is refreshed
        // on its 401) and the token endpoint is asked again as tokens expire.
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(faults: ["token_ttl": 1.5]); defer { gcp.stop() }
        let compute = try Self.provider(gcp, dir: dir)
        var counters: [String: Int] = [:]
        let deadline = ContinuousClock.now + .seconds(60)
        while (counters["tokens"] ?? 0) < 3, ContinuousClock.now < deadline {
            _ = try await compute.describe(InstanceQuery())
            try await Task.sleep(for: .milliseconds(100))
            counters = (try await gcp.server.admin("state")["counters"] as? [String: Int]) ?? [:]
        }
        #expect((counters["tokens"] ?? 0) >= 3, "\(counters)")
    }

    @Test("aggregated lists: every page (nextPageToken) of machine types and instances; only A2/A3/G2 types asked for")
    func paging() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(faults: ["page_size": 1]); defer { gcp.stop() }
        let compute = try Self.provider(gcp, dir: dir)
        let offers = try await compute.offers(for: ResourceRequest())
        var state = try await gcp.server.admin("state")
        let listed = (state["counters"] as? [String: Int])?["machine_types_listed"] ?? 0
        #expect(offers.count == listed && listed > 3, "every page read, and no n2 type asked for: \(offers.count) of \(listed)")
        #expect(Set(offers.compactMap(\.zone)) == ["us-central1-a", "us-central1-b", "europe-west4-a"])
        let offer = try #require(offers.first { $0.zone == "us-central1-b" && $0.instanceType == "g2-standard-4" })
        _ = try await compute.launch(LaunchRequest(offer: offer, count: 3, idempotencyKey: "k-pages", tags: [CapstanTags.intent: "k-pages"]))
        #expect(try await compute.describe(InstanceQuery(tags: [CapstanTags.intent: "k-pages"])).count == 3)
        state = try await gcp.server.admin("state")
        #expect(((state["counters"] as? [String: Int])?["pages"] ?? 0) >= listed + 3, "one page per resource")
    }

    @Test("launch returns once the inserts are accepted (pending), without waiting out slow operations; the host's describe sees them run")
    func launchDoesNotWaitOutOperations() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(faults: ["operation_seconds": 3600]); defer { gcp.stop() }
        let compute = try Self.provider(gcp, dir: dir)
        let offer = try #require(try await compute.offers(for: ResourceRequest(gpu: "L4", gpusPerNode: 1)).first)
        let launched = try await compute.launch(LaunchRequest(offer: offer, count: 2, idempotencyKey: "k-slow", tags: [CapstanTags.intent: "k-slow"], spot: true))
        #expect(launched.count == 2 && launched.allSatisfy { $0.state == .pending && $0.spot && $0.tags[CapstanTags.intent] == "k-slow" }, "\(launched)")
        var seen: [Instance] = []
        for _ in 0..<300 where !(seen.count == 2 && seen.allSatisfy { $0.state == .running }) {
            seen = try await compute.describe(InstanceQuery(ids: launched.map(\.id)))
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(Set(seen.map(\.id)) == Set(launched.map(\.id)) && seen.allSatisfy { $0.state == .running })
    }

    @Test("terminate retried while the delete is under way: the same request id, still terminating, one delete")
    func terminateRetried() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(faults: ["delete_seconds": 3600]); defer { gcp.stop() }
        let compute = try Self.provider(gcp, dir: dir)
        let offer = try #require(try await compute.offers(for: ResourceRequest(gpu: "L4", gpusPerNode: 1)).first)
        let launched = try await compute.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k-del", tags: [CapstanTags.intent: "k-del"]))
        let first = try await compute.terminate(ids: launched.map(\.id))
        let again = try await compute.terminate(ids: launched.map(\.id))
        #expect(first.map(\.state) == [.terminating] && again.map(\.state) == [.terminating])
        #expect((try await gcp.server.admin("state")["counters"] as? [String: Int])?["deletes"] == 1)
    }

    @Test("labels: Capstan's tags encoded reversibly (`:` and every character GCP forbids)")
    func labelEncoding() async throws {
        // Through the plugin (its Swift types are its own): a launch's tags come back equal.
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let compute = try Self.provider(gcp, dir: dir)
        let offer = try #require(try await compute.offers(for: ResourceRequest(gpu: "L4", gpusPerNode: 1)).first)
        let tags = ["capstan:owner": "A_b:c.D", "under_score": "x_5f", "capstan:nodes": "12", "Name": "n", "9lives": "z_z"]
        let launched = try await compute.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k-labels", tags: tags))
        #expect(launched.first?.tags == tags)
        #expect(try await compute.describe(InstanceQuery(tags: ["capstan:owner": "A_b:c.D"])).count == 1)
        let long = await #expect(throws: CapstanError.self) {
            try await compute.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k-long", tags: ["t": String(repeating: "X", count: 30)]))
        }
        #expect(long?.code == .invalidRequest && long?.message.contains("cannot be a GCP label") == true)
    }

    @Test("GCS through the plugin on gcp-storage-emulator: resumable upload in chunks, CRC32C/MD5/SHA-256 checked, no overwrite when asked, list, head, get, delete")
    func storage() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let gcs = try await GCSEmulator.start(); defer { gcs.stop() }
        try await GCSEmulator.createBucket(gcs, "capstan-ckpt")
        let instance = try PluginLibrary.load(path: GCPServer.pluginPath).instantiate(config: gcp.config(dir, storage: gcs.base))
        let store = try PluginObjectStore(instance, location: "gs://capstan-ckpt/run1")
        try makeFile(dir.file("f"), size: 20 << 20 + 12345)
        let progress = LockedBox<[UInt64]>([])
        let info = try await store.put(file: dir.file("f"), key: "step-1/model.bin", options: PutOptions(metadata: ["step": "1"]), progress: { p in progress.withLock { $0.append(p.bytesDone) } })
        #expect(info.size == 20 << 20 + 12345 && info.sha256?.count == 64 && info.key == "step-1/model.bin")
        #expect(progress.withLock { $0.count } >= 3, "three 8 MiB chunks")
        let head = try #require(try await store.head(key: "step-1/model.bin"))
        #expect(head.sha256 == info.sha256 && head.size == info.size)
        let exists = await #expect(throws: CapstanError.self) { try await store.put(file: dir.file("f"), key: "step-1/model.bin", options: PutOptions(ifNoneMatch: true)) }
        #expect(exists?.cloudCode == "PreconditionFailed")
        dir.write("small", "hello")
        _ = try await store.put(file: dir.file("small"), key: "step-1/DONE", options: PutOptions())
        #expect(try await store.list(prefix: "step-1/").map(\.key) == ["step-1/DONE", "step-1/model.bin"])
        _ = try await store.get(key: "step-1/model.bin", to: dir.file("back"))
        #expect(FileManager.default.contentsEqual(atPath: dir.file("f"), andPath: dir.file("back")))
        try await store.delete(key: "step-1/DONE")
        try await store.delete(key: "step-1/DONE")
        #expect(try await store.head(key: "step-1/DONE") == nil)
        let missing = await #expect(throws: CapstanError.self) { try await store.get(key: "nope", to: dir.file("x")) }
        #expect(missing?.code == .notFound)
    }
}

/// gcp-storage-emulator (PyPI) on a free loopback port, in memory.
enum GCSEmulator {
    static func start() async throws -> TestServerProcess {
        let port = try freeLoopbackPort()
        return try await TestServerProcess("gcs", ["gcp-storage-emulator", "start", "--host", "127.0.0.1", "--port", "\(port)", "--in-memory"], fixedPort: port)
    }

    /// Creates a bucket (retried: the emulator may accept connections a moment before it answers).
    static func createBucket(_ server: TestServerProcess, _ name: String) async throws {
        for attempt in 0..<40 {
            do {
                let doc = try await TestServerProcess.json(server.base + "/storage/v1/b?project=capstan-test", body: ["name": name])
                if doc["name"] as? String == name { return }
            } catch where attempt < 39 {}
            try await Task.sleep(for: .milliseconds(250))
        }
        throw CapstanError(.internalError, "gcp-storage-emulator did not create bucket \(name).")
    }
}

@Suite("capstan up/down on GCP (test server)", .serialized)
struct GCPProvisioningTests {
    static func home(_ gcp: GCPServer) throws -> TempDir {
        let home = TempDir("capstan-gcp")
        home.write("config.yaml", "providers:\n  local:\n    enabled: false\n" + (try gcp.section(home: home, zones: ["us-central1-a", "us-central1-b"])))
        return home
    }

    static func env(_ home: TempDir) -> [String: String] {
        ["CAPSTAN_HOME": home.path, "CAPSTAN_PLUGIN_PATH": GCPServer.pluginPath]
    }

    /// Live instances this home owns, and those no running cluster of it claims.
    static func leaked(_ gcp: GCPServer, home: TempDir) async throws -> (live: [Instance], leaked: [Instance]) {
        let dir = TempDir(); defer { dir.cleanup() }
        return try await ownedInstances(GCPPluginTests.provider(gcp, dir: dir), home: home)
    }

    @Test("up on SPOT fails over from an exhausted zone, down deletes; the key never reaches the state or the output")
    func upDown() async throws {
        let gcp = try await GCPServer(faults: ["no_capacity_zones": ["us-central1-a"]]); defer { gcp.stop() }
        let home = try Self.home(gcp); defer { home.cleanup() }
        let up = try await runProcess(BuildProducts.capstan, ["up", "g1", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2", "--spot"], environment: Self.env(home))
        #expect(up.status == 0, "\(up.stderr)\n\(up.stdout)")
        #expect(up.stdout.contains("#1 capacity: Compute Engine could not create") && up.stdout.contains("us-central1-b"), "\(up.stdout)")
        let (live, leaked) = try await Self.leaked(gcp, home: home)
        #expect(live.count == 2 && leaked.isEmpty && live.allSatisfy { $0.spot && $0.zone == "us-central1-b" })
        let down = try await runProcess(BuildProducts.capstan, ["down", "g1"], environment: Self.env(home))
        #expect(down.status == 0, "\(down.stderr)")
        #expect(try await Self.leaked(gcp, home: home).live.isEmpty)
        let keyLine = gcp.privateKey.split(separator: "\n")[2]
        let scan = SecretScan([home.path + "/state"], for: String(keyLine))
        #expect(scan.hits.isEmpty && scan.covered("capstan.db"), "\(scan.hits)")
        #expect(!(up.stdout + up.stderr + down.stdout + down.stderr).contains(String(keyLine)))
    }

    @Test("down deletes a preempted spot VM Compute Engine still lists (TERMINATED, disk billed)")
    func downDeletesPreempted() async throws {
        let gcp = try await GCPServer(faults: ["preempt_delete_seconds": 3600]); defer { gcp.stop() }
        let home = try Self.home(gcp); defer { home.cleanup() }
        let up = try await runProcess(BuildProducts.capstan, ["up", "p1", "--gpu", "L4", "--gpus-per-node", "1", "--nodes", "2", "--spot"], environment: Self.env(home))
        #expect(up.status == 0, "\(up.stderr)\n\(up.stdout)")
        let live = try await Self.leaked(gcp, home: home).live
        let name = try #require(live.first?.details["name"])
        try await gcp.server.admin("preempt", ["name": name])
        try await recordPreempted(try #require(live.first?.id), home: home)
        let down = try await runProcess(BuildProducts.capstan, ["down", "p1"], environment: Self.env(home))
        #expect(down.status == 0, "\(down.stderr)")
        let left = try await gcp.server.admin("state")["instances"] as? [[String: Any]] ?? []
        #expect(left.isEmpty, "\(left.map { "\($0["name"] ?? "?") \($0["status"] ?? "?")" })")
    }

    @Test("reconcile deletes a preempted spot VM still listed whose cluster no longer runs")
    func reconcileDeletesPreempted() async throws {
        let gcp = try await GCPServer(faults: ["preempt_delete_seconds": 3600]); defer { gcp.stop() }
        let home = try Self.home(gcp); defer { home.cleanup() }
        let up = try await runProcess(BuildProducts.capstan, ["up", "p2", "--gpu", "L4", "--gpus-per-node", "1", "--nodes", "1", "--spot"], environment: Self.env(home))
        #expect(up.status == 0, "\(up.stderr)\n\(up.stdout)")
        let live = try await Self.leaked(gcp, home: home).live
        let node = try #require(live.first)
        try await gcp.server.admin("preempt", ["name": node.details["name"] ?? ""])
        // As a `down` before this fix left it: the cluster terminated, the preempted VM listed.
        try await recordPreempted(node.id, home: home, also: "UPDATE cluster SET status = 'terminated' WHERE name = 'p2';")
        let rec = try await runProcess(BuildProducts.capstan, ["reconcile"], environment: Self.env(home))
        #expect(rec.status == 0, "\(rec.stderr)")
        let left = try await gcp.server.admin("state")["instances"] as? [[String: Any]] ?? []
        #expect(left.isEmpty, "\(left.map { "\($0["name"] ?? "?") \($0["status"] ?? "?")" })\n\(rec.stdout)")
    }

    @Test("kill -9 of up and of down on GCP, then reconcile: no live instance that no cluster owns")
    func crashes() async throws {
        let gcp = try await GCPServer(); defer { gcp.stop() }
        try await killUpAndDownThenReconcile(provider: "gcp", makeHome: { try Self.home(gcp) }, env: Self.env, owned: { try await Self.leaked(gcp, home: $0) })
    }
}

/// Records instance `id` as preempted in `home`'s SQLite store, as a job's node watch does
/// (JobController), with `also` (more SQL) in the same call.
func recordPreempted(_ id: String, home: TempDir, also: String = "") async throws {
    let sql = "UPDATE instance SET state = 'preempted', instance = json_set(instance, '$.state', 'preempted') WHERE id = '\(id)'; " + also
    // Python's sqlite3 (CI installs no sqlite3 command).
    let script = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()"
    let r = try await runProcess("/usr/bin/env", ["python3", "-c", script, home.path + "/state/capstan.db", sql])
    #expect(r.status == 0, "\(r.stderr)")
}
