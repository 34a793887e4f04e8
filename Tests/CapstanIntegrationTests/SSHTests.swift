import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Hosts with their own network stacks (network namespaces on a bridge of the test's own, each
/// running a real sshd), made by scripts/netns-lab.sh and always taken down.
struct NetnsLab {
    let dir: TempDir
    let subnet: String
    /// Namespace and address of host 1, 2, …
    let hosts: [(ns: String, address: String)]

    static func available() -> String? {
        guard getuid() == 0 else { return "the SSH tests make network namespaces: they need root" }
        for tool in ["/usr/sbin/sshd", "/usr/sbin/ip", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] where !FileManager.default.fileExists(atPath: tool) {
            return "\(tool) is missing (apt install openssh-server openssh-client iproute2; .ci/run does)"
        }
        return nil
    }

    /// Made on a thread of its own (seconds: keys, namespaces, sshds), off the cooperative pool.
    static func up(_ count: Int) async throws -> NetnsLab {
        try await Spawn.onThread { try upBlocking(count) }
    }

    private static func upBlocking(_ count: Int) throws -> NetnsLab {
        if let why = available() { throw CapstanError(.config, "Cannot build the SSH test lab: \(why).") }
        let dir = TempDir("capstan-lab")
        let r = try runProcessBlocking(JobHome.repoRoot + "/scripts/netns-lab.sh", ["up", dir.path, "\(count)"], timeout: 60)
        guard r.status == 0 else {
            _ = try? runProcessBlocking(JobHome.repoRoot + "/scripts/netns-lab.sh", ["down", dir.path], timeout: 60)
            throw CapstanError(.io, "netns-lab.sh up failed: \(r.stderr)")
        }
        let hosts = r.stdout.split(separator: "\n").compactMap { line -> (String, String)? in
            let f = line.split(separator: " ")
            return f.count == 4 && f[0] == "host" ? (String(f[2]), String(f[3])) : nil
        }
        let subnet = hosts.first.map { $0.1.split(separator: ".").prefix(3).joined(separator: ".") } ?? ""
        return NetnsLab(dir: dir, subnet: subnet, hosts: hosts)
    }

    func down() {
        _ = try? runProcessBlocking(JobHome.repoRoot + "/scripts/netns-lab.sh", ["down", dir.path], timeout: 60)
        dir.cleanup()
    }

    /// config.yaml listing hosts (1-based) for the ssh provider, the local provider off.
    func config(hosts indices: [Int], extraHosts: [String] = []) -> String {
        let lines = indices.map { i in
            "      - {name: h\(i), address: \(hosts[i - 1].address), interface: eth0, workRoot: \(dir.file("host\(i)/work"))}"
        } + extraHosts.map { "      - " + $0 }
        return """
            providers:
              local: {enabled: false}
              ssh:
                user: root
                key: \(dir.file("client_key"))
                checkSeconds: 6
                hosts:
            \(lines.joined(separator: "\n"))

            """
    }

    /// Cuts host `i`'s link (its end of the veth).
    func linkDown(_ i: Int) throws {
        let r = try runProcessBlocking("/usr/sbin/ip", ["-n", hosts[i - 1].ns, "link", "set", "eth0", "down"], timeout: 10)
        #expect(r.status == 0, "\(r.stderr)")
    }

    /// Processes running in host `i`'s namespace whose command line contains `needle`.
    func processes(_ i: Int, containing needle: String) -> [pid_t] {
        let r = try? runProcessBlocking("/usr/sbin/ip", ["netns", "pids", hosts[i - 1].ns], timeout: 10)
        return (r?.stdout ?? "").split(separator: "\n").compactMap { pid_t($0) }.filter { pid in
            let cmd = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline").map { String(decoding: $0.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self) } ?? ""
            return cmd.contains(needle)
        }
    }
}

extension JobHome {
    /// The ddp-regression job on the lab's hosts.
    static func ssh(_ lab: NetnsLab, hosts: [Int], steps: Int = 40, pause: Double = 0.05, hold: [(attempt: Int, step: Int)] = []) throws -> JobHome {
        // The hosts share this machine's file system (only their network is their own): a
        // `hold`'s release file reaches them.
        let home = try JobHome(steps: steps, pause: pause, hold: hold)
        home.dir.write("config.yaml", lab.config(hosts: hosts))
        // The job's own GLOO_SOCKET_IFNAME=lo would not reach the other host: the provider names
        // each host's interface instead.
        let spec = try String(contentsOfFile: home.spec, encoding: .utf8).replacingOccurrences(of: "  GLOO_SOCKET_IFNAME: \"lo\"\n", with: "")
        home.dir.write("job/job.yaml", spec)
        return home
    }
}

extension JobTests {
    @Test("ssh: a 2-node gloo job on two hosts with their own network stacks, through real sshd; checkpoints go from the hosts to the bucket; a restarted controller re-attaches to the running agents")
    func sshJob() async throws {
        let lab = try await NetnsLab.up(2)
        defer { lab.down() }
        var home = try JobHome.ssh(lab, hosts: [1, 2], steps: 80, pause: 0.08, hold: [(1, 30)])
        defer { home.dir.cleanup() }
        // The bucket is SeaweedFS (S3), reached by the hosts over their own network: through a
        // relay on the lab bridge's address to the server on this machine's loopback.
        let seaweed = try #require(URL(string: try TestServers.seaweed))
        let relay = try LabRelay.start(lab, to: seaweed)
        defer { relay.stop() }
        let endpoint = relay.endpoint
        let creds = try TestServers.seaweedCredentials
        home.env = ["AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_REGION": "us-east-1"]
        let spec = try String(contentsOfFile: home.spec, encoding: .utf8).replacingOccurrences(of: "storage: file://" + home.dir.file("bucket"), with: "storage: s3://capstan-ssh/runs")
        home.dir.write("job/job.yaml", spec)
        // The lab's bridge is another machine to the hosts: plain HTTP there must be allowed.
        home.dir.write("config.yaml", lab.config(hosts: [1, 2]) + "storage:\n  allowInsecureHTTP: true\n")
        var adminConfig = S3Configuration(endpoint: endpoint, region: "us-east-1", uploadStateFolder: home.dir.file("uploads"))
        adminConfig.allowInsecureHTTP = true
        let admin = try S3ObjectStore(location: "s3://capstan-ssh/runs", credentials: creds, configuration: adminConfig)
        try await admin.createBucket()
        let launch = try home.startLaunch()
        let checkpointed = try await home.wait(timeout: 120) { (try await home.job()?.latestCheckpoint ?? 0) >= 20 }
        #expect(checkpointed, "\((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
        // The controller dies; the agents on the hosts go on.
        kill(launch.processIdentifier, SIGKILL)
        launch.waitUntilExit()
        let job0 = try await #require(try home.job())
        #expect(job0.status == .running)
        home.release(attempt: 1, step: 30)
        // `capstan logs -f` re-attaches a controller and follows to the end.
        let logs = try await home.capstan(["logs", job0.id, "-f"], timeout: 240)
        #expect(logs.status == 0)
        let job = try await #require(try home.job())
        #expect(job.status == .succeeded && job.attempt == 1 && job.restarts == 0, "\(job.status) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        _ = try await home.checkContinuity(job: job, total: 80)
        // Followed, not restarted: one agent per host ever ran for attempt 1.
        for i in 1...2 { #expect(lab.processes(i, containing: "agent --config").isEmpty) }
        let attempt = try await #require(try home.store().attempts(job: job.id).first)
        #expect(attempt.masterAddress == lab.hosts[0].address)
        #expect(job.storage.hasPrefix("s3://capstan-ssh/runs/"))
        let bucket = try S3ObjectStore(location: job.storage, credentials: creds, configuration: adminConfig)
        let m = try #require(try await CheckpointStore(store: bucket, prefix: "checkpoints").latestVerified())
        #expect(m.step == 80 && m.parts.map(\.node) == [0, 1])
        #expect(try await bucket.head(key: "outputs/model.pt") != nil)
        // The credentials reached the hosts' agents on the SSH session's stdin only: no file
        // Capstan wrote, here or on the hosts (their temp folders included: the lab's sshd gives
        // each session TMPDIR=host<i>/tmp), holds the secret. (The shipped agent binary is a copy
        // of the one built before the test ran.)
        let scan = SecretScan([home.dir.path, home.tmp, lab.dir.path], for: creds.secretAccessKey) { $0.contains("/work/bin/capstan-") }
        #expect(scan.covered("/state/capstan.db") && scan.covered("/attempt-1/status.json"), "the scan missed files: \(scan.scanned.count) scanned")
        #expect(scan.hits.isEmpty, "the secret key appears in \(scan.hits)")
        // The agent binary was shipped to each host once, checked by SHA-256.
        for i in 1...2 {
            let bins = (try? FileManager.default.contentsOfDirectory(atPath: lab.dir.file("host\(i)/work/bin"))) ?? []
            #expect(bins.count == 1 && bins[0].hasPrefix("capstan-"), "\(bins)")
        }
        // The hosts are released.
        let status = try await home.capstan(["status", "--json"])
        #expect(!status.stdout.contains("\"running\""), "\(status.stdout)")
    }

    /// Waits for the job in `home` to commit checkpoint 20; returns it, the instance serving
    /// node 1 in attempt 1, and the lab host (1-based) that instance runs on.
    static func runningWithCheckpoint(_ home: JobHome, _ lab: NetnsLab) async throws -> (JobRecord, Instance, Int) {
        #expect(try await home.wait(timeout: 120) { (try await home.job()?.latestCheckpoint ?? 0) >= 20 })
        let job = try await #require(try home.job())
        let first = try await #require(try home.store().attempts(job: job.id).first)
        let cluster = try await #require(try home.store().cluster(named: job.clusterName))
        let nodes = try await home.store().instances(cluster: cluster.id).map(\.instance)
        let victim = try #require(nodes.first { $0.id == first.nodes[1] })
        let hostIndex = try #require(lab.hosts.firstIndex { $0.address == victim.privateAddress }) + 1
        return (job, victim, hostIndex)
    }

    @Test("ssh: a host's link goes down mid-job; it is detected within a bounded time and the job resumes on a replacement host from the last checkpoint")
    func sshLinkDown() async throws {
        let lab = try await NetnsLab.up(3)
        defer { lab.down() }
        // Attempt 1 holds at step 140: the link goes down mid-attempt however late the test looks.
        let home = try JobHome.ssh(lab, hosts: [1, 2, 3], steps: 150, pause: 0.05, hold: [(1, 140)])
        defer { home.dir.cleanup() }
        let launch = try home.startLaunch()
        defer { if launch.isRunning { launch.terminate() } }
        let (job0, victim, hostIndex) = try await Self.runningWithCheckpoint(home, lab)
        // Cut node 1's host off.
        let cut = Date()
        try lab.linkDown(hostIndex)
        #expect(try await home.wait(timeout: 300) { !launch.isRunning }, "\(home.logTail(job: job0.id))")
        let job = try await #require(try home.job())
        let attempts = try await home.store().attempts(job: job.id)
        #expect(job.status == .succeeded && job.attempt == 2, "\(job.status) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        let a1 = try #require(attempts.first), a2 = try #require(attempts.last)
        let events = try await home.store().events(job: job.id)
        let failedAt = try #require(events.first { $0.kind == "restarting" && $0.message.hasPrefix("Attempt 1 failed") }).time
        let detected = failedAt.timeIntervalSince(cut)
        // Two bounded status reads without an answer (5 s each) past the heartbeat timeout (4 s):
        // about 14 s. The bound is loose (a loaded machine) but far below any give-up timeout.
        #expect(detected < 90, "the lost host was noticed after \(detected) s")
        #expect(a1.failedNode == 1 && ["heartbeat", "agent"].contains(a1.failureKind ?? ""), "\(a1.failureKind ?? "-") \(a1.message ?? "")")
        // Node 0 kept its host; node 1 moved to the spare.
        #expect(a2.nodes[0] == a1.nodes[0] && a2.nodes[1] != a1.nodes[1])
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withTime, .withFractionalSeconds]
        print("link cut at \(f.string(from: cut))\n" + (events.map { "\(f.string(from: $0.time)) \($0.kind): \($0.message)" }.joined(separator: "\n")))
        let summary = try await home.checkContinuity(job: job, total: 150)
        print("ssh link down: detected after \(String(format: "%.1f", detected)) s; attempt 2 started \(String(format: "%.1f", a2.startedAt.timeIntervalSince(cut))) s after the cut; \(summary)")
    }

    @Test("ssh: a node unreachable when the next attempt starts is replaced (not waited on as if booting): one rank killed while another host's link goes down")
    func sshUnreachableAtStart() async throws {
        let lab = try await NetnsLab.up(4)
        defer { lab.down() }
        let home = try JobHome.ssh(lab, hosts: [1, 2, 3, 4], steps: 150, pause: 0.05, hold: [(1, 140)])
        defer { home.dir.cleanup() }
        let launch = try home.startLaunch()
        defer { if launch.isRunning { launch.terminate() } }
        let (job0, victim, hostIndex) = try await Self.runningWithCheckpoint(home, lab)
        // Rank 0's worker dies (a failure that needs no new capacity) as rank 1's host drops off
        // the network: the next attempt finds rank 1 unreachable.
        let pidFiles = (1...4).map { lab.dir.file("host\($0)/work/jobs/\(job0.id)/attempt-1/worker-0.pid") }
        let pid = try #require(pidFiles.lazy.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }.compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }.first)
        let cut = Date()
        kill(pid, SIGKILL)
        try lab.linkDown(hostIndex)
        #expect(try await home.wait(timeout: 240) { !launch.isRunning }, "\(home.logTail(job: job0.id))")
        let job = try await #require(try home.job())
        let attempts = try await home.store().attempts(job: job.id)
        let history = attempts.map { "attempt \($0.attempt): \($0.failureKind ?? "ok") node \($0.failedNode.map(String.init) ?? "-") \($0.message ?? "")" }
        #expect(job.status == .succeeded, "\(job.status) \(job.lastError ?? "") \(history)")
        let last = try #require(attempts.last)
        #expect(!last.nodes.contains(victim.id), "\(history)")
        // Bounded by the reach timeout for a node that answered before (45 s), not the 300 s a booting one gets.
        let restartedAfter = last.startedAt.timeIntervalSince(cut)
        #expect(restartedAfter < 120, "the last attempt started \(restartedAfter) s after the cut: \(history)")
        print("ssh unreachable at start: last attempt \(last.attempt) started \(String(format: "%.1f", restartedAfter)) s after the cut; \(history.joined(separator: "; "))")
    }

    @Test("ssh: a host whose key changed since first contact is refused with a clear message; a host that never answers is skipped, or reported when it is all there is")
    func sshRefusals() async throws {
        let lab = try await NetnsLab.up(2)
        defer { lab.down() }
        let home = try JobHome()
        defer { home.dir.cleanup() }
        home.dir.write("config.yaml", lab.config(hosts: [1, 2], extraHosts: ["{name: ghost, address: \(lab.subnet).200, workRoot: /tmp/ghost}"]))
        // An impostor's key recorded for host 1.
        _ = try runProcessBlocking("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", home.dir.file("other")], timeout: 30)
        let other = try String(contentsOfFile: home.dir.file("other.pub"), encoding: .utf8).split(separator: " ").prefix(2).joined(separator: " ")
        home.dir.write("ssh/known_hosts", "\(lab.hosts[0].address) \(other)\n")
        let r = try await home.capstan(["up", "c", "--nodes", "2"], timeout: 120)
        #expect(r.status != 0)
        let out = r.stdout + r.stderr
        #expect(out.contains("h1: The host key of \(lab.hosts[0].address) is not the one Capstan recorded"), "\(out)")
        #expect(out.contains("ghost: Cannot reach root@\(lab.subnet).200"), "\(out)")
        // The recorded key of host 1 stands (host 2's was recorded on first contact).
        let known = try String(contentsOfFile: home.dir.file("ssh/known_hosts"), encoding: .utf8).split(separator: "\n")
        #expect(known.filter { $0.hasPrefix(lab.hosts[0].address + " ") } == ["\(lab.hosts[0].address) \(other)"], "\(known)")
        #expect(known.count == 2, "\(known)")  // (host 2's line may be hashed: HashKnownHosts)
        // Host 1's real key instead: the unreachable host is skipped, the healthy ones used.
        try FileManager.default.removeItem(atPath: home.dir.file("ssh/known_hosts"))
        let ok = try await home.capstan(["up", "c", "--nodes", "2"], timeout: 120)
        #expect(ok.status == 0, "\(ok.stdout) \(ok.stderr)")
        let status = try await home.capstan(["status"])
        #expect(status.stdout.contains("MASTER_ADDR \(lab.hosts[0].address) — private addresses: all 2 nodes are on provider ssh, region ssh: one network"), "\(status.stdout)")
        // Only the ghost is left: a clear report, nothing reserved.
        let none = try await home.capstan(["up", "d", "--nodes", "1"], timeout: 120)
        #expect(none.status != 0 && (none.stdout + none.stderr).contains("ghost: Cannot reach"), "\(none.stdout) \(none.stderr)")
        _ = try await home.capstan(["down", "c"])
    }
}
