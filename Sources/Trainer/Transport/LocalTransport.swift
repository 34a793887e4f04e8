public import CapstanCore
public import CapstanRuntime
public import CapstanProviders
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Nodes reached by ``NodeAccess/local(_:)`` (the built-in `local` provider's): each is a
/// folder on this machine (its `workdir`), and its agent is a `capstan agent` process in a session of
/// its own, so it outlives the controller. The agent's pid and its command's process group are
/// recorded in the node's `pids` file, so terminating the node kills them like a cloud would.
public struct LocalTransport: NodeTransport {
    /// The `capstan` executable that runs `agent`.
    public let agentExecutable: String
    /// Extra environment for agents (merged over this process's).
    public let environment: [String: String]

    public init(agentExecutable: String, environment: [String: String] = [:]) {
        self.agentExecutable = agentExecutable
        self.environment = environment
    }

    public func serves(_ access: NodeAccess) -> Bool {
        if case .local = access { return true }
        return false
    }

    func folders(_ node: Instance) throws -> (work: String, node: String) {
        guard case .local(let a)? = node.resolvedAccess else {
            throw CapstanError(.invalidRequest, "Node \(node.id) on \(node.provider) is not a folder on this machine (its access is \(node.resolvedAccess?.kind ?? "unknown")).", hint: "Only nodes with local access run through the local transport.")
        }
        return (a.workdir, a.folder)
    }

    public func layout(job: String, attempt: Int, on node: Instance) throws -> NodeLayout {
        let (work, folder) = try folders(node)
        let state = "\(work)/.capstan/\(job)/attempt-\(attempt)"
        return NodeLayout(
            workdir: work, stateDir: state, checkpointDir: state + "/checkpoints", outputDir: state + "/output",
            resumeDir: state + "/resume", pidsFile: folder + "/pids")
    }

    public func uploadWorkdir(_ localPath: String, job: String, on node: Instance) async throws {
        let (work, _) = try folders(node)
        let marker = "\(work)/.capstan/\(job)/workdir-copied"
        if FileManager.default.fileExists(atPath: marker) { return }
        try FileManager.default.createDirectory(atPath: "\(work)/.capstan/\(job)", withIntermediateDirectories: true)
        let pid = try Spawn.start(["/bin/cp", "-a", localPath + "/.", work + "/"], environment: ProcessInfo.processInfo.environment)
        let exit = await Spawn.wait(pid)
        guard exit.succeeded else {
            throw CapstanError(.io, "Copying the workdir \(localPath) to node \(node.id) failed (\(exit)).", hint: "Check that the folder exists and is readable.")
        }
        try PrivateFile.write(Data(), to: marker)
    }

    public func startAgent(_ config: AgentConfig, secrets: AgentSecrets, on node: Instance) async throws {
        if let s = try await agentStatus(job: config.job, attempt: config.attempt, on: node), isAgentRunning(s, on: node) { return }
        try PrivateFile.createFolder(config.stateDir)
        let path = config.stateDir + "/agent.json"
        // It holds the spec's env: values: owner only (PrivateFile), whatever the umask.
        do {
            try PrivateFile.write(PluginWire.encoder.encode(config), to: path)
        } catch {
            throw CapstanError(.io, "Cannot write the agent's config \(path): \((error as? CapstanError)?.message ?? error.localizedDescription)")
        }
        // The agent gets the base environment and Capstan's own settings, not this process's
        // credentials: those it needs come on its stdin, through a pipe.
        var env = Self.agentEnvironment(ProcessInfo.processInfo.environment)
        for (k, v) in environment { env[k] = v }
        let input = try PluginWire.encoder.encode(secrets)
        let pid = try Spawn.start([agentExecutable, "agent", "--config", path, "--secrets-stdin"], environment: env, cwd: config.workdir, output: config.stateDir + "/agent.out", input: input)
        Spawn.reapLater(pid)
        // Recorded at once (the agent records itself too): a node terminated right now kills it.
        if let pids = config.pidsFile { NodeProcesses.record(pid, in: pids) }
        NodeProcesses.record(pid, in: config.attemptPidsFile)
    }

    /// What a local agent inherits: ``BaseEnvironment`` plus Capstan's own settings
    /// (``AgentStatus/inheritedSettings``).
    static func agentEnvironment(_ environment: [String: String]) -> [String: String] {
        BaseEnvironment.filter(environment).merging(environment.filter { AgentStatus.inheritedSettings.contains($0.key) }) { $1 }
    }

    public func agentOutput(job: String, attempt: Int, on node: Instance) async -> String {
        guard let l = try? layout(job: job, attempt: attempt, on: node), let h = FileHandle(forReadingAtPath: l.stateDir + "/agent.out") else { return "" }
        defer { try? h.close() }
        let end = (try? h.seekToEnd()) ?? 0
        try? h.seek(toOffset: end > 2000 ? end - 2000 : 0)
        return String(decoding: (try? h.readToEnd()) ?? Data(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public func agentStatus(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        let l = try layout(job: job, attempt: attempt, on: node)
        guard let data = FileManager.default.contents(atPath: l.stateDir + "/status.json") else { return nil }
        do { return try PluginWire.decoder.decode(AgentStatus.self, from: data) } catch {
            throw CapstanError(.io, "The agent status on node \(node.id) is unreadable (\(error)).")
        }
    }

    public func pollAgent(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        let l = try layout(job: job, attempt: attempt, on: node)
        // Only into a folder the agent made (never creating one for an attempt not started).
        if FileManager.default.fileExists(atPath: l.stateDir) {
            // Owner only, like everything in the node's folder.
            try? PrivateFile.write(Data("\(Date().timeIntervalSince1970)\n".utf8), to: l.stateDir + "/" + AgentConfig.controllerSeenName)
        }
        return try await agentStatus(job: job, attempt: attempt, on: node)
    }

    public func readLog(job: String, attempt: Int, on node: Instance, from offset: Int64, limit: Int) async throws -> Data {
        let l = try layout(job: job, attempt: attempt, on: node)
        guard let h = FileHandle(forReadingAtPath: l.stateDir + "/node.log") else { return Data() }
        defer { try? h.close() }
        try h.seek(toOffset: UInt64(max(0, offset)))
        return try h.read(upToCount: limit) ?? Data()
    }

    /// The agent runs on this machine, so a dead one is seen at once (a kill -9 leaves its
    /// last status saying it is running).
    public func isAgentRunning(_ status: AgentStatus, on node: Instance) -> Bool {
        status.phase != .exited && Spawn.isAlive(status.agentPID)
    }

    public func stopAgent(job: String, attempt: Int, on node: Instance, force: Bool) async throws {
        guard let s = try? await agentStatus(job: job, attempt: attempt, on: node) else { return }
        if force {
            if let c = s.commandPID { Spawn.signalGroup(c, SIGKILL) }
            Spawn.signalGroup(s.agentPID, SIGKILL)
            // And whatever the attempt started that left both groups (torchrun's workers).
            NodeProcesses.killAll(in: try layout(job: job, attempt: attempt, on: node).stateDir + "/pids")
            return
        }
        if isAgentRunning(s, on: node) {
            kill(s.agentPID, SIGTERM)
        } else if let c = s.commandPID {
            // The agent is gone but left its command: nobody else will stop it.
            Spawn.signalGroup(c, SIGKILL)
        }
    }
}
