import CapstanCore
import CapstanPostgres
import Logging
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTrainer
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A home with the local provider and a copy of examples/ddp-regression (real torch.distributed,
/// gloo on CPU, 2 nodes): launch it through the built `capstan`, break it, and check what the
/// bucket, the state store and the node logs say.
struct JobHome {
    let dir = TempDir("capstan-job")
    var env: [String: String] = [:]
    /// The home's state in PostgreSQL (its URL without the password, and the password), when
    /// config.yaml says so; nil: the home's SQLite file.
    var postgres: (url: String, password: String)?

    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    /// Fast enough for tests, slow enough to kill things mid-run.
    static let fast = ["--heartbeat-timeout", "4", "--exit-grace", "30", "--stop-grace", "3"]

    /// The `TMPDIR` of every process the test starts (capstan, and through it the local nodes):
    /// a folder the test owns, so the secret-leak scans see what was written to the temp folder.
    var tmp: String { dir.file("tmp") }

    /// `hold`: steps (of an attempt) after which train.py waits for ``release(attempt:step:)``,
    /// so a test breaks the job while it is surely still running, however late the test looks.
    init(steps: Int = 60, every: Int = 10, pause: Double = 0.05, keep: Int = 3, storage: String? = nil, extraEnv: [String: String] = [:], maxRestarts: Int = 3, hold: [(attempt: Int, step: Int)] = []) throws {
        dir.write("config.yaml", "providers:\n  local:\n    slots: 6\n")
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.file("job"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.repoRoot + "/examples/ddp-regression/train.py", toPath: dir.file("job/train.py"))
        var jobEnv = ["TOTAL_STEPS": "\(steps)", "CKPT_EVERY": "\(every)", "STEP_SLEEP": "\(pause)", "GLOO_SOCKET_IFNAME": "lo"]
        if !hold.isEmpty {
            jobEnv["HOLD_AT"] = hold.map { "\($0.attempt):\($0.step)" }.joined(separator: ",")
            jobEnv["HOLD_RELEASE"] = releasePrefix
        }
        for (k, v) in extraEnv { jobEnv[k] = v }
        dir.write("job/job.yaml", """
            name: ddp
            resources: {nodes: 2}
            workdir: .
            env:
            \(jobEnv.sorted { $0.key < $1.key }.map { "  \($0.key): \"\($0.value)\"" }.joined(separator: "\n"))
            run: python3 -m torch.distributed.run --nnodes=$NNODES --node-rank=$NODE_RANK --nproc-per-node=$NPROC_PER_NODE --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT train.py
            checkpoint: {keep: \(keep)}
            maxRestarts: \(maxRestarts)
            storage: \(storage ?? "file://" + dir.file("bucket"))
            """)
    }

    var spec: String { dir.file("job/job.yaml") }

    /// train.py's `HOLD_RELEASE`: the file `<prefix>-<attempt>-<step>` lets a held step go on.
    private var releasePrefix: String { dir.file("release") }

    /// Lets train.py go on past a `hold` step.
    func release(attempt: Int, step: Int) {
        _ = FileManager.default.createFile(atPath: "\(releasePrefix)-\(attempt)-\(step)", contents: nil)
    }

    func capstan(_ args: [String], env extra: [String: String] = [:], timeout: Double = 300) async throws -> ProcessResult {
        try await runProcess(BuildProducts.capstan, args, environment: env.merging(extra) { $1 }.merging(["CAPSTAN_HOME": dir.path, "TMPDIR": tmp]) { $1 }, timeout: timeout)
    }

    /// `capstan launch` in the background (to be killed), output to a file.
    func startLaunch(_ extra: [String] = []) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: BuildProducts.capstan)
        p.arguments = ["launch", spec] + Self.fast + extra
        var e = ProcessInfo.processInfo.environment
        e["CAPSTAN_PLUGIN_PATH"] = nil
        for (k, v) in env { e[k] = v }
        e["CAPSTAN_HOME"] = dir.path
        e["TMPDIR"] = tmp
        p.environment = e
        FileManager.default.createFile(atPath: dir.file("launch.out"), contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.file("launch.out")))
        p.standardOutput = out
        p.standardError = out
        try p.run()
        return p
    }

    func store() throws -> SQLiteStateStore { try SQLiteStateStore(path: dir.file("state/capstan.db")) }
    /// The home's state, wherever it is.
    func anyStore() async throws -> any StateStore {
        guard let postgres else { return try store() }
        if let open = PostgresStores.shared.withLock({ $0[postgres.url] }) { return open }
        let store = try await PostgresStateStore.connect(url: postgres.url, logger: Logger(label: "capstan.test"), environment: ["CAPSTAN_POSTGRES_PASSWORD": postgres.password])
        PostgresStores.shared.withLock { $0[postgres.url] = store }
        return store
    }
    func job() async throws -> JobRecord? { try await anyStore().jobs().first }

    /// Polls until `condition` holds (false after `timeout` seconds).
    func wait(timeout: Double = 120, _ condition: () async throws -> Bool) async throws -> Bool {
        try await eventually(timeout: timeout, condition)
    }

    /// The `{"step": …}` lines of node `node`'s log, as (attempt, step) in order.
    func steps(job: String, node: Int) throws -> [(attempt: Int, step: Int)] {
        let text = (try? String(contentsOfFile: dir.file("jobs/\(job)/logs/node-\(node).log"), encoding: .utf8)) ?? ""
        // A step line is one atomic append, but it may land after another writer's unfinished
        // line (a C++ library's stderr written piecemeal): read it from where it starts.
        return text.split(separator: "\n").compactMap { whole in
            guard let start = whole.range(of: "{\"step\"") else { return nil }
            let line = whole[start.lowerBound...]
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let s = o["step"] as? Int, let a = o["attempt"] as? Int else { return nil }
            return (a, s)
        }
    }

    /// The last lines of every node log (for failure messages).
    func logTail(job: String, lines: Int = 40) -> String {
        (0..<2).map { node in
            let text = (try? String(contentsOfFile: dir.file("jobs/\(job)/logs/node-\(node).log"), encoding: .utf8)) ?? ""
            return "--- node \(node)\n" + text.split(separator: "\n").suffix(lines).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// The pid of rank `rank`'s training worker in `attempt`, once it has written it.
    func workerPID(job: String, attempt: Int, rank: Int) -> pid_t? {
        let nodes = (try? FileManager.default.contentsOfDirectory(atPath: dir.file("local/nodes"))) ?? []
        for n in nodes {
            let f = dir.file("local/nodes/\(n)/work/.capstan/\(job)/attempt-\(attempt)/worker-\(rank).pid")
            if let s = try? String(contentsOfFile: f, encoding: .utf8), let pid = pid_t(s.trimmingCharacters(in: .whitespacesAndNewlines)) { return pid }
        }
        return nil
    }

    /// Processes recorded in the local nodes' `pids` files (pid, start time), all nodes or one.
    func recordedProcesses(node: String? = nil) -> [(pid: pid_t, start: UInt64)] {
        let nodes = node.map { [$0] } ?? ((try? FileManager.default.contentsOfDirectory(atPath: dir.file("local/nodes"))) ?? [])
        return nodes.flatMap { n -> [(pid: pid_t, start: UInt64)] in
            let text = (try? String(contentsOfFile: dir.file("local/nodes/\(n)/pids"), encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { line in
                let f = line.split(separator: " ")
                guard f.count == 2, let p = pid_t(f[0]), let s = UInt64(f[1]) else { return nil }
                return (p, s)
            }
        }
    }

    /// Recorded processes that are still running (same pid, same start time).
    func survivors(node: String? = nil) -> [pid_t] {
        recordedProcesses(node: node).filter { NodeProcesses.startTime(of: $0.pid) == $0.start }.map(\.pid)
    }

    /// Live local nodes (the provider's view).
    func liveNodes() async throws -> [Instance] {
        try await LocalProvider(root: dir.file("local"), configuration: .init(slots: 6)).describe(InstanceQuery())
    }

    /// Every node logged steps (in the last attempt, and in every attempt any node trained in),
    /// every node ran every step exactly once per attempt, each attempt after the first began
    /// right after the checkpoint it restored, and that checkpoint was the newest one committed
    /// before it started. Returns a one-line summary.
    func checkContinuity(job: JobRecord, total: Int, sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
        let state = try await anyStore()
        let attempts = try await state.attempts(job: job.id)
        let checkpoints = try await state.checkpoints(job: job.id)
        var summary: [String] = []
        let seen = try (0..<2).map { try steps(job: job.id, node: $0) }
        for node in 0..<2 {
            #expect(!seen[node].isEmpty, "node \(node)'s log has no steps at all", sourceLocation: sourceLocation)
            for a in attempts {
                let mine = seen[node].filter { $0.attempt == a.attempt }.map(\.step)
                // A gang trains together: an attempt that trained on one node trained on every
                // node, and the last one ran on every node to the end.
                let trained = seen.contains { $0.contains { $0.attempt == a.attempt } }
                if trained || a.attempt == attempts.last?.attempt {
                    #expect(!mine.isEmpty, "node \(node) logged no steps in attempt \(a.attempt)", sourceLocation: sourceLocation)
                }
                guard !mine.isEmpty else { continue }
                let first = (a.resumeStep ?? 0) + 1
                #expect(mine.first == first, "node \(node) attempt \(a.attempt) began at step \(mine.first!), expected \(first)", sourceLocation: sourceLocation)
                #expect(mine == Array(mine.first!...mine.last!), "node \(node) attempt \(a.attempt) skipped or repeated steps: \(mine)\n\(logTail(job: job.id, lines: 400))", sourceLocation: sourceLocation)
                if a.attempt == attempts.last?.attempt { #expect(mine.last == total, sourceLocation: sourceLocation) }
            }
        }
        for a in attempts.dropFirst() {
            let before = checkpoints.filter { $0.attempt < a.attempt }.map(\.step).max()
            #expect(a.resumeStep == before, "attempt \(a.attempt) resumed from \(a.resumeStep.map(String.init) ?? "scratch"), newest checkpoint before it: \(before.map(String.init) ?? "none")", sourceLocation: sourceLocation)
            summary.append("attempt \(a.attempt) resumed from step \(a.resumeStep.map(String.init) ?? "-")")
        }
        for a in attempts where a.outcome == .failed { summary.append("attempt \(a.attempt) failed: \(a.failureKind ?? "?") on node \(a.failedNode.map(String.init) ?? "?")") }
        return summary.joined(separator: "; ")
    }
}

/// Stores the tests opened on PostgreSQL, by URL (one pool per database, not one per poll).
enum PostgresStores {
    static let shared = Mutex<[String: PostgresStateStore]>([:])
}

/// Whether python3 imports torch (asked once per test process: every JobTests test asks).
func torchAvailable() -> Bool { torchImports }

private let torchImports = (try? runProcessBlocking("/usr/bin/env", ["python3", "-c", "import torch"], timeout: 60).status) == 0

@Suite("Jobs on local nodes with real torch.distributed", .serialized)
struct JobTests {
    init() throws {
        guard torchAvailable() else {
            throw CapstanError(.config, "python3 cannot import torch.", hint: "pip install torch (CPU wheel); .ci/run installs it.")
        }
    }

    @Test("a 2-node gloo job runs to the end; checkpoints land verified in a file:// bucket, outputs too, the cluster is gone")
    func fileBucket() async throws {
        let home = try JobHome(steps: 40)
        defer { home.dir.cleanup() }
        // This test runs first, while every other suite starts beside it on 2 cores: a 4 s
        // heartbeat can miss then, and a restart is not what it checks (other tests do).
        let r = try await home.capstan(["launch", home.spec, "--heartbeat-timeout", "20", "--exit-grace", "30", "--stop-grace", "3"])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("[node 1] {\"step\": 40"))
        let job = try await #require(try home.job())
        let history = try await home.store().attempts(job: job.id).map { "attempt \($0.attempt): \($0.failureKind ?? "ok") \($0.message ?? "")" }
        #expect(job.status == .succeeded && job.attempt == 1 && job.restarts == 0 && job.latestCheckpoint == 40, "\(history)\n\(home.logTail(job: job.id))")
        _ = try await home.checkContinuity(job: job, total: 40)
        let bucket = try FileObjectStore(location: job.storage)
        let cs = CheckpointStore(store: bucket, prefix: "checkpoints")
        #expect(try await cs.committedSteps() == [20, 30, 40])
        let m = try #require(try await cs.latestVerified())
        #expect(m.step == 40 && m.nodes == 2 && m.parts.map(\.node) == [0, 1] && m.parts.allSatisfy { $0.files.map(\.path) == ["state.pt"] })
        #expect(try await bucket.head(key: "outputs/model.pt") != nil)
        #expect(try await bucket.head(key: "outputs/manifest.json") != nil)
        #expect(try await home.liveNodes().isEmpty)
        // The CLI views agree.
        let list = try await home.capstan(["checkpoints", job.id])
        #expect(list.stdout.contains("40") && list.stdout.contains("yes"), "\(list.stdout)")
        let logs = try await home.capstan(["logs", job.id, "--node", "1"])
        #expect(logs.stdout.contains("{\"step\": 40, ") && logs.stdout.contains("==== attempt 1"))
        let jobs = try await home.capstan(["jobs", "--json"])
        #expect(jobs.stdout.contains("\"succeeded\""))
    }

    @Test("the same job with its checkpoints in S3 (SeaweedFS): manifests verify there")
    func s3Bucket() async throws {
        let endpoint = try TestServers.seaweed
        let creds = try TestServers.seaweedCredentials
        var home = try JobHome(steps: 30, storage: "s3://capstan-jobs/runs")
        defer { home.dir.cleanup() }
        home.env = ["AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_REGION": "us-east-1"]
        let admin = try S3ObjectStore(location: "s3://capstan-jobs/runs", credentials: creds, configuration: S3Configuration(endpoint: endpoint, region: "us-east-1", uploadStateFolder: home.dir.file("uploads")))
        try await admin.createBucket()
        let r = try await home.capstan(["launch", home.spec, "--quiet"] + JobHome.fast)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        let job = try await #require(try home.job())
        #expect(job.status == .succeeded && job.storage == "s3://capstan-jobs/runs/\(job.id)")
        let bucket = try S3ObjectStore(location: job.storage, credentials: creds, configuration: S3Configuration(endpoint: endpoint, region: "us-east-1", uploadStateFolder: home.dir.file("uploads")))
        let cs = CheckpointStore(store: bucket, prefix: "checkpoints")
        let m = try #require(try await cs.latestVerified())
        #expect(m.step == 30 && m.parts.count == 2)
        #expect(try await bucket.head(key: "outputs/model.pt") != nil)
        // Secrets stay out of what Capstan writes down: the home (the database included) and
        // the temp folder of every process it started.
        let scan = SecretScan([home.dir.path, home.tmp], for: creds.secretAccessKey)
        #expect(scan.covered("/state/capstan.db") && scan.covered("/logs/node-1.log"), "the scan missed the home: \(scan.scanned.count) files")
        #expect(scan.hits.isEmpty, "the secret key appears in \(scan.hits)")
    }

    @Test("kill -9 a node's training process at random times: every trial resumes from the latest checkpoint, no step lost or repeated beyond it")
    func killTrials() async throws {
        var results: [String] = []
        for trial in 1...3 {
            // Attempt 1 holds at step 140: the kill lands on a live worker however late it comes.
            let home = try JobHome(steps: 150, every: 10, hold: [(1, 140)])
            defer { home.dir.cleanup() }
            let launch = try home.startLaunch(["--quiet"])
            #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 }, "trial \(trial): no checkpoint came")
            let job = try await #require(try home.job())
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...4000)))
            let rank = Int.random(in: 0...1)
            let pid = try #require(home.workerPID(job: job.id, attempt: 1, rank: rank))
            kill(pid, SIGKILL)
            await launch.exited()
            let final = try await #require(try home.job())
            #expect(final.status == .succeeded, "trial \(trial): \(final.lastError ?? "")\n\((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
            let history = try await home.store().attempts(job: job.id).map { "attempt \($0.attempt): \($0.failureKind ?? "ok") \($0.message ?? "")" }
            #expect(final.attempt == 2 && final.restarts == 1, "trial \(trial): \(history)\n\(home.logTail(job: job.id))")
            let failed = try await #require(try home.store().attempt(job: job.id, number: 1))
            #expect(failed.failureKind == "signal", "a killed worker is an infrastructure failure, got \(failed.failureKind ?? "-")")
            let summary = try await home.checkContinuity(job: final, total: 150)
            let atStep = try home.steps(job: job.id, node: rank).filter { $0.attempt == 1 }.last?.step ?? 0
            results.append("trial \(trial): killed rank \(rank)'s worker after step \(atStep); \(summary)")
            if trial == 1 { try await eventsShowTheWholeHistory(home, job: final) }
        }
        print(results.joined(separator: "\n"))
    }

    /// `capstan events` and `jobs` after a job that restarted once: every attempt, the failure,
    /// the restart, checkpoints and the end, oldest first; the kind filter; JSON lines; cost.
    func eventsShowTheWholeHistory(_ home: JobHome, job: JobRecord) async throws {
        let events = try await home.capstan(["events", job.id])
        #expect(events.status == 0, "\(events.stderr)")
        let lines = events.stdout.split(separator: "\n").map(String.init)
        func first(_ needle: String) -> Int? { lines.firstIndex { $0.contains(needle) } }
        let a1 = first("Attempt 1 started on 2 node(s)"), a2 = first("Attempt 2 started on 2 node(s)")
        let restart = lines.firstIndex { $0.contains("  restarting ") }, done = lines.lastIndex { $0.contains("  succeeded ") }
        #expect(a1 != nil && a2 != nil && restart != nil && done != nil, "\(events.stdout)")
        if let a1, let a2, let restart, let done { #expect(a1 < restart && restart < a2 && a2 < done, "\(events.stdout)") }
        #expect(lines.contains { $0.contains("resuming from step") } && lines.contains { $0.contains("  checkpoint ") }, "\(events.stdout)")
        #expect(lines.allSatisfy { $0.range(of: #"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  "#, options: .regularExpression) != nil }, "\(events.stdout)")
        let attempts = try await home.capstan(["events", job.name, "--kind", "attempt"])
        #expect(attempts.stdout.split(separator: "\n").count == 2 && attempts.stdout.contains("Attempt 2"), "\(attempts.stdout)")
        let json = try await home.capstan(["events", job.id, "--json"])
        let objects = try json.stdout.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(objects.count == lines.count && objects.allSatisfy { $0?["kind"] is String && $0?["id"] is Int && $0?["message"] is String })
        // The store's whole history, not a page of it.
        let stored = try await home.anyStore().events(job: job.id, after: 0, limit: 10_000)
        #expect(stored.count == lines.count)
        // Bad input: an unknown job, an empty kind list.
        let unknown = try await home.capstan(["events", "no-such-job"])
        #expect(unknown.status != 0 && unknown.stderr.contains("no-such-job"), "\(unknown.stderr)")
        let empty = try await home.capstan(["events", job.id, "--kind", ","])
        #expect(empty.status != 0 && empty.stderr.contains("--kind"), "\(empty.stderr)")
        // `jobs` says what each job cost (local nodes are free).
        let list = try await home.capstan(["jobs"])
        #expect(list.stdout.contains("COST") && list.stdout.contains("$0.00"), "\(list.stdout)")
    }

    @Test("a node lost mid-upload: the cut checkpoint is never used; the job resumes from the one before on a replacement node")
    func cutUpload() async throws {
        let home = try JobHome(steps: 50, every: 10)
        defer { home.dir.cleanup() }
        // Each agent dies (SIGKILL) right after the 3rd checkpoint file it uploads: step 30's.
        let r = try await home.capstan(["launch", home.spec, "--quiet"] + JobHome.fast, env: ["CAPSTAN_TEST_CRASH_AT": "agent-upload:3"])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        let job = try await #require(try home.job())
        let attempts = try await home.store().attempts(job: job.id)
        #expect(attempts.count == 2 && attempts[0].failureKind == "heartbeat")
        #expect(attempts[1].resumeStep == 20, "resumed from \(attempts[1].resumeStep.map(String.init) ?? "scratch")")
        #expect(attempts[0].nodes[attempts[0].failedNode!] != attempts[1].nodes[attempts[0].failedNode!], "the lost node's capacity is replaced")
        let bucket = try FileObjectStore(location: job.storage)
        // Attempt 1's files of step 30 are there, its part record is not; step 30 is attempt 2's.
        #expect(try await bucket.list(prefix: "checkpoints/step-30/attempt-1/").allSatisfy { !$0.key.hasSuffix(".part.json") })
        #expect(try await CheckpointStore(store: bucket, prefix: "checkpoints").verified(step: 30)?.attempt == 2)
        _ = try await home.checkContinuity(job: job, total: 50)
        #expect(try await home.liveNodes().isEmpty)
    }

    @Test("a node whose instance goes away is replaced; only that node's capacity changes")
    func instanceGone() async throws {
        // Attempt 1 holds at step 20, so the node goes away mid-attempt whenever the test gets to it.
        let home = try JobHome(steps: 80, every: 10, hold: [(1, 20)])
        defer { home.dir.cleanup() }
        let launch = try home.startLaunch(["--quiet"])
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 })
        let job = try await #require(try home.job())
        let before = try await #require(try home.store().attempt(job: job.id, number: 1)).nodes
        // torchrun starts its worker in a session of its own; the agent records it anyway.
        let worker = try #require(home.workerPID(job: job.id, attempt: 1, rank: 1))
        #expect(try await home.wait(timeout: 90) { home.recordedProcesses(node: before[1]).contains { $0.pid == worker } }, "worker \(worker) is not recorded")
        _ = try await LocalProvider(root: home.dir.file("local"), configuration: .init(slots: 6)).terminate(ids: [before[1]])
        // Everything of the lost node dies with it, the worker included.
        #expect(try await home.wait(timeout: 90) { home.survivors(node: before[1]).isEmpty }, "left running: \(home.survivors(node: before[1]))")
        await launch.exited()
        let final = try await #require(try home.job())
        #expect(final.status == .succeeded, "\(final.lastError ?? "")")
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withTime, .withFractionalSeconds]
        await print(try home.store().events(job: job.id).map { "\(f.string(from: $0.time)) \($0.kind): \($0.message)" }.joined(separator: "\n"))
        let after = try await #require(try home.store().attempt(job: job.id, number: 2)).nodes
        #expect(after[0] == before[0] && after[1] != before[1])
        let failed = try await #require(try home.store().attempt(job: job.id, number: 1))
        #expect(["instance-gone", "heartbeat"].contains(failed.failureKind ?? ""), "\(failed.failureKind ?? "-"): \(failed.message ?? "")\n\(home.logTail(job: job.id))")
        _ = try await home.checkContinuity(job: final, total: 80)
    }

    @Test("a command that fails the same way twice is a user error: the job fails without spending every restart")
    func userError() async throws {
        let home = try JobHome(extraEnv: ["FAIL_WITH": "3"], maxRestarts: 5)
        defer { home.dir.cleanup() }
        let r = try await home.capstan(["launch", home.spec, "--quiet"] + JobHome.fast)
        #expect(r.status == 1)
        let job = try await #require(try home.job())
        #expect(job.status == .failed && job.attempt == 2 && job.restarts == 1)
        #expect(job.lastError?.contains("same way twice") == true, "\(job.lastError ?? "")")
        #expect(r.stderr.contains("same way twice"))
        #expect(try await home.liveNodes().isEmpty)
    }

    @Test("kill -9 capstan launch mid-job: `capstan jobs` re-attaches, the agents are not restarted, the job finishes")
    func controllerRestart() async throws {
        // Held at step 20 until the controller is gone: the kill always lands mid-job.
        let home = try JobHome(steps: 80, every: 10, hold: [(1, 20)])
        defer { home.dir.cleanup() }
        let launch = try home.startLaunch()
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 })
        kill(launch.processIdentifier, SIGKILL)
        await launch.exited()
        let job = try await #require(try home.job())
        #expect(job.status == .running)
        home.release(attempt: 1, step: 20)
        let jobs = try await home.capstan(["jobs"])
        #expect(jobs.stdout.contains(job.id), "\(jobs.stdout)\(jobs.stderr)")
        let logs = try await home.capstan(["logs", job.id, "-f"])
        #expect(logs.stdout.contains("capstan: job \(job.id) succeeded"), "\(logs.stdout.suffix(2000))\(logs.stderr)")
        let final = try await #require(try home.job())
        #expect(final.status == .succeeded && final.attempt == 1, "the running attempt was followed, not restarted")
        // Nothing lost from the logs across the controller change.
        for node in 0..<2 { #expect(try home.steps(job: job.id, node: node).map(\.step) == Array(1...80)) }
        #expect(try await home.liveNodes().isEmpty)
    }

    @Test("a workdir that holds Capstan's home is refused before anything starts")
    func workdirHoldsHome() async throws {
        let home = try JobHome()
        defer { home.dir.cleanup() }
        home.dir.write("job.yaml", "name: bad\nworkdir: .\nrun: echo hi\n")
        let r = try await home.capstan(["launch", home.dir.file("job.yaml")])
        #expect(r.status == 1)
        #expect(r.stderr.contains("contains Capstan's home"), "\(r.stderr)")
        await #expect(try home.job() == nil)
        #expect(try await home.liveNodes().isEmpty)
    }

    @Test("cancel stops every process of the job and terminates its cluster")
    func cancel() async throws {
        let home = try JobHome(steps: 1000, every: 10)
        defer { home.dir.cleanup() }
        let r = try await home.capstan(["launch", home.spec, "--detach"] + JobHome.fast)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 })
        let job = try await #require(try home.job())
        let c = try await home.capstan(["cancel", job.id])
        #expect(c.status == 0 && c.stdout.contains("cancelled"), "\(c.stdout)\(c.stderr)")
        await #expect(try home.job()?.status == .cancelled)
        #expect(try await home.liveNodes().isEmpty)
        let left = try runProcessBlocking("/usr/bin/pgrep", ["-f", job.id])
        #expect(left.stdout.isEmpty, "processes of the job are still running: \(left.stdout)")
        // Including the training workers, whose command lines do not name the job.
        #expect(home.recordedProcesses().count >= 6, "agents, commands and workers of 2 nodes are recorded")
        #expect(home.survivors().isEmpty, "left running: \(home.survivors())")
    }
}
