public import CapstanCore
public import CapstanRuntime
public import CapstanProviders
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Nodes reached by ``NodeAccess/slurm(_:)`` (the `slurm` provider's): each agent runs as a job
/// step of the node's allocation, started here with
/// `srun --jobid=<job> --overlap --nodelist=<node> --nodes=1 --ntasks=1 … capstan agent …`,
/// its secrets on srun's stdin (which Slurm forwards to the step), so no SSH to compute nodes is
/// needed. Every file lives in the provider's `workRoot`, which this machine and the nodes
/// share: `bin/capstan-<sha256 prefix>` (the agent, copied once per build), and per node
/// `nodes/<instance>/work` (the job's workdir and the agent's state), read in place
/// (``SharedFolderTransport``).
///
/// The `srun` client runs here in a session of its own, so it outlives the controller; Slurm
/// ends the step when that client dies, so its pid (in the attempt's `srun.pid`) tells whether
/// the agent runs. A stop signals the step itself (`scancel --signal=TERM <job>.<step>`): the
/// agent stops its command and finishes its uploads.
///
/// With a login node (``SlurmNodeAccess/login``: Capstan runs off the cluster), the same happens
/// there over SSH, through ``SSHTransport`` (its uploads, checked agent binary, status and log
/// reads), each node's files under `<workRoot>/nodes/<instance>` on the login node, and the
/// agent started by `srun` from the login node.
public struct SlurmTransport: SharedFolderTransport {
    /// The `capstan` executable the nodes run (a static build runs on nodes without Swift).
    public let agentBinary: String
    /// Extra environment for agents.
    public let environment: [String: String]
    /// Reaches a login node (nodes with ``SlurmNodeAccess/login``).
    public let ssh: SSHTransport?
    let digest: LockedBox<String?> = LockedBox(nil)

    public init(agentBinary: String, environment: [String: String] = [:], ssh: SSHTransport? = nil) {
        self.agentBinary = agentBinary
        self.environment = environment
        self.ssh = ssh
    }

    /// For a node behind a login node: the SSH transport and the node as it sees it (an SSH
    /// login to the login node, the node's own folder as its work root); nil for a node whose
    /// folders this machine shares.
    func viaLogin(_ node: Instance) throws -> (SSHTransport, Instance)? {
        let a = try access(node)
        guard let login = a.login else { return nil }
        guard let ssh else {
            throw CapstanError(.unsupported, "Node \(node.id) is reached through the Slurm login node \(login.address), but this controller has no SSH transport.", hint: "This is a bug in how the controller was built: report it.", provider: node.provider)
        }
        var twin = node
        twin.access = .ssh(SSHNodeAccess(address: login.address, port: login.port ?? 22, user: login.user, key: login.key.map { .file(NSString(string: $0).expandingTildeInPath) } ?? .client, workRoot: "\(a.workRoot)/nodes/\(node.id)"))
        return (ssh, twin)
    }

    /// Slurm's commands for `a`: on its login node when it has one.
    func commands(_ a: SlurmNodeAccess, timeout: Double = 15) -> SlurmCommands {
        SlurmCommands(environment: slurmEnvironment(a), timeout: timeout, login: a.login.flatMap { l in ssh.map { ($0.client, SlurmCommands.target(l)) } })
    }

    public func serves(_ access: NodeAccess) -> Bool {
        if case .slurm = access { return true }
        return false
    }

    func access(_ node: Instance) throws -> SlurmNodeAccess {
        guard case .slurm(let a)? = node.resolvedAccess else {
            throw CapstanError(.invalidRequest, "Node \(node.id) on \(node.provider) is not a Slurm node with an allocation (its access is \(node.resolvedAccess?.kind ?? "none yet; it may still wait in the queue")).", hint: "Only running nodes of the slurm provider run through the Slurm transport.")
        }
        return a
    }

    public func layout(job: String, attempt: Int, on node: Instance) throws -> NodeLayout {
        if let (ssh, twin) = try viaLogin(node) { return try ssh.layout(job: job, attempt: attempt, on: twin) }
        let a = try access(node)
        let work = "\(a.workRoot)/nodes/\(node.id)/work"
        let state = "\(work)/.capstan/\(job)/attempt-\(attempt)"
        return NodeLayout(
            workdir: work, stateDir: state, checkpointDir: state + "/checkpoints", outputDir: state + "/output",
            resumeDir: state + "/resume", pidsFile: nil)
    }

    /// The step's name: how a stop finds it among the allocation's steps.
    static func stepName(job: String, attempt: Int) -> String { "capstan-agent:\(job):\(attempt)" }

    /// The `srun` that runs an agent as a step of `a`'s allocation on its node (`--chdir`: the
    /// job's workdir there).
    static func srun(_ srun: String, _ a: SlurmNodeAccess, config: AgentConfig) -> [String] {
        [
            srun, "--jobid=\(a.job)", "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=\(a.node)",
            "--job-name=\(stepName(job: config.job, attempt: config.attempt))", "--chdir=\(config.workdir)", "--quiet", "--kill-on-bad-exit=0",
        ]
    }

    public func startAgent(_ config: AgentConfig, secrets: AgentSecrets, on node: Instance) async throws {
        let a = try access(node)
        if let (ssh, twin) = try viaLogin(node) {
            // On the login node, SLURM_CONF as the provider knows it; the rest of srun's
            // environment is the login shell's with the agent's settings the script exports.
            let conf = a.slurmConf.map { "SLURM_CONF=\(SSHClient.quote($0)) " } ?? ""
            let line = conf + Self.srun("srun", a, config: config).map { $0.hasPrefix("--chdir=") ? "--chdir=\(SSHClient.remotePath(config.workdir))" : SSHClient.quote($0) }.joined(separator: " ")
            return try await ssh.startAgent(config, secrets: secrets, on: twin, srun: "env " + line)
        }
        if let s = try await agentStatus(job: config.job, attempt: config.attempt, on: node), isAgentRunning(s, on: node) { return }
        try Self.prepareRoot(a.workRoot)
        try FileManager.default.createDirectory(atPath: config.workdir, withIntermediateDirectories: true)
        let path = try writeAgentConfig(config)
        let agent = try installAgent(root: a.workRoot)
        let argv = Self.srun(try commands(a).path(of: "srun"), a, config: config) + ["--output=\(config.stateDir)/agent.out", agent, "agent", "--config", path, "--secrets-stdin"]
        // srun passes its environment to the step: the agent's (base environment and Capstan's
        // settings), never this process's credentials, which travel on stdin.
        var env = LocalTransport.agentEnvironment(ProcessInfo.processInfo.environment)
        for (k, v) in environment { env[k] = v }
        if let conf = a.slurmConf { env["SLURM_CONF"] = conf }
        let pid = try Spawn.start(argv, environment: env, cwd: config.stateDir, output: config.stateDir + "/srun.out", input: try PluginWire.encoder.encode(secrets))
        Spawn.reapLater(pid)
        try PrivateFile.write(Data("\(pid) \(NodeProcesses.startTime(of: pid) ?? 0)\n".utf8), to: config.stateDir + "/srun.pid")
    }

    /// For squeue and scancel: the basics and Slurm's settings (``SlurmCommands``), never
    /// this process's credentials.
    func slurmEnvironment(_ a: SlurmNodeAccess) -> [String: String] {
        var env = SlurmCommands.clientEnvironment(ProcessInfo.processInfo.environment)
        if let conf = a.slurmConf { env["SLURM_CONF"] = conf }
        return env
    }

    /// Copies the agent binary to `<root>/bin/capstan-<sha256 prefix>` once (atomically: a node
    /// never sees half a file), and returns that path.
    func installAgent(root: String) throws -> String {
        let target = "\(root)/bin/capstan-\(try agentDigest().prefix(16))"
        if FileManager.default.isExecutableFile(atPath: target) { return target }
        try PrivateFile.createFolder(root + "/bin")
        // Unique per call: the nodes of a gang start at once, from one process.
        let partial = target + ".partial-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.removeItem(atPath: partial)
        do {
            try FileManager.default.copyItem(atPath: agentBinary, toPath: partial)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: partial)
            guard rename(partial, target) == 0 else { throw CapstanError(.io, String(cString: strerror(errno))) }
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            if FileManager.default.isExecutableFile(atPath: target) { return target }
            throw CapstanError(.io, "Cannot install the agent binary into \(root)/bin: \((error as? CapstanError)?.message ?? error.localizedDescription)", hint: "Check that providers.slurm.workRoot is writable here.")
        }
        return target
    }

    /// SHA-256 of the agent binary (once).
    func agentDigest() throws -> String { try AgentBinaryDigest.sha256(of: agentBinary, cache: digest) }

    /// The srun client of the attempt: its pid while it lives (the same process: start time
    /// checked).
    func srunPID(stateDir: String) -> pid_t? {
        guard let text = try? String(contentsOfFile: stateDir + "/srun.pid", encoding: .utf8) else { return nil }
        let f = text.split(whereSeparator: \.isWhitespace)
        guard let pid = f.first.flatMap({ pid_t($0) }), Spawn.isAlive(pid) else { return nil }
        if f.count > 1, let start = UInt64(f[1]), start != 0, NodeProcesses.startTime(of: pid) != start { return nil }
        return pid
    }

    /// The step lives while its srun client does (Slurm ends a step whose client died). Behind
    /// a login node, the status alone (its heartbeat tells the controller the rest).
    public func isAgentRunning(_ status: AgentStatus, on node: Instance) -> Bool {
        guard status.phase != .exited else { return false }
        if let (ssh, twin) = try? viaLogin(node) { return ssh.isAgentRunning(status, on: twin) }
        guard let l = try? layout(job: status.job, attempt: status.attempt, on: node) else { return false }
        return srunPID(stateDir: l.stateDir) != nil
    }

    // Files: read in place, or through the login node.

    public func uploadWorkdir(_ localPath: String, job: String, on node: Instance) async throws {
        if let (ssh, twin) = try viaLogin(node) { return try await ssh.uploadWorkdir(localPath, job: job, on: twin) }
        try Self.prepareRoot(try access(node).workRoot)
        try await folderUploadWorkdir(localPath, job: job, on: node)
    }

    /// The work root made and checked (``SlurmProvider/prepareWorkRoot(_:)``).
    static func prepareRoot(_ root: String) throws { try SlurmProvider.prepareWorkRoot(root) }

    public func agentStatus(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        if let (ssh, twin) = try viaLogin(node) { return try await ssh.agentStatus(job: job, attempt: attempt, on: twin) }
        return try await folderAgentStatus(job: job, attempt: attempt, on: node)
    }

    public func pollAgent(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        if let (ssh, twin) = try viaLogin(node) { return try await ssh.pollAgent(job: job, attempt: attempt, on: twin) }
        return try await folderPollAgent(job: job, attempt: attempt, on: node)
    }

    public func readLog(job: String, attempt: Int, on node: Instance, from offset: Int64, limit: Int) async throws -> Data {
        if let (ssh, twin) = try viaLogin(node) { return try await ssh.readLog(job: job, attempt: attempt, on: twin, from: offset, limit: limit) }
        return try await folderReadLog(job: job, attempt: attempt, on: node, from: offset, limit: limit)
    }

    public func agentOutput(job: String, attempt: Int, on node: Instance) async -> String {
        if let (ssh, twin) = (try? viaLogin(node)) ?? nil { return await ssh.agentOutput(job: job, attempt: attempt, on: twin) }
        return await folderAgentOutput(job: job, attempt: attempt, on: node)
    }

    public func stopAgent(job: String, attempt: Int, on node: Instance, force: Bool) async throws {
        let a = try access(node)
        let l = try layout(job: job, attempt: attempt, on: node)
        let commands = commands(a)
        let steps = (try? await commands.check(["squeue", "-h", "-s", "-j", a.job, "-o", "%i|%j"], what: "Listing the allocation's steps (squeue)")) ?? ""
        let name = Self.stepName(job: job, attempt: attempt)
        let ids = steps.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: "|", maxSplits: 1).map(String.init)
            return f.count == 2 && f[1] == name ? f[0] : nil
        }
        if force {
            if !ids.isEmpty { _ = try? await commands.check(["scancel", "--signal=KILL"] + ids, what: "Killing the agent's step (scancel)") }
            if let (ssh, twin) = try viaLogin(node) {
                let pidFile = SSHClient.remotePath(l.stateDir + "/srun.pid")
                _ = try? await ssh.client.run(try ssh.target(twin), "[ -f \(pidFile) ] && kill -KILL \"$(cat \(pidFile))\" 2>/dev/null; true", timeout: 20)
            } else if let pid = srunPID(stateDir: l.stateDir) {
                kill(pid, SIGKILL)
            }
            return
        }
        if !ids.isEmpty {
            try await commands.check(["scancel", "--signal=TERM"] + ids, what: "Asking the agent on \(a.node) to stop (scancel --signal=TERM)")
        }
    }
}
