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

/// The chaos suite: the built `capstan` is SIGKILLed at every fault point of `up`, `down`,
/// `move` and `reconcile` (``FaultPoints/provisioning``), on the sim cloud (its instances outlive the
/// process, 50 ms per API call) and on EC2 (moto, over HTTP). Then one plain `capstan
/// reconcile` runs, and the clouds are counted: no live instance that no running cluster owns,
/// no cluster left `provisioning` or `terminating`, every running cluster whole — and a final
/// `down` leaves nothing running.
@Suite("Chaos: kill -9 at every fault point, then one reconcile", .serialized)
struct ChaosTests {
    enum Cloud: String, CaseIterable, CustomStringConvertible {
        case sim, ec2
        var description: String { rawValue }
    }

    /// How a point is reached: the commands run before the killed one, and the killed one.
    struct Scenario: CustomStringConvertible {
        var point: String
        var before: [[String]] = []
        var killed: [String]
        /// Plant an instance of a finished cluster at the cloud before the killed command (an
        /// orphan for reconcile to terminate).
        var orphan = false
        /// Lose the state database before the killed command (reconcile rebuilds from tags).
        var loseDatabase = false
        /// Nodes fail to boot in the cheapest region (the failed attempt cleans up).
        var failFirstRegion = false
        var description: String { point }
    }

    static let up = ["up", "c1", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2"]

    static let scenarios: [Scenario] = [
        Scenario(point: "up.created", killed: up),
        Scenario(point: "up.searched", killed: up),
        Scenario(point: "up.before-launch", killed: up),
        Scenario(point: "up.after-launch", killed: up),
        Scenario(point: "up.recorded", killed: up),
        Scenario(point: "up.waiting", killed: up),
        Scenario(point: "up.cleanup", killed: up, failFirstRegion: true),
        Scenario(point: "up.before-launch:2", killed: up, failFirstRegion: true),
        Scenario(point: "up.ready", killed: up),
        Scenario(point: "down.marked", before: [up], killed: ["down", "c1"]),
        Scenario(point: "down.listed", before: [up], killed: ["down", "c1"]),
        Scenario(point: "down.terminated", before: [up], killed: ["down", "c1"]),
        Scenario(point: "down.recorded", before: [up], killed: ["down", "c1"]),
        Scenario(point: "reconcile.listed", before: [up], killed: ["reconcile"], orphan: true),
        Scenario(point: "reconcile.locked", before: [up], killed: ["reconcile"], orphan: true),
        Scenario(point: "reconcile.terminating", before: [up], killed: ["reconcile"], orphan: true),
        Scenario(point: "reconcile.terminated", before: [up], killed: ["reconcile"], orphan: true),
        Scenario(point: "reconcile.rebuilt", before: [up], killed: ["reconcile"], loseDatabase: true),
        // These two need an earlier crash to give reconcile its work: set up below.
        Scenario(point: "reconcile.finishing", before: [up], killed: ["reconcile"]),
        Scenario(point: "reconcile.recovering", killed: ["reconcile"]),
        // `capstan move`: a whole new gang, then the old one goes.
        Scenario(point: "move.before-launch", before: [up], killed: move),
        Scenario(point: "move.after-launch", before: [up], killed: move),
        Scenario(point: "move.recorded", before: [up], killed: move),
        Scenario(point: "move.waiting", before: [up], killed: move),
        Scenario(point: "move.cleanup", before: [up], killed: move, failFirstRegion: true),
        Scenario(point: "move.launched", before: [up], killed: move),
        Scenario(point: "move.retired", before: [up], killed: move),
        Scenario(point: "reconcile.moving", before: [up], killed: ["reconcile"]),
    ]
    static let move = ["move", "c1"]

    struct Home {
        let dir = TempDir("capstan-chaos")
        let cloud: Cloud
        let endpoint: String

        init(_ cloud: Cloud, failFirstRegion: Bool) throws {
            self.cloud = cloud
            switch cloud {
            case .sim:
                endpoint = ""
                dir.write("config.yaml", """
                    providers:
                      local:
                        enabled: false
                      sim:
                        bootSeconds: 0.6
                        latencyMs: 50
                        stateFile: \(dir.file("sim-cloud.json"))
                    \(failFirstRegion ? "    failBootRegions: [sim-east-1]\n" : "")
                    """)
            case .ec2:
                endpoint = try TestServers.moto
                dir.write("config.yaml", "providers:\n  local:\n    enabled: false\n" + AWSProvisioningTests.providerSection(dir, endpoint: endpoint))
            }
        }

        func capstan(_ args: [String], crashAt: String? = nil) async throws -> ProcessResult {
            var env = ["CAPSTAN_HOME": dir.path]
            if let crashAt { env["CAPSTAN_TEST_CRASH_AT"] = crashAt }
            return try await runProcess(BuildProducts.capstan, args, environment: env, timeout: 120)
        }

        var provider: any ComputeProvider {
            get throws {
                switch cloud {
                case .sim: return SimulatedCloud(configuration: .init(stateFile: dir.file("sim-cloud.json")))
                case .ec2:
                    var s = AWSSettings()
                    s.endpoint = endpoint
                    s.regions = ["us-east-1"]
                    s.imageId = "ami-12c6146b"
                    s.instanceTypes = ["p5.*"]
                    return try EC2ComputeProvider(settings: s, credentials: TestServers.motoCredentials, defaultRegion: nil)
                }
            }
        }

        func store() throws -> SQLiteStateStore { try SQLiteStateStore.open(home: CapstanHome(root: dir.path)) }

        /// Everything this home's owner ids have alive at the cloud.
        func live() async throws -> [Instance] {
            let p = try provider
            var out: [String: Instance] = [:]
            for owner in try await store().ownerIDs() {
                for i in try await p.describe(InstanceQuery(tags: [CapstanTags.owner: owner])) where i.state.isLive && i.state != .terminating {
                    out[i.id] = i
                }
            }
            return out.values.sorted { $0.id < $1.id }
        }

        /// Launches one instance tagged as node 0 of a cluster that has since been taken down.
        func plantOrphan() async throws {
            let store = try store()
            let old = Cluster(name: "gone", request: ResourceRequest(nodes: 1))
            var done = old
            done.status = .terminated
            done.terminatedAt = Date()
            try await store.insert(done)
            let p = try provider
            let offer = try #require(try await p.offers(for: ResourceRequest(gpu: "H100", gpusPerNode: 8)).first)
            let key = "cap-" + UUID().uuidString.lowercased()
            _ = try await p.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: key, tags: [
                CapstanTags.managed: "true", CapstanTags.owner: try store.ownerID(), CapstanTags.cluster: "gone",
                CapstanTags.clusterID: old.id, CapstanTags.intent: key, CapstanTags.node: "0",
            ], name: "capstan-gone"))
        }

        func loseDatabase() throws {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: dir.file("state/capstan.db" + suffix)) }
        }

        /// The invariants after one reconcile: returns what is wrong, empty when all holds.
        func violations() async throws -> [String] {
            let store = try store()
            var wrong: [String] = []
            let clusters = try await store.clusters(includeFinished: true)
            for c in clusters where c.status == .provisioning || c.status == .terminating {
                wrong.append("cluster \(c.name) stuck \(c.status.rawValue)")
            }
            let live = try await live()
            for i in live {
                let c = clusters.first { $0.id == i.tags[CapstanTags.clusterID] }
                var owned = false
                if let c, c.status == .running { owned = try await store.instances(cluster: c.id).contains { $0.id == i.id && !$0.state.isGone } }
                if !owned { wrong.append("instance \(i.id) (\(i.state.rawValue)) is owned by no running cluster (its cluster: \(c.map { "\($0.name) \($0.status.rawValue)" } ?? "unknown"))") }
            }
            for c in clusters where c.status == .running {
                let n = live.filter { $0.tags[CapstanTags.clusterID] == c.id }.count
                if n != c.nodes { wrong.append("running cluster \(c.name) has \(n) live instance(s) for \(c.nodes) node(s)") }
                // Capstan numbered the nodes (whichever process recorded them): one per index.
                let indices = try await store.instances(cluster: c.id).filter { !$0.state.isGone }.map(\.instance.nodeIndex).sorted()
                if indices != Array(0..<c.nodes) { wrong.append("running cluster \(c.name) has node indices \(indices)") }
            }
            // A terminated cluster's SSH key pair went with it.
            let keys = ClusterKeys(folder: dir.file("ssh/clusters"))
            for c in clusters where c.status == .terminated && FileManager.default.fileExists(atPath: keys.folder(clusterID: c.id)) {
                wrong.append("terminated cluster \(c.name) left its key pair in \(keys.folder(clusterID: c.id))")
            }
            return wrong
        }
    }

    static let all: [(Cloud, Scenario)] = Cloud.allCases.flatMap { cloud in
        scenarios.filter { cloud == .sim || !$0.failFirstRegion }.map { (cloud, $0) }
    }

    @Test("every fault point is in the chaos suite")
    func coverage() {
        let covered = Set(Self.scenarios.map { String($0.point.split(separator: ":")[0]) })
        // `move.retired-first` is reached only by a job's controller relaunching a gang that is
        // gone whole (no CLI verb does): JobTests.slurmRelaunchCrash kills it there.
        let reachable = Set(FaultPoints.provisioning.filter { !$0.hasPrefix("replace.") && $0 != "move.retired-first" })
        #expect(reachable.subtracting(covered).isEmpty, "not covered: \(reachable.subtracting(covered).sorted())")
        #expect(Self.scenarios.count >= 28)
    }

    @Test("kill -9 at a fault point, then one reconcile: nothing leaked, nothing stuck", arguments: all)
    func killAndReconcile(cloud: Cloud, scenario: Scenario) async throws {
        let home = try Home(cloud, failFirstRegion: scenario.failFirstRegion); defer { home.dir.cleanup() }
        for args in scenario.before {
            let r = try await home.capstan(args)
            #expect(r.status == 0, "\(scenario) setup \(args): \(r.stderr)")
        }
        // Work for the reconcile points that finish someone else's crash.
        switch scenario.point {
        case "reconcile.finishing":
            #expect(try await home.capstan(["down", "c1"], crashAt: "down.marked").status == 9)
        case "reconcile.recovering":
            #expect(try await home.capstan(Self.up, crashAt: "up.waiting").status == 9)
        case "reconcile.moving":
            #expect(try await home.capstan(Self.move, crashAt: "move.launched").status == 9)
        default: break
        }
        if scenario.orphan { try await home.plantOrphan() }
        if scenario.loseDatabase { try home.loseDatabase() }

        let killed = try await home.capstan(scenario.killed, crashAt: scenario.point)
        #expect(killed.status == 9, "\(cloud) \(scenario): the fault point was not reached (exit \(killed.status)): \(killed.stderr)")

        let reconcile = try await home.capstan(["reconcile"])
        #expect(reconcile.status == 0, "\(cloud) \(scenario): reconcile failed: \(reconcile.stderr)")
        let wrong = try await home.violations()
        #expect(wrong.isEmpty, "\(cloud) \(scenario): \(wrong.joined(separator: "; "))\nreconcile said: \(reconcile.stdout)")

        // Whatever survived is usable: a running c1 comes down; the name can be provisioned again.
        let c1 = try await home.store().cluster(named: "c1")
        if c1?.status == .running {
            let down = try await home.capstan(["down", "c1"])
            #expect(down.status == 0, "\(cloud) \(scenario): \(down.stderr)")
        } else {
            let again = try await home.capstan(Self.up)
            #expect(again.status == 0, "\(cloud) \(scenario): up after the crash: \(again.stderr)")
            _ = try await home.capstan(["down", "c1"])
        }
        #expect(try await home.live().isEmpty, "\(cloud) \(scenario): instances left after down")
    }
}
