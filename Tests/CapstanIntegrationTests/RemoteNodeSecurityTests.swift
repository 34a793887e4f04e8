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

/// Issue 23's remote-node items, on real sshd hosts (``NetnsLab``) and through the CLI: the work
/// root on a node (owner, mode, umask), the agent binary's SHA-256 before every start, the
/// agent's config kept out of command lines, and a cluster's SSH key pair living only as long
/// as the cluster.
@Suite("remote node security")
struct RemoteNodeSecurityTests {
    /// Lab host `i` as the ssh provider hands it over: root login with the lab's key, `root`
    /// as its work root.
    static func node(_ lab: NetnsLab, _ i: Int, root: String) -> Instance {
        Instance(
            id: "ssh-h\(i)-" + UUID().uuidString.prefix(6).lowercased(), provider: "ssh", instanceType: "cpu", region: "ssh", state: .running,
            privateAddress: lab.hosts[i - 1].address, publicAddress: lab.hosts[i - 1].address, sshPort: 22, sshUser: "root",
            access: .ssh(SSHNodeAccess(address: lab.hosts[i - 1].address, user: "root", key: .file(lab.dir.file("client_key")), workRoot: root)))
    }

    static func transport(_ lab: NetnsLab) -> SSHTransport {
        SSHTransport(client: SSHClient(folder: lab.dir.file("ssh")), agentBinary: BuildProducts.capstan)
    }

    /// A one-node attempt running `run`, its bucket a folder of the lab.
    static func config(_ t: SSHTransport, _ lab: NetnsLab, node: Instance, job: String, env: [String: String] = [:], run: String = "echo hello", pidsFile: String? = nil) throws -> AgentConfig {
        let l = try t.layout(job: job, attempt: 1, on: node)
        var c = AgentConfig(
            job: job, attempt: 1, node: 0, nodes: 1, setup: [], run: run, environment: env, workdir: l.workdir, stateDir: l.stateDir,
            checkpointDir: l.checkpointDir, outputDir: l.outputDir, resumeDir: nil, resumeStep: nil, bucket: "file://" + lab.dir.file("bucket"), keep: 1)
        c.pidsFile = pidsFile ?? l.pidsFile
        c.heartbeatSeconds = 0.2
        c.stopGraceSeconds = 1
        c.commitWaitSeconds = 1
        return c
    }

    static func newJob() -> String { "rs-" + UUID().uuidString.prefix(8).lowercased() }

    /// Waits (at most `timeout` s) for the agent of `job` to report it has exited.
    static func exited(_ t: SSHTransport, job: String, on node: Instance, timeout: Double = 60) async -> AgentStatus? {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if let s = try? await t.agentStatus(job: job, attempt: 1, on: node), s.phase == .exited { return s }
            try? await Task.sleep(for: .milliseconds(200))
        }
        return nil
    }

    static func mode(_ path: String) -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else { return -1 }
        return Int(st.st_mode) & 0o7777
    }

    /// Every process's command line in lab host `i`'s namespace, raw bytes (NULs as spaces).
    static func commandLines(_ lab: NetnsLab, _ i: Int) -> [Data] {
        let r = try? runProcessBlocking("/usr/sbin/ip", ["netns", "pids", lab.hosts[i - 1].ns], timeout: 10)
        return (r?.stdout ?? "").split(separator: "\n").compactMap { pid_t($0) }.compactMap { pid in
            FileManager.default.contents(atPath: "/proc/\(pid)/cmdline").map { Data($0.map { $0 == 0 ? 0x20 : $0 }) }
        }
    }

    /// Whether `text` holds `needle` as is, or inside a run of base64 (of any length from 16,
    /// decoded at each of its 4 alignments).
    static func holds(_ text: Data, _ needle: String) -> Bool {
        let n = Data(needle.utf8)
        if text.range(of: n) != nil { return true }
        let s = String(decoding: text, as: UTF8.self)
        let runs = (try? NSRegularExpression(pattern: "[A-Za-z0-9+/]{16,}={0,2}"))?.matches(in: s, range: NSRange(s.startIndex..., in: s)) ?? []
        for m in runs {
            guard let r = Range(m.range, in: s) else { continue }
            let run = String(s[r]).trimmingCharacters(in: CharacterSet(charactersIn: "="))
            for skip in 0..<4 {
                var chunk = String(run.dropFirst(skip))
                chunk = String(chunk.prefix(chunk.count / 4 * 4))
                if let d = Data(base64Encoded: chunk), d.range(of: n) != nil { return true }
            }
        }
        return false
    }

    /// Files named `capstan-*` directly in this process's temporary folder that hold `secret`
    /// (raw bytes).
    static func tempFilesHolding(_ secret: Data) -> [String] {
        let tmp = FileManager.default.temporaryDirectory.path
        return ((try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? []).filter { name in
            name.hasPrefix("capstan-") && (FileManager.default.contents(atPath: tmp + "/" + name)?.range(of: secret) != nil)
        }
    }

    @Test("ssh: the agent's config (the job's env values) travels on the SSH session's stdin: no command line on the node holds it or its base64; agent.json is 0600, its folders 0700 (umask 077); the secret never lands in a file on the controller, even with over 60 kB of stdin")
    func configNeverInCommandLines() async throws {
        let lab = try await NetnsLab.up(1)
        defer { lab.down() }
        let t = Self.transport(lab)
        let root = lab.dir.file("host1/rs-work")
        let node = Self.node(lab, 1, root: root)
        // A first attempt ships the agent, so the one watched below starts in one round trip.
        let warm = Self.newJob()
        try await t.startAgent(try Self.config(t, lab, node: node, job: warm), secrets: AgentSecrets(), on: node)
        #expect(await Self.exited(t, job: warm, on: node)?.succeeded == true)

        let marker = "rs-config-marker-" + UUID().uuidString
        // The padding makes the session's stdin (secrets, config, environment) over 60 kB.
        let env = ["RS_MARKER": marker, "RS_PADDING": String(repeating: "p", count: 70_000)]
        // The node's pids file is a FIFO: the start script blocks writing to it (its last
        // step), so its command line is there to read for as long as the test likes.
        let fifo = lab.dir.file("host1/pids-fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let job = Self.newJob()
        let config = try Self.config(t, lab, node: node, job: job, env: env, pidsFile: fifo)
        let secret = "rs-secret-" + UUID().uuidString
        let secrets = AgentSecrets(bucket: BucketAccess(location: "s3://rs-bucket/runs", s3: .init(endpoint: "http://127.0.0.1:9", region: "us-east-1", pathStyle: true, accessKeyID: "AKIARSTEST", secretAccessKey: secret, sessionToken: nil)))
        let start = Task { try await t.startAgent(config, secrets: secrets, on: node) }
        var lines: [Data] = []
        var onDisk: [String] = []
        var blocked = false
        let end = Date().addingTimeInterval(90)
        while Date() < end {
            let now = Self.commandLines(lab, 1)
            lines += now
            onDisk += Self.tempFilesHolding(Data(secret.utf8))
            if now.contains(where: { $0.range(of: Data("STARTED".utf8)) != nil }) {
                if blocked { break }
                blocked = true  // one more look, a moment later
            }
            try await Task.sleep(for: .milliseconds(blocked ? 300 : 20))
        }
        #expect(blocked, "the start script never showed up on the node")
        // Let the script finish: read the FIFO.
        let reader = open(fifo, O_RDONLY | O_NONBLOCK)
        try await start.value
        var buf = [UInt8](repeating: 0, count: 64)
        _ = read(reader, &buf, buf.count)
        close(reader)
        let leaking = lines.filter { Self.holds($0, marker) }
        #expect(leaking.isEmpty, "a command line on the node holds the agent's config: \(leaking.first.map { String(decoding: $0.prefix(300), as: UTF8.self) } ?? "")")
        #expect(!lines.contains { $0.range(of: Data(secret.utf8)) != nil })
        #expect(onDisk.isEmpty, "the secret was in \(Set(onDisk).sorted())")
        // On the node: the config is the login user's alone.
        let agentJSON = config.stateDir + "/agent.json"
        let text = try String(contentsOfFile: agentJSON, encoding: .utf8)
        #expect(text.contains(marker) && !text.contains(secret))
        #expect(Self.mode(agentJSON) == 0o600, "agent.json is \(String(Self.mode(agentJSON), radix: 8))")
        for dir in [root, root + "/bin", config.stateDir, config.workdir] {
            #expect(Self.mode(dir) == 0o700, "\(dir) is \(String(Self.mode(dir), radix: 8))")
        }
    }

    @Test("ssh: a work root (or its bin) that another user owns or that others can write to is refused, saying what, where and what to do; nothing is started or written there")
    func refusesUnsafeWorkRoot() async throws {
        let lab = try await NetnsLab.up(1)
        defer { lab.down() }
        let t = Self.transport(lab)
        let fm = FileManager.default
        // Made first by another user (uid 65534), as anyone can in a shared folder.
        let foreign = lab.dir.file("host1/foreign")
        try fm.createDirectory(atPath: foreign, withIntermediateDirectories: true)
        #expect(chown(foreign, 65534, 65534) == 0)
        // The login user's, but open to others.
        let open = lab.dir.file("host1/open")
        try fm.createDirectory(atPath: open, withIntermediateDirectories: true)
        #expect(chmod(open, 0o777) == 0)
        // The login user's, with a bin someone else made.
        let planted = lab.dir.file("host1/planted")
        try fm.createDirectory(atPath: planted + "/bin", withIntermediateDirectories: true)
        #expect(chmod(planted, 0o700) == 0 && chown(planted + "/bin", 65534, 65534) == 0)
        for (root, culprit, says) in [(foreign, foreign, "uid 65534"), (open, open, "drwxrwxrwx"), (planted, planted + "/bin", "uid 65534")] {
            let node = Self.node(lab, 1, root: root)
            let job = Self.newJob()
            do {
                try await t.startAgent(try Self.config(t, lab, node: node, job: job), secrets: AgentSecrets(), on: node)
                Issue.record("an agent was started from \(root)")
            } catch let e as CapstanError {
                #expect(e.code == .config && e.message.contains(culprit) && e.message.contains(says) && e.message.contains("root@\(lab.hosts[0].address)"), "\(e)")
                #expect((e.hint ?? "").contains(culprit), "\(e)")
            }
            // Nothing written: no agent shipped, no job folder.
            #expect(((try? fm.contentsOfDirectory(atPath: root + "/bin")) ?? []).isEmpty, "\(root)/bin")
            #expect(!fm.fileExists(atPath: root + "/jobs"), "\(root)/jobs")
        }
        #expect(lab.processes(1, containing: "agent --config").isEmpty)
    }

    @Test("ssh: the agent binary's SHA-256 is checked on the node before every start: a tampered copy is never run; a fresh upload replaces it")
    func tamperedAgentReplaced() async throws {
        let lab = try await NetnsLab.up(1)
        defer { lab.down() }
        let t = Self.transport(lab)
        let root = lab.dir.file("host1/work")
        let node = Self.node(lab, 1, root: root)
        let first = Self.newJob()
        try await t.startAgent(try Self.config(t, lab, node: node, job: first), secrets: AgentSecrets(), on: node)
        #expect(await Self.exited(t, job: first, on: node)?.succeeded == true)
        let bins = try FileManager.default.contentsOfDirectory(atPath: root + "/bin")
        let agent = root + "/bin/" + (try #require(bins.first { $0.hasPrefix("capstan-") }))
        // Someone swaps the agent for their own program (same name, same mode).
        let pwned = lab.dir.file("host1/pwned")
        try Data("#!/bin/sh\necho tampered > \(pwned)\n".utf8).write(to: URL(fileURLWithPath: agent))
        let second = Self.newJob()
        try await t.startAgent(try Self.config(t, lab, node: node, job: second), secrets: AgentSecrets(), on: node)
        let end = Date().addingTimeInterval(60)
        var status: AgentStatus?
        while Date() < end, status == nil, !FileManager.default.fileExists(atPath: pwned) {
            status = await Self.exited(t, job: second, on: node, timeout: 0.5)
        }
        #expect(!FileManager.default.fileExists(atPath: pwned), "the tampered agent ran")
        #expect(status?.succeeded == true)
        let same = try await runProcess("/usr/bin/cmp", ["-s", agent, BuildProducts.capstan])
        #expect(same.status == 0, "the agent on the node is not the controller's build")
    }

    @Test("a cluster's SSH key pair and known_hosts go with `down`; a later cluster of the same name gets a key of its own")
    func clusterKeysLiveWithTheCluster() async throws {
        let home = TempDir("capstan-rs-keys")
        defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        func capstan(_ args: [String]) async throws -> ProcessResult {
            try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": home.path], timeout: 120)
        }
        let clusters = home.file("ssh/clusters")
        func keyFolders() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: clusters)) ?? []).sorted() }
        let up = try await capstan(["up", "keys", "--nodes", "1"])
        #expect(up.status == 0, "\(up.stdout) \(up.stderr)")
        let first = try #require(keyFolders().first)
        #expect(keyFolders().count == 1)
        let pub1 = try String(contentsOfFile: clusters + "/" + first + "/id_ed25519.pub", encoding: .utf8)
        #expect(Self.mode(clusters + "/" + first + "/id_ed25519") == 0o600 && Self.mode(clusters + "/" + first) == 0o700)
        // Host keys recorded on first contact sit beside it.
        home.write("ssh/clusters/\(first)/known_hosts", "10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake\n")
        let down = try await capstan(["down", "keys"])
        #expect(down.status == 0, "\(down.stdout) \(down.stderr)")
        #expect(keyFolders().isEmpty, "left after down: \(keyFolders())")
        let again = try await capstan(["up", "keys", "--nodes", "1"])
        #expect(again.status == 0, "\(again.stdout) \(again.stderr)")
        let second = try #require(keyFolders().first)
        let pub2 = try String(contentsOfFile: clusters + "/" + second + "/id_ed25519.pub", encoding: .utf8)
        #expect(pub2 != pub1, "the new cluster reuses its predecessor's key")
        #expect(!FileManager.default.fileExists(atPath: clusters + "/" + second + "/known_hosts"))
        _ = try await capstan(["down", "keys"])
        #expect(keyFolders().isEmpty)
    }
}
