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

/// Issue 14's numbered failures of the state and provisioning layer, each through the built
/// `capstan` against the sim cloud with a state file (its instances outlive the process).
@Suite("Reliability: crashes and lost state never leak", .serialized)
struct ReliabilityTests {
    struct Home {
        let dir = TempDir("capstan-rel")
        let failBootRegions: [String]?
        /// `failBoots`: every region's nodes fail while booting.
        let bootSeconds: Double
        init(failBoots: Bool = false, bootSeconds: Double = 0.4) {
            self.bootSeconds = bootSeconds
            failBootRegions = failBoots ? ["sim-east-1", "sim-west-1", "sim-eu-1"] : nil
            let extra = failBoots ? "    failBootRegions: [sim-east-1, sim-west-1, sim-eu-1]" : ""
            dir.write("config.yaml", """
                providers:
                  local:
                    enabled: false
                  sim:
                    latencyMs: 150
                    bootSeconds: \(bootSeconds)
                    stateFile: \(dir.file("sim-cloud.json"))
                \(extra)
                """)
        }
        static let up = ["up", "c1", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2"]

        func capstan(_ args: [String], crashAt: String? = nil) async throws -> ProcessResult {
            var env = ["CAPSTAN_HOME": dir.path]
            if let crashAt { env["CAPSTAN_TEST_CRASH_AT"] = crashAt }
            return try await runProcess(BuildProducts.capstan, args, environment: env, timeout: 120)
        }
        /// What the cloud has alive (looking moves booting nodes on, as any describe does: with
        /// the same switches as the config's).
        func live() async throws -> [Instance] {
            try await SimulatedCloud(configuration: .init(bootSeconds: bootSeconds, stateFile: dir.file("sim-cloud.json"), failBootRegions: failBootRegions)).describe(InstanceQuery())
        }
        func store() throws -> SQLiteStateStore { try SQLiteStateStore.open(home: CapstanHome(root: dir.path)) }
    }

    @Test("kill -9 of down: the next status, up or down finishes the termination", arguments: ["status", "up", "down"])
    func killedDown(next: String) async throws {
        let home = Home(); defer { home.dir.cleanup() }
        #expect(try await home.capstan(Home.up).status == 0)
        for point in ["down.marked", "down.listed"] {
            if try await home.store().cluster(named: "c1")?.status != .running { #expect(try await home.capstan(Home.up).status == 0) }
            let killed = try await home.capstan(["down", "c1"], crashAt: point)
            #expect(killed.status == 9)
            await #expect(try home.store().cluster(named: "c1")?.status == .terminating)
            #expect(try await home.live().count == 2, "the kill came before any terminate call")
            let r = try await home.capstan(next == "up" ? Home.up : [next] + (next == "down" ? ["c1"] : []))
            #expect(r.status == 0, "\(next) after a killed down (\(point)): \(r.stderr)")
            let clusters = try await home.store().clusters(includeFinished: true)
            #expect(!clusters.contains { $0.status == .terminating }, "\(next): a cluster is still terminating")
            // `up` replaced it with a new running c1; status and down leave nothing.
            let live = try await home.live()
            if next == "up" {
                let c1 = try? await home.store().cluster(named: "c1")
                #expect(live.count == 2 && live.allSatisfy { $0.tags[CapstanTags.clusterID] == c1?.id })
                #expect(try await home.capstan(["down", "c1"]).status == 0)
            } else {
                #expect(live.isEmpty, "\(next) left \(live.map(\.id)) running")
            }
        }
    }

    @Test("reconcile after up was killed with nodes still booting waits for them: failed boots fail the cluster")
    func interruptedUpWithFailingBoots() async throws {
        for fails in [true, false] {
            let home = Home(failBoots: fails, bootSeconds: 2); defer { home.dir.cleanup() }
            #expect(try await home.capstan(Home.up, crashAt: "up.after-launch").status == 9)
            #expect(try await home.live().allSatisfy { $0.state == .pending }, "the kill came after the nodes had booted")
            let r = try await home.capstan(["reconcile", "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            let c1 = try await #require(try home.store().cluster(named: "c1"))
            let live = try await home.live()
            if fails {
                #expect(c1.status == .failed, "nodes that failed to boot were adopted as running")
                #expect(live.isEmpty, "failed nodes left billing: \(live.map(\.id))")
                // Later reconciles agree.
                #expect(try await home.capstan(["reconcile"]).status == 0)
                await #expect(try home.store().cluster(named: "c1")?.status == .failed)
            } else {
                #expect(c1.status == .running)
                #expect(live.count == 2 && live.allSatisfy { $0.state == .running })
            }
        }
    }

    @Test("a lost or emptied state database orphans nothing: the owner id survives, clusters are rebuilt from tags", arguments: ["deleted", "empty"])
    func lostDatabase(how: String) async throws {
        let home = Home(); defer { home.dir.cleanup() }
        #expect(try await home.capstan(Home.up).status == 0)
        let owner = try await home.store().ownerID()
        let id = try await #require(try home.store().cluster(named: "c1")?.id)
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: home.dir.file("state/capstan.db" + suffix)) }
        if how == "empty" { home.dir.write("state/capstan.db", "") }
        // The hint's promise: the next command finds the cluster again.
        let status = try await home.capstan(["status", "--json"])
        #expect(status.status == 0, "\(status.stderr)")
        await #expect(try home.store().ownerID() == owner)
        let c1 = try await #require(try home.store().cluster(named: "c1"), "reconcile did not rebuild c1")
        #expect(c1.id == id && c1.status == .running && c1.nodes == 2 && c1.offer?.instanceType == "sim.8xh100")
        await #expect(try home.store().instances(cluster: id).filter { !$0.state.isGone }.count == 2)
        let down = try await home.capstan(["down", "c1"])
        #expect(down.status == 0, "\(down.stderr)")
        #expect(try await home.live().isEmpty)
    }

    @Test("down NAME after the database was lost finds the cluster by its tags")
    func downAfterLoss() async throws {
        let home = Home(); defer { home.dir.cleanup() }
        #expect(try await home.capstan(Home.up).status == 0)
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: home.dir.file("state/capstan.db" + suffix)) }
        let down = try await home.capstan(["down", "c1"])
        #expect(down.status == 0, "\(down.stderr)")
        #expect(try await home.live().isEmpty)
    }

    @Test("eight processes opening a brand-new home at once all succeed")
    func schemaRace() async throws {
        for round in 0..<4 {
            let home = Home(); defer { home.dir.cleanup() }
            let results = try await withThrowingTaskGroup(of: ProcessResult.self) { group in
                for _ in 0..<8 { group.addTask { try await home.capstan(["status", "--no-reconcile"]) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let failed = results.filter { $0.status != 0 }
            #expect(failed.isEmpty, "round \(round): \(failed.map(\.stderr))")
            // One owner id for all of them.
            await #expect(try String(contentsOfFile: home.dir.file("owner-id"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == home.store().ownerID())
        }
    }

    @Test("a damaged owner-id file is a clear error naming the file, and nothing is written")
    func damagedOwnerID() async throws {
        let home = Home(); defer { home.dir.cleanup() }
        home.dir.write("owner-id", "not an id; rm -rf /\n")
        let r = try await home.capstan(Home.up)
        #expect(r.status == 1)
        #expect(r.stderr.contains("The owner id file \(home.dir.file("owner-id")) is damaged"), "\(r.stderr)")
        #expect(r.stderr.contains("Restore it from a backup"), "\(r.stderr)")
        #expect(try await home.live().isEmpty)
        #expect(try String(contentsOfFile: home.dir.file("owner-id"), encoding: .utf8) == "not an id; rm -rf /\n", "the file was rewritten")
    }

    @Test("capstan move: an unknown or finished cluster is a clear error; a running one moves and leaves nothing behind")
    func moveCommand() async throws {
        let home = Home(); defer { home.dir.cleanup() }
        let unknown = try await home.capstan(["move", "nosuch"])
        #expect(unknown.status == 1 && unknown.stderr.contains("Cluster 'nosuch' is not running, so it cannot be moved."), "\(unknown.stderr)")
        #expect(try await home.capstan(Home.up).status == 0)
        let from = try await #require(try home.store().cluster(named: "c1")?.offer)
        let moved = try await home.capstan(["move", "c1", "--json"])
        #expect(moved.status == 0, "\(moved.stderr)")
        let c1 = try await #require(try home.store().cluster(named: "c1"))
        #expect(c1.status == .running && c1.offer?.region != from.region)
        let live = try await home.live()
        #expect(live.count == 2 && live.allSatisfy { $0.region == c1.offer?.region && $0.tags[CapstanTags.moveFrom] != nil }, "\(live.map(\.region))")
        #expect(try await home.capstan(["down", "c1"]).status == 0)
        let finished = try await home.capstan(["move", "c1"])
        #expect(finished.status == 1 && finished.stderr.contains("is not running"), "\(finished.stderr)")
        #expect(try await home.live().isEmpty)
    }

    @Test("kill -9 with the owner-id file written and the database's copy not yet committed: the next command agrees with the file")
    func killedWhileWritingOwnerID() async throws {
        let home = Home(); defer { home.dir.cleanup() }
        let killed = try await home.capstan(["status", "--no-reconcile"], crashAt: "state.owner-written")
        #expect(killed.status == 9, "the fault point was not reached: \(killed.stderr)")
        let written = try String(contentsOfFile: home.dir.file("owner-id"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try await home.capstan(Home.up).status == 0)
        await #expect(try home.store().ownerID() == written)
        #expect(try await home.live().allSatisfy { $0.tags[CapstanTags.owner] == written })
        #expect(try await home.capstan(["down", "c1"]).status == 0)
        #expect(try await home.live().isEmpty)
    }
}
