import CapstanCore
import Foundation  // Date only: the nodes' clocks order their failures

/// The life of one job, as a pure state machine: which phase it is in, what the controller
/// observed (``Event``), and what it must do next (``Action``). It owns the phases, the rules for
/// which node is blamed for a failure, the restart decisions (``RestartPolicy``) and every change
/// of the job's status; ``JobController`` only performs the actions (processes, the state store,
/// the providers, sleeping) and feeds back what they found.
///
/// Time comes in with the events (`ContinuousClock.Instant`s the controller read); the machine
/// never reads a clock, sleeps or does I/O, so every rule is unit-tested with made-up instants.
///
/// An action that the controller answers with an event (``Action/isRequest``) is always the last
/// of the actions one event returns.
struct JobLifecycle: Sendable {
    typealias Instant = ContinuousClock.Instant

    /// What the machine needs of the job's spec and settings.
    struct Config: Sendable, Hashable {
        var maxRestarts: Int
        var settings: JobSettings
        /// The job's wall-clock budget from its first start, restarts included (`resources.maxDuration`).
        var maxDuration: Duration? = nil

        /// How often the committed checkpoints are synced while an attempt runs.
        static let checkpointSyncEvery = Duration.seconds(2)

        var heartbeatTimeout: Duration { .seconds(settings.heartbeatTimeoutSeconds) }
        var agentStartTimeout: Duration { .seconds(settings.agentStartTimeoutSeconds) }
        var exitGrace: Duration { .seconds(settings.exitGraceSeconds) }
        var describeEvery: Duration { .seconds(settings.describeSeconds) }
        var poll: Duration { .seconds(settings.pollSeconds) }
        /// The poll in an attempt's first ``startWindow``: the command's first lines reach the
        /// launch output, and a failing start is seen, within a tenth of a second (a pass is a
        /// status read and a log read per node; the provider's describe has its own period).
        static let startPoll = Duration.milliseconds(100)
        static let startWindow = Duration.seconds(10)
        /// How long a stop waits for the agents (not the silent ones) before forcing them.
        var stopWait: Duration { .seconds(settings.stopGraceSeconds + settings.commitWaitSeconds + 5) }
    }

    /// One attempt: its number, its nodes' instance ids in rank order, the step it resumed from.
    struct Attempt: Sendable, Hashable {
        var number: Int
        var nodes: [String]
        var resumeStep: Int?
    }

    /// What a node's agent said in one pass over the nodes (only nodes that answered).
    struct Answer: Sendable, Hashable {
        var rank: Int
        var status: AgentStatus
        /// Whether the agent still runs, where its transport can tell.
        var running: Bool
    }

    /// One pass over the nodes: when the reads began, when they all came back, and when the
    /// answered nodes' logs had been copied (the pass's "now").
    struct Pass: Sendable, Hashable {
        var readsBegan: Instant
        var answered: Instant
        var now: Instant
        var answers: [Answer]
    }

    /// An instance as its provider described it (`state` nil: the provider no longer lists it).
    struct Seen: Sendable, Hashable {
        var rank: Int
        var instance: String
        var state: Instance.State?
        /// Why, as its provider says (a spot notice, a Slurm time limit).
        var reason: String? = nil
    }

    /// Why a gang is being stopped.
    enum StopReason: Sendable, Hashable {
        /// The job is cancelled: the job's current attempt on the cluster's current nodes.
        case cancel
        /// An attempt found half-started (or on nodes since replaced): stopped and started again.
        case stale
        /// The followed attempt failed.
        case failure
        /// The job ran out of `maxDuration`: like a cancel, the job's current attempt (if it
        /// still runs) on the cluster's current nodes.
        case maxDuration
    }

    struct StopGang: Sendable, Hashable {
        var reason: StopReason
        var attempt: Int
        /// Ranks that lost their heartbeat: sent the stop, never waited for nor forced.
        var silent: Set<Int> = []
        /// How long to wait for the others before forcing them.
        var waitAtMost: Duration
    }

    enum Phase: Sendable, Hashable {
        /// At the top of the loop: the job record decides what comes next.
        case idle
        /// Making sure the cluster runs, then replacing its missing nodes (in order).
        case provisioning(missing: [Int], moving: Bool)
        /// Re-attaching to the job's attempt, or starting a new one.
        case startingGang
        /// Following an attempt.
        case running(Watch)
        /// Stopping a gang (for a cancel, the attempt has only its number); `failure` for a failed attempt.
        case stopping(StopReason, Attempt?, AttemptFailure?)
        /// After a failed attempt: the restart decision (`replace` nil until it is made), then
        /// replacing the lost nodes' capacity.
        case restarting(Attempt, AttemptFailure, replace: [Int]?, moving: Bool)
        /// The gang of a job past its `maxDuration` is stopped; the newest checkpoint is read
        /// for the final message.
        case expiring
        /// Done (nil: the job's record is gone).
        case finished(JobStatus?)

        enum Kind: String, Sendable, Hashable, CaseIterable {
            case idle, provisioning, startingGang, running, stopping, restarting, expiring, finished
        }

        var kind: Kind {
            switch self {
            case .idle: .idle
            case .provisioning: .provisioning
            case .startingGang: .startingGang
            case .running: .running
            case .stopping: .stopping
            case .restarting: .restarting
            case .expiring: .expiring
            case .finished: .finished
            }
        }
    }

    /// What the machine remembers while it follows an attempt.
    struct Watch: Sendable, Hashable {
        var attempt: Attempt
        var started: Instant
        /// Each node's last heartbeat count and when (on the controller's clock) it changed.
        var beats: [Int: Beat] = [:]
        /// Status reads in a row that got no answer, by rank.
        var failedReads: [Int: Int] = [:]
        var firstSuccess: Instant?
        var lastDescribe: Instant?
        var lastCheckpointSync: Instant?
        /// What the outstanding request is for.
        var pending: Pending?

        struct Beat: Sendable, Hashable {
            var count: Int
            var seen: Instant
        }

        enum Pending: Sendable, Hashable {
            /// Instances checked because an agent died without its final word.
            case deadAgent(Int)
            /// Instances checked because a node's command failed.
            case exited(Int, AgentStatus)
            /// The failed command's error line, read from its log.
            case errorLine(AttemptFailure)
            /// The output of an agent that wrote no status in time.
            case startTimeout(Int)
            /// The periodic instance check; the pass goes on after it.
            case describe(statuses: [Int: AgentStatus], now: Instant)
        }

        var nodeCount: Int { attempt.nodes.count }
    }

    enum Event: Sendable, Hashable {
        /// The job's record at the top of the loop (status nil: the record is gone); `ranFor`:
        /// how long since the job first started (nil: it has not), read `at`.
        case jobLoaded(JobStatus?, attempt: Int, ranFor: Duration? = nil, at: Instant? = nil)
        /// The job's bucket cannot be opened and the job never started.
        case bucketUnavailable(String)
        /// The job's own cluster is not running: it is to be provisioned.
        case clusterNeedsProvisioning(cluster: String, nodes: Int, gpu: String?)
        /// The cluster runs; these node indices have no live instance.
        case clusterReady(missing: [Int])
        case nodeReplaced(Int)
        /// The cluster's offer has no capacity left for the node.
        case replacementUnavailable(node: Int, reason: String)
        case gangMoved
        /// The job's current attempt as the store has it (nil: none), and whether it runs on the
        /// cluster's current nodes.
        case attemptFound(Attempt?, JobAttemptRecord.Outcome?, sameNodes: Bool, at: Instant)
        case attemptStarted(Attempt, masterAddress: String, port: Int, reason: String, at: Instant)
        /// A node could not be reached to start its part of `attempt`.
        case nodeUnreachable(Attempt, rank: Int, error: String)
        /// Something the job cannot do without (the cluster, the store) failed.
        case cannotGoOn(String)
        /// The job's status is `cancelling`: seen at the start of a pass, or the answer of a
        /// provisioning request that gave up waiting for the cancel.
        case cancelRequested
        case observed(Pass)
        /// The attempt's instances, as their providers described them (in the order checked).
        case instancesChecked([Seen])
        case errorLine(String?)
        /// What an agent that wrote no status printed (redacted; nil: nothing).
        case agentSaid(String?)
        case woke(at: Instant)
        /// The gang is stopped (`attemptFound` false: there was no attempt record to stop).
        case gangStopped(attemptFound: Bool)
        case restartFacts(latestCheckpoint: Int?, previous: AttemptFailure?, restartsUsed: Int)
        /// The job's newest committed checkpoint (nil: none).
        case latestCheckpoint(Int?)

        enum Kind: String, Sendable, Hashable, CaseIterable {
            case jobLoaded, bucketUnavailable, clusterNeedsProvisioning, clusterReady, nodeReplaced, replacementUnavailable, gangMoved
            case attemptFound, attemptStarted, nodeUnreachable, cannotGoOn, cancelRequested, observed, instancesChecked, errorLine
            case agentSaid, woke, gangStopped, restartFacts, latestCheckpoint
        }

        var kind: Kind {
            switch self {
            case .jobLoaded: .jobLoaded
            case .bucketUnavailable: .bucketUnavailable
            case .clusterNeedsProvisioning: .clusterNeedsProvisioning
            case .clusterReady: .clusterReady
            case .nodeReplaced: .nodeReplaced
            case .replacementUnavailable: .replacementUnavailable
            case .gangMoved: .gangMoved
            case .attemptFound: .attemptFound
            case .attemptStarted: .attemptStarted
            case .nodeUnreachable: .nodeUnreachable
            case .cannotGoOn: .cannotGoOn
            case .cancelRequested: .cancelRequested
            case .observed: .observed
            case .instancesChecked: .instancesChecked
            case .errorLine: .errorLine
            case .agentSaid: .agentSaid
            case .woke: .woke
            case .gangStopped: .gangStopped
            case .restartFacts: .restartFacts
            case .latestCheckpoint: .latestCheckpoint
            }
        }
    }

    enum Action: Sendable, Hashable {
        // Requests: each is answered with an event.
        /// → ``Event/jobLoaded(_:attempt:)``
        case loadJob
        /// Reconciles a cluster left provisioning; → ``Event/clusterReady(missing:)``,
        /// ``Event/clusterNeedsProvisioning(cluster:nodes:gpu:)`` or ``Event/cannotGoOn(_:)``.
        case ensureCluster
        /// → ``Event/clusterReady(missing:)``, ``Event/cancelRequested`` or ``Event/cannotGoOn(_:)``.
        case provisionCluster
        /// → ``Event/nodeReplaced(_:)``, ``Event/replacementUnavailable(node:reason:)``, ``Event/gangMoved``
        /// (a provider that allocates gangs relaunches the whole gang), ``Event/cancelRequested`` or
        /// ``Event/cannotGoOn(_:)``.
        case replaceNode(Int)
        /// → ``Event/gangMoved``, ``Event/cancelRequested`` or ``Event/cannotGoOn(_:)``.
        case moveGang
        /// Every node is gone: a whole new gang in one launch, on the cluster's own offer first
        /// (one Slurm allocation, one placement), else the next that fits.
        /// → ``Event/gangMoved``, ``Event/cancelRequested`` or ``Event/cannotGoOn(_:)``.
        case relaunchGang
        /// → ``Event/attemptFound(_:_:sameNodes:at:)``.
        case findAttempt
        /// → ``Event/attemptStarted(_:masterAddress:port:reason:at:)``, ``Event/nodeUnreachable(_:rank:error:)`` or ``Event/cannotGoOn(_:)``.
        case startAttempt
        /// → ``Event/gangStopped(attemptFound:)``.
        case stopGang(StopGang)
        /// Reads every node's status and copies the answered nodes' logs; → ``Event/observed(_:)``
        /// or ``Event/cancelRequested``.
        case observe
        /// → ``Event/instancesChecked(_:)``.
        case checkInstances
        /// → ``Event/errorLine(_:)``.
        case readErrorLine(node: Int)
        /// → ``Event/agentSaid(_:)``.
        case readAgentOutput(node: Int)
        /// → ``Event/restartFacts(latestCheckpoint:previous:restartsUsed:)``.
        case loadRestartFacts(attempt: Int)
        /// → ``Event/woke(at:)``.
        case sleep(Duration)
        /// Syncs the bucket's checkpoints first; → ``Event/latestCheckpoint(_:)``.
        case loadLatestCheckpoint

        // Effects.
        case setStatus(JobStatus, String)
        case emit(JobEvent)
        case closeAttempt(Int, JobAttemptRecord.Outcome, AttemptFailure?)
        case syncCheckpoints
        /// Copies new log bytes home (nil: from every node).
        case pullLogs(only: Set<Int>?)
        /// Copies the rest of the logs home (but the `skipping` ranks') and flushes their lines.
        case drainLogs(skipping: Set<Int>)
        case recordCorrupt(CorruptCheckpoint)
        case countRestart

        // The end.
        /// Takes down the job's own cluster, sets the final status; the job's record is the result.
        case finish(JobStatus, String, error: String?)
        /// The job's record as it is is the result.
        case end

        var isRequest: Bool {
            switch self {
            case .loadJob, .ensureCluster, .provisionCluster, .replaceNode, .moveGang, .relaunchGang, .findAttempt, .startAttempt, .stopGang, .observe,
                .checkInstances, .readErrorLine, .readAgentOutput, .loadRestartFacts, .sleep, .loadLatestCheckpoint:
                true
            default: false
            }
        }

        var isEnd: Bool {
            switch self {
            case .finish, .end: true
            default: false
            }
        }
    }

    let config: Config
    private(set) var phase: Phase = .idle
    /// When the job's `maxDuration` budget began, on the controller's clock: its first start
    /// (from the record's `startedAt` at the first `jobLoaded`, else the first attempt seen).
    private(set) var budgetStart: Instant?
    /// How long the job had run when it was found past its `maxDuration`.
    private(set) var expiredAfter: Duration?

    init(config: Config) {
        self.config = config
    }

    /// What starts the machine.
    static let start: [Action] = [.loadJob]

    /// Pairs that are explicitly ignored (the event cannot matter in that phase), with why.
    /// Every other pair is handled. ``JobLifecycleTests`` checks both.
    static func ignores(_ phase: Phase.Kind, _ event: Event.Kind) -> Bool {
        switch (phase, event) {
        case (.finished, _): true  // nothing happens to a finished job
        // A cancel is in the store: it is acted on at the next top of the loop or pass.
        // While provisioning or restarting: a launch given up for the cancel.
        case (_, .cancelRequested): ![.running, .provisioning, .restarting].contains(phase)
        case (.idle, .jobLoaded), (.idle, .bucketUnavailable): false
        case (.provisioning, .clusterNeedsProvisioning), (.provisioning, .clusterReady), (.provisioning, .nodeReplaced),
            (.provisioning, .replacementUnavailable), (.provisioning, .gangMoved), (.provisioning, .cannotGoOn):
            false
        case (.startingGang, .attemptFound), (.startingGang, .attemptStarted), (.startingGang, .nodeUnreachable), (.startingGang, .cannotGoOn):
            false
        case (.running, .observed), (.running, .instancesChecked), (.running, .errorLine), (.running, .agentSaid), (.running, .woke):
            false
        case (.stopping, .gangStopped): false
        case (.restarting, .restartFacts), (.restarting, .nodeReplaced), (.restarting, .replacementUnavailable), (.restarting, .gangMoved),
            (.restarting, .cannotGoOn):
            false
        case (.expiring, .latestCheckpoint): false
        default: true
        }
    }

    // MARK: - Transitions

    mutating func receive(_ event: Event) -> [Action] {
        if Self.ignores(phase.kind, event.kind) { return [] }
        switch (phase, event) {
        // The top of the loop.
        case (.idle, .jobLoaded(let status, let attempt, let ranFor, let at)):
            if budgetStart == nil, let ranFor, let at { budgetStart = at - ranFor }
            guard let status else {
                phase = .finished(nil)
                return [.end]
            }
            if status.isFinished {
                phase = .finished(status)
                return [.end]
            }
            if status == .cancelling {
                phase = .stopping(.cancel, Attempt(number: attempt, nodes: []), nil)
                return [.stopGang(StopGang(reason: .cancel, attempt: attempt, waitAtMost: config.stopWait))]
            }
            if let at, let limit = config.maxDuration, let start = budgetStart, at - start >= limit {
                // Out of time (found at the top of the loop: after a pass, a restart, or by a
                // controller that adopted the job late): stopped the graceful way, like a cancel.
                let ran = at - start
                expiredAfter = ran
                phase = .stopping(.maxDuration, Attempt(number: attempt, nodes: []), nil)
                return [
                    .setStatus(status, "maxDuration \(JobSpec.describe(limit)) reached after \(JobSpec.describe(ran)); stopping the gang (SIGTERM: the command may write a final checkpoint)."),
                    .stopGang(StopGang(reason: .maxDuration, attempt: attempt, waitAtMost: config.stopWait)),
                ]
            }
            phase = .provisioning(missing: [], moving: false)
            return [.ensureCluster]
        case (.idle, .bucketUnavailable(let message)):
            return finish(.failed, message, error: message)

        // The cluster.
        case (.provisioning, .clusterNeedsProvisioning(let cluster, let nodes, let gpu)):
            return [.setStatus(.provisioning, "Provisioning cluster \(cluster): \(nodes) node(s)\(gpu.map { " of \($0)" } ?? "")."), .provisionCluster]
        case (.provisioning, .clusterReady(let missing)):
            return replaceMissing(missing)
        case (.provisioning(let missing, _), .nodeReplaced):
            return replaceMissing(Array(missing.dropFirst()))
        case (.provisioning(let missing, _), .replacementUnavailable(let node, let reason)):
            phase = .provisioning(missing: missing, moving: true)
            return move(node, reason)
        case (.provisioning, .gangMoved):
            // A move brought a whole new gang: nothing else is missing.
            return replaceMissing([])

        // The attempt.
        case (.startingGang, .attemptFound(let attempt, let outcome, let sameNodes, let at)):
            if budgetStart == nil { budgetStart = at }
            guard let attempt else { return [.startAttempt] }
            switch outcome {
            case .running? where sameNodes:
                phase = .running(Watch(attempt: attempt, started: at))
                return [.setStatus(.running, "Following attempt \(attempt.number) on \(attempt.nodes.count) node(s)."), .observe]
            case .running?, .starting?:
                // Started by a controller that died half-way, or on nodes since replaced.
                phase = .stopping(.stale, attempt, nil)
                return [.stopGang(StopGang(reason: .stale, attempt: attempt.number, waitAtMost: config.stopWait))]
            default:
                return [.startAttempt]
            }
        case (.startingGang, .attemptStarted(let attempt, let master, let port, let reason, let at)):
            if budgetStart == nil { budgetStart = at }
            phase = .running(Watch(attempt: attempt, started: at))
            let resuming = attempt.resumeStep.map { ", resuming from checkpoint step \($0)" } ?? ""
            return [
                .setStatus(.running, "Attempt \(attempt.number) started on \(attempt.nodes.count) node(s)\(resuming); MASTER_ADDR=\(master):\(port) (\(reason))."),
                .emit(.attemptStarted(attempt: attempt.number, resumeStep: attempt.resumeStep, nodes: attempt.nodes)),
                .observe,
            ]
        case (.startingGang, .nodeUnreachable(let attempt, let rank, let error)):
            // A node that cannot be reached to start its part is a lost node, like one that
            // stops beating: stop the others, replace it, try again.
            let id = attempt.nodes.indices.contains(rank) ? attempt.nodes[rank] : "?"
            return fail(AttemptFailure(kind: .heartbeat, node: rank, message: "node \(rank) (\(id)) could not be reached to start attempt \(attempt.number): \(error)"), attempt)

        case (.provisioning, .cannotGoOn(let message)), (.startingGang, .cannotGoOn(let message)), (.restarting, .cannotGoOn(let message)):
            return finish(.failed, "The job cannot go on: \(message)", error: message)

        // Following the attempt.
        case (.running, .cancelRequested), (.provisioning, .cancelRequested), (.restarting, .cancelRequested):
            // Back to the top of the loop, which stops the gang and finishes the job.
            phase = .idle
            return [.loadJob]
        case (.running(var watch), .observed(let pass)):
            let actions = observe(&watch, pass)
            if case .running = phase { phase = .running(watch) }
            return actions
        case (.running(var watch), .instancesChecked(let seen)):
            let pending = watch.pending
            watch.pending = nil
            phase = .running(watch)
            let gone = Self.goneFailure(seen)
            switch pending {
            case .deadAgent(let rank)?:
                return fail(gone ?? AttemptFailure(kind: .heartbeat, node: rank, message: "the agent on node \(rank) (\(watch.attempt.nodes[rank])) died"), watch.attempt)
            case .exited(let rank, let status)?:
                if let gone { return fail(gone, watch.attempt) }
                let failure = Self.failure(of: status, node: rank)
                var actions: [Action] = [.pullLogs(only: [rank])]
                if let bad = status.corruptCheckpoint { actions.append(.recordCorrupt(bad)) }
                if failure.kind == .command {
                    watch.pending = .errorLine(failure)
                    phase = .running(watch)
                    return actions + [.readErrorLine(node: rank)]
                }
                return actions + fail(failure, watch.attempt)
            case .describe(let statuses, let now)?:
                if let gone { return fail(gone, watch.attempt) }
                let actions = endOfPass(&watch, statuses: statuses, now: now)
                if case .running = phase { phase = .running(watch) }
                return actions
            default:
                return []
            }
        case (.running(var watch), .errorLine(let line)):
            guard case .errorLine(var failure)? = watch.pending else { return [] }
            watch.pending = nil
            phase = .running(watch)
            if let line { failure.message += ": \(line)" }
            return fail(failure, watch.attempt)
        case (.running(var watch), .agentSaid(let said)):
            guard case .startTimeout(let rank)? = watch.pending else { return [] }
            watch.pending = nil
            phase = .running(watch)
            // What the agent printed before it could write a status is the reason: then the
            // node is fine (it ran the agent), and the agent could not start.
            let message = "the agent on node \(rank) (\(watch.attempt.nodes[rank])) did not start within \(Int(config.settings.agentStartTimeoutSeconds)) s"
                + (said.map { "; it said: \($0)" } ?? "")
            return fail(AttemptFailure(kind: said == nil ? .heartbeat : .startup, node: rank, message: message), watch.attempt)
        case (.running, .woke):
            return [.observe]

        // Stopping.
        case (.stopping(let reason, let attempt, let failure), .gangStopped(let found)):
            switch reason {
            case .cancel:
                return (found ? [.closeAttempt(attempt?.number ?? 0, .stopped, nil)] : []) + finish(.cancelled, "Cancelled.")
            case .maxDuration:
                phase = .expiring
                return (found ? [.closeAttempt(attempt?.number ?? 0, .stopped, nil)] : []) + [.loadLatestCheckpoint]
            case .stale:
                phase = .startingGang
                return [.closeAttempt(attempt?.number ?? 0, .stopped, nil), .startAttempt]
            case .failure:
                guard let attempt, let failure else { return [] }
                phase = .restarting(attempt, failure, replace: nil, moving: false)
                return [.drainLogs(skipping: Self.silent(failure, nodes: attempt.nodes.count)), .closeAttempt(attempt.number, .failed, failure), .syncCheckpoints, .loadRestartFacts(attempt: attempt.number)]
            }

        // Restarting.
        case (.restarting(let attempt, let failure, nil, _), .restartFacts(let latest, let previous, let used)):
            let progressed = (latest ?? -1) > (attempt.resumeStep ?? -1)
            switch RestartPolicy.decide(failure: failure, previous: previous, progressed: progressed, restartsUsed: used, maxRestarts: config.maxRestarts) {
            case .giveUp(let why):
                return finish(.failed, why, error: why)
            case .restart(let lost):
                let counted: [Action] = failure.countsAsRestart ? [.countRestart] : []
                // The whole gang is gone (an allocation cancelled or out of time, a zone lost):
                // one new gang, not a node at a time (separate launches would each end on
                // their own, and a Slurm cluster would become several allocations).
                if lost.count > 1, Set(lost) == Set(0..<attempt.nodes.count) {
                    phase = .restarting(attempt, failure, replace: lost, moving: true)
                    return counted + [.setStatus(.restarting, "Every node of the gang is gone; launching a new gang (on the cluster's own offer first)."), .relaunchGang]
                }
                return counted + replaceLost(attempt, failure, lost)
            }
        case (.restarting(let attempt, let failure, let lost?, _), .nodeReplaced):
            return replaceLost(attempt, failure, Array(lost.dropFirst()))
        case (.restarting(let attempt, let failure, let lost?, _), .replacementUnavailable(let node, let reason)):
            phase = .restarting(attempt, failure, replace: lost, moving: true)
            return move(node, reason)
        case (.restarting, .gangMoved):
            // A move brought a whole new gang: nothing else is left to replace.
            phase = .idle
            return [.loadJob]

        // Out of time.
        case (.expiring, .latestCheckpoint(let step)):
            let limit = config.maxDuration.map(JobSpec.describe) ?? "?"
            let ran = expiredAfter.map(JobSpec.describe) ?? "?"
            let kept = step.map { "the last checkpoint is step \($0), kept in the bucket" } ?? "no checkpoint was written"
            let message = "maxDuration \(limit) reached: the job ran \(ran) since its first start (restarts included) and was stopped; \(kept)."
            return finish(.failed, message, error: message)

        default:
            return []
        }
    }

    // MARK: - Steps

    private mutating func finish(_ status: JobStatus, _ message: String, error: String? = nil) -> [Action] {
        phase = .finished(status)
        return [.finish(status, message, error: error)]
    }

    private mutating func replaceMissing(_ missing: [Int]) -> [Action] {
        guard let node = missing.first else {
            phase = .startingGang
            return [.findAttempt]
        }
        phase = .provisioning(missing: missing, moving: false)
        return [.setStatus(.restarting, "Node \(node) is missing; replacing it."), .replaceNode(node)]
    }

    private mutating func replaceLost(_ attempt: Attempt, _ failure: AttemptFailure, _ lost: [Int]) -> [Action] {
        guard let node = lost.first else {
            phase = .idle
            return [.loadJob]
        }
        phase = .restarting(attempt, failure, replace: lost, moving: false)
        return [.setStatus(.restarting, "Replacing node \(node)'s capacity."), .replaceNode(node)]
    }

    private func move(_ node: Int, _ reason: String) -> [Action] {
        [.setStatus(.restarting, "Node \(node) cannot be replaced on the cluster's offer (\(reason)); moving the whole gang to the next offer that fits."), .moveGang]
    }

    /// After `failure` ends `attempt`: says so, then stops the gang (a lost node is neither
    /// waited for nor forced); ``Event/gangStopped(attemptFound:)`` goes on.
    private mutating func fail(_ failure: AttemptFailure, _ attempt: Attempt) -> [Action] {
        phase = .stopping(.failure, attempt, failure)
        let stop = StopGang(reason: .failure, attempt: attempt.number, silent: Self.silent(failure, nodes: attempt.nodes.count), waitAtMost: config.stopWait)
        return [
            .emit(.failure(attempt: attempt.number, failure)),
            .setStatus(.restarting, "Attempt \(attempt.number) failed: \(failure). Stopping the gang."),
            .stopGang(stop),
        ]
    }

    /// The ranks a failure says are silent: the node of a lost heartbeat.
    static func silent(_ failure: AttemptFailure, nodes: Int) -> Set<Int> {
        guard failure.kind == .heartbeat, let node = failure.node, (0..<nodes).contains(node) else { return [] }
        return [node]
    }

    // MARK: - Blame

    /// One pass over the nodes' statuses: the rules for which node is blamed, in order.
    private mutating func observe(_ w: inout Watch, _ pass: Pass) -> [Action] {
        var statuses: [Int: AgentStatus] = [:]
        var deadAgents: [Int] = []
        for rank in 0..<w.nodeCount {
            w.failedReads[rank] = pass.answers.contains { $0.rank == rank } ? 0 : w.failedReads[rank, default: 0] + 1
        }
        for a in pass.answers {
            statuses[a.rank] = a.status
            if w.beats[a.rank]?.count != a.status.heartbeat { w.beats[a.rank] = Watch.Beat(count: a.status.heartbeat, seen: pass.answered) }
            // Died without its final word (where the transport can see its process).
            if !a.running && a.status.phase != .exited { deadAgents.append(a.rank) }
        }
        var actions: [Action] = []
        if w.lastCheckpointSync.map({ pass.now - $0 >= Config.checkpointSyncEvery }) ?? true {
            w.lastCheckpointSync = pass.now
            actions.append(.syncCheckpoints)
        }
        // A lost node is the cause, and the other nodes' failures (a broken collective) its
        // symptoms: look for a gone instance or a dead agent before blaming a command.
        if let rank = deadAgents.first {
            w.pending = .deadAgent(rank)
            return actions + [.checkInstances]
        }
        // Failures, earliest on the nodes' clocks first: the first failer, not its followers.
        let failed = statuses.filter { $0.value.phase == .exited && !$0.value.succeeded }
            .sorted { ($0.value.endedAt ?? .distantFuture, $0.key) < ($1.value.endedAt ?? .distantFuture, $1.key) }
        if let (rank, s) = failed.first {
            w.pending = .exited(rank, s)
            return actions + [.checkInstances]
        }
        var silent: [(rank: Int, quiet: Duration)] = []
        for rank in 0..<w.nodeCount where statuses[rank]?.phase != .exited {
            if let b = w.beats[rank] {
                // A node that answered this pass is measured up to when the pass began to read:
                // waiting on another node's read never counts against it. One failed read is a
                // glitch (counted like an answer, to when the pass began); from the second in a
                // row the node counts as silent up to now.
                let until = w.failedReads[rank, default: 0] >= 2 ? pass.now : pass.readsBegan
                let quiet = until - b.seen
                if quiet > config.heartbeatTimeout { silent.append((rank, quiet)) }
            } else if pass.now - w.started > config.agentStartTimeout {
                w.pending = .startTimeout(rank)
                return actions + [.readAgentOutput(node: rank)]
            }
        }
        // Several silent at once (one node's loss can stall the others' reads or agents): the
        // one silent longest is the cause; then the one whose reads fail.
        if let lost = silent.max(by: { ($0.quiet, w.failedReads[$0.rank, default: 0]) < ($1.quiet, w.failedReads[$1.rank, default: 0]) }) {
            let seconds = Double(lost.quiet.components.seconds) + Double(lost.quiet.components.attoseconds) / 1e18
            return actions + fail(AttemptFailure(kind: .heartbeat, node: lost.rank, message: "node \(lost.rank) (\(w.attempt.nodes[lost.rank])) sent no heartbeat for \(Int(seconds)) s"), w.attempt)
        }
        if w.lastDescribe.map({ pass.now - $0 >= config.describeEvery }) ?? true {
            w.lastDescribe = pass.now
            w.pending = .describe(statuses: statuses, now: pass.now)
            return actions + [.checkInstances]
        }
        return actions + endOfPass(&w, statuses: statuses, now: pass.now)
    }

    /// The end of a pass: success, a rank hung at exit, or the next pass after a poll period.
    private mutating func endOfPass(_ w: inout Watch, statuses: [Int: AgentStatus], now: Instant) -> [Action] {
        let done = statuses.values.filter(\.succeeded).count
        if done == w.nodeCount {
            return [.pullLogs(only: nil), .closeAttempt(w.attempt.number, .succeeded, nil), .syncCheckpoints]
                + finish(.succeeded, "Succeeded in attempt \(w.attempt.number).")
        }
        if done > 0 {
            let first = w.firstSuccess ?? now
            w.firstSuccess = first
            if now - first > config.exitGrace, let hung = (0..<w.nodeCount).first(where: { statuses[$0]?.succeeded != true }) {
                return fail(AttemptFailure(kind: .hungAtExit, node: hung, message: "node \(hung) had not exited \(Int(config.settings.exitGraceSeconds)) s after the others finished"), w.attempt)
            }
        }
        if let limit = config.maxDuration, let start = budgetStart, now - start >= limit {
            // Out of time: back to the top of the loop, which stops the gang like a cancel.
            phase = .idle
            return [.loadJob]
        }
        return [.sleep(now - w.started < Config.startWindow ? min(config.poll, Config.startPoll) : config.poll)]
    }

    /// The failure of the first node whose instance is gone (its provider says terminated,
    /// preempted, failed or stopped, or no longer lists it), if any; the other nodes seen gone
    /// are its ``AttemptFailure/alsoGone``.
    static func goneFailure(_ seen: [Seen]) -> AttemptFailure? {
        let gone = seen.filter { s in s.state.map { $0.isGone || $0 == .failed || $0 == .stopped } ?? true }
        guard let s = gone.first else { return nil }
        var failure = AttemptFailure(kind: .instanceGone, node: s.rank, message: "instance \(s.instance) is \(s.state?.rawValue ?? "gone (the provider no longer lists it)")" + (s.reason.map { ": \($0)" } ?? ""))
        if gone.count > 1 {
            failure.alsoGone = gone.dropFirst().map(\.rank)
            failure.message += " (and node(s) \(gone.dropFirst().map { "\($0.rank)" }.joined(separator: ", ")) too)"
        }
        return failure
    }

    /// How a node's command (or agent) failed, from its final status.
    static func failure(of s: AgentStatus, node: Int) -> AttemptFailure {
        if let bad = s.corruptCheckpoint {
            return AttemptFailure(kind: .corruptCheckpoint, node: node, message: "node \(node) could not restore it: \(bad)")
        }
        if let why = s.deadMan {
            // The agent heard from no controller and stopped the command itself; a controller
            // that comes back restarts the job from the final checkpoint.
            return AttemptFailure(kind: .signal, node: node, exit: s.exit, message: "the agent on node \(node) stopped the command on its own (dead-man switch): \(why)")
        }
        if s.endedIn == AgentStatus.startPhase, let f = s.failure {
            return AttemptFailure(kind: .startup, node: node, message: "the agent on node \(node) could not start: \(f)")
        }
        if let f = s.failure, s.exit == nil || s.exit?.succeeded == true {
            return AttemptFailure(kind: .agent, node: node, exit: s.exit, message: f)
        }
        if let sig = s.workerSignal {
            return AttemptFailure(kind: .signal, node: node, exit: s.exit, message: "a worker of the command on node \(node) was killed by signal \(sig) (the command then ended with \(s.exit.map { "\($0)" } ?? "?"))")
        }
        switch s.exit {
        case .signaled(let sig)?:
            return AttemptFailure(kind: .signal, node: node, exit: s.exit, message: "the command on node \(node) was \(ExitStatus.signaled(sig))")
        case .exited(let code)?:
            // 128+N from a shell means the child died of signal N: not the code's own verdict.
            if code > 128 && code <= 128 + 64 {
                return AttemptFailure(kind: .signal, node: node, exit: s.exit, message: "the command on node \(node) ended with \(code) (signal \(code - 128))")
            }
            return AttemptFailure(kind: .command, node: node, exit: s.exit, message: "\(s.endedIn == "setup" ? "setup" : "the command") on node \(node) ended with exit code \(code)")
        case nil:
            return AttemptFailure(kind: .agent, node: node, message: s.failure ?? "the agent on node \(node) ended without a result")
        }
    }
}
