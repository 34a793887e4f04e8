public import CapstanCore
public import CapstanProviders
import Crypto
import Foundation

/// Remote nodes over SSH (the system OpenSSH client, ``SSHClient``): any instance with an SSH
/// user and address — the `ssh` provider's hosts, cloud instances.
///
/// On each node, under its work root (`Instance.details["workRoot"]`):
/// `bin/capstan-<sha256 prefix>` (the agent, shipped once and checked), `jobs/<job>/work` (the
/// workdir), `jobs/<job>/attempt-N/` (the agent's state, as on local nodes) and
/// `nodes/<instance>/pids` (what releasing the host kills).
///
/// The agent binary is this `capstan` (or `agentBinary`: a build with `--static-swift-stdlib`
/// runs on any glibc Linux without Swift). It is uploaded when the node lacks that exact build,
/// verified by SHA-256 on the node, then started detached (`setsid nohup`), so it outlives the
/// SSH session and the controller. Starting is idempotent: an agent already running for the
/// same job and attempt is followed, not started twice.
public struct SSHTransport: NodeTransport {
    /// For hosts the user listed (the ssh provider): Capstan's shared `known_hosts`.
    public let client: SSHClient
    /// Cloud instances log in with their cluster's own key and `known_hosts` (``ClusterKeys``).
    public let clusterKeys: ClusterKeys?
    /// How long a node that does not answer yet (booting) is retried before it counts as lost.
    public var bootTimeout: Double = 300
    /// How long a node that has answered before (through this transport) is retried: it is not
    /// booting, so silence means a lost link or machine, and the job should replace it soon.
    public var reachTimeout: Double = 45
    /// Where Capstan's files go on nodes whose provider names no work root.
    public static let defaultWorkRoot = "/var/tmp/capstan-node"
    /// The local file shipped to nodes as the agent.
    public let agentBinary: String
    /// Variables passed from this process to remote agents (Capstan's settings: the Python
    /// cache, the crash-test hook), sent on the SSH session's stdin. The bucket's credentials go
    /// separately, as ``AgentSecrets`` on the agent's own stdin.
    public let forwardedPrefixes: [String]
    let digest: LockedBox<String?> = LockedBox(nil)
    /// Nodes that have answered, by instance id.
    let reached: LockedBox<Set<String>> = LockedBox([])

    public init(client: SSHClient, agentBinary: String, clusterKeys: ClusterKeys? = nil, forwardedPrefixes: [String] = ["CAPSTAN_PYTHON_CACHE"] + AgentStatus.testHookSettings) {
        self.client = client
        self.clusterKeys = clusterKeys
        self.agentBinary = agentBinary
        self.forwardedPrefixes = forwardedPrefixes
    }

    public func serves(_ node: Instance) -> Bool {
        node.provider != "local" && node.sshUser != nil && (node.publicAddress ?? node.privateAddress) != nil
    }

    /// A cloud instance (no key of its own from its provider) uses its cluster's key pair.
    func clusterName(_ node: Instance) -> String? {
        node.provider != "ssh" && node.details["sshKey"] == nil ? node.tags[CapstanTags.cluster] : nil
    }

    func client(for node: Instance) -> SSHClient {
        guard let cluster = clusterName(node), let keys = clusterKeys else { return client }
        return SSHClient(folder: keys.folder(cluster: cluster), connectTimeout: client.connectTimeout, aliveTimeout: client.aliveTimeout)
    }

    func target(_ node: Instance) throws -> SSHTarget {
        guard let user = node.sshUser, let address = node.publicAddress ?? node.privateAddress else {
            throw CapstanError(.invalidRequest, "Node \(node.id) has no SSH address or user.")
        }
        let key = node.details["sshKey"] ?? clusterName(node).flatMap { c in clusterKeys.map { $0.privateKey(cluster: c) } }
        return SSHTarget(address: address, port: node.sshPort ?? 22, user: user, keyFile: key)
    }

    func root(_ node: Instance) throws -> String {
        let r = node.details["workRoot"] ?? Self.defaultWorkRoot
        guard r.hasPrefix("/") else { throw CapstanError(.invalidRequest, "Node \(node.id)'s work root \(r) is not an absolute path.") }
        return r
    }

    /// Runs `command`, retrying every 2 s while the node does not answer (a fresh cloud
    /// instance boots for a while) up to `bootTimeout`, or `reachTimeout` for a node that has
    /// answered before; a refused host key or login is not retried.
    func runReaching(_ node: Instance, _ command: String, input: Data? = nil, timeout: Double = 60) async throws -> SSHResult {
        let t = try target(node)
        let known = reached.withLock { $0.contains(node.id) }
        let deadline = Date().addingTimeInterval(known ? min(reachTimeout, bootTimeout) : bootTimeout)
        while true {
            do {
                let result = try await client(for: node).run(t, command, input: input, timeout: timeout)
                reached.withLock { _ = $0.insert(node.id) }
                return result
            } catch let e as CapstanError where e.code == .transient && Date() < deadline {
                try await Task.sleep(for: .seconds(2))
            }
        }
    }

    public func layout(job: String, attempt: Int, on node: Instance) throws -> NodeLayout {
        let r = try root(node)
        let state = "\(r)/jobs/\(job)/attempt-\(attempt)"
        return NodeLayout(workdir: "\(r)/jobs/\(job)/work", stateDir: state, checkpointDir: state + "/checkpoints",
                          outputDir: state + "/output", resumeDir: state + "/resume", pidsFile: "\(r)/nodes/\(node.id)/pids")
    }

    public func uploadWorkdir(_ localPath: String, job: String, on node: Instance) async throws {
        let t = try target(node)
        let work = "\(try root(node))/jobs/\(job)/work"
        let marker = SSHClient.quote("\(try root(node))/jobs/\(job)/workdir-copied")
        if try await runReaching(node, "test -f \(marker)", timeout: 30).status == 0 { return }
        // tar over the session: one round trip, permissions kept.
        let archive = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-workdir-\(UUID().uuidString).tar").path
        defer { try? FileManager.default.removeItem(atPath: archive) }
        let tar = await Spawn.wait(try Spawn.start(["/bin/tar", "-C", localPath, "-cf", archive, "."], environment: ProcessInfo.processInfo.environment))
        guard tar.succeeded else { throw CapstanError(.io, "Packing the workdir \(localPath) failed (\(tar)).", hint: "Check that the folder exists and is readable.") }
        try await client(for: node).check(t, "mkdir -p \(SSHClient.quote(work)) && tar -C \(SSHClient.quote(work)) -xf - && touch \(marker)", inputFile: archive, timeout: 1800, what: "Unpacking the workdir")
    }

    /// SHA-256 of the agent binary (once).
    func agentDigest() throws -> String {
        if let d = digest.withLock({ $0 }) { return d }
        guard let h = FileHandle(forReadingAtPath: agentBinary) else {
            throw CapstanError(.io, "Cannot read the agent binary \(agentBinary).", hint: "Build capstan, or set the agent binary to a static build.")
        }
        defer { try? h.close() }
        var hasher = SHA256()
        while let chunk = try h.read(upToCount: 4 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        let d = hasher.finalize().hex
        digest.withLock { $0 = d }
        return d
    }

    /// The agent's path on the node for this build.
    func agentPath(on node: Instance) throws -> String {
        "\(try root(node))/bin/capstan-\(try agentDigest().prefix(16))"
    }

    /// Ships the agent binary to the node and checks its SHA-256 there.
    func uploadAgent(to node: Instance) async throws {
        let t = try target(node)
        let sha = try agentDigest()
        let path = try agentPath(on: node)
        let tmp = SSHClient.quote(path + ".upload")
        try await client(for: node).check(t, "mkdir -p \(SSHClient.quote((path as NSString).deletingLastPathComponent)) && cat > \(tmp) && chmod +x \(tmp)", inputFile: agentBinary, timeout: 1800, what: "Uploading the agent")
        let sum = try await client(for: node).check(t, "sha256sum \(tmp)", timeout: 120, what: "Checking the agent's SHA-256")
        guard sum.text.split(separator: " ").first.map(String.init) == sha else {
            _ = try? await client(for: node).run(t, "rm -f \(tmp)")
            throw CapstanError(.io, "The agent uploaded to \(t.description) does not match its SHA-256 (got \(sum.text.prefix(64)), expected \(sha)); it was removed.", hint: "Retry; if it repeats, check the node's disk.")
        }
        try await client(for: node).check(t, "mv \(tmp) \(SSHClient.quote(path))", what: "Installing the agent")
    }

    /// One round trip in the usual case: an agent of this attempt already running is left
    /// alone (re-attach); else the config is written and the agent started. Only a node that
    /// lacks this build of the agent costs more (the upload, checked by SHA-256).
    public func startAgent(_ config: AgentConfig, secrets: AgentSecrets, on node: Instance) async throws {
        let exe = try agentPath(on: node)
        let q = SSHClient.quote
        let state = q(config.stateDir)
        // The config holds no secrets, so it travels in the command. The session's stdin
        // carries the secrets (one base64 line), then the forwarded environment: the remote
        // shell keeps the secrets in a variable and pipes them to the agent's stdin (printf
        // is a builtin: no process, no argument), and exports the environment to the agent.
        // Never in arguments, never in a file, on either machine.
        let json = try PluginWire.encoder.encode(config).base64EncodedString()
        let secretLine = try PluginWire.encoder.encode(secrets).base64EncodedString()
        let env = ProcessInfo.processInfo.environment.filter { k, _ in forwardedPrefixes.contains { k.hasPrefix($0) } }
        let lines = ([secretLine] + env.sorted { $0.key < $1.key }.map { "export \($0.key)=\(q($0.value))" }).joined(separator: "\n")
        let pidsDir = config.pidsFile.map { q(($0 as NSString).deletingLastPathComponent) } ?? ""
        let script = """
            s=\(state)/status.json
            if [ -f "$s" ] && grep -Eq '"phase" *: *"(starting|restoring|setup|running|finishing)"' "$s"; then
              p=$(sed -n 's/.*"agentPID" *: *\\([0-9]*\\).*/\\1/p' "$s"); if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then echo RUNNING; exit 0; fi
            fi
            [ -x \(q(exe)) ] || { echo NO-AGENT; exit 0; }
            mkdir -p \(state) \(q(config.workdir)) \(pidsDir) || exit 1
            echo \(json) | base64 -d > \(state)/agent.json || exit 1
            IFS= read -r capstan_secrets
            eval "$(cat)"
            cd \(q(config.workdir)) || exit 1
            printf '%s\\n' "$capstan_secrets" | base64 -d | setsid nohup \(q(exe)) agent --config \(state)/agent.json --secrets-stdin > \(state)/agent.out 2>&1 &
            capstan_secrets=
            p=$!
            \(config.pidsFile.map { "echo \"$p 0\" >> \(q($0))" } ?? ":")
            echo "STARTED $p"
            """
        // (No `&&` before the `&`: a backgrounded list runs in a subshell that keeps the session open.)
        for round in 0..<2 {
            let r = try await runReaching(node, script, input: Data((lines + "\n").utf8))
            let out = r.text.trimmingCharacters(in: .whitespacesAndNewlines)
            if out == "RUNNING" { return }
            if out == "NO-AGENT" && round == 0 { try await uploadAgent(to: node); continue }
            // The agent's pid went into the node's pids file at once (the agent records itself
            // too): releasing the host kills it.
            guard r.status == 0, out.hasPrefix("STARTED "), Int(out.dropFirst(8)) != nil else {
                throw CapstanError(.io, "Starting the agent on \(try target(node).description) failed (exit \(r.status)): \(out.suffix(200)) \(r.stderr.suffix(300))")
            }
            return
        }
    }

    public func agentStatus(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        let l = try layout(job: job, attempt: attempt, on: node)
        let r = try await client(for: node).run(try target(node), "cat \(SSHClient.quote(l.stateDir + "/status.json")) 2>/dev/null", timeout: 5)
        guard r.status == 0, !r.stdout.isEmpty else { return nil }
        do { return try PluginWire.decoder.decode(AgentStatus.self, from: r.stdout) } catch {
            throw CapstanError(.io, "The agent status on node \(node.id) is unreadable (\(error)).")
        }
    }

    public func readLog(job: String, attempt: Int, on node: Instance, from offset: Int64, limit: Int) async throws -> Data {
        let l = try layout(job: job, attempt: attempt, on: node)
        let r = try await client(for: node).run(try target(node), "tail -c +\(offset + 1) \(SSHClient.quote(l.stateDir + "/node.log")) 2>/dev/null | head -c \(limit)", timeout: 15)
        return r.stdout
    }

    public func agentOutput(job: String, attempt: Int, on node: Instance) async -> String {
        guard let l = try? layout(job: job, attempt: attempt, on: node), let t = try? target(node),
              let r = try? await client(for: node).run(t, "tail -c 2000 \(SSHClient.quote(l.stateDir + "/agent.out")) 2>/dev/null", timeout: 10) else { return "" }
        return r.text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public func stopAgent(job: String, attempt: Int, on node: Instance, force: Bool) async throws {
        guard let s = try? await agentStatus(job: job, attempt: attempt, on: node) else { return }
        let t = try target(node)
        if force {
            let pids = try layout(job: job, attempt: attempt, on: node).stateDir + "/pids"
            let command = s.commandPID.map { "kill -KILL -\($0) 2>/dev/null; " } ?? ""
            _ = try await client(for: node).run(t, "\(command)kill -KILL \(s.agentPID) 2>/dev/null; " + SSHClient.killListed(pids), timeout: 20)
            return
        }
        _ = try await client(for: node).run(t, "kill -TERM \(s.agentPID) 2>/dev/null; true", timeout: 20)
    }
}
