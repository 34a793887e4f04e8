public import CapstanCore
public import CapstanRuntime
public import CapstanProviders
public import Foundation

/// What the controller tells one node's agent to do for one attempt (written as JSON next to
/// the agent's state; `capstan agent --config FILE`). Holds no secrets: credentials reach the
/// agent on its stdin (``AgentSecrets``).
public struct AgentConfig: Sendable, Hashable, Codable {
    public var job: String
    public var attempt: Int
    public var node: Int
    public var nodes: Int
    public var setup: [String]
    public var run: String
    /// The env contract plus the spec's `env`; merged over the agent's own environment.
    public var environment: [String: String]
    /// Where `setup` and `run` run (the node's working folder).
    public var workdir: String
    /// The agent's folder for this attempt: `status.json`, `node.log`, `agent.json`.
    public var stateDir: String
    public var checkpointDir: String
    public var outputDir: String
    /// Where the restored checkpoint goes (set with `resumeStep`).
    public var resumeDir: String?
    /// The checkpoint step every node restores before starting.
    public var resumeStep: Int?
    /// The job's bucket URI (`<storage>/<job id>`): `checkpoints/` and `outputs/` go under it.
    public var bucket: String
    /// Verified checkpoints kept in the bucket.
    public var keep: Int
    public var heartbeatSeconds: Double = 1
    public var checkpointPollSeconds: Double = 0.5
    /// From SIGTERM to the command to SIGKILL.
    public var stopGraceSeconds: Double = 15
    /// How long the leader waits for other nodes' parts after the command ends.
    public var commitWaitSeconds: Double = 30
    /// A file the node's provider kills every listed process group from when it goes away
    /// (the local provider's `pids`).
    public var pidsFile: String?
    /// Files the agent writes before setup, by path relative to `stateDir` (a recipe's program
    /// and config, under `recipe/`).
    public var files: [String: String] = [:]
    /// The Python environment setup and the command run in, built (or found in the node's
    /// cache) before setup; nil: the node's own `python3`.
    public var python: PythonEnvironment?
    /// The dead-man switch (`resources.deadManMinutes`, in seconds): hearing from no controller
    /// for this long, the agent stops the command (SIGTERM: a final checkpoint), uploads what is
    /// complete and exits, shutting the node down when ``shutdownCommand`` is set. "Hearing":
    /// the controller rewrites ``controllerSeenFile`` at every status read. Nil: off.
    public var deadManSeconds: Double?
    /// The node's provider's command that shuts the node down and stops its billing
    /// (``Instance/shutdownCommand``); nil: the dead-man switch only stops the command.
    public var shutdownCommand: String?
    /// How often the agent samples the machine's CPU, memory and GPUs (``TelemetrySampler``)
    /// for its status; nil: every ``defaultTelemetrySeconds``; 0 or less: never.
    public var telemetrySeconds: Double?
    public static let defaultTelemetrySeconds: Double = 5
    /// The spec's `inputs:`, fetched into the machine's source cache before setup; nil: none.
    public var inputs: [JobInput]?
    /// The spec's `image:`: setup and the command run in it (``ContainerRun``); nil: on the node.
    public var image: String?

    public init(
        job: String, attempt: Int, node: Int, nodes: Int, setup: [String], run: String, environment: [String: String],
        workdir: String, stateDir: String, checkpointDir: String, outputDir: String, resumeDir: String?, resumeStep: Int?,
        bucket: String, keep: Int
    ) {
        self.job = job
        self.attempt = attempt
        self.node = node
        self.nodes = nodes
        self.setup = setup
        self.run = run
        self.environment = environment
        self.workdir = workdir
        self.stateDir = stateDir
        self.checkpointDir = checkpointDir
        self.outputDir = outputDir
        self.resumeDir = resumeDir
        self.resumeStep = resumeStep
        self.bucket = bucket
        self.keep = keep
    }

    public var statusFile: String { stateDir + "/status.json" }
    /// Rewritten by the controller at every status read: how the agent hears from it.
    public var controllerSeenFile: String { stateDir + "/" + Self.controllerSeenName }
    public static let controllerSeenName = "controller-seen"

    public var logFile: String { stateDir + "/node.log" }
    /// This attempt's processes (``NodeProcesses``): what a forced stop kills.
    public var attemptPidsFile: String { stateDir + "/pids" }
}

/// What the controller hands an agent on its stdin (`capstan agent --secrets-stdin`), never
/// in a file or an argument: how to open the job's bucket, credentials included.
public struct AgentSecrets: Sendable, Hashable, Codable {
    /// Nil: the agent opens the bucket with its own environment and config.
    public var bucket: BucketAccess?
    /// How to open the buckets a recipe's `s3://` model or data, and the job's `inputs:`, live in.
    public var sources: [BucketAccess]?
    /// The launching environment's `HF_TOKEN`, for a recipe's `hf://` model.
    public var hubToken: String?
    /// The job spec's `secrets:` by name: set in the environment of setup and the command
    /// (never in the agent's own, nor in any file).
    public var environment: [String: String]?

    public init(bucket: BucketAccess? = nil, sources: [BucketAccess]? = nil, hubToken: String? = nil, environment: [String: String]? = nil) {
        self.bucket = bucket
        self.sources = sources
        self.hubToken = hubToken
        self.environment = environment
    }

    /// Every secret string in it, for redaction (longest first, so a secret that contains
    /// another is redacted whole).
    public var secrets: [String] {
        let all = (bucket?.secrets ?? []) + (sources ?? []).flatMap(\.secrets) + (hubToken.map { [$0] } ?? []) + (environment ?? [:]).values.sorted()
        return all.filter { !$0.isEmpty }.sorted { $0.count > $1.count }
    }

    /// `text` with every secret replaced by `<redacted>`.
    public func redact(_ text: String) -> String {
        Redactor(secrets).redact(text)
    }
}

/// What an agent reports about itself; rewritten atomically at every heartbeat and change.
public struct AgentStatus: Sendable, Hashable, Codable {
    public enum Phase: String, Sendable, Hashable, Codable {
        case starting, restoring, setup, running
        /// The command ended; final checkpoint and output uploads are running.
        case finishing
        /// Nothing left to do; `exit` (or `failure`) says how it went.
        case exited
    }

    public var job: String
    public var attempt: Int
    public var node: Int
    public var phase: Phase
    /// Increments at every beat; the controller times its changes on its own clock, so the
    /// node's clock never matters.
    public var heartbeat: Int
    public var agentPID: Int32
    /// The command's process (and process group) while it runs.
    public var commandPID: Int32?
    /// How the command ended (setup's, when setup failed).
    public var exit: ExitStatus?
    /// Where it ended: `restore`, `setup` or `run`.
    public var endedIn: String?
    /// When the command ended, on the node's clock (to order failures across nodes).
    public var endedAt: Date?
    /// A worker of the command died of this signal, as the command itself reported it
    /// (torchrun's "exitcode: -9" summary): not a bug in the job.
    public var workerSignal: Int32?
    /// A failure of the agent's own work (start-up, restore, upload) — not the command's.
    public var failure: String?
    /// The checkpoint this node could not restore because its data is damaged (the
    /// controller records it and falls back to an older one).
    public var corruptCheckpoint: CorruptCheckpoint?
    public var stopRequested: Bool
    /// Why the agent stopped the command on its own (the dead-man switch: "no controller for
    /// 15 min (deadManMinutes 15)"); nil when it did not.
    public var deadMan: String?
    public var uploadedSteps: [Int]
    public var committedSteps: [Int]
    public var outputsUploaded: Bool
    public var updatedAt: Date
    /// The agent's newest sample of its machine (CPU, memory, GPUs), taken off the heartbeat's
    /// path every ``AgentConfig/telemetrySeconds``; nil before the first (and from an agent
    /// that predates telemetry).
    public var telemetry: NodeTelemetry?

    public init(job: String, attempt: Int, node: Int, agentPID: Int32) {
        self.job = job
        self.attempt = attempt
        self.node = node
        self.phase = .starting
        self.heartbeat = 0
        self.agentPID = agentPID
        self.stopRequested = false
        self.uploadedSteps = []
        self.committedSteps = []
        self.outputsUploaded = false
        self.updatedAt = Date()
    }

    /// Capstan's own settings an agent inherits from the controller's environment (its home,
    /// the Python cache, plugins, and in debug builds the crash-test hook) — by name: nothing
    /// else of it.
    public static let inheritedSettings = ["CAPSTAN_HOME", "CAPSTAN_PYTHON_CACHE", "CAPSTAN_SOURCE_CACHE", "CAPSTAN_PLUGIN_PATH", "CAPSTAN_CONTAINER_RUNTIME", "CAPSTAN_CONTAINER_OPTIONS"] + testHookSettings

    /// The test hooks' variables (`CAPSTAN_TEST_CRASH_AT`), passed on to agents in debug builds
    /// only: a release build neither honours nor forwards them.
    #if DEBUG
    public static let testHookSettings = ["CAPSTAN_TEST_CRASH_AT"]
    #else
    public static let testHookSettings: [String] = []
    #endif

    /// `endedIn` of an agent that could not start its work (no credentials, bucket unreachable).
    public static let startPhase = "start"

    /// Ended well: the command exited 0 and the agent's uploads are done.
    public var succeeded: Bool { phase == .exited && exit == .exited(0) && failure == nil }
}
