public import CapstanCore
public import Foundation

/// The node agent's phases as a pure state machine: ``receive(_:at:)`` takes what happened
/// (a step finished, the command started or ended, a stop was asked for, a deadline or a
/// heartbeat came) with the time it happened, and returns what to do about it (write the
/// status, signal the command's process group, start the next step, exit). It starts no
/// process, reads no file and never sleeps: ``NodeAgent`` does the I/O and feeds the results
/// back in, and the tests walk every transition with a clock of their own.
///
/// Two things vary independently: ``phase`` (where the attempt is: probing the bucket,
/// restoring, preparing Python, setup command *i*, the command, the final uploads) and
/// ``stop`` (whether a stop was asked for, and how far it got with the command running at the
/// time: SIGTERM with a deadline, then SIGKILL). A stop does not end the agent: the command
/// ends of it, and the agent still uploads what is complete before it exits.
///
/// The machine owns the ``AgentStatus`` the agent writes (`status.json`): every change to it
/// comes out as a ``Action/writeStatus(_:)`` of the whole value, in order.
public struct AgentLifecycle: Sendable, Hashable {
    /// When an event happened: time since the agent started (for deadlines; a monotonic clock)
    /// and the wall-clock date (for the status's `updatedAt`/`endedAt`).
    public struct Now: Sendable, Hashable {
        public var uptime: Duration
        public var date: Date
        public init(uptime: Duration, date: Date) {
            self.uptime = uptime
            self.date = date
        }
    }

    /// What this attempt on this node has to do (from ``AgentConfig``).
    public struct Plan: Sendable, Hashable {
        /// The checkpoint step to restore first, if any.
        public var resumeStep: Int?
        /// Whether the job has a Python environment, inputs or a container runtime to prepare.
        public var python: Bool
        public var setup: [String]
        public var run: String
        /// SIGTERM to SIGKILL for a command being stopped.
        public var stopGraceSeconds: Double
        /// For the first log line.
        public var job: String
        public var attempt: Int
        public var node: Int
        public var nodes: Int
        /// The dead-man switch: how long the agent may hear from no controller before it stops
        /// the command on its own (nil: never).
        public var deadManSeconds: Double?
        /// What shuts the node down and stops its billing, where its provider says a guest
        /// shutdown does (nil: the node is never shut down, only the command stopped).
        public var shutdownCommand: String?

        public init(resumeStep: Int? = nil, python: Bool = false, setup: [String] = [], run: String, stopGraceSeconds: Double = 15, job: String = "j", attempt: Int = 1, node: Int = 0, nodes: Int = 1,
                    deadManSeconds: Double? = nil, shutdownCommand: String? = nil) {
            self.resumeStep = resumeStep
            self.python = python
            self.setup = setup
            self.run = run
            self.stopGraceSeconds = stopGraceSeconds
            self.job = job
            self.attempt = attempt
            self.node = node
            self.nodes = nodes
            self.deadManSeconds = deadManSeconds
            self.shutdownCommand = shutdownCommand
        }

        public init(_ config: AgentConfig) {
            self.init(resumeStep: config.resumeDir == nil ? nil : config.resumeStep, python: config.python != nil || config.inputs != nil || config.image != nil, setup: config.setup, run: config.run,
                      stopGraceSeconds: config.stopGraceSeconds, job: config.job, attempt: config.attempt, node: config.node, nodes: config.nodes,
                      deadManSeconds: config.deadManSeconds, shutdownCommand: config.shutdownCommand)
        }
    }

    public enum Phase: Sendable, Hashable {
        /// Not begun.
        case idle
        /// Writing a probe to the bucket (status `starting`).
        case probing
        /// Restoring the chosen checkpoint (status `restoring`).
        case restoring
        /// Writing the files the agent was given (status unchanged).
        case writingFiles
        /// Finding or building the job's venv (status `setup`); its commands are children too.
        case preparingPython
        /// Setup command `i` (status `setup`).
        case settingUp(Int)
        /// The command (status `running`), checkpoints uploading in the background.
        case running
        /// The command ended; the background uploads are being stopped (status `running`).
        case draining(ExitStatus)
        /// Final checkpoint uploads, then outputs (status `finishing`).
        case finishing(ExitStatus)
        /// Done (status `exited`); `status.exit`/`failure` say how.
        case exited
    }

    /// How far a stop got. Orthogonal to ``Phase``.
    public enum Stop: Sendable, Hashable {
        case none
        /// Asked for; no command was running to signal (or it has ended). `force`: a command
        /// that starts now gets SIGKILL, not SIGTERM.
        case requested(force: Bool)
        /// The command's group got SIGTERM; at `deadline` (uptime) it gets SIGKILL.
        case terminating(pid: Int32, deadline: Duration)
        /// The command's group got SIGKILL.
        case killing(pid: Int32)
    }

    public enum Event: Sendable, Hashable {
        /// The agent starts; `ownsDescendants`: it is the agent process (a subreaper that
        /// records and kills its command's descendants).
        case begin(ownsDescendants: Bool)
        case probeSucceeded
        /// The failure, as said.
        case probeFailed(String)
        case restored
        case restoreFailed(String, corrupt: CorruptCheckpoint?)
        case filesWritten
        case filesFailed(String)
        /// The variables setup and the command run with (`PATH`, `VIRTUAL_ENV`, `CAPSTAN_PYTHON`).
        case pythonReady([String: String])
        case pythonFailed(String)
        /// A child (setup, the command, or one of the Python environment's) started.
        case childStarted(pid: Int32)
        /// It ended.
        case childExited(pid: Int32, ExitStatus)
        /// A setup command or the command could not be started (counts as exit code 127).
        case spawnFailed(String)
        /// The background uploads stopped after the command ended; `workerSignal` from its log.
        case watcherStopped(workerSignal: Int32?)
        /// An upload pass: the steps uploaded and committed so far.
        case checkpointsSeen(uploaded: [Int], committed: [Int])
        case outputsUploaded
        case outputsFailed(String)
        case finalUploadsDone
        /// SIGTERM/SIGINT or an embedder's ``NodeAgent/requestStop()`` (`force`: SIGKILL at once).
        case stopRequested(force: Bool)
        /// A deadline set by ``Action/scheduleDeadline(at:)`` came.
        case deadlinePassed
        /// A heartbeat: the status is rewritten, and the dead-man switch checks how long the
        /// controller has been silent.
        case heartbeatTick
        /// The controller was heard: its mark (`controller-seen` in the agent's state folder,
        /// rewritten at every status read of a controller) changed since the last look.
        case controllerSeen
    }

    public enum Action: Sendable, Hashable {
        /// Write `status.json` (this whole value).
        case writeStatus(AgentStatus)
        /// A line of the agent's own in the node log.
        case log(String)
        /// Record a pid for the node's provider and the attempt (killed with the node).
        case recordPID(Int32)
        /// Record every descendant not recorded yet (the agent process, each heartbeat).
        case recordDescendants
        /// Send a signal to a process group.
        case signalGroup(pid: Int32, signal: Int32)
        /// Kill (SIGKILL) every descendant left (the agent process).
        case killDescendants
        /// Send ``Event/deadlinePassed`` at this uptime.
        case scheduleDeadline(at: Duration)
        case probeBucket
        case restore(step: Int)
        case writeFiles
        case preparePython
        /// Start `/bin/sh -c command` (then ``Event/childStarted(pid:)`` … ``Event/childExited(pid:_:)``,
        /// or ``Event/spawnFailed(_:)``), with the prepared environment over the config's.
        case spawn(String, environment: [String: String])
        /// Start the background checkpoint uploads.
        case startCheckpointWatcher
        /// Run the provider's shutdown command (the dead-man switch went off, on a node whose
        /// guest shutdown stops billing); then the exit.
        case shutDownNode(String)
        /// Stop them; once stopped, send ``Event/watcherStopped(workerSignal:)`` (the worker
        /// signal read from the log when the command failed).
        case stopCheckpointWatcher(commandFailed: Bool)
        /// Upload what is complete (leaving early once ``stopRequested``), then, when the command
        /// succeeded, the outputs; then ``Event/finalUploadsDone``.
        case finalUploads(succeeded: Bool)
        /// The agent is done with this status.
        case exit(AgentStatus)
    }

    public static let sigterm: Int32 = 15
    public static let sigkill: Int32 = 9

    public let plan: Plan
    public private(set) var phase: Phase = .idle
    public private(set) var stop: Stop = .none
    public private(set) var status: AgentStatus
    public private(set) var ownsDescendants = false
    /// From ``Event/pythonReady(_:)``.
    public private(set) var preparedEnvironment: [String: String] = [:]
    /// When (uptime) the controller was last heard: the agent's start, then each
    /// ``Event/controllerSeen``.
    public private(set) var controllerHeard: Duration = .zero
    /// The dead-man switch went off: the agent stopped the command on its own.
    public var deadManTripped: Bool { status.deadMan != nil }

    public init(plan: Plan, status: AgentStatus) {
        self.plan = plan
        self.status = status
    }

    public var stopRequested: Bool { status.stopRequested }

    public mutating func receive(_ event: Event, at now: Now) -> [Action] {
        switch (phase, event) {
        case (.idle, .begin(let owns)):
            ownsDescendants = owns
            controllerHeard = now.uptime
            phase = .probing
            return [write(now), .log("agent started: job \(plan.job), attempt \(plan.attempt), node \(plan.node) of \(plan.nodes)"), .probeBucket]

        case (.probing, .probeSucceeded):
            if let step = plan.resumeStep {
                phase = .restoring
                status.phase = .restoring
                return [write(now), .restore(step: step)]
            }
            phase = .writingFiles
            return [.writeFiles]
        case (.probing, .probeFailed(let message)):
            status.failure = message
            return [write(now), .log(message)] + finish(endedIn: AgentStatus.startPhase, exit: nil, now)

        case (.restoring, .restored):
            phase = .writingFiles
            return [.writeFiles]
        case (.restoring, .restoreFailed(let message, let corrupt)):
            if let corrupt { status.corruptCheckpoint = corrupt }
            status.failure = message
            return [write(now), .log(message)] + finish(endedIn: "restore", exit: nil, now)

        case (.writingFiles, .filesWritten):
            if plan.python && !stopRequested {
                phase = .preparingPython
                status.phase = .setup
                return [write(now), .preparePython]
            }
            return setup(from: 0, now)
        case (.writingFiles, .filesFailed(let message)):
            status.failure = message
            return [write(now), .log(message)] + finish(endedIn: "setup", exit: nil, now)

        case (.preparingPython, .pythonReady(let env)):
            preparedEnvironment = env
            return setup(from: 0, now)
        case (.preparingPython, .pythonFailed(let message)):
            // The job's own setup failed (a bad requirement, no index): like a failing setup
            // command, retried once and then reported as the job's error.
            return [.log("python env failed: \(message)")] + finish(endedIn: "setup", exit: .exited(1), now)

        case (.preparingPython, .childStarted(let pid)), (.settingUp, .childStarted(let pid)), (.running, .childStarted(let pid)):
            guard status.commandPID == nil else { return [] }
            status.commandPID = pid
            var actions: [Action] = [.recordPID(pid), write(now)]
            // A stop that arrived while it was starting.
            switch stop {
            case .none: break
            case .requested(force: false), .terminating:
                let deadline = now.uptime + .seconds(plan.stopGraceSeconds)
                stop = .terminating(pid: pid, deadline: deadline)
                actions += [.signalGroup(pid: pid, signal: Self.sigterm), .scheduleDeadline(at: deadline)]
            case .requested(force: true), .killing:
                stop = .killing(pid: pid)
                actions += [.signalGroup(pid: pid, signal: Self.sigkill)]
            }
            return actions

        case (.preparingPython, .childExited(let pid, _)), (.settingUp, .childExited(let pid, _)), (.running, .childExited(let pid, _)):
            guard status.commandPID == pid, case .childExited(_, let exit) = event else { return [] }
            // Anything the command left running goes with it: its process group, and (as the
            // agent process) every descendant, wherever it moved to.
            var actions: [Action] = [.signalGroup(pid: pid, signal: Self.sigkill)]
            if ownsDescendants { actions.append(.killDescendants) }
            status.commandPID = nil
            actions.append(write(now))
            switch stop {
            case .none, .requested: break
            case .terminating: stop = .requested(force: false)
            case .killing: stop = .requested(force: true)
            }
            return actions + ended(exit, now)

        case (.preparingPython, .spawnFailed(let message)):
            return [.log("cannot start the command: \(message)")]
        case (.settingUp, .spawnFailed(let message)), (.running, .spawnFailed(let message)):
            guard status.commandPID == nil else { return [] }
            return [.log("cannot start the command: \(message)")] + ended(.exited(127), now)

        case (.draining(let exit), .watcherStopped(let workerSignal)):
            phase = .finishing(exit)
            status.phase = .finishing
            status.endedAt = now.date
            status.exit = exit
            status.endedIn = "run"
            status.workerSignal = workerSignal
            return [write(now), .log("command ended: \(exit)" + (workerSignal.map { "; a worker was killed by signal \($0)" } ?? "")), .finalUploads(succeeded: exit.succeeded)]

        case (.running, .checkpointsSeen(let uploaded, let committed)), (.draining, .checkpointsSeen(let uploaded, let committed)), (.finishing, .checkpointsSeen(let uploaded, let committed)):
            status.uploadedSteps = Array(uploaded.suffix(20))
            status.committedSteps = Array(committed.suffix(20))
            return [write(now)]

        case (.finishing, .outputsUploaded):
            status.outputsUploaded = true
            return [write(now)]
        case (.finishing, .outputsFailed(let message)):
            status.failure = message
            return [write(now), .log(message)]
        case (.finishing(let exit), .finalUploadsDone):
            return finish(endedIn: "run", exit: exit, now)

        case (_, .stopRequested(let force)):
            // In every phase, even before the start (then nothing after the files runs) and
            // after the end (recorded, nothing to signal).
            return requestStop(force: force, now)

        case (_, .deadlinePassed):
            guard case .terminating(let pid, let deadline) = stop, now.uptime >= deadline, status.commandPID == pid else { return [] }
            stop = .killing(pid: pid)
            return [.log("command did not stop within \(plan.stopGraceSeconds) s; killing it"), .signalGroup(pid: pid, signal: Self.sigkill)]

        case (.idle, .heartbeatTick):
            return []
        case (_, .heartbeatTick):
            // None after the final status; descendants are recorded whatever the phase.
            var actions: [Action] = []
            if phase != .exited {
                status.heartbeat += 1
                actions.append(write(now))
            }
            if ownsDescendants { actions.append(.recordDescendants) }
            return actions + deadManCheck(now)

        case (.idle, .controllerSeen), (.exited, .controllerSeen):
            return []
        case (_, .controllerSeen):
            controllerHeard = now.uptime
            return []

        default:
            // Anything else does not belong to the phase it arrives in (a step's result in
            // another step, a second begin, anything after the exit): ignored.
            return []
        }
    }

    // MARK: - Steps

    /// Setup command `i`, or the command once setup is done, or the end when a stop came.
    private mutating func setup(from i: Int, _ now: Now) -> [Action] {
        if i < plan.setup.count && !stopRequested {
            phase = .settingUp(i)
            status.phase = .setup
            return [write(now), .log("setup \(i + 1)/\(plan.setup.count): \(plan.setup[i])"), .spawn(plan.setup[i], environment: preparedEnvironment)]
        }
        if stopRequested { return finish(endedIn: "setup", exit: .signaled(Self.sigterm), now) }
        phase = .running
        status.phase = .running
        return [write(now), .startCheckpointWatcher, .spawn(plan.run, environment: preparedEnvironment)]
    }

    /// A setup command or the command ended (or could not start).
    private mutating func ended(_ exit: ExitStatus, _ now: Now) -> [Action] {
        switch phase {
        case .settingUp(let i):
            return exit.succeeded ? setup(from: i + 1, now) : finish(endedIn: "setup", exit: exit, now)
        case .running:
            phase = .draining(exit)
            return [.stopCheckpointWatcher(commandFailed: !exit.succeeded)]
        default:
            return []
        }
    }

    private mutating func requestStop(force: Bool, _ now: Now) -> [Action] {
        var actions: [Action] = []
        if !status.stopRequested {
            status.stopRequested = true
            actions += [write(now), .log("stop requested")]
        }
        switch (stop, force) {
        case (.none, false):
            guard let pid = status.commandPID else {
                stop = .requested(force: false)
                return actions
            }
            let deadline = now.uptime + .seconds(plan.stopGraceSeconds)
            stop = .terminating(pid: pid, deadline: deadline)
            return actions + [.signalGroup(pid: pid, signal: Self.sigterm), .scheduleDeadline(at: deadline)]
        case (.none, true), (.requested(force: false), true), (.terminating, true):
            guard let pid = status.commandPID else {
                stop = .requested(force: true)
                return actions
            }
            stop = .killing(pid: pid)
            return actions + [.signalGroup(pid: pid, signal: Self.sigkill)]
        case (.requested, false), (.terminating, false), (.requested(force: true), true), (.killing, _):
            // Only the first stop counts; a forced one after a forced one adds nothing.
            return actions
        }
    }

    /// The dead-man switch: once the controller has been silent for `deadManSeconds` (on the
    /// agent's own monotonic clock, from its start or the last ``Event/controllerSeen``), the
    /// agent stops the command the graceful way (SIGTERM: it may write a final checkpoint),
    /// goes on to upload what is complete, and, where the plan has a shutdown command, shuts
    /// the node down after its final status. Only while there is work to stop, and only once.
    private mutating func deadManCheck(_ now: Now) -> [Action] {
        guard let limit = plan.deadManSeconds, !deadManTripped, !stopRequested else { return [] }
        switch phase {
        case .idle, .draining, .finishing, .exited: return []
        default: break
        }
        let silent = now.uptime - controllerHeard
        guard silent >= .seconds(limit) else { return [] }
        let why = "no controller for \(Self.describe(silent)) (deadManMinutes \(Self.minutes(limit)))"
        status.deadMan = why
        let next = plan.shutdownCommand == nil
            ? "uploading what is complete; the node stays up (its provider does not stop billing on a shutdown)"
            : "uploading what is complete, then shutting the node down"
        return [.log("dead-man switch: \(why); stopping the command (SIGTERM: it may write a final checkpoint), \(next)")] + requestStop(force: false, now)
    }

    static func describe(_ d: Duration) -> String {
        let s = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        return s < 120 ? "\(Int(s)) s" : "\(Int(s / 60)) min"
    }

    static func minutes(_ seconds: Double) -> String {
        let m = seconds / 60
        return m == m.rounded() ? "\(Int(m))" : "\(m)"
    }

    private mutating func finish(endedIn: String, exit: ExitStatus?, _ now: Now) -> [Action] {
        phase = .exited
        status.phase = .exited
        if status.endedIn == nil { status.endedIn = endedIn }
        if status.exit == nil { status.exit = exit }
        if status.endedAt == nil { status.endedAt = now.date }
        let line = "agent done: \(status.exit.map { "\($0)" } ?? "no command result")\(status.failure.map { "; \($0)" } ?? "")\(status.deadMan.map { "; stopped by the dead-man switch: \($0)" } ?? "")"
        // The final status is written before the node goes down: whoever looks later (a
        // controller that comes back, a person) reads why.
        if deadManTripped, let command = plan.shutdownCommand {
            return [write(now), .log(line), .log("dead-man switch: shutting the node down (\(command))"), .shutDownNode(command), .exit(status)]
        }
        return [write(now), .log(line), .exit(status)]
    }

    private mutating func write(_ now: Now) -> Action {
        status.updatedAt = now.date
        return .writeStatus(status)
    }
}
