public import CapstanCore
public import CapstanRuntime

/// Why an attempt failed, as the controller saw it.
public struct AttemptFailure: Sendable, Hashable, Codable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable, Codable {
        /// The command (or a setup command) exited non-zero on healthy nodes.
        case command
        /// The command was killed by a signal it did not ask for (OOM killer, a stray kill -9).
        case signal
        /// The node's agent stopped beating: the machine hung or died.
        case heartbeat
        /// The provider says the instance is gone (preempted, terminated).
        case instanceGone = "instance-gone"
        /// Some ranks finished and another did not, within the exit grace period.
        case hungAtExit = "hung-at-exit"
        /// The agent's own work failed (restoring the checkpoint, uploading).
        case agent
        /// The agent could not start its work: no credentials, the bucket unreachable or
        /// refusing them. Retried once; the same error twice in a row ends the job.
        case startup
        /// A node could not restore the chosen checkpoint because its data is damaged. The
        /// controller records it as corrupt and restarts from the newest one that verifies;
        /// not counted against `maxRestarts` (each checkpoint can be found corrupt only once).
        case corruptCheckpoint = "corrupt-checkpoint"
    }

    public var kind: Kind
    /// The node it was first seen on.
    public var node: Int?
    /// Other nodes seen gone at the same check (an instance-gone failure): a Slurm allocation
    /// cancelled from outside, a zone lost. Their capacity is replaced too, before the restart,
    /// so the next attempt does not start on them only to fail again.
    public var alsoGone: [Int]?
    public var exit: ExitStatus?
    public var message: String

    public init(kind: Kind, node: Int?, exit: ExitStatus? = nil, message: String) {
        self.kind = kind
        self.node = node
        self.exit = exit
        self.message = message
    }

    /// The node's capacity is suspect and is replaced before the restart.
    public var needsNewCapacity: Bool { kind == .heartbeat || kind == .instanceGone }

    /// Whether the restart after it counts against `maxRestarts`.
    public var countsAsRestart: Bool { kind != .corruptCheckpoint }

    /// A failure of the infrastructure rather than (possibly) of the user's code.
    public var isInfrastructure: Bool { kind != .command }

    public var description: String { "\(kind.rawValue)\(node.map { " on node \($0)" } ?? ""): \(message)" }
}

/// What the controller does after a failed attempt. Pure, so every rule is unit-tested.
///
/// - Infrastructure failures (lost heartbeat, instance gone, a signal, a hung rank) restart the
///   gang from the latest verified checkpoint; a lost heartbeat or a gone instance first
///   replaces that node's capacity (every node seen gone at that check). Each restart counts against `maxRestarts`.
/// - A command that exits non-zero is retried once: it may have been a transient fault
///   (a flaky NCCL/gloo connection). If the next attempt fails **the same way** (same exit code)
///   **without making progress** (no new checkpoint since it started), it is a user error and
///   the job fails at once, whatever restarts are left: retrying cannot fix a typo.
public enum RestartPolicy {
    public enum Decision: Sendable, Hashable {
        /// Restart, first replacing the capacity of these nodes.
        case restart(replace: [Int])
        case giveUp(String)
    }

    /// - Parameters:
    ///   - failure: how this attempt failed.
    ///   - previous: how the attempt before it failed, if it did.
    ///   - progressed: a new checkpoint was committed during this attempt.
    ///   - restartsUsed: restarts already spent.
    public static func decide(failure: AttemptFailure, previous: AttemptFailure?, progressed: Bool, restartsUsed: Int, maxRestarts: Int) -> Decision {
        // The damaged checkpoint is recorded and skipped from now on: the next attempt restores
        // an older one (or starts afresh), whatever restarts are left.
        if failure.kind == .corruptCheckpoint { return .restart(replace: []) }
        if failure.kind == .startup, let previous, previous.kind == .startup, previous.message == failure.message {
            return .giveUp("The agent could not start, the same way twice in a row: \(failure.message)")
        }
        if failure.kind == .command, let previous, previous.kind == .command, previous.exit == failure.exit, !progressed {
            return .giveUp("The command failed the same way twice in a row (\(failure.exit.map { "\($0)" } ?? "?")) without writing a new checkpoint: this looks like an error in the job, not the infrastructure, so it is not retried. Last failure: \(failure.message)")
        }
        if restartsUsed >= maxRestarts {
            return .giveUp("Gave up after \(restartsUsed) restart(s) (maxRestarts: \(maxRestarts)). Last failure: \(failure)")
        }
        return .restart(replace: failure.needsNewCapacity ? (failure.node.map { [$0] } ?? []) + (failure.alsoGone ?? []) : [])
    }
}

/// Timing of a job's control loop (persisted with the job, so a re-attached controller uses
/// the same). Defaults suit real clusters; tests shorten them.
public struct JobSettings: Sendable, Hashable, Codable {
    /// A node whose agent has not beaten for this long is lost.
    public var heartbeatTimeoutSeconds: Double = 30
    /// After one rank exits 0, how long the others may take to exit.
    public var exitGraceSeconds: Double = 120
    /// From asking a command to stop to killing it.
    public var stopGraceSeconds: Double = 15
    /// How long the leader waits for other nodes' checkpoint parts after the command ends.
    public var commitWaitSeconds: Double = 30
    /// How long an agent may take to write its first status.
    public var agentStartTimeoutSeconds: Double = 60
    /// Control loop period.
    public var pollSeconds: Double = 0.5
    /// How often the provider is asked whether the instances still exist.
    public var describeSeconds: Double = 5
    public var heartbeatSeconds: Double = 1
    public var checkpointPollSeconds: Double = 0.5
    /// How often each agent samples its machine's CPU, memory and GPUs (docs/telemetry.md);
    /// 0 turns sampling off.
    public var telemetrySeconds: Double = AgentConfig.defaultTelemetrySeconds
    /// config.yaml's default `notify:`, recorded at submit for a spec without its own.
    public var notify: NotifySpec?
    /// `capstan launch --env K=V`: set over the spec's `env:` (plain values, shown by
    /// `capstan jobs --json` like the spec's; secrets go in `secrets:`).
    public var env: [String: String]?

    public init() {}

    /// Each field that is present; the others keep their defaults (settings written by an
    /// older Capstan, without the newer fields, still decode).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func read(_ key: CodingKeys, _ value: inout Double) throws {
            if let v = try c.decodeIfPresent(Double.self, forKey: key) { value = v }
        }
        try read(.heartbeatTimeoutSeconds, &heartbeatTimeoutSeconds)
        try read(.exitGraceSeconds, &exitGraceSeconds)
        try read(.stopGraceSeconds, &stopGraceSeconds)
        try read(.commitWaitSeconds, &commitWaitSeconds)
        try read(.agentStartTimeoutSeconds, &agentStartTimeoutSeconds)
        try read(.pollSeconds, &pollSeconds)
        try read(.describeSeconds, &describeSeconds)
        try read(.heartbeatSeconds, &heartbeatSeconds)
        try read(.checkpointPollSeconds, &checkpointPollSeconds)
        try read(.telemetrySeconds, &telemetrySeconds)
        notify = try c.decodeIfPresent(NotifySpec.self, forKey: .notify)
        env = try c.decodeIfPresent([String: String].self, forKey: .env)
    }
}
