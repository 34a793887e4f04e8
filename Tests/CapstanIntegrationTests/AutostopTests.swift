import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanProviders
import CapstanTrainer
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Autostop and limits on the local provider: a job's `maxDuration`, a cluster's
/// `--idle-minutes`, and the agents' dead-man switch when their controller is killed.
@Suite("Autostop and limits", .serialized)
struct AutostopTests {
    /// A command that never ends: a step every 0.2 s, checkpoint step 5, and on SIGTERM (the
    /// env contract's stop) a final checkpoint, step 999, that takes a second (as a real one
    /// does), then exit 143. It runs under `sh -c`, which SIGTERM ends at once: the agent must
    /// wait for the rest of the group, not kill it when `sh` ends.
    static let forever = """
        import json, os, signal, sys, time
        ck = os.environ["CAPSTAN_CHECKPOINT_DIR"]
        step = 0
        def save(n):
            d = os.path.join(ck, "step-%d" % n)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "state.txt"), "w") as f:
                f.write("step %d\\n" % n)
            open(os.path.join(d, ".done"), "w").close()
        def term(signum, frame):
            time.sleep(1.0)
            save(999)
            print(json.dumps({"event": "final checkpoint", "step": 999, "after": step}), flush=True)
            sys.exit(143)
        signal.signal(signal.SIGTERM, term)
        while True:
            step += 1
            print(json.dumps({"step": step}), flush=True)
            if step == 5:
                save(5)
            time.sleep(0.2)
        """

    /// A one-node home whose job runs ``forever`` with `limits` added to its resources.
    static func home(_ limits: String) -> SmallJobHome {
        let home = SmallJobHome(run: "python3 forever.py", files: ["forever.py": forever])
        home.dir.write("job/job.yaml", """
            name: limited
            resources: {nodes: 1, providers: [local], \(limits)}
            workdir: .
            run: python3 forever.py
            checkpoint: {keep: 5}
            maxRestarts: 3
            storage: file://\(home.dir.file("bucket"))
            """)
        return home
    }

    static func liveNodes(_ home: SmallJobHome) async throws -> [Instance] {
        try await LocalProvider(root: home.dir.file("local"), configuration: .init(slots: 4)).describe(InstanceQuery())
    }

    /// Polls until `condition` holds (false after `timeout` seconds).
    static func wait(timeout: Double = 120, _ condition: () async throws -> Bool) async throws -> Bool {
        try await eventually(timeout: timeout, every: .milliseconds(200), condition)
    }

    // MARK: - maxDuration

    @Test("maxDuration: a job whose command never ends is stopped the graceful way when its budget runs out; it fails saying so, its final checkpoint is kept, its cluster is terminated")
    func maxDuration() async throws {
        let home = Self.home("maxDuration: 15s")
        defer { home.dir.cleanup() }
        let r = try await home.capstan(["launch", home.spec] + SmallJobHome.fast)
        let job = try await #require(try home.job())
        #expect(r.status != 0, "\(r.stdout)\n\(r.stderr)")
        #expect(job.status == .failed, "\(job.status) \(job.lastError ?? "")\n\(home.log(job.id).suffix(2000))")
        let error = job.lastError ?? ""
        #expect(error.hasPrefix("maxDuration 15s reached: the job ran "), "\(error)")
        #expect(error.contains("since its first start (restarts included) and was stopped; the last checkpoint is step "), "\(error)")
        let bucket = try FileObjectStore(location: job.storage)
        let cs = CheckpointStore(store: bucket, prefix: "checkpoints")
        #expect(try await cs.verified(step: 5) != nil, "what was complete before the stop is kept")
        // The command got SIGTERM and wrote its final checkpoint (a second's work, while the
        // `sh` above it had already ended); the agent uploaded it.
        let log = home.log(job.id)
        #expect(error.contains("the last checkpoint is step 999, kept in the bucket."), "\(error)")
        #expect(log.contains("\"event\": \"final checkpoint\""), "\(log.suffix(2000))")
        #expect(try await cs.verified(step: 999) != nil)
        #expect(job.latestCheckpoint == 999)
        // The attempt was stopped, not failed: the budget ended it.
        let attempts = try await home.store().attempts(job: job.id)
        #expect(attempts.map(\.outcome) == [.stopped], "\(attempts.map { "\($0.attempt) \($0.outcome) \($0.message ?? "")" })")
        // Its own cluster went, as on every other end.
        #expect(try await Self.liveNodes(home).isEmpty)
        #expect(try await home.store().cluster(named: job.clusterName)?.status == .terminated)
    }

    // MARK: - Idle clusters

    @Test("autostop: a cluster up with --idle-minutes 1 is terminated once idle past it (clock injected); a cluster with a running job is left alone; status shows the limit")
    func idleClusters() async throws {
        let home = SmallJobHome(run: "true")
        defer { home.dir.cleanup() }
        for name in ["idle", "busy", "nolimit"] {
            let r = try await home.capstan(["up", name, "--nodes", "1"] + (name == "nolimit" ? [] : ["--idle-minutes", "1"]))
            #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        }
        let store = try home.store()
        #expect(try await store.cluster(named: "idle")?.idleMinutes == 1)
        #expect(try await store.cluster(named: "nolimit")?.idleMinutes == nil)
        let status = try await home.capstan(["status"])
        #expect(status.stdout.contains("AUTOSTOP") && status.stdout.contains("idle 1m"), "\(status.stdout)")
        // A running job on "busy" (its controller is elsewhere: only the record matters).
        var job = JobRecord(id: "busy-job-1", name: "busy-job", spec: "run: x\n", specFolder: home.dir.path, settings: "{}", clusterName: "busy", ownsCluster: false, storage: "file:///tmp/x")
        job.status = .running
        job.startedAt = Date()
        try await store.insert(job)

        let registry = try ProviderRegistry.load(home: CapstanHome(root: home.dir.path), environment: ["CAPSTAN_HOME": home.dir.path])
        let provisioner = Provisioner(providers: registry.compute, store: try SQLiteStateStore.open(home: registry.home), locks: ClusterLocks(folder: registry.home.stateFolder + "/locks"))
        // Not yet idle for a minute: nothing goes.
        #expect(await provisioner.stopIdleClusters(now: Date()) == [])
        // Two minutes on (an injected clock: no waiting): only the idle one goes.
        #expect(await provisioner.stopIdleClusters(now: Date().addingTimeInterval(120)) == ["idle"])
        #expect(try await store.cluster(named: "idle")?.status == .terminated)
        #expect(try await store.cluster(named: "busy")?.status == .running)
        #expect(try await store.cluster(named: "nolimit")?.status == .running)
        let idleID = try #require(try await store.cluster(named: "idle")?.id)
        let events = try await store.events(cluster: idleID, limit: 50)
        #expect(events.contains { $0.kind == "autostop" && $0.message.hasPrefix("autostop: idle 2 min (limit 1 min") }, "\(events.map(\.message))")
        #expect(try await Self.liveNodes(home).count == 2)
        // The job ends: the busy cluster is idle from its end, not from its start.
        _ = try await store.updateJob(job.id) { $0.status = .succeeded; $0.finishedAt = Date().addingTimeInterval(100) }
        #expect(await provisioner.stopIdleClusters(now: Date().addingTimeInterval(130)) == [])
        #expect(await provisioner.stopIdleClusters(now: Date().addingTimeInterval(161)) == ["busy"])
        #expect(try await store.cluster(named: "nolimit")?.status == .running)
        // `capstan reconcile` runs the same check (nothing idle is left with a limit).
        let rec = try await home.capstan(["reconcile", "--json"])
        #expect(rec.status == 0 && rec.stdout.contains("\"autostopped\""), "\(rec.stdout)\(rec.stderr)")
        _ = try await home.capstan(["down", "nolimit"])
        #expect(try await Self.liveNodes(home).isEmpty)
    }

    @Test("--idle-minutes takes a positive whole number; anything else is refused before anything is created", arguments: [
        (["--idle-minutes", "0"], "--idle-minutes must be a whole number of minutes from 1 to 525600, got 0"),
        (["--idle-minutes", "600000"], "--idle-minutes must be a whole number of minutes from 1 to 525600, got 600000"),
        (["--idle-minutes", "soon"], "--idle-minutes"),
        (["--idle-minutes", "1.5"], "--idle-minutes"),
    ])
    func badIdleMinutes(args: [String], message: String) async throws {
        let home = SmallJobHome(run: "true")
        defer { home.dir.cleanup() }
        let r = try await home.capstan(["up", "c", "--nodes", "1"] + args)
        #expect(r.status != 0)
        #expect(r.stderr.contains(message), "\(r.stderr)")
        if FileManager.default.fileExists(atPath: home.dir.file("state/capstan.db")) {
            #expect(try await home.store().clusters(includeFinished: true).isEmpty)
        }
        #expect(try await Self.liveNodes(home).isEmpty)
    }

    // MARK: - Dead-man switch

    @Test("dead-man switch: kill -9 the controller and let no one re-attach: the agent stops the command after deadManMinutes, the final checkpoint is in the bucket, the agent's status says why; a controller that comes later reports it")
    func deadMan() async throws {
        // 0.25 min = 15 s of silence (the controller polls every 0.5 s while it lives; 15 s, so
        // that a live controller slowed by a loaded machine does not trip it before the kill).
        let home = Self.home("deadManMinutes: 0.25")
        defer { home.dir.cleanup() }
        let launch = Process()
        launch.executableURL = URL(fileURLWithPath: BuildProducts.capstan)
        launch.arguments = ["launch", home.spec, "--quiet"] + SmallJobHome.fast
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") && $0.key != "CAPSTAN_PLUGIN_PATH" }
        env["CAPSTAN_HOME"] = home.dir.path
        env["TMPDIR"] = home.tmp
        launch.environment = env
        let out = FileHandle(forWritingAtPath: "/dev/null")
        launch.standardOutput = out
        launch.standardError = out
        try launch.run()
        #expect(try await Self.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 5 }, "no checkpoint came")
        let job = try await #require(try home.job())
        // The agent hears the controller: its mark is there and changing.
        let nodes = try await Self.liveNodes(home)
        let node = try #require(nodes.first)
        guard case .local(let access)? = node.resolvedAccess else { Issue.record("not a local node"); return }
        let state = access.workdir + "/.capstan/\(job.id)/attempt-1"
        #expect(FileManager.default.fileExists(atPath: state + "/controller-seen"))
        kill(launch.processIdentifier, SIGKILL)
        launch.waitUntilExit()

        func status() -> AgentStatus? {
            FileManager.default.contents(atPath: state + "/status.json").flatMap { try? PluginWire.decoder.decode(AgentStatus.self, from: $0) }
        }
        #expect(try await Self.wait { status()?.phase == .exited }, "the agent did not stop: \(String(describing: status()))")
        let final = try #require(status())
        #expect(final.deadMan?.hasPrefix("no controller for ") == true && final.deadMan?.hasSuffix("(deadManMinutes 0.25)") == true, "\(final.deadMan ?? "-")")
        #expect(final.stopRequested && final.endedIn == "run")
        let log = (try? String(contentsOfFile: state + "/node.log", encoding: .utf8)) ?? ""
        #expect(log.contains("dead-man switch: no controller for "), "\(log.suffix(2000))")
        #expect(log.contains("the node stays up"), "local nodes are never shut down")
        // The final checkpoint is committed in the bucket.
        let cs = CheckpointStore(store: try FileObjectStore(location: job.storage), prefix: "checkpoints")
        #expect(try await cs.verified(step: 5) != nil)
        #expect(log.contains("\"event\": \"final checkpoint\""), "\(log.suffix(2000))")
        #expect(try await cs.verified(step: 999) != nil)
        // Nothing of the attempt runs on; the node itself stays (a local node is never shut down).
        #expect(try await Self.wait(timeout: 90) { !Spawn.isAlive(final.agentPID) })
        #expect(try await Self.liveNodes(home).count == 1)
        #expect(try await home.job()?.status == .running, "no controller has seen it yet")

        // A controller that comes later (`capstan jobs` starts one) records why attempt 1 ended.
        let jobs = try await home.capstan(["jobs"])
        #expect(jobs.status == 0, "\(jobs.stderr)")
        let recorded = try await Self.wait {
            let a = try await home.store().attempt(job: job.id, number: 1)
            return a?.outcome == .failed && a?.message?.contains("stopped the command on its own (dead-man switch): no controller for ") == true
        }
        let first = try? await home.store().attempt(job: job.id, number: 1)
        #expect(recorded, "\(String(describing: first))")
        let c = try await home.capstan(["cancel", job.id])
        #expect(c.status == 0, "\(c.stdout)\(c.stderr)")
        #expect(try await Self.liveNodes(home).isEmpty)
    }
}
