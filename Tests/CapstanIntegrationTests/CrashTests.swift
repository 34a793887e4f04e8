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

/// kill -9 `capstan up` at each point of provisioning, against providers whose instances outlive
/// the process (local node slots; the sim plugin with a state file), then count leaks: live
/// instances that no running cluster owns after `capstan status` reconciles.
@Suite("Crash safety of capstan up", .serialized)
struct CrashTests {
    enum Target: String, CaseIterable { case local, sim }

    struct Home {
        let dir = TempDir("capstan-crash")
        let target: Target
        init(_ target: Target, extraSim: String = "", bootSeconds: Double = 0.6) {
            self.target = target
            switch target {
            case .local:
                dir.write("config.yaml", "providers:\n  local:\n    slots: 4\n    bootSeconds: \(bootSeconds)\n")
            case .sim:
                dir.write("config.yaml", "providers:\n  local:\n    enabled: false\n  sim:\n    bootSeconds: \(bootSeconds)\n    stateFile: \(dir.file("sim-cloud.json"))\n\(extraSim)")
            }
        }
        var upArgs: [String] {
            target == .local ? ["up", "c1", "--nodes", "2"] : ["up", "c1", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2"]
        }
        func capstan(_ args: [String], env: [String: String] = [:]) async throws -> ProcessResult {
            try await runProcess(BuildProducts.capstan, args, environment: env.merging(["CAPSTAN_HOME": dir.path]) { $1 })
        }
        /// Live instances at the provider that no running cluster in the state store owns.
        func leaks() async throws -> (live: Int, leaked: [String]) {
            let provider: any ComputeProvider = target == .local
                ? try LocalProvider(root: dir.file("local"), configuration: .init(slots: 4))
                : SimulatedCloud(configuration: .init(stateFile: dir.file("sim-cloud.json")))
            let live = try await provider.describe(InstanceQuery())
            let store = try SQLiteStateStore(path: dir.file("state/capstan.db"))
            var leaked: [String] = []
            for i in live {
                let cluster = try await store.cluster(id: i.tags[CapstanTags.clusterID] ?? "")
                var owned = false
                if let cluster, cluster.status == .running, cluster.intentKey == i.tags[CapstanTags.intent] {
                    owned = try await store.instances(cluster: cluster.id).contains { $0.id == i.id && !$0.state.isGone }
                }
                if !owned { leaked.append(i.id) }
            }
            return (live.count, leaked)
        }
    }

    @Test("kill -9 at each provisioning point leaves zero leaked instances", arguments: Target.allCases)
    func crashPoints(target: Target) async throws {
        for point in ["up.before-launch", "up.after-launch", "up.waiting"] {
            let home = Home(target); defer { home.dir.cleanup() }
            let r = try await home.capstan(home.upArgs, env: ["CAPSTAN_TEST_CRASH_AT": point])
            #expect(r.status == 9, "\(point): expected SIGKILL, got \(r.status): \(r.stderr)")
            let status = try await home.capstan(["status", "--json", "--all"])
            #expect(status.status == 0, "\(status.stderr)")
            let (live, leaked) = try await home.leaks()
            #expect(leaked.isEmpty, "\(target) \(point): leaked \(leaked)")
            // Before the launch call nothing exists; after it, the dead `up`'s nodes are adopted.
            #expect(live == (point == "up.before-launch" ? 0 : 2), "\(target) \(point)")
            // The name is usable again: either the recovered cluster runs, or `up` can retry.
            let again = try await home.capstan(point == "up.before-launch" ? home.upArgs : ["down", "c1"])
            #expect(again.status == 0, "\(again.stderr)")
        }
    }

    @Test("kill -9 during the second offer's launch, after a capacity failover")
    func crashAfterFailover() async throws {
        // The second launch's intent is written; the first launch that returns is the second offer's.
        for point in ["up.before-launch:2", "up.after-launch:1"] {
            let home = Home(.sim, extraSim: "    noCapacityRegions: [sim-east-1]\n"); defer { home.dir.cleanup() }
            let r = try await home.capstan(home.upArgs, env: ["CAPSTAN_TEST_CRASH_AT": point])
            #expect(r.status == 9, "\(point): the fault point was not reached (exit \(r.status)): \(r.stderr)")
            let status = try await home.capstan(["status"])
            #expect(status.status == 0, "\(point): status failed: \(status.stderr)")
            let (live, leaked) = try await home.leaks()
            #expect(leaked.isEmpty, "\(point): leaked \(leaked)")
            // The second offer's nodes were launched (and adopted) only past its launch call.
            #expect(live == (point == "up.before-launch:2" ? 0 : 2), "\(point): \(live) live")
        }
    }

    @Test("kill -9 at random moments of a booting launch", arguments: Target.allCases)
    func randomKills(target: Target) async throws {
        var afterLaunch: [String] = []
        for trial in 0..<5 {
            let home = Home(target, bootSeconds: 8); defer { home.dir.cleanup() }
            // (With the home's boot time: a describe here moves booting instances on.)
            let provider: any ComputeProvider = target == .local
                ? try LocalProvider(root: home.dir.file("local"), configuration: .init(slots: 4, bootSeconds: 8))
                : SimulatedCloud(configuration: .init(bootSeconds: 8, stateFile: home.dir.file("sim-cloud.json")))
            let p = Process()
            p.executableURL = URL(fileURLWithPath: BuildProducts.capstan)
            p.arguments = home.upArgs
            p.environment = ProcessInfo.processInfo.environment.merging(["CAPSTAN_HOME": home.dir.path]) { $1 }
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            // Trial 0 kills at a random early moment; the others once the launch has reached the
            // provider (its instances exist), at a random moment early in their 8 s boot (long enough
            // that a test task not run for seconds on a loaded machine still kills `up` before it ends).
            var launched = false
            if trial == 0 {
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...300)))
            } else {
                let end = Date().addingTimeInterval(60)
                while !launched && p.isRunning && Date() < end {
                    launched = !((try? await provider.describe(InstanceQuery(includeTerminated: true))) ?? []).isEmpty
                    if !launched { try await Task.sleep(for: .milliseconds(20)) }
                }
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...200)))
            }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let killed = p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGKILL
            if launched && killed { afterLaunch.append("trial \(trial)") }
            let status = try await home.capstan(["status"])
            #expect(status.status == 0, "\(target) trial \(trial): status failed: \(status.stderr)")
            let (_, leaked) = try await home.leaks()
            #expect(leaked.isEmpty, "\(target) trial \(trial) (\(launched ? "after the launch" : "early"), \(killed ? "killed" : "up had ended")): leaked \(leaked)")
        }
        // The point of the test: kills that land while launched instances boot.
        #expect(afterLaunch.count >= 2, "\(target): only \(afterLaunch) killed `up` after its launch and before it ended")
    }
}
