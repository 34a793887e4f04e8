public import CapstanCore
public import CapstanRuntime
public import Foundation

/// Where an agent's files live on a node for one job attempt.
public struct NodeLayout: Sendable, Hashable {
    /// The command's working folder (the job's `workdir` is copied here).
    public var workdir: String
    /// `status.json`, `node.log`, `agent.json` of this attempt.
    public var stateDir: String
    public var checkpointDir: String
    public var outputDir: String
    public var resumeDir: String
    /// Processes the node's provider kills when the node goes away (local provider).
    public var pidsFile: String?
}

/// How the controller reaches a node: start the agent, read its status and log, stop it.
/// The local provider's nodes are folders on this machine (``LocalTransport``); remote
/// instances are reached over SSH (a later transport). Everything the controller knows about
/// a node comes through here, so the gang logic is the same for both.
public protocol NodeTransport: Sendable {
    /// Whether this transport serves `node` (by provider, address, …).
    func serves(_ node: Instance) -> Bool
    /// The folders the agent of `job`/`attempt` uses on `node`.
    func layout(job: String, attempt: Int, on node: Instance) throws -> NodeLayout
    /// Copies the folder `localPath` into the node's workdir (once per node and job).
    func uploadWorkdir(_ localPath: String, job: String, on node: Instance) async throws
    /// Starts the agent with `config` on `node`, handing it `secrets` on its stdin (never in a
    /// file or an argument). Idempotent: an agent already running for the same job and
    /// attempt is left alone.
    func startAgent(_ config: AgentConfig, secrets: AgentSecrets, on node: Instance) async throws
    /// The agent's last status, or nil when it has not written one.
    func agentStatus(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus?
    /// Up to `limit` bytes of the node log from byte `offset`.
    func readLog(job: String, attempt: Int, on node: Instance, from offset: Int64, limit: Int) async throws -> Data
    /// Whether the agent that wrote `status` is still working: it has not written its final
    /// status, and, where the transport can tell, its process is alive.
    func isAgentRunning(_ status: AgentStatus, on node: Instance) -> Bool
    /// The end of what the agent printed itself (`agent.out`: errors before it could write a
    /// status), for the controller's error when an agent never starts; "" when none.
    func agentOutput(job: String, attempt: Int, on node: Instance) async -> String
    /// Asks the agent to stop (SIGTERM: it stops the command, then finishes its uploads), or,
    /// with `force`, kills the agent and the command outright.
    func stopAgent(job: String, attempt: Int, on node: Instance, force: Bool) async throws
}

extension NodeTransport {
    /// Starts the agent with no secrets (a bucket it opens with its own environment).
    public func startAgent(_ config: AgentConfig, on node: Instance) async throws {
        try await startAgent(config, secrets: AgentSecrets(), on: node)
    }

    public func agentOutput(job: String, attempt: Int, on node: Instance) async -> String { "" }

    /// Without a view of the node's processes, the status file's phase is the only evidence.
    public func isAgentRunning(_ status: AgentStatus, on node: Instance) -> Bool { status.phase != .exited }
}
