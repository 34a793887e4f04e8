import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanProviders
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A real Slurm cluster on this machine (scripts/slurm-lab.sh): munged, slurmctld on a bridge of
/// the lab's own, and slurmd in network and UTS namespaces (hostnames node1, node2, …), each
/// node with one H100 in GRES. Always taken down.
struct SlurmLab {
    let dir: TempDir
    /// `SLURM_CONF` and the lab's facts, as slurm-lab.sh printed them.
    let env: [String: String]
    var conf: String { env["SLURM_CONF"] ?? "" }
    var namespaces: [String] { (env["CAPSTAN_TEST_SLURM_NAMESPACES"] ?? "").split(separator: " ").map(String.init) }
    /// The lab bridge's own address (how the nodes reach this machine).
    var bridge: String { (env["CAPSTAN_TEST_SLURM_SUBNET"] ?? "").replacingOccurrences(of: ".0/24", with: ".1") }

    static func available() -> String? {
        guard getuid() == 0 else { return "the Slurm tests run slurmd in network namespaces: they need root" }
        for tool in ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch", "/usr/sbin/ip"] where !FileManager.default.fileExists(atPath: tool) {
            return "\(tool) is missing (apt install slurm-wlm munge iproute2; .ci/run does)"
        }
        return nil
    }

    static func up(_ count: Int = 2) async throws -> SlurmLab {
        try await Spawn.onThread { try upBlocking(count) }
    }

    private static func upBlocking(_ count: Int) throws -> SlurmLab {
        if let why = available() { throw CapstanError(.config, "Cannot build the Slurm test lab: \(why).") }
        let dir = TempDir("capstan-slurm")
        let r = try runProcessBlocking(JobHome.repoRoot + "/scripts/slurm-lab.sh", ["up", dir.path, "\(count)"], timeout: 90)
        guard r.status == 0 else {
            _ = try? runProcessBlocking(JobHome.repoRoot + "/scripts/slurm-lab.sh", ["down", dir.path], timeout: 60)
            dir.cleanup()
            throw CapstanError(.io, "slurm-lab.sh up failed: \(r.stderr)")
        }
        var env: [String: String] = [:]
        for line in r.stdout.split(separator: "\n") where line.hasPrefix("export ") {
            let kv = line.dropFirst(7).split(separator: "=", maxSplits: 1).map(String.init)
            if kv.count == 2 { env[kv[0]] = kv[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
        }
        return SlurmLab(dir: dir, env: env)
    }

    func down() {
        _ = try? runProcessBlocking(JobHome.repoRoot + "/scripts/slurm-lab.sh", ["down", dir.path], timeout: 60)
        dir.cleanup()
    }

    /// A Slurm command against the lab.
    func run(_ command: String, _ args: [String]) async throws -> ProcessResult {
        try await runProcess("/usr/bin/" + command, args, environment: ["SLURM_CONF": conf], timeout: 30)
    }

    /// The lab's jobs: `id|name|state|comment`, one per line.
    func jobs() async throws -> [[String]] {
        let r = try await run("squeue", ["-h", "-t", "all", "-o", "%i|%j|%T|%k"])
        #expect(r.status == 0, "\(r.stderr)")
        return r.stdout.split(separator: "\n").map { $0.split(separator: "|", omittingEmptySubsequences: false).map(String.init) }
    }

    /// Live (not finished) jobs Capstan submitted.
    func liveCapstanJobs() async throws -> [String] {
        try await jobs().filter { $0.count == 4 && $0[3].hasPrefix("capstan;") && ["PENDING", "CONFIGURING", "RUNNING"].contains($0[2]) }.map { $0[0] }
    }

    /// config.yaml with the slurm provider (the local one off).
    /// `slurm`: more settings of providers.slurm, one `key: value` per line.
    func config(workRoot: String, slurm: [String] = []) -> String {
        """
        providers:
          local: {enabled: false}
          slurm:
            slurmConf: \(conf)
            workRoot: \(workRoot)
        \(slurm.map { "    " + $0 }.joined(separator: "\n"))

        """
    }

    func provider(workRoot: String, _ configure: (inout SlurmProvider.Configuration) -> Void = { _ in }) throws -> SlurmProvider {
        var c = SlurmProvider.Configuration(workRoot: workRoot, slurmConf: conf)
        configure(&c)
        return try SlurmProvider(configuration: c)
    }
}

/// A Slurm login node for Capstan running off the cluster: a real sshd on 127.0.0.1 (a free
/// port), key login as root, on this machine's filesystem (so it has the Slurm client, munge's
/// socket and the lab's shared folder, as a login node has).
struct LoginNode {
    let dir: TempDir
    let port: Int
    var clientKey: String { dir.file("client_key") }

    static func start() async throws -> LoginNode {
        let dir = TempDir("capstan-login")
        // other_key is not authorised: a login with it is denied.
        for key in ["host_key", "client_key", "other_key"] {
            let r = try await runProcess("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", dir.file(key)])
            #expect(r.status == 0, "\(r.stderr)")
        }
        try FileManager.default.copyItem(atPath: dir.file("client_key.pub"), toPath: dir.file("authorized_keys"))
        let free = try await runProcess("/usr/bin/env", ["python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"])
        let port = try #require(Int(free.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        dir.write("sshd_config", """
            Port \(port)
            ListenAddress 127.0.0.1
            HostKey \(dir.file("host_key"))
            PidFile \(dir.file("sshd.pid"))
            AuthorizedKeysFile \(dir.file("authorized_keys"))
            UsePAM no
            StrictModes no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            SetEnv PATH=\(ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")

            """)
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        let r = try await runProcess("/usr/sbin/sshd", ["-f", dir.file("sshd_config"), "-E", dir.file("sshd.log")])
        #expect(r.status == 0, "sshd: \(r.stderr)")
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: dir.file("sshd.pid")) { try await Task.sleep(for: .milliseconds(100)) }
        return LoginNode(dir: dir, port: port)
    }

    func stop() {
        if let pid = (try? String(contentsOfFile: dir.file("sshd.pid"), encoding: .utf8)).flatMap({ pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) { kill(pid, SIGTERM) }
        dir.cleanup()
    }

    /// providers.slurm's `login:` line for it.
    var setting: String { "login: {address: 127.0.0.1, port: \(port), user: root, key: \(clientKey)}" }
}

@Suite("Slurm as capacity: a real slurmctld and slurmd", .serialized)
struct SlurmProviderTests {
    @Test("offers from sinfo (partitions, GRES GPUs normalized, $0/h); a launch is one allocation, idempotent by intent; pending shows Slurm's reason and queue position; terminate is scancel")
    func provider() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        let slurm = try lab.provider(workRoot: lab.dir.file("shared"))
        let offers = try await slurm.offers(for: ResourceRequest(nodes: 2))
        #expect(offers.map(\.instanceType) == ["slurm-debug-1xh100", "slurm-short-1xh100"], "\(offers)")
        let debug = try #require(offers.first)
        #expect(debug.gpu == "H100-SXM" && debug.gpusPerNode == 1 && debug.onDemandPricePerHour == 0 && debug.availability == .available && debug.maxNodes == 2, "\(debug)")
        #expect(offers.last?.details["timeLimit"] == "30 min" && debug.details["timeLimit"] == "unlimited")
        // Three nodes of two: unavailable; only one partition configured: only its offer.
        #expect(try await slurm.offers(for: ResourceRequest(nodes: 3)).allSatisfy { $0.availability == .unavailable })
        let short = try lab.provider(workRoot: lab.dir.file("shared")) { $0.partitions = ["short"] }
        #expect(try await short.offers(for: ResourceRequest(nodes: 1)).map(\.region) == ["short"])

        // One allocation of two whole nodes, Capstan's tags in its comment.
        let request = LaunchRequest(offer: debug, count: 2, idempotencyKey: "intent-1", tags: [CapstanTags.cluster: "c1", CapstanTags.clusterID: "id-1"], name: "capstan-c1")
        let launched = try await slurm.launch(request)
        #expect(launched.count == 2)
        let job = try #require(launched.first?.details["job"])
        #expect(launched.map(\.id) == ["slurm-\(job)-0", "slurm-\(job)-1"])
        var running: [Instance] = []
        for _ in 0..<100 {
            running = try await slurm.describe(InstanceQuery(tags: [CapstanTags.cluster: "c1"]))
            if running.count == 2, running.allSatisfy({ $0.state == .running }) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(running.map(\.state) == [.running, .running], "\(running)")
        #expect(Set(running.compactMap { $0.details["node"] }) == ["node1", "node2"])
        #expect(running.allSatisfy { $0.tags[CapstanTags.intent] == "intent-1" && $0.tags[CapstanTags.clusterID] == "id-1" && $0.privateAddress?.hasPrefix("10.199.") == true })
        guard case .slurm(let access)? = running.first?.access else { Issue.record("no slurm access: \(String(describing: running.first?.access))"); return }
        #expect(access.job == job && access.workRoot == lab.dir.file("shared") && access.slurmConf == lab.conf)
        // A retried launch (same intent) gets the same allocation, not a second one.
        #expect(try await slurm.launch(request).map(\.id) == launched.map(\.id))
        #expect(try await lab.liveCapstanJobs() == [job])

        // While the nodes are held, the next allocation waits in the queue, and says why.
        let queued = try await slurm.launch(LaunchRequest(offer: debug, count: 1, idempotencyKey: "intent-2", tags: [CapstanTags.cluster: "c2"]))
        #expect(queued.count == 1 && queued[0].state == .pending)
        let waiting = try await slurm.describe(InstanceQuery(tags: [CapstanTags.cluster: "c2"]))
        #expect(waiting.count == 1 && waiting[0].state == .pending && waiting[0].access == nil)
        #expect(waiting.first?.stateReason?.hasPrefix("queued in debug: ") == true && waiting.first?.stateReason?.hasSuffix("position 1") == true, "\(waiting.first?.stateReason ?? "")")
        // Refreshed offers see the nodes busy: the job would queue.
        #expect(try await slurm.offers(for: ResourceRequest(nodes: 2)).first?.availability == .limited)

        // terminate = scancel, of both allocations; a second terminate is harmless.
        let gone = try await slurm.terminate(ids: launched.map(\.id) + queued.map(\.id))
        #expect(gone.allSatisfy { !$0.state.isLive || $0.state == .terminating }, "\(gone.map(\.state))")
        #expect(try await lab.liveCapstanJobs().isEmpty)
        _ = try await slurm.terminate(ids: launched.map(\.id))
        // Foreign jobs are not Capstan's: describe never lists them.
        let foreign = try await lab.run("sbatch", ["--parsable", "-N1", "--chdir=/tmp", "--output=/dev/null", "--wrap", "sleep 30"])
        #expect(foreign.status == 0, "\(foreign.stderr)")
        #expect(try await slurm.describe(InstanceQuery()).allSatisfy { $0.details["job"] != foreign.stdout.trimmingCharacters(in: .whitespacesAndNewlines) })
    }

    @Test("capstan up waits while its allocation is queued, and capstan status says why and where in the queue; it runs once the nodes free up")
    func queuedUp() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        let dir = TempDir("capstan-slurm-queue")
        defer { dir.cleanup() }
        dir.write("config.yaml", lab.config(workRoot: dir.file("shared")))
        let env = ["CAPSTAN_HOME": dir.path]
        // Someone else holds both nodes.
        let theirs = try await lab.run("sbatch", ["--parsable", "-N2", "--chdir=/tmp", "--output=/dev/null", "--wrap", "sleep 300"])
        #expect(theirs.status == 0, "\(theirs.stderr)")
        let up = Process()
        up.executableURL = URL(fileURLWithPath: BuildProducts.capstan)
        up.arguments = ["up", "q1", "--gpu", "H100", "--nodes", "2"]
        up.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        up.standardOutput = FileHandle.nullDevice
        up.standardError = FileHandle.nullDevice
        try up.run()
        defer { if up.isRunning { up.terminate() } }
        var shown = ""
        for _ in 0..<150 {
            let s = try await runProcess(BuildProducts.capstan, ["status"], environment: env)
            if s.stdout.contains("position 1") { shown = s.stdout; break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(shown.contains("pending (queued in debug: ") && shown.contains("position 1)"), "\(shown)")
        // Their job ends: ours gets the nodes, and up finishes.
        _ = try await lab.run("scancel", [theirs.stdout.trimmingCharacters(in: .whitespacesAndNewlines)])
        for _ in 0..<300 where up.isRunning { try await Task.sleep(for: .milliseconds(200)) }
        #expect(!up.isRunning && up.terminationStatus == 0, "up did not finish once the nodes were free")
        let status = try await runProcess(BuildProducts.capstan, ["status"], environment: env)
        #expect(status.stdout.contains("q1") && status.stdout.contains("running"), "\(status.stdout)")
        let down = try await runProcess(BuildProducts.capstan, ["down", "q1"], environment: env, timeout: 60)
        #expect(down.status == 0, "\(down.stderr)")
        #expect(try await lab.liveCapstanJobs().isEmpty)
    }

    @Test("bad input: a wrong time limit (or one within stopBeforeLimitSeconds) or relative workRoot, an unknown partition, no Slurm on PATH: each a clear error; a partition shorter than timeLimit is unavailable, and an allocation Slurm will never start fails at once")
    func badInput() async throws {
        #expect(throws: CapstanError.self) { try SlurmProvider(configuration: .init(timeLimit: "soon")) }
        do {
            _ = try SlurmProvider(configuration: .init(timeLimit: "4"))
            Issue.record("a 4-minute time limit with the default 300 s lead was accepted")
        } catch let e as CapstanError {
            #expect(e.code == .config && e.message.contains("leaves no time to train") && e.message.contains("(300 s)"), "\(e)")
        }
        do {
            _ = try SlurmProvider(configuration: .init(workRoot: "shared/capstan"))
            Issue.record("a relative workRoot was accepted")
        } catch let e as CapstanError {
            #expect(e.code == .config && e.message.contains("not an absolute path"), "\(e)")
        }
        // Through a login node, workRoot is a folder there: absolute or ~/FOLDER, nothing else.
        let login = SlurmLogin(address: "127.0.0.1", user: "root")
        for bad in ["shared", "~", "~/", "~/../etc", "~root/x"] {
            do {
                _ = try SlurmProvider(configuration: .init(workRoot: bad, login: login))
                Issue.record("the login workRoot '\(bad)' was accepted")
            } catch let e as CapstanError {
                #expect(e.code == .config && e.message.contains("'\(bad)' is neither an absolute path nor ~/FOLDER on the login node") && e.hint?.contains("/shared/capstan") == true, "\(e)")
            }
        }
        let sshFolder = TempDir("capstan-slurm-ssh")
        defer { sshFolder.cleanup() }
        #expect(throws: Never.self) { _ = try SlurmProvider(configuration: .init(workRoot: "~/.capstan-slurm", login: login), ssh: SSHClient(folder: sshFolder.path)) }
        // No Slurm client here: says where Capstan must run.
        let nowhere = try SlurmProvider(configuration: .init(workRoot: "/tmp/x"), environment: ["PATH": "/nonexistent"])
        do {
            _ = try await nowhere.offers(for: ResourceRequest(nodes: 1))
            Issue.record("offers without sinfo succeeded")
        } catch let e as CapstanError {
            #expect(e.code == .unsupported && e.message.contains("sinfo is not on PATH") && e.hint?.contains("submit host") == true, "\(e)")
        }
        let lab = try await SlurmLab.up(1)
        defer { lab.down() }
        let slurm = try lab.provider(workRoot: lab.dir.file("shared")) { $0.account = "no-such-account" }
        let offer = try #require(try await slurm.offers(for: ResourceRequest(nodes: 1)).first)
        var bogus = offer
        bogus.details["partition"] = "nope"
        do {
            _ = try await lab.provider(workRoot: lab.dir.file("shared")).launch(LaunchRequest(offer: bogus, count: 1, idempotencyKey: "k1"))
            Issue.record("a launch into an unknown partition succeeded")
        } catch let e as CapstanError {
            #expect(e.code == .config && e.message.contains("sbatch") && e.message.lowercased().contains("partition"), "\(e)")
        }
        #expect(try await lab.liveCapstanJobs().isEmpty)
        // (Accounting is off in the lab, so Slurm takes any account: an unknown one is not tested
        // here. A launch with one leaves nothing behind either way.)
        _ = try? await slurm.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k2"))
        _ = try await slurm.terminate(ids: try await slurm.describe(InstanceQuery()).map(\.id))
        #expect(try await lab.liveCapstanJobs().isEmpty)
        // An hour's allocations: the 30-minute partition is unavailable, saying why.
        let hour = try lab.provider(workRoot: lab.dir.file("shared")) { $0.timeLimit = "60" }
        let offers = try await hour.offers(for: ResourceRequest(nodes: 1))
        let short = try #require(offers.first { $0.region == "short" })
        #expect(short.availability == .unavailable && short.details["unusable"] == "its time limit (30 min) is below providers.slurm.timeLimit (60 min)", "\(short)")
        #expect(offers.first { $0.region == "debug" }?.availability == .available)
        // Submitted there anyway, Slurm would hold it forever: it reads
        // failed at once, in Slurm's words, and is cancelled with the launch.
        let held = try await hour.launch(LaunchRequest(offer: short, count: 1, idempotencyKey: "k3"))
        var seen: Instance?
        for _ in 0..<50 {
            seen = try await hour.describe(InstanceQuery(ids: held.map(\.id))).first
            if seen?.state == .failed { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        // (PartitionTimeLimit, or PartitionConfig as this lab's Slurm 22.05 says.)
        let said = seen?.stateReason ?? ""
        #expect(seen?.state == .failed && (said.hasPrefix("Slurm will never start it: PartitionTimeLimit") || said.hasPrefix("Slurm will never start it: PartitionConfig")), "\(String(describing: seen))")
        _ = try await hour.terminate(ids: held.map(\.id))
        #expect(try await lab.liveCapstanJobs().isEmpty)
    }

    @Test("kill -9 of capstan up and down against Slurm at each point, then reconcile: no Capstan allocation left that no cluster owns")
    func crashes() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        for point in ["up.before-launch", "up.after-launch", "up.waiting", "down.marked", "down.listed", "down.recorded"] {
            let dir = TempDir("capstan-slurm-crash")
            defer { dir.cleanup() }
            dir.write("config.yaml", lab.config(workRoot: dir.file("shared")))
            let env = ["CAPSTAN_HOME": dir.path]
            let up = ["up", "c1", "--gpu", "H100", "--nodes", "2"]
            if point.hasPrefix("down.") {
                let r = try await runProcess(BuildProducts.capstan, up, environment: env, timeout: 120)
                #expect(r.status == 0, "\(point): up failed: \(r.stderr)")
                #expect(try await lab.liveCapstanJobs().count == 1)
            }
            let crashed = try await runProcess(BuildProducts.capstan, point.hasPrefix("down.") ? ["down", "c1"] : up, environment: env.merging(["CAPSTAN_TEST_CRASH_AT": point]) { $1 }, timeout: 120)
            #expect(crashed.status == 9, "\(point): expected SIGKILL, got \(crashed.status): \(crashed.stderr)")
            // Reconcile (every status does), then count: a live allocation must be a running cluster's.
            let status = try await runProcess(BuildProducts.capstan, ["status", "--json", "--all"], environment: env, timeout: 120)
            #expect(status.status == 0, "\(point): \(status.stderr)")
            let live = try await lab.liveCapstanJobs()
            let store = try SQLiteStateStore(path: dir.file("state/capstan.db"))
            let cluster = try await store.cluster(named: "c1")
            if let cluster, cluster.status == .running {
                let owned = Set(try await store.instances(cluster: cluster.id).compactMap { $0.instance.details["job"] })
                #expect(Set(live) == owned && owned.count == 1, "\(point): live \(live), owned \(owned)")
            } else {
                #expect(live.isEmpty, "\(point): \(live) left in squeue with no cluster owning it (cluster: \(cluster.map { "\($0.status)" } ?? "none"))")
            }
            // Whatever is left goes with down.
            let down = try await runProcess(BuildProducts.capstan, ["down", "--force", "c1"], environment: env, timeout: 120)
            #expect(down.status == 0 || down.stderr.contains("No cluster"), "\(point): \(down.stderr)")
            #expect(try await lab.liveCapstanJobs().isEmpty, "\(point)")
        }
    }
}

extension JobHome {
    /// The ddp-regression job on the Slurm lab: nodes talk over the namespaces' eth0.
    /// The lab's nodes share this machine's file system: a `hold`'s release file reaches them.
    static func slurm(_ lab: SlurmLab, steps: Int, pause: Double = 0.05, settings: [String] = [], hold: [(attempt: Int, step: Int)] = []) throws -> JobHome {
        let home = try JobHome(steps: steps, pause: pause, extraEnv: ["GLOO_SOCKET_IFNAME": "eth0"], hold: hold)
        home.dir.write("config.yaml", lab.config(workRoot: home.dir.file("shared"), slurm: settings))
        return home
    }

    /// Points the job at `s3://<bucket>/runs` on SeaweedFS, which the lab's nodes reach on this
    /// machine's loopback through a relay on the lab bridge: the relay (stop it), the
    /// credentials, and an S3 configuration to read the bucket with (the bucket is created).
    mutating func useLabS3(_ lab: SlurmLab, bucket: String) async throws -> (LabRelay, AWSCredentials, S3Configuration) {
        let seaweed = try #require(URL(string: try TestServers.seaweed))
        let relay = try LabRelay.start(bridge: lab.bridge, to: seaweed)
        let creds = try TestServers.seaweedCredentials
        env.merge(["AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey, "AWS_ENDPOINT_URL_S3": relay.endpoint, "AWS_REGION": "us-east-1"]) { $1 }
        dir.write("job/job.yaml", try String(contentsOfFile: spec, encoding: .utf8).replacingOccurrences(of: "storage: file://" + dir.file("bucket"), with: "storage: s3://\(bucket)/runs"))
        dir.write("config.yaml", lab.config(workRoot: dir.file("shared")) + "storage:\n  allowInsecureHTTP: true\n")
        var adminConfig = S3Configuration(endpoint: relay.endpoint, region: "us-east-1", uploadStateFolder: dir.file("uploads"))
        adminConfig.allowInsecureHTTP = true
        do { try await S3ObjectStore(location: "s3://\(bucket)/runs", credentials: creds, configuration: adminConfig).createBucket() } catch {
            relay.stop()
            throw error
        }
        return (relay, creds, adminConfig)
    }

    /// Starts `capstan launch` of the job and waits for its checkpoint `step`: the launch
    /// process, the job, and the lab job id of its allocation.
    func launchOnSlurm(_ lab: SlurmLab, untilCheckpoint step: Int) async throws -> (Process, JobRecord, String) {
        let launch = try startLaunch()
        let reached = try await wait(timeout: 180) { (try await job()?.latestCheckpoint ?? 0) >= step }
        if !reached { launch.terminate() }
        try #require(reached, "no checkpoint \(step): \((try? String(contentsOfFile: dir.file("launch.out"), encoding: .utf8)) ?? "")")
        let record = try await #require(try job())
        let allocation = try #require(try await lab.liveCapstanJobs().first)
        return (launch, record, allocation)
    }
}

extension JobTests {
    @Test("slurm: a 2-node job on one Slurm allocation (agents as srun steps); kill -9 of a training process resumes on the same allocation; an scancel from outside is noticed, a new allocation resumes from the last checkpoint; nothing is left in squeue")
    func slurmJob() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        // Attempt 1 holds at step 140 and attempt 2 at 100: each break lands mid-attempt.
        let home = try JobHome.slurm(lab, steps: 150, pause: 0.05, hold: [(1, 140), (2, 100)])
        defer { home.dir.cleanup() }
        let (launch, job0, first) = try await home.launchOnSlurm(lab, untilCheckpoint: 20)
        defer { if launch.isRunning { launch.terminate() } }
        // kill -9 of node 1's training process (rank 1, its torchrun's worker).
        let pidFile = try #require(Self.files(under: home.dir.file("shared/nodes"), named: "worker-1.pid").first { $0.contains("slurm-\(first)-1/") && $0.contains("/attempt-1/") })
        let pid = try #require(pid_t((try String(contentsOfFile: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(pid, SIGKILL)
        #expect(try await home.wait(timeout: 180) {
            let j = try await home.job()
            return (j?.attempt ?? 0) >= 2 && (j?.latestCheckpoint ?? 0) >= 60
        }, "\(home.logTail(job: job0.id))")
        // The same allocation served attempt 2.
        #expect(try await lab.liveCapstanJobs() == [first])
        // The allocation is cancelled from outside: Capstan notices, gets a new one, resumes.
        let cancel = try await lab.run("scancel", [first])
        #expect(cancel.status == 0, "\(cancel.stderr)")
        #expect(try await home.wait(timeout: 300) { !launch.isRunning }, "\(home.logTail(job: job0.id))")
        let job = try await #require(try home.job())
        #expect(job.status == .succeeded && job.attempt == 3, "\(job.status) attempt \(job.attempt) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        let attempts = try await home.store().attempts(job: job.id)
        #expect(attempts.count == 3)
        if attempts.count == 3 {
            #expect(attempts[1].nodes == attempts[0].nodes, "attempt 2 moved: \(attempts[0].nodes) → \(attempts[1].nodes)")
            // Attempt 3: both nodes in one new allocation (not one per node).
            #expect(Self.allocations(attempts[2].nodes).count == 1 && Self.allocations(attempts[2].nodes) != [first], "attempt 3 ran on \(attempts[2].nodes)")
        }
        let summary = try await home.checkContinuity(job: job, total: 150)
        // Exact resume: a step trained in two attempts (after the checkpoint it resumed from,
        // before the failure) has the same loss in both.
        let losses = home.losses(job: job.id)
        var compared = 0
        for (a, steps) in losses {
            for (b, other) in losses where b > a {
                for (step, loss) in steps {
                    guard let again = other[step] else { continue }
                    #expect(again == loss, "step \(step): loss \(loss) in attempt \(a), \(again) in attempt \(b)")
                    compared += 1
                }
            }
        }
        #expect(compared > 0, "no step ran in two attempts: \(losses.mapValues { $0.keys.sorted() })")
        print("slurm job: \(summary); \(compared) step(s) trained twice, same losses")
        // Checkpoints reached the bucket from the nodes; the allocation is released.
        let bucket = try FileObjectStore(root: home.dir.file("bucket/\(job.id)"))
        let m = try #require(try await CheckpointStore(store: bucket, prefix: "checkpoints").latestVerified())
        #expect(m.step == 150 && m.parts.map(\.node) == [0, 1])
        #expect(try await lab.liveCapstanJobs().isEmpty)
    }

    @Test("slurm through a login node over SSH (Capstan off the cluster): sinfo, sbatch and srun run there, the agents' files go through it; a 2-node job checkpoints and finishes; nothing is left in squeue")
    func slurmLogin() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        let login = try await LoginNode.start()
        defer { login.stop() }
        let home = try JobHome.slurm(lab, steps: 40, settings: [login.setting])
        defer { home.dir.cleanup() }
        let offers = try await home.capstan(["offers", "--gpu", "H100", "--nodes", "2"])
        #expect(offers.status == 0 && offers.stdout.contains("slurm-debug-1xh100"), "\(offers.stdout) \(offers.stderr)")
        let r = try await home.capstan(["launch", home.spec] + JobHome.fast, timeout: 300)
        let job = try await #require(try home.job())
        #expect(r.status == 0 && job.status == .succeeded, "\(r.stderr) \(home.logTail(job: job.id))")
        _ = try await home.checkContinuity(job: job, total: 40)
        let m = try #require(try await CheckpointStore(store: try FileObjectStore(root: home.dir.file("bucket/\(job.id)")), prefix: "checkpoints").latestVerified())
        #expect(m.step == 40 && m.parts.map(\.node) == [0, 1])
        // The agents ran as srun steps started on the login node, each node's files in its own
        // folder under the shared work root (the agent uploaded there over SSH, checked by SHA-256).
        let pids = Self.files(under: home.dir.file("shared/nodes"), named: "srun.pid")
        #expect(pids.count == 2, "\(pids)")
        #expect(Self.files(under: home.dir.file("shared/nodes"), named: "agent.out").count == 2)
        #expect(try await lab.liveCapstanJobs().isEmpty)
        // A login node that refuses the key is a clear error, not a hang. (Another user: root's
        // shared connection to it would carry on without a new login.)
        home.dir.write("config.yaml", lab.config(workRoot: home.dir.file("shared"), slurm: ["login: {address: 127.0.0.1, port: \(login.port), user: nobody, key: \(login.dir.file("other_key"))}"]))
        let denied = try await home.capstan(["offers", "--gpu", "H100"])
        #expect(denied.stderr.contains("SSH login as nobody on 127.0.0.1 was denied"), "\(denied.stdout) \(denied.stderr)")
    }

    @Test("slurm: checkpoints go from the Slurm nodes to an s3:// bucket (SeaweedFS); the credentials reach the agents on srun's stdin only, in no file on either side")
    func slurmS3() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        var home = try JobHome.slurm(lab, steps: 40)
        defer { home.dir.cleanup() }
        let (relay, creds, adminConfig) = try await home.useLabS3(lab, bucket: "capstan-slurm")
        defer { relay.stop() }
        let r = try await home.capstan(["launch", home.spec] + JobHome.fast, timeout: 300)
        let job = try await #require(try home.job())
        #expect(r.status == 0 && job.status == .succeeded, "\(r.stderr) \(home.logTail(job: job.id))")
        #expect(job.storage.hasPrefix("s3://capstan-slurm/runs/"))
        let bucket = try S3ObjectStore(location: job.storage, credentials: creds, configuration: adminConfig)
        let m = try #require(try await CheckpointStore(store: bucket, prefix: "checkpoints").latestVerified())
        #expect(m.step == 40 && m.parts.map(\.node) == [0, 1])
        let scan = SecretScan([home.dir.path, home.tmp, lab.dir.path], for: creds.secretAccessKey) { $0.contains("/shared/bin/capstan-") }
        #expect(scan.covered("/attempt-1/status.json") && scan.covered("/attempt-1/agent.json"), "the scan missed files: \(scan.scanned.count) scanned")
        #expect(scan.hits.isEmpty, "the secret key appears in \(scan.hits)")
        #expect(try await lab.liveCapstanJobs().isEmpty)
    }

    @Test("slurm: the allocation's time limit comes near: the gang stops, and the job resumes on a new allocation from the last checkpoint")
    func slurmTimeLimit() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        // 2-minute allocations, taken back 95 s before their end: about 25 s each to train in.
        let home = try JobHome.slurm(lab, steps: 300, pause: 0.1, settings: ["timeLimit: \"2\"", "stopBeforeLimitSeconds: 95"])
        defer { home.dir.cleanup() }
        let launch = try home.startLaunch()
        defer { if launch.isRunning { launch.terminate() } }
        #expect(try await home.wait(timeout: 600) { !launch.isRunning }, "\((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
        let job = try await #require(try home.job())
        #expect(job.status == .succeeded && job.attempt >= 2, "\(job.status) attempt \(job.attempt) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        let attempts = try await home.store().attempts(job: job.id)
        let first = try #require(attempts.first)
        #expect(first.outcome == .failed && first.failureKind == "instance-gone", "\(first.failureKind ?? "-") \(first.message ?? "")")
        // Each later attempt ran on a new allocation and resumed from a checkpoint.
        #expect(attempts.dropFirst().allSatisfy { $0.resumeStep != nil && Set($0.nodes).isDisjoint(with: first.nodes) })
        let summary = try await home.checkContinuity(job: job, total: 300)
        print("slurm time limit: \(summary)")
        // The attempt's failure says why, in the provider's words.
        #expect(first.message?.contains("the allocation's time limit is") == true && first.message?.contains("stopBeforeLimitSeconds: 95") == true, "\(first.message ?? "")")
        #expect(try await home.wait(timeout: 90) { try await lab.liveCapstanJobs().isEmpty })
    }

    @Test("slurm: a node of the allocation goes down (NODE_FAIL): Capstan notices, its next allocation waits in the queue while the node is down (status says why), and the job resumes from the last checkpoint once the node is back")
    func slurmNodeFail() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        let home = try JobHome.slurm(lab, steps: 120, pause: 0.05, hold: [(1, 110)])
        defer { home.dir.cleanup() }
        let (launch, job0, first) = try await home.launchOnSlurm(lab, untilCheckpoint: 20)
        defer { if launch.isRunning { launch.terminate() } }
        // An admin (or slurmctld, on a node that stops answering) marks node2 down: Slurm ends
        // every job on it.
        let down = try await lab.run("scontrol", ["update", "NodeName=node2", "State=DOWN", "Reason=capstan-test"])
        #expect(down.status == 0, "\(down.stderr)")
        // Drained too, so it stays out until it is resumed (the lab's ReturnToService=2 would
        // bring a merely DOWN node back as soon as its slurmd registers).
        let drain = try await lab.run("scontrol", ["update", "NodeName=node2", "State=DRAIN", "Reason=capstan-test"])
        #expect(drain.status == 0, "\(drain.stderr)")
        // Capstan notices, and its next allocation waits: one of the two nodes is down.
        var shown = ""
        #expect(try await home.wait(timeout: 120) {
            shown = (try await home.capstan(["status"])).stdout
            return shown.contains("pending (queued in debug: ")
        }, "\(shown)\n\(home.logTail(job: job0.id))")
        #expect(try await lab.liveCapstanJobs().filter { $0 != first }.count == 1)
        let resume = try await lab.run("scontrol", ["update", "NodeName=node2", "State=RESUME"])
        #expect(resume.status == 0, "\(resume.stderr)")
        #expect(try await home.wait(timeout: 300) { !launch.isRunning }, "\(home.logTail(job: job0.id))")
        let job = try await #require(try home.job())
        #expect(job.status == .succeeded && job.attempt == 2, "\(job.status) attempt \(job.attempt) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        let attempts = try await home.store().attempts(job: job.id)
        let failed = try #require(attempts.first)
        // The failure is the allocation's end, in Slurm's words.
        #expect(failed.failureKind == "instance-gone" && failed.message?.contains("NodeDown") == true, "\(failed.failureKind ?? "-") \(failed.message ?? "")")
        #expect(attempts.last?.resumeStep.map { $0 >= 20 } == true)
        let summary = try await home.checkContinuity(job: job, total: 120)
        print("slurm node failure: \(summary)")
        #expect(try await lab.liveCapstanJobs().isEmpty)
    }

    @Test("slurm: kill -9 of the controller after it cancelled an allocation near its time limit and before it submitted the next (move.retired-first): nothing is left in squeue; the next command re-attaches a controller, which resumes the job on a new allocation")
    func slurmRelaunchCrash() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        // 2-minute allocations taken back 95 s before their end: the first ends about 25 s in.
        let home = try JobHome.slurm(lab, steps: 250, pause: 0.1, settings: ["timeLimit: \"2\"", "stopBeforeLimitSeconds: 95"])
        defer { home.dir.cleanup() }
        let r = try await home.capstan(["launch", home.spec, "--quiet"] + JobHome.fast, env: ["CAPSTAN_TEST_CRASH_AT": "move.retired-first"], timeout: 300)
        #expect(r.status == 9, "the controller was not killed at move.retired-first: \(r.stderr)")
        let stale = try await #require(try home.job())
        #expect(!stale.status.isFinished && (stale.latestCheckpoint ?? 0) >= 10, "\(stale.status) \(stale.latestCheckpoint ?? -1)")
        // The old allocation was cancelled before the kill; no new one was submitted.
        let left = try await lab.jobs()
        #expect(try await home.wait(timeout: 90) { try await lab.liveCapstanJobs().isEmpty }, "\(left)")
        let jobs = try await home.capstan(["jobs"])
        #expect(jobs.status == 0, "\(jobs.stderr)")
        #expect(try await home.wait(timeout: 400) { try await home.job()?.status.isFinished == true }, "\(home.logTail(job: stale.id))")
        let job = try await #require(try home.job())
        #expect(job.status == .succeeded, "\(job.status) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        let attempts = try await home.store().attempts(job: job.id)
        #expect(attempts.count >= 2 && attempts.dropFirst().allSatisfy { $0.resumeStep != nil }, "\(attempts.map { ($0.attempt, $0.resumeStep ?? -1) })")
        // The re-attached controller relaunched the gang as one allocation, not node by node.
        #expect(attempts.allSatisfy { Self.allocations($0.nodes).count == 1 }, "\(attempts.map(\.nodes))")
        _ = try await home.checkContinuity(job: job, total: 250)
        #expect(try await home.wait(timeout: 90) { try await lab.liveCapstanJobs().isEmpty })
    }

    @Test("slurm: capstan cancel of a job whose allocation waits in the queue ends the wait at once: the job is cancelled, its queued allocation with it")
    func slurmCancelQueued() async throws {
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        let home = try JobHome.slurm(lab, steps: 20)
        defer { home.dir.cleanup() }
        // Someone else holds both nodes for 5 minutes.
        let theirs = try await lab.run("sbatch", ["--parsable", "-N2", "--chdir=/tmp", "--output=/dev/null", "--wrap", "sleep 300"])
        #expect(theirs.status == 0, "\(theirs.stderr)")
        defer { Task { _ = try? await lab.run("scancel", [theirs.stdout.trimmingCharacters(in: .whitespacesAndNewlines)]) } }
        let launch = try home.startLaunch()
        defer { if launch.isRunning { launch.terminate() } }
        #expect(try await home.wait(timeout: 60) { try await lab.liveCapstanJobs().count == 1 }, "\((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
        let job = try await #require(try home.job())
        #expect(job.status == .provisioning, "\(job.status)")
        let cancel = try await home.capstan(["cancel", job.id], timeout: 120)
        #expect(cancel.status == 0, "\(cancel.stdout) \(cancel.stderr)")
        #expect(try await home.wait(timeout: 60) { !launch.isRunning }, "\((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
        let done = try await #require(try home.job())
        #expect(done.status == .cancelled, "\(done.status) \(done.lastError ?? "")")
        #expect(try await home.wait(timeout: 90) { try await lab.liveCapstanJobs().isEmpty })
    }

    @Test("slurm: the demo recipe (sft on examples/sft-tiny) on one 2-node allocation, checkpoints and the adapter in an s3:// bucket (SeaweedFS); kill -9 of a node's worker resumes on the same allocation, retracing the same losses")
    func slurmRecipe() async throws {
        // The lab's nodes cannot reach PyPI: the recipe's venv comes from the cache the local
        // recipe tests fill (a 2-step local job builds it when none has yet).
        if try await recipeVenv() == nil {
            let warm = try JobHome.recipe(steps: 2, every: 2)
            defer { warm.dir.cleanup() }
            _ = try await warm.capstan(["launch", warm.spec] + JobHome.fast, timeout: 600)
        }
        try #require(try await recipeVenv() != nil, "no venv with transformers and peft could be built")
        let lab = try await SlurmLab.up(2)
        defer { lab.down() }
        // Between two checkpoints (5 steps past 15), node 1's worker stops itself and is killed -9.
        var home = try JobHome.recipe(steps: 45, every: 15, stopAt: "1:20:1")
        defer { home.dir.cleanup() }
        let (relay, creds, adminConfig) = try await home.useLabS3(lab, bucket: "capstan-slurm-recipe")
        defer { relay.stop() }
        home.dir.write("job/job.yaml", try String(contentsOfFile: home.spec, encoding: .utf8).replacingOccurrences(of: "GLOO_SOCKET_IFNAME: lo", with: "GLOO_SOCKET_IFNAME: eth0"))
        let launch = try home.startLaunch()
        defer { if launch.isRunning { launch.terminate() } }
        var stopped: pid_t?
        _ = try await home.wait(timeout: 420) {
            stopped = Self.stoppedRecipeWorker(under: home.dir.path); return stopped != nil || !launch.isRunning
        }
        let jobID = (try? await home.job()?.id) ?? "-"
        let worker = try #require(stopped, "no worker stopped at step 20: \(home.logTail(job: jobID))\n\((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
        kill(worker, SIGKILL)
        #expect(try await home.wait(timeout: 300) { !launch.isRunning }, "\(home.logTail(job: jobID))")
        let job = try await #require(try home.job())
        #expect(job.status == .succeeded && job.attempt == 2, "\(job.status) attempt \(job.attempt) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        let attempts = try await home.store().attempts(job: job.id)
        #expect(attempts.first?.failureKind == "signal" && attempts.count == 2 && attempts[1].nodes == attempts[0].nodes, "\(attempts.map { ($0.failureKind ?? "-", $0.nodes) })")
        // The same steps give the same losses after the resume.
        let losses = home.losses(job: job.id)
        let first = try #require(losses[1]), second = try #require(losses[2])
        let resume = try #require(attempts.last?.resumeStep)
        #expect(resume == 15 && Set(second.keys) == Set(16...45), "resumed from \(resume), attempt 2 logged \(second.keys.sorted())")
        let overlap = Set(first.keys).intersection(second.keys).sorted()
        #expect(!overlap.isEmpty)
        for step in overlap {
            #expect(abs(first[step]! - second[step]!) <= 1e-3 * max(1, abs(first[step]!)), "step \(step): \(first[step]!) then \(second[step]!)")
        }
        print("slurm recipe: resumed from step \(resume), \(overlap.count) retraced step(s) matched; loss \(first[1] ?? 0) → \(second[45] ?? 0)")
        // Checkpoints (both nodes' parts) and the adapter are in the bucket.
        let bucket = try S3ObjectStore(location: job.storage, credentials: creds, configuration: adminConfig)
        let m = try #require(try await CheckpointStore(store: bucket, prefix: "checkpoints").latestVerified())
        #expect(m.step == 45 && m.parts.map(\.node) == [0, 1])
        for f in ["outputs/adapter_model.safetensors", "outputs/adapter_config.json", "outputs/manifest.json"] {
            #expect(try await bucket.head(key: f) != nil, "\(f) is not in \(job.storage)")
        }
        #expect(try await lab.liveCapstanJobs().isEmpty)
    }

    /// The attempt-1 recipe worker below `folder` that stopped itself at its `CAPSTAN_TEST_STOP_AT`.
    static func stoppedRecipeWorker(under folder: String) -> pid_t? {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let cmd = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            guard cmd.contains(folder + "/"), cmd.contains("/attempt-1/recipe/sft.py"), !cmd.contains("torch.distributed.run"),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.range(of: ") ", options: .backwards) else { continue }
            if stat[close.upperBound...].hasPrefix("T") { return pid }
        }
        return nil
    }

    /// The Slurm jobs (allocations) instances `slurm-<job>-<k>` belong to.
    static func allocations(_ instances: [String]) -> Set<String> {
        Set(instances.map { $0.split(separator: "-").dropFirst().first.map(String.init) ?? $0 })
    }

    /// Every file called `name` below `root`.
    static func files(under root: String, named name: String) -> [String] {
        guard let e = FileManager.default.enumerator(atPath: root) else { return [] }
        return e.compactMap { $0 as? String }.filter { ($0 as NSString).lastPathComponent == name }.map { root + "/" + $0 }
    }
}
