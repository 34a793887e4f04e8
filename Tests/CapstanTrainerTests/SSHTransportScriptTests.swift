import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTestSupport
@testable import CapstanTrainer
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The shell scripts ``SSHTransport`` runs on nodes, run here with `/bin/sh` (dash) and bash,
/// `$HOME` pointing at a temporary folder: the work root's checks, and the start script.
@Suite("SSH transport scripts")
struct SSHTransportScriptTests {
    static let shells = ["/bin/sh", "/bin/bash"].filter { FileManager.default.isExecutableFile(atPath: $0) }
    let target = SSHTarget(address: "10.0.0.5", user: "ubuntu")

    /// Runs `script` with `shell`, `HOME=home`, as a node's shell would.
    func run(_ shell: String, _ script: String, home: String, input: Data? = nil) throws -> (status: Int32, out: String) {
        let r = try Spawn.runCapturing([shell, "-c", SSHClient.remoteCommand(script)], environment: ["HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin"], input: input, timeout: 30)
        return (r.status.code, String(decoding: r.stdout, as: UTF8.self) + String(decoding: r.stderr, as: UTF8.self))
    }

    func mode(_ path: String) -> Int {
        var st = stat()
        return lstat(path, &st) == 0 ? Int(st.st_mode) & 0o7777 : -1
    }

    @Test("work roots: absolute or ~/FOLDER; ~/ becomes $HOME on the node; the default is in the login user's home")
    func roots() {
        #expect(SSHTransport.defaultWorkRoot == "~/.capstan-node")
        for ok in ["/data/capstan", "~/.capstan-node", "~/a/b_c-d.e"] { #expect(SSHTransport.validRoot(ok), "\(ok)") }
        for bad in ["relative", "~/", "~", "~user/x", "~/a b", "~/../etc", "~/a;rm"] { #expect(!SSHTransport.validRoot(bad), "\(bad)") }
        #expect(SSHClient.remotePath("~/.capstan-node/jobs/j") == #""$HOME"/'.capstan-node/jobs/j'"#)
        #expect(SSHClient.remotePath("/d/it's") == #"'/d/it'\''s'"#)
        #expect(SSHClient.remoteCommand("true").hasPrefix("umask 077; "))
    }

    @Test("the default work root is made 0700 under $HOME, with bin; an absolute root too", arguments: shells)
    func makesPrivateRoot(shell: String) throws {
        let dir = TempDir("capstan-root")
        defer { dir.cleanup() }
        for root in ["~/.capstan-node", dir.file("abs/work")] {
            let r = try run(shell, SSHTransport.safeRootScript(root) + #"echo "OK $capstan_root""#, home: dir.path)
            let made = root.hasPrefix("~/") ? dir.file(".capstan-node") : root
            #expect(r.status == 0 && r.out == "OK \(made)\n", "\(r)")
            #expect(mode(made) == 0o700 && mode(made + "/bin") == 0o700)
        }
    }

    @Test("a $HOME that is not an absolute path is refused, never replaced by a shared folder", arguments: shells)
    func relativeHome(shell: String) throws {
        for home in ["", "relative/home", "/has space"] {
            let r = try run(shell, SSHTransport.safeRootScript("~/.capstan-node") + "echo OK", home: home)
            #expect(r.status == 3 && r.out.hasPrefix("CAPSTAN-REFUSED home"), "\(r)")
            let e = try #require(SSHTransport.refusal(r.out, target: target))
            #expect(e.code == .config && e.message.contains("home folder of ubuntu on ubuntu@10.0.0.5") && (e.hint ?? "").contains("workRoot"), "\(e)")
        }
        let e = try #require(SSHTransport.refusal("CAPSTAN-REFUSED home relative/home\n", target: target))
        #expect(e.message.contains("'relative/home', not an absolute path") && e.message.contains("never falls back"))
    }

    @Test("a root or bin writable by group or others, or owned by another user (its symlink too), is refused with what, where and what to do", arguments: shells)
    func unsafeRoots(shell: String) throws {
        let dir = TempDir("capstan-root")
        defer { dir.cleanup() }
        let fm = FileManager.default
        let open = dir.file("open"), group = dir.file("group"), binOpen = dir.file("binopen")
        try fm.createDirectory(atPath: open, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: group, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: binOpen + "/bin", withIntermediateDirectories: true)
        chmod(open, 0o777); chmod(group, 0o770); chmod(binOpen, 0o700); chmod(binOpen + "/bin", 0o707)
        for (root, culprit, mode) in [(open, open, "drwxrwxrwx"), (group, group, "drwxrwx---"), (binOpen, binOpen + "/bin", "drwx---rwx")] {
            let r = try run(shell, SSHTransport.safeRootScript(root) + "echo OK", home: dir.path)
            #expect(r.status == 3 && r.out == "CAPSTAN-REFUSED mode \(mode) \(culprit)\n", "\(r)")
            let e = try #require(SSHTransport.refusal(r.out, target: target))
            #expect(e.message.contains("Refusing to use \(culprit) on ubuntu@10.0.0.5") && e.message.contains(mode) && e.hint == "Run `chmod go-w \(culprit)` on that node (or remove the folder), then retry.", "\(e)")
        }
        // Nothing made inside a root that fails.
        #expect(!fm.fileExists(atPath: open + "/bin"))
        guard getuid() == 0 else { return }
        // Owned by someone else: the root, the bin, or a symlink to a good folder.
        let foreign = dir.file("foreign"), planted = dir.file("planted"), good = dir.file("good"), link = dir.file("link")
        try fm.createDirectory(atPath: foreign, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: planted + "/bin", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: good, withIntermediateDirectories: true)
        chmod(foreign, 0o700); chmod(planted, 0o700); chmod(good, 0o700)
        chown(foreign, 65534, 65534); chown(planted + "/bin", 65534, 65534)
        symlink(good, link); lchown(link, 65534, 65534)
        for (root, culprit) in [(foreign, foreign), (planted, planted + "/bin"), (link, link)] {
            let r = try run(shell, SSHTransport.safeRootScript(root) + "echo OK", home: dir.path)
            #expect(r.status == 3 && r.out == "CAPSTAN-REFUSED owner 65534 0 \(culprit)\n", "\(r)")
            let e = try #require(SSHTransport.refusal(r.out, target: target))
            #expect(e.message == "Refusing to use \(culprit) on ubuntu@10.0.0.5: it belongs to uid 65534, not to ubuntu (uid 0), the SSH login; whoever owns it could swap the agent Capstan runs there, or its config.", "\(e)")
            #expect((e.hint ?? "").contains("Remove \(culprit)"), "\(e)")
        }
        // A symlink of the login user's to a folder of its own is fine.
        lchown(link, 0, 0)
        let ok = try run(shell, SSHTransport.safeRootScript(link) + "echo OK", home: dir.path)
        #expect(ok.status == 0 && ok.out == "OK\n", "\(ok)")
    }

    /// A stand-in agent that records its arguments, stdin, working folder and environment.
    static let fakeAgent = """
        #!/bin/sh
        cat > "$HOME/agent.stdin"
        echo "$@" > "$HOME/agent.args"
        pwd > "$HOME/agent.cwd"
        echo "${CAPSTAN_PYTHON_CACHE:-}" > "$HOME/agent.env"
        """

    func sha256(_ path: String) throws -> String {
        let r = try Spawn.runCapturing(["/usr/bin/sha256sum", path], timeout: 30)
        return String(String(decoding: r.stdout, as: UTF8.self).prefix(64))
    }

    @Test("capstan_sha: OpenSSL's digest where it is installed, else sha256sum's (also when openssl answers in another format); neither: refused", arguments: shells)
    func shaFunction(shell: String) throws {
        let dir = TempDir("capstan-sha")
        defer { dir.cleanup() }
        let file = dir.write("f", "agent bytes\n")
        let expected = try sha256(file)
        func digest(_ path: String) throws -> (Int32, String) {
            let r = try Spawn.runCapturing([shell, "-c", SSHTransport.shaFunction + "capstan_sha \(SSHClient.quote(file)); echo \"$capstan_sum\""], environment: ["PATH": path], timeout: 30)
            return (r.status.code, String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        #expect(try digest("/usr/local/bin:/usr/bin:/bin") == (0, expected))
        // Only sha256sum; then an openssl that prints its other format.
        let only = dir.file("only")
        try FileManager.default.createDirectory(atPath: only, withIntermediateDirectories: true)
        symlink("/usr/bin/sha256sum", only + "/sha256sum")
        #expect(try digest(only) == (0, expected))
        dir.write("only/openssl", "#!/bin/sh\ncat > /dev/null; echo 'SHA2-256(stdin)= 0123'\n")
        chmod(dir.file("only/openssl"), 0o700)
        #expect(try digest(only) == (0, expected))
        let none = try digest(dir.file("empty"))
        #expect(none == (3, "CAPSTAN-REFUSED no-sha256sum"))
        #expect(SSHTransport.refusal(none.1, target: target)?.message.contains("neither openssl nor sha256sum") == true)
    }

    @Test("the start script: the agent's SHA-256 checked first (a copy that does not match is removed, for a fresh upload); the config and secrets read from stdin, the config written 0600 with ~/ resolved; nothing of them in the script", arguments: shells)
    func startScript(shell: String) async throws {
        let dir = TempDir("capstan-start")
        defer { dir.cleanup() }
        let root = "~/.capstan-node"
        let state = root + "/jobs/j/attempt-1"
        let marker = "marker-" + UUID().uuidString
        var config = AgentConfig(
            job: "j", attempt: 1, node: 0, nodes: 1, setup: [], run: "true", environment: ["CAPSTAN_CHECKPOINT_DIR": state + "/checkpoints", "MARK": marker],
            workdir: root + "/jobs/j/work", stateDir: state, checkpointDir: state + "/checkpoints", outputDir: state + "/output", resumeDir: nil, resumeStep: nil,
            bucket: "file:///b", keep: 1)
        config.pidsFile = root + "/nodes/n1/pids"
        let secret = "s3cr3t-" + UUID().uuidString
        let secrets = AgentSecrets(bucket: BucketAccess(location: "s3://b/p", s3: .init(endpoint: nil, region: "us-east-1", pathStyle: nil, accessKeyID: "AKIA", secretAccessKey: secret, sessionToken: nil)), environment: ["JOB_TOKEN": "job-" + secret])
        let input = try SSHTransport.startInput(config: config, secrets: secrets, environment: ["CAPSTAN_PYTHON_CACHE": "/cache dir"])
        let exe = root + "/bin/capstan-fake"
        let exeHere = dir.file(".capstan-node/bin/capstan-fake")
        dir.write(".capstan-node/bin/capstan-fake", Self.fakeAgent)
        chmod(exeHere, 0o700)
        chmod(dir.file(".capstan-node"), 0o700); chmod(dir.file(".capstan-node/bin"), 0o700)
        let sha = try sha256(exeHere)
        let script = SSHTransport.safeRootScript(root) + SSHTransport.startScript(config, exe: exe, sha: sha, root: root)
        // The command line carries neither the config nor the secrets.
        let b64 = try PluginWire.encoder.encode(config).base64EncodedString()
        #expect(!script.contains(marker) && !script.contains(secret) && !script.contains(String(b64.prefix(40))))

        let r = try run(shell, script, home: dir.path, input: input)
        #expect(r.status == 0 && r.out.hasPrefix("STARTED "), "\(r)")
        var waited = 0
        while !FileManager.default.fileExists(atPath: dir.file("agent.env")) && waited < 100 {
            try await Task.sleep(for: .milliseconds(50)); waited += 1
        }
        let home = dir.path
        let agentJSON = home + "/.capstan-node/jobs/j/attempt-1/agent.json"
        #expect(mode(agentJSON) == 0o600 && mode(home + "/.capstan-node/jobs/j/attempt-1") == 0o700 && mode(home + "/.capstan-node/jobs") == 0o700)
        let written = try PluginWire.decoder.decode(AgentConfig.self, from: try Data(contentsOf: URL(fileURLWithPath: agentJSON)))
        #expect(written.stateDir == home + "/.capstan-node/jobs/j/attempt-1" && written.workdir == home + "/.capstan-node/jobs/j/work")
        #expect(written.environment["CAPSTAN_CHECKPOINT_DIR"] == home + "/.capstan-node/jobs/j/attempt-1/checkpoints" && written.environment["MARK"] == marker)
        #expect(written.pidsFile == home + "/.capstan-node/nodes/n1/pids")
        // The agent got the secrets on its stdin, the forwarded environment, the resolved paths.
        let got = try PluginWire.decoder.decode(AgentSecrets.self, from: try Data(contentsOf: URL(fileURLWithPath: dir.file("agent.stdin"))))
        #expect(got == secrets)
        #expect(try String(contentsOfFile: dir.file("agent.args"), encoding: .utf8) == "agent --config \(agentJSON) --secrets-stdin\n")
        #expect(try String(contentsOfFile: dir.file("agent.cwd"), encoding: .utf8) == home + "/.capstan-node/jobs/j/work\n")
        #expect(try String(contentsOfFile: dir.file("agent.env"), encoding: .utf8) == "/cache dir\n")
        let pids = try String(contentsOfFile: home + "/.capstan-node/nodes/n1/pids", encoding: .utf8)
        #expect(pids == "\(r.out.dropFirst(8).trimmingCharacters(in: .whitespacesAndNewlines)) 0\n", "\(pids)")
        // No file but the agent's config was written from the input (the secret is nowhere).
        for f in try FileManager.default.subpathsOfDirectory(atPath: home) where f != "agent.stdin" {
            #expect(FileManager.default.contents(atPath: home + "/" + f)?.range(of: Data(secret.utf8)) == nil, "\(f)")
        }

        // A copy that is not this build: removed, and reported for a fresh upload.
        dir.write(".capstan-node/bin/capstan-fake", Self.fakeAgent + "echo tampered > \"$HOME/tampered\"\n")
        chmod(exeHere, 0o700)
        let tampered = try run(shell, SSHTransport.safeRootScript(root) + SSHTransport.startScript(config, exe: exe, sha: sha, root: root), home: dir.path, input: input)
        #expect(tampered.status == 0 && tampered.out.hasPrefix("AGENT-MISMATCH ") && !tampered.out.contains(sha), "\(tampered)")
        #expect(!FileManager.default.fileExists(atPath: exeHere) && !FileManager.default.fileExists(atPath: dir.file("tampered")))
        let missing = try run(shell, SSHTransport.safeRootScript(root) + SSHTransport.startScript(config, exe: exe, sha: sha, root: root), home: dir.path, input: input)
        #expect(missing.out == "NO-AGENT\n", "\(missing)")
    }
}
