import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanTrainer
import Foundation
import Testing

/// The node agent's phases as a pure state machine: every transition walked with a clock of
/// the test's own (times are given with each event), no process, no file, no sleep.
@Suite("Agent lifecycle")
struct AgentLifecycleTests {
    typealias Lifecycle = AgentLifecycle
    typealias Action = AgentLifecycle.Action
    typealias Event = AgentLifecycle.Event

    /// A lifecycle and the test's clock (seconds since the agent started).
    struct Walk {
        var machine: Lifecycle
        var t: Double = 0

        init(resume: Int? = nil, python: Bool = false, setup: [String] = [], run: String = "train", grace: Double = 15, deadMan: Double? = nil, shutdown: String? = nil) {
            let plan = Lifecycle.Plan(resumeStep: resume, python: python, setup: setup, run: run, stopGraceSeconds: grace, job: "j", attempt: 2, node: 1, nodes: 2,
                                      deadManSeconds: deadMan, shutdownCommand: shutdown)
            machine = Lifecycle(plan: plan, status: AgentStatus(job: "j", attempt: 2, node: 1, agentPID: 42))
        }

        static func now(_ t: Double) -> Lifecycle.Now {
            Lifecycle.Now(uptime: .milliseconds(Int64((t * 1000).rounded())), date: Date(timeIntervalSince1970: 1_700_000_000 + t))
        }

        @discardableResult
        mutating func send(_ event: Event, after seconds: Double = 0) -> [Action] {
            t += seconds
            return machine.receive(event, at: Self.now(t))
        }

        var status: AgentStatus { machine.status }
    }

    // MARK: - Action helpers

    static func writes(_ actions: [Action]) -> [AgentStatus] {
        actions.compactMap { if case .writeStatus(let s) = $0 { s } else { nil } }
    }

    static func logs(_ actions: [Action]) -> [String] {
        actions.compactMap { if case .log(let l) = $0 { l } else { nil } }
    }

    static func signals(_ actions: [Action]) -> [[Int32]] {
        actions.compactMap { if case .signalGroup(let pid, let sig) = $0 { [pid, sig] } else { nil } }
    }

    /// The actions that are steps for the agent's driver (not done at once).
    static func steps(_ actions: [Action]) -> [Action] {
        actions.filter {
            switch $0 {
            case .writeStatus, .log, .recordPID, .recordDescendants, .signalGroup, .killDescendants, .scheduleDeadline: false
            default: true
            }
        }
    }

    static func exitStatus(_ actions: [Action]) -> AgentStatus? {
        actions.compactMap { if case .exit(let s) = $0 { s } else { nil } }.first
    }

    // MARK: - The whole way

    @Test("a full run: probe, files, setup commands, the command, final uploads, exit")
    func fullRun() {
        var w = Walk(setup: ["pip install x", "make data"])
        var a = w.send(.begin(ownsDescendants: true))
        #expect(w.machine.phase == .probing)
        #expect(Self.writes(a).map(\.phase) == [.starting])
        #expect(Self.logs(a) == ["agent started: job j, attempt 2, node 1 of 2"])
        #expect(Self.steps(a) == [.probeBucket])

        a = w.send(.probeSucceeded, after: 1)
        #expect(a == [.writeFiles] && w.machine.phase == .writingFiles && w.status.phase == .starting)

        a = w.send(.filesWritten)
        #expect(w.machine.phase == .settingUp(0))
        #expect(Self.writes(a).map(\.phase) == [.setup])
        #expect(Self.logs(a) == ["setup 1/2: pip install x"])
        #expect(Self.steps(a) == [.spawn("pip install x", environment: [:])])

        a = w.send(.childStarted(pid: 100))
        #expect(a.first == .recordPID(100) && Self.writes(a).map(\.commandPID) == [100])
        a = w.send(.childExited(pid: 100, .exited(0)), after: 2)
        // Its group and every descendant (the agent process) are killed, the pid cleared, and
        // the next setup command starts.
        #expect(Self.signals(a) == [[100, Lifecycle.sigkill]] && a.contains(.killDescendants))
        #expect(Self.writes(a).first?.commandPID == nil)
        #expect(w.machine.phase == .settingUp(1) && Self.logs(a) == ["setup 2/2: make data"])
        #expect(Self.steps(a) == [.spawn("make data", environment: [:])])

        w.send(.childStarted(pid: 101))
        a = w.send(.childExited(pid: 101, .exited(0)))
        #expect(w.machine.phase == .running && w.status.phase == .running)
        #expect(Self.steps(a) == [.startCheckpointWatcher, .spawn("train", environment: [:])])

        w.send(.childStarted(pid: 200))
        #expect(w.status.commandPID == 200)
        a = w.send(.checkpointsSeen(uploaded: Array(1...25), committed: [1, 2]), after: 5)
        #expect(Self.writes(a).first?.uploadedSteps == Array(6...25))  // the last 20
        #expect(w.status.committedSteps == [1, 2])

        a = w.send(.childExited(pid: 200, .exited(0)), after: 60)
        #expect(w.machine.phase == .draining(.exited(0)) && w.status.phase == .running)
        #expect(Self.steps(a) == [.stopCheckpointWatcher(commandFailed: false)])
        #expect(w.status.exit == nil)

        a = w.send(.watcherStopped(workerSignal: nil), after: 1)
        #expect(w.machine.phase == .finishing(.exited(0)))
        let finishing = Self.writes(a).first
        #expect(finishing?.phase == .finishing && finishing?.exit == .exited(0) && finishing?.endedIn == "run")
        #expect(finishing?.endedAt == Walk.now(w.t).date)
        #expect(Self.logs(a) == ["command ended: exit code 0"])
        #expect(Self.steps(a) == [.finalUploads(succeeded: true)])

        w.send(.outputsUploaded, after: 1)
        #expect(w.status.outputsUploaded)
        a = w.send(.finalUploadsDone, after: 1)
        let done = Self.exitStatus(a)
        #expect(done?.phase == .exited && done?.exit == .exited(0) && done?.endedIn == "run" && done?.succeeded == true)
        #expect(done?.endedAt == finishing?.endedAt)  // set once, when the command ended
        #expect(Self.logs(a) == ["agent done: exit code 0"])
        #expect(w.machine.phase == .exited && w.machine.stop == .none)
        // Every write is stamped with the time of its event.
        #expect(Self.writes(a).first?.updatedAt == Walk.now(w.t).date)
    }

    @Test("restore, then the Python environment, whose variables setup and the command run with")
    func restoreAndPython() {
        var w = Walk(resume: 7, python: true, setup: ["echo s"])
        w.send(.begin(ownsDescendants: false))
        var a = w.send(.probeSucceeded)
        #expect(w.machine.phase == .restoring && Self.writes(a).map(\.phase) == [.restoring])
        #expect(Self.steps(a) == [.restore(step: 7)])
        a = w.send(.restored, after: 3)
        #expect(a == [.writeFiles] && w.status.phase == .restoring)
        a = w.send(.filesWritten)
        #expect(w.machine.phase == .preparingPython && Self.writes(a).map(\.phase) == [.setup])
        #expect(Self.steps(a) == [.preparePython])

        // The venv's own commands are children too (recorded, signalled on a stop), and their
        // end does not end the phase; without owning descendants none are killed.
        a = w.send(.childStarted(pid: 300))
        #expect(a.first == .recordPID(300) && w.status.commandPID == 300)
        a = w.send(.childExited(pid: 300, .exited(1)))
        #expect(Self.signals(a) == [[300, Lifecycle.sigkill]] && !a.contains(.killDescendants))
        #expect(w.machine.phase == .preparingPython && Self.steps(a).isEmpty)
        a = w.send(.spawnFailed("ENOENT"))
        #expect(a == [.log("cannot start the command: ENOENT")] && w.machine.phase == .preparingPython)

        let env = ["PATH": "/venv/bin:/usr/bin", "VIRTUAL_ENV": "/venv", "CAPSTAN_PYTHON": "/venv/bin/python"]
        a = w.send(.pythonReady(env), after: 20)
        #expect(w.machine.preparedEnvironment == env)
        #expect(Self.steps(a) == [.spawn("echo s", environment: env)])
        w.send(.childStarted(pid: 301))
        a = w.send(.childExited(pid: 301, .exited(0)))
        #expect(Self.steps(a) == [.startCheckpointWatcher, .spawn("train", environment: env)])
    }

    // MARK: - Failures

    @Test("a bucket that takes no write ends the attempt in start, with the failure")
    func probeFails() {
        var w = Walk()
        w.send(.begin(ownsDescendants: false))
        let a = w.send(.probeFailed("cannot write to the bucket s3://b: denied"))
        let s = Self.exitStatus(a)
        #expect(s?.endedIn == AgentStatus.startPhase && s?.exit == nil && s?.failure == "cannot write to the bucket s3://b: denied")
        #expect(Self.logs(a) == ["cannot write to the bucket s3://b: denied", "agent done: no command result; cannot write to the bucket s3://b: denied"])
        #expect(Self.writes(a).map(\.phase) == [.starting, .exited])
    }

    @Test("a checkpoint that cannot be restored ends the attempt in restore; a corrupt one is named")
    func restoreFails() {
        let bad = CorruptCheckpoint(step: 9, reason: "w.bin: sha256 differs", detectedAt: Date(timeIntervalSince1970: 1_700_000_000))
        for corrupt in [nil, bad] {
            var w = Walk(resume: 9, setup: ["x"])
            w.send(.begin(ownsDescendants: false))
            w.send(.probeSucceeded)
            let a = w.send(.restoreFailed("restoring checkpoint step 9 failed: no", corrupt: corrupt))
            let s = Self.exitStatus(a)
            #expect(s?.endedIn == "restore" && s?.exit == nil && s?.corruptCheckpoint == corrupt)
            #expect(s?.failure == "restoring checkpoint step 9 failed: no")
            #expect(!a.contains { if case .spawn = $0 { true } else { false } })
        }
    }

    @Test("files that cannot be written, and a Python environment that fails, end the attempt in setup")
    func setupPreparationFails() {
        var w = Walk(python: true)
        w.send(.begin(ownsDescendants: false))
        w.send(.probeSucceeded)
        var a = w.send(.filesFailed("writing /s/recipe.py failed: EACCES"))
        #expect(Self.exitStatus(a)?.endedIn == "setup" && Self.exitStatus(a)?.exit == nil)
        #expect(Self.exitStatus(a)?.failure == "writing /s/recipe.py failed: EACCES")

        w = Walk(python: true)
        w.send(.begin(ownsDescendants: false))
        w.send(.probeSucceeded)
        w.send(.filesWritten)
        a = w.send(.pythonFailed("no index"))
        // The job's own setup failing: exit code 1, no agent failure.
        #expect(Self.exitStatus(a)?.exit == .exited(1) && Self.exitStatus(a)?.endedIn == "setup" && Self.exitStatus(a)?.failure == nil)
        #expect(Self.logs(a).first == "python env failed: no index")
    }

    /// Walks to setup command 0 (started, pid 100).
    static func inSetup(owns: Bool = false) -> Walk {
        var w = Walk(setup: ["a", "b"])
        w.send(.begin(ownsDescendants: owns))
        w.send(.probeSucceeded)
        w.send(.filesWritten)
        w.send(.childStarted(pid: 100))
        return w
    }

    /// Walks to the command (started, pid 200).
    static func inRun(owns: Bool = false, grace: Double = 15, deadMan: Double? = nil, shutdown: String? = nil) -> Walk {
        var w = Walk(grace: grace, deadMan: deadMan, shutdown: shutdown)
        w.send(.begin(ownsDescendants: owns))
        w.send(.probeSucceeded)
        w.send(.filesWritten)
        w.send(.childStarted(pid: 200))
        return w
    }

    @Test("a setup command's exit code or signal is the attempt's; later ones and the command never run",
          arguments: [CapstanCore.ExitStatus.exited(4), .exited(127), .exited(255), .signaled(9), .signaled(15), .signaled(6)])
    func setupCommandFails(exit: CapstanCore.ExitStatus) {
        var w = Self.inSetup()
        let a = w.send(.childExited(pid: 100, exit))
        let s = Self.exitStatus(a)
        #expect(s?.exit == exit && s?.endedIn == "setup" && s?.phase == .exited && s?.failure == nil && s?.commandPID == nil)
        #expect(Self.steps(a) == [.exit(s!)])
        #expect(Self.logs(a) == ["agent done: \(exit)"])
    }

    @Test("a setup command that cannot start is exit code 127")
    func setupSpawnFails() {
        var w = Walk(setup: ["a"])
        w.send(.begin(ownsDescendants: false))
        w.send(.probeSucceeded)
        w.send(.filesWritten)
        let a = w.send(.spawnFailed("E2BIG"))
        #expect(Self.logs(a).first == "cannot start the command: E2BIG")
        #expect(Self.exitStatus(a)?.exit == .exited(127) && Self.exitStatus(a)?.endedIn == "setup")
    }

    @Test("the command's exit code or signal is the attempt's, with the worker signal from its log; outputs only on success",
          arguments: [(CapstanCore.ExitStatus.exited(0), Int32?.none), (.exited(1), 9), (.exited(3), nil), (.signaled(9), nil), (.signaled(15), nil), (.exited(127), nil)])
    func commandEnds(exit: CapstanCore.ExitStatus, workerSignal: Int32?) {
        var w = Self.inRun()
        var a = w.send(.childExited(pid: 200, exit))
        #expect(Self.steps(a) == [.stopCheckpointWatcher(commandFailed: !exit.succeeded)])
        a = w.send(.watcherStopped(workerSignal: workerSignal))
        #expect(Self.steps(a) == [.finalUploads(succeeded: exit.succeeded)])
        #expect(Self.logs(a) == ["command ended: \(exit)" + (workerSignal.map { "; a worker was killed by signal \($0)" } ?? "")])
        a = w.send(.finalUploadsDone)
        let s = Self.exitStatus(a)
        #expect(s?.exit == exit && s?.endedIn == "run" && s?.workerSignal == workerSignal && s?.succeeded == exit.succeeded)
    }

    @Test("a command that cannot start ends like exit code 127; failed outputs are the agent's failure")
    func commandSpawnFailsAndOutputsFail() {
        var w = Walk()
        w.send(.begin(ownsDescendants: false))
        w.send(.probeSucceeded)
        w.send(.filesWritten)
        var a = w.send(.spawnFailed("ENOMEM"))
        #expect(Self.signals(a).isEmpty && Self.steps(a) == [.stopCheckpointWatcher(commandFailed: true)])
        w.send(.watcherStopped(workerSignal: nil))
        #expect(w.status.exit == .exited(127))

        w = Self.inRun()
        w.send(.childExited(pid: 200, .exited(0)))
        w.send(.watcherStopped(workerSignal: nil))
        a = w.send(.outputsFailed("uploading outputs failed: 503"))
        #expect(Self.logs(a) == ["uploading outputs failed: 503"] && w.status.failure == "uploading outputs failed: 503")
        a = w.send(.finalUploadsDone)
        #expect(Self.exitStatus(a)?.exit == .exited(0) && Self.exitStatus(a)?.succeeded == false)
        #expect(Self.logs(a) == ["agent done: exit code 0; uploading outputs failed: 503"])
    }

    // MARK: - Stop

    @Test("a stop before any command runs: recorded, nothing signalled, Python and setup skipped, ended in setup by SIGTERM")
    func stopBeforeCommands() {
        // Stopped in each phase before a command: idle, probing, restoring, writing files.
        for stopAfter in 0...3 {
            var w = Walk(resume: 3, python: true, setup: ["a"])
            let events: [Event] = [.begin(ownsDescendants: false), .probeSucceeded, .restored]
            for e in events.prefix(stopAfter) { w.send(e) }
            let a = w.send(.stopRequested(force: false))
            #expect(Self.logs(a) == ["stop requested"] && Self.writes(a).map(\.stopRequested) == [true])
            #expect(Self.signals(a).isEmpty && w.machine.stop == .requested(force: false))
            for e in events.dropFirst(stopAfter) { w.send(e) }
            let end = w.send(.filesWritten)
            let s = Self.exitStatus(end)
            #expect(s?.exit == .signaled(Lifecycle.sigterm) && s?.endedIn == "setup" && s?.stopRequested == true, "stopped after \(stopAfter) event(s)")
            #expect(!end.contains(.preparePython))
        }
    }

    @Test("a stop while setup runs: SIGTERM to its group with a deadline; it ends the attempt in setup")
    func stopDuringSetup() {
        var w = Self.inSetup()
        let a = w.send(.stopRequested(force: false), after: 10)
        #expect(Self.signals(a) == [[100, Lifecycle.sigterm]] && a.contains(.scheduleDeadline(at: .seconds(25))))
        #expect(w.machine.stop == .terminating(pid: 100, deadline: .seconds(25)))
        let end = w.send(.childExited(pid: 100, .signaled(15)), after: 1)
        #expect(w.machine.stop == .requested(force: false))
        #expect(Self.exitStatus(end)?.exit == .signaled(15) && Self.exitStatus(end)?.endedIn == "setup")
        // The deadline after the end: nothing to kill.
        #expect(w.send(.deadlinePassed, after: 30).isEmpty)
    }

    @Test("a stop while Python's commands run signals them; a command starting after a stop gets SIGTERM when it starts")
    func stopDuringPython() {
        var w = Walk(python: true, setup: ["a"])
        w.send(.begin(ownsDescendants: false))
        w.send(.probeSucceeded)
        w.send(.filesWritten)
        w.send(.childStarted(pid: 300))
        var a = w.send(.stopRequested(force: false), after: 1)
        #expect(Self.signals(a) == [[300, Lifecycle.sigterm]])
        w.send(.childExited(pid: 300, .exited(1)))
        // pip from the index after the wheels failed: stopped as it starts, with its own deadline.
        a = w.send(.childStarted(pid: 301), after: 1)
        #expect(Self.signals(a) == [[301, Lifecycle.sigterm]] && a.contains(.scheduleDeadline(at: .seconds(17))))
        w.send(.childExited(pid: 301, .signaled(15)))
        a = w.send(.pythonFailed("pip failed"))
        #expect(Self.exitStatus(a)?.exit == .exited(1))
        // A venv that was ready anyway: setup is skipped.
        var v = Walk(python: true, setup: ["a"])
        v.send(.begin(ownsDescendants: false))
        v.send(.probeSucceeded)
        v.send(.filesWritten)
        v.send(.stopRequested(force: false))
        a = v.send(.pythonReady(["VIRTUAL_ENV": "/v"]))
        #expect(Self.exitStatus(a)?.exit == .signaled(15) && Self.exitStatus(a)?.endedIn == "setup")
    }

    @Test("a stop while the command runs: SIGTERM, then the uploads finish and the attempt ends in run")
    func stopDuringRun() {
        var w = Self.inRun()
        var a = w.send(.stopRequested(force: false), after: 100)
        #expect(Self.signals(a) == [[200, Lifecycle.sigterm]] && a.contains(.scheduleDeadline(at: .seconds(115))))
        #expect(w.status.stopRequested && w.machine.phase == .running)
        // Another stop (a second SIGTERM, SIGINT): nothing more.
        #expect(w.send(.stopRequested(force: false), after: 1).isEmpty)
        a = w.send(.childExited(pid: 200, .signaled(15)), after: 2)
        #expect(Self.steps(a) == [.stopCheckpointWatcher(commandFailed: true)])
        w.send(.watcherStopped(workerSignal: nil))
        #expect(w.machine.stopRequested)  // what the final uploads read to stop waiting for parts
        a = w.send(.finalUploadsDone)
        let s = Self.exitStatus(a)
        #expect(s?.exit == .signaled(15) && s?.endedIn == "run" && s?.stopRequested == true)
    }

    @Test("a stop while draining or finishing uploads is recorded and signals nothing; after the end likewise")
    func stopWhileFinishing() {
        var w = Self.inRun()
        w.send(.childExited(pid: 200, .exited(0)))
        var a = w.send(.stopRequested(force: false))
        #expect(Self.signals(a).isEmpty && Self.logs(a) == ["stop requested"] && w.machine.phase == .draining(.exited(0)))
        w = Self.inRun()
        w.send(.childExited(pid: 200, .exited(0)))
        w.send(.watcherStopped(workerSignal: nil))
        a = w.send(.stopRequested(force: true))
        #expect(Self.signals(a).isEmpty && w.status.stopRequested)
        a = w.send(.finalUploadsDone)
        #expect(Self.exitStatus(a)?.exit == .exited(0))
        a = w.send(.stopRequested(force: false))
        // As before the state machine: the stop is still recorded in the status file.
        #expect(w.machine.phase == .exited && a.isEmpty)  // already recorded above
        var x = Self.inRun()
        x.send(.childExited(pid: 200, .exited(0)))
        x.send(.watcherStopped(workerSignal: nil))
        x.send(.finalUploadsDone)
        a = x.send(.stopRequested(force: false))
        #expect(Self.writes(a).map(\.stopRequested) == [true] && Self.signals(a).isEmpty && x.machine.phase == .exited)
    }

    @Test("force-stop escalation: SIGKILL once the deadline the machine set has passed, not before")
    func escalation() {
        var w = Self.inRun(grace: 15)
        var a = w.send(.stopRequested(force: false), after: 10)
        guard case .terminating(let pid, let deadline) = w.machine.stop else {
            Issue.record("expected terminating, got \(w.machine.stop)"); return
        }
        #expect(pid == 200 && deadline == .seconds(25) && a.contains(.scheduleDeadline(at: deadline)))
        // Early (a timer that fired ahead of the clock): ignored.
        a = w.send(.deadlinePassed, after: 14.999)
        #expect(a.isEmpty && w.machine.stop == .terminating(pid: 200, deadline: .seconds(25)))
        a = w.send(.deadlinePassed, after: 0.001)
        #expect(Self.signals(a) == [[200, Lifecycle.sigkill]])
        #expect(Self.logs(a) == ["command did not stop within 15.0 s; killing it"])
        #expect(w.machine.stop == .killing(pid: 200))
        // A second deadline: already killing.
        #expect(w.send(.deadlinePassed, after: 5).isEmpty)
        let end = w.send(.childExited(pid: 200, .signaled(9)))
        #expect(w.machine.stop == .requested(force: true) && Self.steps(end) == [.stopCheckpointWatcher(commandFailed: true)])
    }

    @Test("a forced stop kills at once, escalates a graceful one, and kills a command that starts after it")
    func forceStop() {
        var w = Self.inRun()
        var a = w.send(.stopRequested(force: true))
        #expect(Self.signals(a) == [[200, Lifecycle.sigkill]] && Self.logs(a) == ["stop requested"] && w.machine.stop == .killing(pid: 200))
        #expect(w.send(.stopRequested(force: true)).isEmpty && w.send(.stopRequested(force: false)).isEmpty)

        w = Self.inSetup()
        w.send(.stopRequested(force: false), after: 1)
        a = w.send(.stopRequested(force: true), after: 1)
        #expect(Self.signals(a) == [[100, Lifecycle.sigkill]] && Self.writes(a).isEmpty)
        #expect(w.send(.deadlinePassed, after: 20).isEmpty)

        w = Walk(python: true)
        w.send(.begin(ownsDescendants: false))
        w.send(.probeSucceeded)
        w.send(.filesWritten)
        w.send(.stopRequested(force: true))
        #expect(w.machine.stop == .requested(force: true))
        a = w.send(.childStarted(pid: 300))
        #expect(Self.signals(a) == [[300, Lifecycle.sigkill]] && !a.contains { if case .scheduleDeadline = $0 { true } else { false } })
    }

    // MARK: - Heartbeat

    @Test("heartbeats count and write in every phase but before the start and after the end; descendants recorded when owned")
    func heartbeat() {
        var w = Walk()
        #expect(w.send(.heartbeatTick).isEmpty)
        w.send(.begin(ownsDescendants: true))
        var a = w.send(.heartbeatTick, after: 5)
        #expect(Self.writes(a).map(\.heartbeat) == [1] && a.last == .recordDescendants)
        #expect(Self.writes(a).first?.updatedAt == Walk.now(5).date)
        w = Self.inRun(owns: false)
        a = w.send(.heartbeatTick)
        #expect(Self.writes(a).map(\.heartbeat) == [1] && !a.contains(.recordDescendants))
        w.send(.childExited(pid: 200, .exited(0)))
        w.send(.watcherStopped(workerSignal: nil))
        w.send(.finalUploadsDone)
        #expect(w.send(.heartbeatTick).isEmpty && w.status.heartbeat == 1)
        var o = Self.inRun(owns: true)
        o.send(.childExited(pid: 200, .exited(0)))
        o.send(.watcherStopped(workerSignal: nil))
        o.send(.finalUploadsDone)
        #expect(o.send(.heartbeatTick) == [.recordDescendants])
    }

    @Test("events for another child or another phase are ignored")
    func strays() {
        var w = Self.inRun()
        #expect(w.send(.childExited(pid: 999, .exited(0))).isEmpty)  // not the command
        #expect(w.send(.childStarted(pid: 201)).isEmpty)  // one command at a time
        #expect(w.send(.probeSucceeded).isEmpty && w.send(.restored).isEmpty && w.send(.begin(ownsDescendants: true)).isEmpty)
        #expect(w.machine.phase == .running && w.status.commandPID == 200)
    }

    // MARK: - The dead-man switch

    @Test("dead-man switch: a controller silent for deadManSeconds while the command runs: SIGTERM with its grace, the status says why, the uploads finish, the node is shut down after the final status")
    func deadManTrips() {
        var w = Self.inRun(deadMan: 600, shutdown: "sudo -n /sbin/shutdown -h now")
        // 599 s of silence since the agent started: nothing yet.
        #expect(Self.signals(w.send(.heartbeatTick, after: 599)).isEmpty)
        #expect(w.status.deadMan == nil && !w.machine.deadManTripped)
        // 600 s: the switch goes off once.
        var a = w.send(.heartbeatTick, after: 1)
        #expect(Self.signals(a) == [[200, Lifecycle.sigterm]] && a.contains(.scheduleDeadline(at: .seconds(615))))
        #expect(w.status.deadMan == "no controller for 10 min (deadManMinutes 10)" && w.status.stopRequested)
        #expect(Self.logs(a).contains("dead-man switch: no controller for 10 min (deadManMinutes 10); stopping the command (SIGTERM: it may write a final checkpoint), uploading what is complete, then shutting the node down"))
        #expect(Self.writes(a).last?.deadMan != nil)
        #expect(Self.signals(w.send(.heartbeatTick, after: 1)).isEmpty, "only once")
        // A controller heard now changes nothing: the stop is under way.
        #expect(w.send(.controllerSeen, after: 1).isEmpty)
        // The command writes its final checkpoint and exits; the agent drains and uploads.
        a = w.send(.childExited(pid: 200, .signaled(15)), after: 3)
        #expect(Self.steps(a) == [.stopCheckpointWatcher(commandFailed: true)])
        a = w.send(.watcherStopped(workerSignal: nil))
        #expect(Self.steps(a) == [.finalUploads(succeeded: false)])
        a = w.send(.finalUploadsDone, after: 2)
        // The final status, then the shutdown, then the exit.
        let final = Self.exitStatus(a)
        #expect(final?.deadMan == "no controller for 10 min (deadManMinutes 10)" && final?.exit == .signaled(15) && final?.endedIn == "run")
        #expect(Self.steps(a) == [.shutDownNode("sudo -n /sbin/shutdown -h now"), .exit(final!)])
        #expect(Self.logs(a).first?.hasSuffix("; stopped by the dead-man switch: no controller for 10 min (deadManMinutes 10)") == true)
        guard let write = a.firstIndex(where: { if case .writeStatus = $0 { true } else { false } }), let down = a.firstIndex(of: .shutDownNode("sudo -n /sbin/shutdown -h now")) else {
            Issue.record("no final write or shutdown: \(a)")
            return
        }
        #expect(write < down, "the final status is written before the node goes down")
    }

    @Test("dead-man switch: every change of the controller's mark restarts the silence; a controller that restarts within seconds never trips it")
    func deadManHeard() {
        var w = Self.inRun(deadMan: 60)
        for _ in 0..<10 {
            #expect(Self.signals(w.send(.heartbeatTick, after: 50)).isEmpty)
            #expect(w.send(.controllerSeen).isEmpty)  // nothing to do; the clock restarts
            #expect(w.machine.controllerHeard == .milliseconds(Int64((w.t * 1000).rounded())))
        }
        // The controller is replaced: 55 s without a mark (kill, another replica adopts it).
        #expect(Self.signals(w.send(.heartbeatTick, after: 55)).isEmpty)
        w.send(.controllerSeen, after: 1)
        #expect(Self.signals(w.send(.heartbeatTick, after: 59)).isEmpty && w.status.deadMan == nil)
        // Then silence for good.
        #expect(Self.signals(w.send(.heartbeatTick, after: 1)) == [[200, Lifecycle.sigterm]])
        #expect(w.status.deadMan == "no controller for 60 s (deadManMinutes 1)")
    }

    @Test("dead-man switch: off without deadManSeconds; fractions of a minute; no shutdown without the provider's command; nothing to stop once the command ended")
    func deadManLimits() {
        // Off: a year of silence.
        var off = Self.inRun()
        #expect(Self.signals(off.send(.heartbeatTick, after: 365 * 86400)).isEmpty && off.status.deadMan == nil)
        // 3 s (deadManMinutes 0.05), on a node whose provider never stops billing on a shutdown.
        var w = Self.inRun(deadMan: 3)
        let a = w.send(.heartbeatTick, after: 3)
        #expect(Self.signals(a) == [[200, Lifecycle.sigterm]])
        #expect(Self.logs(a).last?.hasSuffix("uploading what is complete; the node stays up (its provider does not stop billing on a shutdown)") == true || Self.logs(a).contains { $0.contains("the node stays up") })
        #expect(w.status.deadMan == "no controller for 3 s (deadManMinutes 0.05)")
        w.send(.childExited(pid: 200, .exited(143)), after: 1)
        w.send(.watcherStopped(workerSignal: nil))
        let done = w.send(.finalUploadsDone)
        #expect(!done.contains { if case .shutDownNode = $0 { true } else { false } })
        #expect(Self.exitStatus(done)?.deadMan != nil)
        // The command ended on its own before the silence ran out: draining and finishing are not stopped.
        var d = Self.inRun(deadMan: 10)
        d.send(.childExited(pid: 200, .exited(0)), after: 1)
        #expect(d.send(.heartbeatTick, after: 60).allSatisfy { if case .signalGroup = $0 { false } else { true } } && d.status.deadMan == nil)
        d.send(.watcherStopped(workerSignal: nil))
        #expect(d.send(.heartbeatTick, after: 60).allSatisfy { if case .log = $0 { false } else { true } } && d.status.deadMan == nil)
        #expect(!d.send(.finalUploadsDone).contains { if case .shutDownNode = $0 { true } else { false } })
    }

    @Test("dead-man switch during setup: the setup command gets SIGTERM and the command never starts; the attempt ends in setup")
    func deadManInSetup() {
        var w = Walk(setup: ["pip install x"], deadMan: 30, shutdown: "poweroff")
        w.send(.begin(ownsDescendants: false))
        w.send(.probeSucceeded)
        w.send(.filesWritten)
        w.send(.childStarted(pid: 300))
        #expect(Self.signals(w.send(.heartbeatTick, after: 30)) == [[300, Lifecycle.sigterm]])
        let a = w.send(.childExited(pid: 300, .signaled(15)), after: 1)
        #expect(!a.contains { if case .spawn = $0 { true } else { false } })
        #expect(Self.exitStatus(a)?.endedIn == "setup" && Self.exitStatus(a)?.deadMan != nil)
        #expect(Self.steps(a).first == .shutDownNode("poweroff"))
    }

    // MARK: - Every (state × event) pair

    /// The states the enumeration starts from, each reached by events from the start (plan:
    /// restore step 7, Python, one setup command; every child is pid 500).
    static let states: [(name: String, path: [Event])] = {
        let toPython: [Event] = [.begin(ownsDescendants: false), .probeSucceeded, .restored, .filesWritten]
        let toSetup = toPython + [.pythonReady([:])]
        let toRun = toSetup + [.childStarted(pid: 500), .childExited(pid: 500, .exited(0))]
        let toDraining = toRun + [.childStarted(pid: 500), .childExited(pid: 500, .exited(0))]
        let toFinishing = toDraining + [.watcherStopped(workerSignal: nil)]
        return [
            ("idle", []),
            ("probing", [.begin(ownsDescendants: false)]),
            ("restoring", [.begin(ownsDescendants: false), .probeSucceeded]),
            ("writingFiles", [.begin(ownsDescendants: false), .probeSucceeded, .restored]),
            ("preparingPython", toPython),
            ("preparingPython+child", toPython + [.childStarted(pid: 500)]),
            ("settingUp", toSetup),
            ("settingUp+child", toSetup + [.childStarted(pid: 500)]),
            ("running", toRun),
            ("running+child", toRun + [.childStarted(pid: 500)]),
            // SIGTERM sent at t = 0; the events below come at t = 100, past its deadline.
            ("running+child stopping", toRun + [.childStarted(pid: 500), .stopRequested(force: false)]),
            ("draining", toDraining),
            ("finishing", toFinishing),
            ("exited", toFinishing + [.finalUploadsDone]),
        ]
    }()

    static let events: [(name: String, event: Event)] = [
        ("begin", .begin(ownsDescendants: false)),
        ("probeSucceeded", .probeSucceeded),
        ("probeFailed", .probeFailed("x")),
        ("restored", .restored),
        ("restoreFailed", .restoreFailed("x", corrupt: nil)),
        ("filesWritten", .filesWritten),
        ("filesFailed", .filesFailed("x")),
        ("pythonReady", .pythonReady([:])),
        ("pythonFailed", .pythonFailed("x")),
        ("childStarted", .childStarted(pid: 500)),
        ("childExited", .childExited(pid: 500, .exited(0))),
        ("spawnFailed", .spawnFailed("x")),
        ("watcherStopped", .watcherStopped(workerSignal: nil)),
        ("checkpointsSeen", .checkpointsSeen(uploaded: [1], committed: [1])),
        ("outputsUploaded", .outputsUploaded),
        ("outputsFailed", .outputsFailed("x")),
        ("finalUploadsDone", .finalUploadsDone),
        ("stop", .stopRequested(force: false)),
        ("forceStop", .stopRequested(force: true)),
        ("deadlinePassed", .deadlinePassed),
        ("heartbeatTick", .heartbeatTick),
        ("controllerSeen", .controllerSeen),
    ]

    /// The pairs that are transitions (change the machine or do something); every other pair
    /// is ignored on purpose: nothing changes and nothing is done.
    static let handled: [String: Set<String>] = {
        let stops: Set<String> = ["stop", "forceStop", "heartbeatTick", "controllerSeen"]
        return [
            "idle": ["begin", "stop", "forceStop"],
            "probing": stops.union(["probeSucceeded", "probeFailed"]),
            "restoring": stops.union(["restored", "restoreFailed"]),
            "writingFiles": stops.union(["filesWritten", "filesFailed"]),
            "preparingPython": stops.union(["pythonReady", "pythonFailed", "childStarted", "spawnFailed"]),
            "preparingPython+child": stops.union(["pythonReady", "pythonFailed", "childExited", "spawnFailed"]),
            "settingUp": stops.union(["childStarted", "spawnFailed"]),
            "settingUp+child": stops.union(["childExited"]),
            "running": stops.union(["childStarted", "spawnFailed", "checkpointsSeen"]),
            "running+child": stops.union(["childExited", "checkpointsSeen"]),
            // A second graceful stop adds nothing; the deadline has passed.
            "running+child stopping": ["forceStop", "heartbeatTick", "childExited", "checkpointsSeen", "deadlinePassed", "controllerSeen"],
            "draining": stops.union(["watcherStopped", "checkpointsSeen"]),
            "finishing": stops.union(["checkpointsSeen", "outputsUploaded", "outputsFailed", "finalUploadsDone"]),
            "exited": ["stop", "forceStop"],
        ]
    }()

    @Test("every (state × event) pair is a transition or explicitly ignored")
    func everyPair() {
        var transitions = 0
        for (name, path) in Self.states {
            var w = Walk(resume: 7, python: true, setup: ["s"])
            for e in path { w.send(e) }
            let before = w.machine
            for (eventName, event) in Self.events {
                var m = before
                let actions = m.receive(event, at: Walk.now(100))
                let didSomething = !actions.isEmpty || m != before
                let expected = Self.handled[name]?.contains(eventName) == true
                #expect(didSomething == expected, "\(name) × \(eventName): \(didSomething ? "handled" : "ignored"), expected \(expected ? "handled" : "ignored")")
                if didSomething { transitions += 1 }
            }
        }
        let pairs = Self.states.count * Self.events.count
        print("AgentLifecycle: \(transitions) transitions, \(pairs - transitions) pairs ignored, of \(pairs) (state × event) pairs")
        #expect(transitions == Self.handled.values.map(\.count).reduce(0, +))
    }
}
