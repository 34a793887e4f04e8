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
/// Each serves kinds of ``NodeAccess``, the value a node's provider returns: folders on this
/// machine (``LocalTransport``), SSH logins (``SSHTransport``), Slurm allocations
/// (``SlurmTransport``). Everything the controller knows
/// about a node comes through here, so the gang logic is the same for all.
public protocol NodeTransport: Sendable {
    /// Whether this transport reaches nodes by `access` (by its kind only: the provider's name
    /// plays no part).
    func serves(_ access: NodeAccess) -> Bool
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
    /// The controller's read of the agent's status (every poll): ``agentStatus(job:attempt:on:)``
    /// that also rewrites the agent's `controller-seen` mark (``AgentConfig/controllerSeenFile``)
    /// in the same trip to the node. That mark changing is how an agent hears from a
    /// controller; its dead-man switch (`resources.deadManMinutes`) goes off when it stops.
    func pollAgent(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus?
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

/// Choosing a node's transport.
public enum NodeTransports {
    /// The first of `transports` that serves `node`'s ``Instance/resolvedAccess``; an error
    /// saying what is missing, for which node, and what to do when none does.
    public static func transport(for node: Instance, among transports: [any NodeTransport]) throws -> any NodeTransport {
        guard let access = node.resolvedAccess else {
            throw CapstanError(
                .unsupported, "No way to reach node \(node.id) on \(node.provider): its provider reports no access and no SSH user and address.",
                hint: "The provider must return the instance's `access` or its sshUser and address (docs/plugin-abi.md); the ssh provider and the AWS plugin do.", provider: node.provider)
        }
        if let t = transports.first(where: { $0.serves(access) }) { return t }
        if case .unsupported(let kind, _) = access {
            let what = kind.isEmpty ? "access that names no kind" : "'\(kind)' access"
            throw CapstanError(
                .unsupported, "Node \(node.id) on \(node.provider) is reached by \(what), which this Capstan cannot use (it knows local, ssh and slurm).",
                hint: kind.isEmpty ? "The provider must give the instance's access a \"kind\" (docs/plugin-abi.md)." : "Run a Capstan that supports '\(kind)' nodes, or run the job on a provider whose nodes are reached by local, ssh or slurm access.",
                provider: node.provider)
        }
        throw CapstanError(
            .unsupported, "Node \(node.id) on \(node.provider) is reached by \(access.kind) access, but no \(access.kind) transport is set up here.",
            hint: "This is a bug in how the controller was built: report it.", provider: node.provider)
    }
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
