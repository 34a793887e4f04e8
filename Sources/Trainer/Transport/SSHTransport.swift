public import CapstanCore
public import CapstanRuntime
public import CapstanProviders
public import Crypto
public import Foundation

/// Remote nodes over SSH (the system OpenSSH client, ``SSHClient``): any node reached by
/// ``NodeAccess/ssh(_:)`` — the `ssh` provider's hosts, cloud instances (whose plugins send no
/// access: SSH with the cluster's key, ``Instance/resolvedAccess``).
///
/// On each node, under its work root (``SSHNodeAccess/workRoot``, else `~/.capstan-node`
/// in the login user's home): `bin/capstan-<sha256 prefix>` (the agent), `jobs/<job>/work`
/// (the workdir), `jobs/<job>/attempt-N/` (the agent's state, as on local nodes) and
/// `nodes/<instance>/pids` (what releasing the host kills).
///
/// Every command that writes there runs with `umask 077` and first checks the work root and
/// its `bin` (``safeRootScript(_:)``): both must belong to the login user and be writable by
/// no one else, or the node is refused — an agent or config that someone else can swap is
/// never run.
///
/// The agent binary is this `capstan` (or `agentBinary`: a build with `--static-swift-stdlib`
/// runs on any glibc Linux without Swift). Its SHA-256 is checked on the node before every
/// start (a copy that does not match is removed and uploaded afresh, and checked again), then
/// it is started detached (`setsid nohup`), so it outlives the SSH session and the controller.
/// Starting is idempotent: an agent already running for the same job and attempt is followed,
/// not started twice.
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
    /// Where Capstan's files go on nodes whose provider names no work root: in the login
    /// user's home, resolved on the node (never a shared folder such as /tmp or /var/tmp).
    public static let defaultWorkRoot = "~/.capstan-node"
    /// The local file shipped to nodes as the agent.
    public let agentBinary: String
    /// Variables passed from this process to remote agents (Capstan's settings: the Python
    /// cache, the crash-test hook), sent on the SSH session's stdin. The bucket's credentials go
    /// separately, as ``AgentSecrets`` on the agent's own stdin.
    public let forwardedPrefixes: [String]
    let digest: LockedBox<String?> = LockedBox(nil)
    /// Nodes that have answered, by instance id.
    let reached: LockedBox<Set<String>> = LockedBox([])

    public init(client: SSHClient, agentBinary: String, clusterKeys: ClusterKeys? = nil, forwardedPrefixes: [String] = ["CAPSTAN_PYTHON_CACHE", "CAPSTAN_SOURCE_CACHE"] + AgentStatus.testHookSettings) {
        self.client = client
        self.clusterKeys = clusterKeys
        self.agentBinary = agentBinary
        self.forwardedPrefixes = forwardedPrefixes
    }

    public func serves(_ access: NodeAccess) -> Bool {
        if case .ssh = access { return true }
        return false
    }

    /// How `node` is reached: its ``Instance/resolvedAccess``, which must be SSH.
    func access(_ node: Instance) throws -> SSHNodeAccess {
        guard case .ssh(let a)? = node.resolvedAccess else {
            throw CapstanError(.invalidRequest, "Node \(node.id) on \(node.provider) is not reached over SSH (its access is \(node.resolvedAccess?.kind ?? "unknown, with no SSH user and address")).", hint: "Only nodes with ssh access run through the SSH transport.")
        }
        return a
    }

    /// A node logging in with its cluster's key (``SSHNodeAccess/Key/cluster``: a cloud
    /// instance) uses the cluster's key pair and `known_hosts`, in this folder.
    func clusterKeyFolder(_ node: Instance) -> String? {
        guard let a = try? access(node), a.key == .cluster, let keys = clusterKeys else { return nil }
        return keys.folder(for: node)
    }

    func client(for node: Instance) -> SSHClient {
        guard let folder = clusterKeyFolder(node) else { return client }
        return SSHClient(folder: folder, connectTimeout: client.connectTimeout, aliveTimeout: client.aliveTimeout)
    }

    func target(_ node: Instance) throws -> SSHTarget {
        let a = try access(node)
        let key: String?
        switch a.key {
        case .file(let f): key = f
        case .client: key = nil
        // Without cluster keys (a controller built without them), the client's own.
        case .cluster: key = clusterKeyFolder(node).map { $0 + "/id_ed25519" }
        }
        return SSHTarget(address: a.address, port: a.port, user: a.user, keyFile: key)
    }

    /// The node's work root: an absolute path, or `~/FOLDER` (in the login user's home there).
    func root(_ node: Instance) throws -> String {
        let r = try access(node).workRoot ?? Self.defaultWorkRoot
        guard Self.validRoot(r) else {
            throw CapstanError(.invalidRequest, "Node \(node.id)'s work root \(r) is neither an absolute path nor ~/FOLDER (letters, digits, '.', '_', '-' and '/').", hint: "Set the host's workRoot to an absolute path or to ~/FOLDER.")
        }
        return r
    }

    static func validRoot(_ r: String) -> Bool {
        if r.hasPrefix("/") { return true }
        guard r.hasPrefix("~/"), r.count > 2 else { return false }
        return r.dropFirst(2).allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-/".contains($0)) } && !r.split(separator: "/").contains("..")
    }

    /// The shell lines that start every command writing on a node whose work root is `root`:
    /// `umask 077`; `~/` resolved from the node's `$HOME`, which must be an absolute path (no
    /// fallback to a shared folder); the root, then its `bin`, made if missing and checked
    /// (after `mkdir -p`, so a folder someone made first is caught too): owned by the login
    /// user, and their symlinks too, and not writable by group or others. On a failure it
    /// prints `CAPSTAN-REFUSED <what> …` and exits 3 (``refusal(_:target:)`` reads it).
    /// Sets `capstan_root`.
    static func safeRootScript(_ root: String) -> String {
        var lines = ["umask 077"]
        if root.hasPrefix("~/") {
            lines += [
                #"case "$HOME" in /*) ;; *) echo "CAPSTAN-REFUSED home $HOME"; exit 3 ;; esac"#,
                // It goes into the agent's config (sed below): only characters safe there.
                #"case "$HOME" in *[!A-Za-z0-9._/@+-]*) echo "CAPSTAN-REFUSED home-chars $HOME"; exit 3 ;; esac"#,
            ]
        }
        lines += [
            "capstan_root=\(SSHClient.remotePath(root))",
            // Folder $1 exists, or is made (0700), then must be the login user's (a symlink
            // to it too) and writable by no one else. One `ls` in the usual case: this runs
            // before every start.
            #"capstan_safe() {"#,
            #"  [ -d "$1" ] || mkdir -p "$1" || { echo "CAPSTAN-REFUSED mkdir $1"; exit 3; }"#,
            #"  capstan_t=$(ls -ldnL -- "$1") || { echo "CAPSTAN-REFUSED stat $1"; exit 3; }"#,
            #"  set -f; set -- "$1" $capstan_t; set +f; capstan_m=$2"#,
            #"  [ -O "$1" ] || { echo "CAPSTAN-REFUSED owner $4 $(id -u) $1"; exit 3; }"#,
            #"  if [ -L "$1" ]; then"#,
            #"    capstan_t=$(ls -ldn -- "$1") || { echo "CAPSTAN-REFUSED stat $1"; exit 3; }"#,
            #"    set -f; set -- "$1" $capstan_t; set +f"#,
            #"    [ "$4" = "$(id -u)" ] || { echo "CAPSTAN-REFUSED owner $4 $(id -u) $1"; exit 3; }"#,
            #"  fi"#,
            #"  case "$capstan_m" in ?????w*|????????w*) echo "CAPSTAN-REFUSED mode $capstan_m $1"; exit 3 ;; esac"#,
            #"}"#,
            // The root first: nothing is made inside one that fails.
            #"capstan_safe "$capstan_root""#,
            #"capstan_safe "$capstan_root/bin""#,
        ]
        return lines.joined(separator: "\n") + "\n"
    }

    /// The error for a `CAPSTAN-REFUSED` line of a node's answer (nil when there is none):
    /// what was refused, where, and what to do.
    static func refusal(_ output: String, target: SSHTarget) -> CapstanError? {
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("CAPSTAN-REFUSED ") }) else { return nil }
        let f = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        let what = f.count > 1 ? f[1] : "", rest = f.count > 2 ? f[2] : ""
        let host = target.description
        let homeHint = "Give \(target.user) an absolute home folder on that node, or give the node an absolute workRoot (ssh provider: providers.ssh.hosts[].workRoot), then retry."
        switch what {
        case "home":
            return CapstanError(.config, "The home folder of \(target.user) on \(host) is '\(rest)', not an absolute path, so Capstan has no private place there for its files (it never falls back to a shared folder such as /tmp).", hint: homeHint)
        case "home-chars":
            return CapstanError(.config, "The home folder of \(target.user) on \(host) ('\(rest)') has characters Capstan does not put in its agent's config (only letters, digits and . _ / @ + -).", hint: homeHint)
        case "owner":
            let g = rest.split(separator: " ", maxSplits: 2).map(String.init)
            let (owner, me, path) = g.count == 3 ? (g[0], g[1], g[2]) : ("?", "?", rest)
            return CapstanError(.config, "Refusing to use \(path) on \(host): it belongs to uid \(owner), not to \(target.user) (uid \(me)), the SSH login; whoever owns it could swap the agent Capstan runs there, or its config.", hint: "Remove \(path) on that node (as its owner or root) or give the node a workRoot that \(target.user) owns, then retry.")
        case "mode":
            let g = rest.split(separator: " ", maxSplits: 1).map(String.init)
            let (mode, path) = g.count == 2 ? (g[0], g[1]) : ("?", rest)
            return CapstanError(.config, "Refusing to use \(path) on \(host): its group or other users can write to it (\(mode)), so they could swap the agent Capstan runs there, or its config.", hint: "Run `chmod go-w \(path)` on that node (or remove the folder), then retry.")
        case "mkdir", "stat":
            return CapstanError(.config, "Cannot \(what == "mkdir" ? "create" : "inspect") Capstan's work root \(rest) on \(host).", hint: "Check that \(target.user) can write its parent folder there, or give the node another workRoot, then retry.")
        case "no-sha256sum":
            return CapstanError(.unsupported, "\(host) has neither openssl nor sha256sum, one of which Capstan needs to check the agent binary before every start.", hint: "Install coreutils (or openssl) on that node, then retry.")
        default:
            return CapstanError(.config, "\(host) refused Capstan's work root: \(line.dropFirst(16)).")
        }
    }

    /// Runs `body` after ``safeRootScript(_:)`` for `node`'s work root; a refusal is thrown.
    func runSafely(_ node: Instance, _ body: String, input: Data? = nil, inputFile: String? = nil, timeout: Double = 60) async throws -> SSHResult {
        let script = Self.safeRootScript(try root(node)) + body
        let r = try await (inputFile == nil ? runReaching(node, script, input: input, timeout: timeout)
                                           : client(for: node).run(try target(node), script, inputFile: inputFile, timeout: timeout))
        if let refused = Self.refusal(r.text, target: try target(node)) { throw refused }
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
        let work = SSHClient.remotePath("\(try root(node))/jobs/\(job)/work")
        let marker = SSHClient.remotePath("\(try root(node))/jobs/\(job)/workdir-copied")
        if try await runSafely(node, "test -f \(marker)", timeout: 30).status == 0 { return }
        // tar over the session: one round trip, permissions kept.
        let archive = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-workdir-\(UUID().uuidString).tar").path
        defer { try? FileManager.default.removeItem(atPath: archive) }
        let tar = await Spawn.wait(try Spawn.start(["/bin/tar", "-C", localPath, "-cf", archive, "."], environment: ProcessInfo.processInfo.environment))
        guard tar.succeeded else { throw CapstanError(.io, "Packing the workdir \(localPath) failed (\(tar)).", hint: "Check that the folder exists and is readable.") }
        // Owned by the login user, whatever the archive says (as root, tar would restore the
        // controller's uids, which may be other users on the node); modes within umask 077.
        let r = try await runSafely(node, "mkdir -p \(work) && tar --no-same-owner --no-same-permissions -C \(work) -xf - && touch \(marker)", inputFile: archive, timeout: 1800)
        guard r.status == 0 else {
            throw CapstanError(.io, "Unpacking the workdir on \(t.description) failed (exit \(r.status)): \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines).suffix(300))")
        }
    }

    /// SHA-256 of the agent binary (once).
    func agentDigest() throws -> String { try AgentBinaryDigest.sha256(of: agentBinary, cache: digest) }

    /// The agent's path on the node for this build.
    func agentPath(on node: Instance) throws -> String {
        "\(try root(node))/bin/capstan-\(try agentDigest().prefix(16))"
    }

    /// The shell function `capstan_sha FILE`, which sets `capstan_sum` to FILE's SHA-256:
    /// with OpenSSL where it is installed (it uses the CPU's SHA instructions: 4× faster than
    /// coreutils' `sha256sum` here, 0.06 s against 0.25 s for a 96 MB agent), else `sha256sum`.
    /// A node with neither is refused.
    static let shaFunction = [
        #"command -v openssl >/dev/null 2>&1 || command -v sha256sum >/dev/null 2>&1 || { echo "CAPSTAN-REFUSED no-sha256sum"; exit 3; }"#,
        #"capstan_sha() {"#,
        #"  capstan_sum=$(openssl dgst -sha256 -r < "$1" 2>/dev/null); capstan_sum=${capstan_sum%% *}"#,
        #"  [ ${#capstan_sum} -eq 64 ] || { capstan_sum=$(sha256sum < "$1"); capstan_sum=${capstan_sum%% *}; }"#,
        #"}"#,
    ].joined(separator: "\n") + "\n"

    /// Ships the agent binary to the node, checks its SHA-256 there and only then moves it
    /// into place: one round trip.
    func uploadAgent(to node: Instance) async throws {
        let t = try target(node)
        let sha = try agentDigest()
        let path = SSHClient.remotePath(try agentPath(on: node))
        let body = Self.shaFunction + """
            capstan_tmp=\(path).upload.$$
            cat > "$capstan_tmp" || { rm -f "$capstan_tmp"; exit 1; }
            capstan_sha "$capstan_tmp"
            if [ "$capstan_sum" = \(sha) ]; then chmod 700 "$capstan_tmp" && mv -f "$capstan_tmp" \(path) && echo INSTALLED; else rm -f "$capstan_tmp"; echo "MISMATCH $capstan_sum"; fi
            """
        let r = try await runSafely(node, body, inputFile: agentBinary, timeout: 1800)
        let out = r.text.trimmingCharacters(in: .whitespacesAndNewlines)
        if out.hasPrefix("MISMATCH") {
            throw CapstanError(.io, "The agent uploaded to \(t.description) does not match its SHA-256 (got \(out.dropFirst(9).prefix(64)), expected \(sha)); it was removed.", hint: "Retry; if it repeats, check the node's disk.")
        }
        guard r.status == 0, out == "INSTALLED" else {
            throw CapstanError(.io, "Uploading the agent to \(t.description) failed (exit \(r.status)): \(out.suffix(200)) \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines).suffix(300))", hint: "Check the node's free disk space, then retry.")
        }
    }

    /// What goes on the start script's stdin, one item a line: the secrets (base64 JSON), the
    /// agent's config (base64 JSON), then `export NAME='value'` lines for the forwarded
    /// environment. Neither the config nor the secrets ever go into a command line.
    static func startInput(config: AgentConfig, secrets: AgentSecrets, environment: [String: String]) throws -> Data {
        let q = SSHClient.quote
        let secretLine = try PluginWire.encoder.encode(secrets).base64EncodedString()
        let configLine = try PluginWire.encoder.encode(config).base64EncodedString()
        let lines = [secretLine, configLine] + environment.sorted { $0.key < $1.key }.map { "export \($0.key)=\(q($0.value))" }
        return Data((lines.joined(separator: "\n") + "\n").utf8)
    }

    /// The start script for `config` (after ``safeRootScript(_:)``): follows an agent of this
    /// attempt already running; else checks the agent binary's SHA-256 (`NO-AGENT`, or
    /// `AGENT-MISMATCH` after removing a copy that does not match: the caller uploads it),
    /// reads ``startInput(config:secrets:environment:)`` from stdin, writes the config (0600;
    /// `~/` in its paths resolved from `$HOME`) and starts the agent detached.
    /// `srun`: a Slurm login node's `srun …` command line that runs the agent as a step on a
    /// compute node; its pid (here) is then what tells whether the agent runs (in `srun.pid`:
    /// the agent's own pid is another machine's).
    static func startScript(_ config: AgentConfig, exe: String, sha: String, root: String, srun: String? = nil) -> String {
        let p = SSHClient.remotePath
        let state = p(config.stateDir)
        let alive = srun == nil ? "p=$(sed -n 's/.*\"agentPID\" *: *\\([0-9]*\\).*/\\1/p' \"$s\")" : "p=$(cat \(state)/srun.pid 2>/dev/null)"
        let pidsDir = config.pidsFile.map { p(($0 as NSString).deletingLastPathComponent) } ?? ""
        // `~/ROOT` in the config's paths (and the env contract's) becomes `$HOME/ROOT` on the
        // node ($HOME's characters were checked by safeRootScript).
        let resolve = root.hasPrefix("~/")
            ? #" | sed "s|"# + root.replacingOccurrences(of: ".", with: #"\."#) + #"|$HOME/"# + root.dropFirst(2) + #"|g""#
            : ""
        // The secrets and the config come on stdin: the shell keeps them in variables and
        // writes them with printf (a builtin: no process, no argument), never in a command line.
        return shaFunction + """
            s=\(state)/status.json
            if [ -f "$s" ] && grep -Eq '"phase" *: *"(starting|restoring|setup|running|finishing)"' "$s"; then
              \(alive); if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then echo RUNNING; exit 0; fi
            fi
            e=\(p(exe))
            [ -f "$e" ] || { echo NO-AGENT; exit 0; }
            capstan_sha "$e"
            if [ "$capstan_sum" != \(sha) ]; then rm -f "$e"; echo "AGENT-MISMATCH $capstan_sum"; exit 0; fi
            [ -x "$e" ] || chmod 700 "$e" || exit 1
            IFS= read -r capstan_secrets
            IFS= read -r capstan_config
            eval "$(cat)"
            mkdir -p \(state) \(p(config.workdir)) \(pidsDir) || exit 1
            rm -f \(state)/agent.json
            printf '%s\\n' "$capstan_config" | base64 -d\(resolve) > \(state)/agent.json && [ -s \(state)/agent.json ] || { echo "CONFIG-FAILED"; exit 1; }
            capstan_config=
            cd \(p(config.workdir)) || exit 1
            printf '%s\\n' "$capstan_secrets" | base64 -d | setsid nohup \(srun.map { $0 + " " } ?? "")"$e" agent --config \(state)/agent.json --secrets-stdin > \(state)/agent.out 2>&1 &
            capstan_secrets=
            p=$!
            \(srun == nil ? ":" : "echo \"$p\" > \(state)/srun.pid")
            \(config.pidsFile.map { "echo \"$p 0\" >> \(p($0))" } ?? ":")
            echo "STARTED $p"
            """
        // (No `&&` before the `&`: a backgrounded list runs in a subshell that keeps the session open.)
    }

    /// One round trip in the usual case: an agent of this attempt already running is left
    /// alone (re-attach); else the agent binary is checked by SHA-256, the config written and
    /// the agent started. Only a node that lacks this build of the agent (or whose copy does
    /// not match its SHA-256) costs more: the upload, checked again.
    public func startAgent(_ config: AgentConfig, secrets: AgentSecrets, on node: Instance) async throws {
        try await startAgent(config, secrets: secrets, on: node, srun: nil)
    }

    /// ``startAgent(_:secrets:on:)``, the agent started by `srun` (a Slurm login node: see
    /// ``startScript(_:exe:sha:root:srun:)``) when given.
    func startAgent(_ config: AgentConfig, secrets: AgentSecrets, on node: Instance, srun: String?) async throws {
        let env = ProcessInfo.processInfo.environment.filter { k, _ in forwardedPrefixes.contains { k.hasPrefix($0) } }
        let input = try Self.startInput(config: config, secrets: secrets, environment: env)
        let script = Self.startScript(config, exe: try agentPath(on: node), sha: try agentDigest(), root: try root(node), srun: srun)
        var mismatched: String?
        for round in 0..<2 {
            let r = try await runSafely(node, script, input: input)
            let out = r.text.trimmingCharacters(in: .whitespacesAndNewlines)
            if out == "RUNNING" { return }
            if round == 0 && (out == "NO-AGENT" || out.hasPrefix("AGENT-MISMATCH")) {
                if out.hasPrefix("AGENT-MISMATCH") { mismatched = String(out.dropFirst(15)) }
                try await uploadAgent(to: node)
                continue
            }
            if out.hasPrefix("AGENT-MISMATCH") || out == "NO-AGENT" {
                throw CapstanError(.io, "The agent on \(try target(node).description) at \(try agentPath(on: node)) does not match its SHA-256 even right after a fresh upload (\(mismatched.map { "before: \($0.prefix(64)), " } ?? "")now: \(out.dropFirst(15).prefix(64)), expected \(try agentDigest())); refusing to start it.", hint: "Something on that node changes the file: check who else can write to the work root, then retry.")
            }
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
        let r = try await client(for: node).run(try target(node), "cat \(SSHClient.remotePath(l.stateDir + "/status.json")) 2>/dev/null", timeout: 5)
        guard r.status == 0, !r.stdout.isEmpty else { return nil }
        do { return try PluginWire.decoder.decode(AgentStatus.self, from: r.stdout) } catch {
            throw CapstanError(.io, "The agent status on node \(node.id) is unreadable (\(error)).")
        }
    }

    /// One round trip, as a plain status read: the mark (the node's clock, to the nanosecond:
    /// it changes at every poll) is written only where the agent's folder exists.
    public func pollAgent(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        let l = try layout(job: job, attempt: attempt, on: node)
        let dir = SSHClient.remotePath(l.stateDir)
        let seen = SSHClient.remotePath(l.stateDir + "/" + AgentConfig.controllerSeenName)
        let r = try await client(for: node).run(try target(node), "if [ -d \(dir) ]; then (umask 077; date +%s.%N > \(seen)) 2>/dev/null; fi; cat \(SSHClient.remotePath(l.stateDir + "/status.json")) 2>/dev/null", timeout: 5)
        guard r.status == 0, !r.stdout.isEmpty else { return nil }
        do { return try PluginWire.decoder.decode(AgentStatus.self, from: r.stdout) } catch {
            throw CapstanError(.io, "The agent status on node \(node.id) is unreadable (\(error)).")
        }
    }

    public func readLog(job: String, attempt: Int, on node: Instance, from offset: Int64, limit: Int) async throws -> Data {
        let l = try layout(job: job, attempt: attempt, on: node)
        let r = try await client(for: node).run(try target(node), "tail -c +\(offset + 1) \(SSHClient.remotePath(l.stateDir + "/node.log")) 2>/dev/null | head -c \(limit)", timeout: 15)
        return r.stdout
    }

    public func agentOutput(job: String, attempt: Int, on node: Instance) async -> String {
        guard let l = try? layout(job: job, attempt: attempt, on: node), let t = try? target(node),
              let r = try? await client(for: node).run(t, "tail -c 2000 \(SSHClient.remotePath(l.stateDir + "/agent.out")) 2>/dev/null", timeout: 10) else { return "" }
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
