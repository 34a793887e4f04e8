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
/// Files, status and logs are read in place (``SharedFolderTransport``).
public struct LocalTransport: SharedFolderTransport {
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

    public func startAgent(_ config: AgentConfig, secrets: AgentSecrets, on node: Instance) async throws {
        if let s = try await agentStatus(job: config.job, attempt: config.attempt, on: node), isAgentRunning(s, on: node) { return }
        let path = try writeAgentConfig(config)
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
