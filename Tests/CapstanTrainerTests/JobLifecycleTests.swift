import CapstanCore
@testable import CapstanTrainer
import Foundation
import Testing

/// The job lifecycle machine, with made-up instants: no processes, no clock, no sleeping.
@Suite("Job lifecycle")
struct JobLifecycleTests {
    typealias M = JobLifecycle
    typealias Action = JobLifecycle.Action

    static let t0 = ContinuousClock.now
    /// `s` seconds after the test clock's origin.
    static func at(_ s: Double) -> ContinuousClock.Instant { t0 + .seconds(s) }
    static let ids = ["i-0", "i-1"]
    static let attempt1 = M.Attempt(number: 1, nodes: ids, resumeStep: nil)

    static func machine(maxRestarts: Int = 3, settings: JobSettings = JobSettings(), maxDuration: Duration? = nil) -> M {
        M(config: M.Config(maxRestarts: maxRestarts, settings: settings, maxDuration: maxDuration))
    }

    static func agent(_ rank: Int, beat: Int, phase: AgentStatus.Phase = .running) -> AgentStatus {
        var s = AgentStatus(job: "j", attempt: 1, node: rank, agentPID: 100)
        s.phase = phase
        s.heartbeat = beat
        return s
    }

    static func exited(_ rank: Int, _ exit: CapstanCore.ExitStatus?, beat: Int = 1, endedAt: Double? = nil) -> AgentStatus {
        var s = agent(rank, beat: beat, phase: .exited)
        s.exit = exit
        s.endedIn = "run"
        s.endedAt = endedAt.map { Date(timeIntervalSince1970: $0) }
        return s
    }

    static func answer(_ s: AgentStatus, running: Bool = true) -> M.Answer { M.Answer(rank: s.node, status: s, running: running) }

    static func pass(_ s: Double, _ answers: [AgentStatus], began: Double? = nil, running: Bool = true) -> M.Event {
        .observed(M.Pass(readsBegan: at(began ?? s), answered: at(s), now: at(s), answers: answers.map { answer($0, running: running) }))
    }

    /// A machine following attempt 1 on two nodes, started at t = 0.
    static func running(maxRestarts: Int = 3, settings: JobSettings = JobSettings(), resumeStep: Int? = nil, maxDuration: Duration? = nil) -> M {
        var m = machine(maxRestarts: maxRestarts, settings: settings, maxDuration: maxDuration)
        _ = m.receive(.jobLoaded(.pending, attempt: 0))
        _ = m.receive(.clusterReady(missing: []))
        _ = m.receive(.attemptFound(nil, nil, sameNodes: false, at: at(0)))
        var a = attempt1
        a.resumeStep = resumeStep
        _ = m.receive(.attemptStarted(a, masterAddress: "10.0.0.1", port: 20001, reason: "the leader's address", at: at(0)))
        return m
    }

    /// A machine whose attempt 1 could not start: node `rank` was unreachable (the gang is stopping).
    static func lost(_ rank: Int, maxRestarts: Int = 3) -> M {
        var m = machine(maxRestarts: maxRestarts)
        _ = m.receive(.jobLoaded(.pending, attempt: 0))
        _ = m.receive(.clusterReady(missing: []))
        _ = m.receive(.attemptFound(nil, nil, sameNodes: false, at: at(0)))
        _ = m.receive(.nodeUnreachable(attempt1, rank: rank, error: "x"))
        return m
    }

    /// Feeds `events` in order; the actions of the last.
    @discardableResult
    static func feed(_ m: inout M, _ events: M.Event...) -> [Action] {
        var last: [Action] = []
        for e in events { last = m.receive(e) }
        return last
    }

    static func failure(_ actions: [Action]) -> AttemptFailure? {
        for case .emit(.failure(_, let f)) in actions { return f }
        return nil
    }

    static func stop(_ actions: [Action]) -> M.StopGang? {
        for case .stopGang(let s) in actions { return s }
        return nil
    }

    /// Runs one quiet pass of a running machine at `s` (both nodes beating `beat`) past the
    /// periodic instance check; the actions that end the pass.
    static func quietPass(_ m: inout M, _ s: Double, beat: Int) -> [Action] {
        let actions = m.receive(pass(s, [agent(0, beat: beat), agent(1, beat: beat)]))
        if actions.last == .checkInstances { return m.receive(.instancesChecked([])) }
        return actions
    }

    // MARK: - Transitions

    @Test("the top of the loop: a finished or missing job ends, a bucket that cannot open fails the job")
    func loopTop() {
        var m = Self.machine()
        #expect(m.receive(.jobLoaded(.succeeded, attempt: 2)) == [.end])
        #expect(m.phase == .finished(.succeeded))
        m = Self.machine()
        #expect(m.receive(.jobLoaded(nil, attempt: 0)) == [.end])
        #expect(m.phase == .finished(nil))
        m = Self.machine()
        #expect(m.receive(.bucketUnavailable("no bucket")) == [.finish(.failed, "no bucket", error: "no bucket")])
        #expect(M.start == [.loadJob])
    }

    @Test("provisioning: the job's own cluster, then its missing nodes in order, or a move")
    func provisioning() {
        var m = Self.machine()
        #expect(m.receive(.jobLoaded(.pending, attempt: 0)) == [.ensureCluster])
        #expect(m.phase == .provisioning(missing: [], moving: false))
        #expect(m.receive(.clusterNeedsProvisioning(cluster: "c", nodes: 2, gpu: "H100")) == [.setStatus(.provisioning, "Provisioning cluster c: 2 node(s) of H100."), .provisionCluster])
        #expect(m.receive(.clusterReady(missing: [0, 2])) == [.setStatus(.restarting, "Node 0 is missing; replacing it."), .replaceNode(0)])
        #expect(m.receive(.nodeReplaced(0)) == [.setStatus(.restarting, "Node 2 is missing; replacing it."), .replaceNode(2)])
        #expect(m.receive(.nodeReplaced(2)) == [.findAttempt])
        #expect(m.phase == .startingGang)

        m = Self.machine()
        Self.feed(&m, .jobLoaded(.pending, attempt: 0), .clusterReady(missing: [0, 1]))
        #expect(m.receive(.replacementUnavailable(node: 0, reason: "no capacity")) == [
            .setStatus(.restarting, "Node 0 cannot be replaced on the cluster's offer (no capacity); moving the whole gang to the next offer that fits."), .moveGang,
        ])
        // A move brings a whole new gang: node 1 is not replaced on its own.
        #expect(m.receive(.gangMoved) == [.findAttempt])

        m = Self.machine()
        Self.feed(&m, .jobLoaded(.pending, attempt: 0))
        #expect(m.receive(.cannotGoOn("Cluster 'c' is not running.")) == [.finish(.failed, "The job cannot go on: Cluster 'c' is not running.", error: "Cluster 'c' is not running.")])
        #expect(m.phase == .finished(.failed))
    }

    @Test("starting the gang: re-attach to a running attempt, stop a stale one, or start anew")
    func startingGang() {
        var m = Self.machine()
        Self.feed(&m, .jobLoaded(.running, attempt: 1), .clusterReady(missing: []))
        #expect(m.receive(.attemptFound(Self.attempt1, .running, sameNodes: true, at: Self.at(0))) == [.setStatus(.running, "Following attempt 1 on 2 node(s)."), .observe])
        #expect(m.phase.kind == .running)

        for outcome in [JobAttemptRecord.Outcome.running, .starting] {
            m = Self.machine()
            Self.feed(&m, .jobLoaded(.running, attempt: 1), .clusterReady(missing: []))
            let actions = m.receive(.attemptFound(Self.attempt1, outcome, sameNodes: false, at: Self.at(0)))
            #expect(actions == [.stopGang(M.StopGang(reason: .stale, attempt: 1, waitAtMost: .seconds(50)))])
            #expect(m.receive(.gangStopped(attemptFound: true)) == [.closeAttempt(1, .stopped, nil), .startAttempt])
            #expect(m.phase == .startingGang)
        }
        for outcome in [JobAttemptRecord.Outcome.failed, .succeeded, .stopped, nil] {
            m = Self.machine()
            Self.feed(&m, .jobLoaded(.restarting, attempt: 1), .clusterReady(missing: []))
            #expect(m.receive(.attemptFound(outcome == nil ? nil : Self.attempt1, outcome, sameNodes: true, at: Self.at(0))) == [.startAttempt])
        }

        m = Self.machine()
        Self.feed(&m, .jobLoaded(.pending, attempt: 0), .clusterReady(missing: []), .attemptFound(nil, nil, sameNodes: false, at: Self.at(0)))
        let a = M.Attempt(number: 2, nodes: Self.ids, resumeStep: 40)
        #expect(m.receive(.attemptStarted(a, masterAddress: "10.0.0.1", port: 20001, reason: "private", at: Self.at(0))) == [
            .setStatus(.running, "Attempt 2 started on 2 node(s), resuming from checkpoint step 40; MASTER_ADDR=10.0.0.1:20001 (private)."),
            .emit(.attemptStarted(attempt: 2, resumeStep: 40, nodes: Self.ids)),
            .observe,
        ])
        m = Self.machine()
        Self.feed(&m, .jobLoaded(.pending, attempt: 0), .clusterReady(missing: []))
        #expect(m.receive(.cannotGoOn("boom")) == [.finish(.failed, "The job cannot go on: boom", error: "boom")])
    }

    @Test("success: every node exited 0; the attempt is closed, checkpoints synced, the job succeeds")
    func success() {
        var m = Self.running()
        let first = m.receive(Self.pass(1, [Self.exited(0, .exited(0)), Self.exited(1, .exited(0))]))
        // The first pass syncs checkpoints and asks the providers about the instances.
        #expect(first == [.syncCheckpoints, .checkInstances])
        #expect(m.receive(.instancesChecked([M.Seen(rank: 0, instance: "i-0", state: .running), M.Seen(rank: 1, instance: "i-1", state: .running)])) == [
            .pullLogs(only: nil), .closeAttempt(1, .succeeded, nil), .syncCheckpoints, .finish(.succeeded, "Succeeded in attempt 1.", error: nil),
        ])
        #expect(m.phase == .finished(.succeeded))
    }

    @Test("a failed attempt: said, gang stopped, logs drained, attempt closed, restart decided, back to the top")
    func failureToRestart() {
        var m = Self.running()
        #expect(m.receive(Self.pass(1, [Self.exited(0, .exited(3), endedAt: 5), Self.agent(1, beat: 1)])) == [.syncCheckpoints, .checkInstances])
        #expect(m.receive(.instancesChecked([])) == [.pullLogs(only: [0]), .readErrorLine(node: 0)])
        let actions = m.receive(.errorLine("ValueError: bad"))
        let f = AttemptFailure(kind: .command, node: 0, exit: .exited(3), message: "the command on node 0 ended with exit code 3: ValueError: bad")
        #expect(actions == [
            .emit(.failure(attempt: 1, f)), .setStatus(.restarting, "Attempt 1 failed: \(f). Stopping the gang."),
            .stopGang(M.StopGang(reason: .failure, attempt: 1, silent: [], waitAtMost: .seconds(50))),
        ])
        #expect(m.phase.kind == .stopping)
        #expect(m.receive(.gangStopped(attemptFound: true)) == [.drainLogs(skipping: []), .closeAttempt(1, .failed, f), .syncCheckpoints, .loadRestartFacts(attempt: 1)])
        #expect(m.phase.kind == .restarting)
        #expect(m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0)) == [.countRestart, .loadJob])
        #expect(m.phase == .idle)
    }

    @Test("a lost node's capacity is replaced before the restart, or the gang moves")
    func replaceLost() {
        var m = Self.lost(1)
        var m2 = m
        Self.feed(&m, .gangStopped(attemptFound: true))
        #expect(m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0)) == [.countRestart, .setStatus(.restarting, "Replacing node 1's capacity."), .replaceNode(1)])
        #expect(m.receive(.nodeReplaced(1)) == [.loadJob])
        #expect(m.phase == .idle)

        Self.feed(&m2, .gangStopped(attemptFound: true), .restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0))
        #expect(m2.receive(.replacementUnavailable(node: 1, reason: "no capacity")).last == .moveGang)
        #expect(m2.receive(.gangMoved) == [.loadJob])
        var m3 = Self.lost(1)
        Self.feed(&m3, .gangStopped(attemptFound: true), .restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0))
        #expect(m3.receive(.cannotGoOn("replace failed")) == [.finish(.failed, "The job cannot go on: replace failed", error: "replace failed")])
    }

    /// A machine whose attempt 1 failed with `failure`, waiting for the restart facts.
    static func restarting(lost rank: Int, maxRestarts: Int = 3) -> M {
        var m = lost(rank, maxRestarts: maxRestarts)
        feed(&m, .gangStopped(attemptFound: true))
        return m
    }

    @Test("the restart budget: maxRestarts spent gives up with the last failure")
    func budgetExhausted() {
        var m = Self.restarting(lost: 0, maxRestarts: 2)
        let actions = m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 2))
        guard case .finish(.failed, let why, let error)? = actions.first, actions.count == 1 else {
            Issue.record("expected the job to fail: \(actions)"); return
        }
        #expect(why.hasPrefix("Gave up after 2 restart(s) (maxRestarts: 2). Last failure: heartbeat on node 0"))
        #expect(error == why)
        #expect(m.phase == .finished(.failed))
        // One left: restarts (and counts it).
        m = Self.restarting(lost: 0, maxRestarts: 2)
        #expect(m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 1)).first == .countRestart)
        // maxRestarts 0: the first failure ends the job.
        m = Self.restarting(lost: 0, maxRestarts: 0)
        #expect(m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0)).first.map { if case .finish(.failed, _, _) = $0 { true } else { false } } == true)
    }

    @Test("the same command failure twice without progress is the job's error; progress means a new checkpoint since the attempt's resume step")
    func sameFailureTwice() {
        let failing = Self.exited(0, .exited(3))
        func commandFailed(resume: Int?) -> M {
            var m = Self.running(resumeStep: resume)
            Self.feed(&m, Self.pass(1, [failing, Self.agent(1, beat: 1)]), .instancesChecked([]), .errorLine(nil), .gangStopped(attemptFound: true))
            return m
        }
        let previous = AttemptFailure(kind: .command, node: 0, exit: .exited(3), message: "earlier")
        var m = commandFailed(resume: 40)
        guard case .finish(.failed, let why, _)? = m.receive(.restartFacts(latestCheckpoint: 40, previous: previous, restartsUsed: 1)).first else {
            Issue.record("expected a give-up"); return
        }
        #expect(why.contains("same way twice"))
        m = commandFailed(resume: 40)
        #expect(m.receive(.restartFacts(latestCheckpoint: 60, previous: previous, restartsUsed: 1)) == [.countRestart, .loadJob])
        m = commandFailed(resume: nil)
        #expect(m.receive(.restartFacts(latestCheckpoint: 0, previous: previous, restartsUsed: 1)) == [.countRestart, .loadJob])
    }

    @Test("a corrupt checkpoint is recorded and the restart is not counted")
    func corruptCheckpoint() {
        var m = Self.running()
        var s = Self.exited(1, .exited(1))
        s.corruptCheckpoint = CorruptCheckpoint(step: 40, reason: "sha256 mismatch")
        Self.feed(&m, Self.pass(1, [Self.agent(0, beat: 1), s]))
        let actions = m.receive(.instancesChecked([]))
        #expect(actions.prefix(2) == [.pullLogs(only: [1]), .recordCorrupt(s.corruptCheckpoint!)])
        #expect(Self.failure(actions)?.kind == .corruptCheckpoint)
        Self.feed(&m, .gangStopped(attemptFound: true))
        #expect(m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 3)) == [.loadJob])
    }

    // MARK: - Timing (the durations the machine asks for)

    @Test("timing: the poll period, the stop wait, the checkpoint sync and instance check periods")
    func timing() {
        var settings = JobSettings()
        settings.pollSeconds = 0.25
        settings.stopGraceSeconds = 2
        settings.commitWaitSeconds = 3
        settings.describeSeconds = 10
        var m = Self.running(settings: settings)
        // t=0: sync and describe (never done yet). In the attempt's first 10 s the poll is
        // 0.1 s (the command's first lines show at once), then the job's own.
        #expect(m.receive(Self.pass(0, [Self.agent(0, beat: 1), Self.agent(1, beat: 1)])) == [.syncCheckpoints, .checkInstances])
        #expect(m.receive(.instancesChecked([])) == [.sleep(.milliseconds(100))])
        #expect(m.receive(.woke(at: Self.at(0.1))) == [.observe])
        // t=1.9: neither is due.
        #expect(m.receive(Self.pass(1.9, [Self.agent(0, beat: 2), Self.agent(1, beat: 2)])) == [.sleep(.milliseconds(100))])
        // t=2: a sync (every 2 s), no describe.
        #expect(m.receive(Self.pass(2, [Self.agent(0, beat: 3), Self.agent(1, beat: 3)])) == [.syncCheckpoints, .sleep(.milliseconds(100))])
        // t=9.9: still the start's poll; from t=10 the job's (and a describe, every 10 s).
        #expect(m.receive(Self.pass(9.9, [Self.agent(0, beat: 4), Self.agent(1, beat: 4)])) == [.syncCheckpoints, .sleep(.milliseconds(100))])
        #expect(m.receive(Self.pass(10, [Self.agent(0, beat: 5), Self.agent(1, beat: 5)])) == [.checkInstances])
        #expect(m.receive(.instancesChecked([])) == [.sleep(.milliseconds(250))])
        // t=20: both.
        #expect(m.receive(Self.pass(20, [Self.agent(0, beat: 6), Self.agent(1, beat: 6)])) == [.syncCheckpoints, .checkInstances])
        // A stop waits stopGrace + commitWait + 5 s for the agents.
        let actions = m.receive(.instancesChecked([M.Seen(rank: 1, instance: "i-1", state: .preempted)]))
        #expect(Self.stop(actions)?.waitAtMost == .seconds(10))
        #expect(M.Config(maxRestarts: 3, settings: JobSettings()).stopWait == .seconds(50))
        // There is no backoff between attempts: after a failure the machine goes straight back
        // to the top of the loop (the only waits are the poll period and the stop's).
        Self.feed(&m, .gangStopped(attemptFound: true))
        #expect(m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0)).contains { if case .sleep = $0 { true } else { false } } == false)
    }

    @Test("every node gone at once (an allocation cancelled, a zone lost): one new gang, on the cluster's own offer first, not a node at a time")
    func wholeGangGone() {
        var m = Self.running()
        #expect(m.receive(Self.pass(1, [Self.agent(0, beat: 1), Self.agent(1, beat: 1)], running: false)) == [.syncCheckpoints, .checkInstances])
        let actions = m.receive(.instancesChecked([M.Seen(rank: 0, instance: "i-0", state: .terminated), M.Seen(rank: 1, instance: "i-1", state: .preempted)]))
        let f = Self.failure(actions)
        #expect(f?.node == 0 && f?.alsoGone == [1], "\(String(describing: f))")
        Self.feed(&m, .gangStopped(attemptFound: true))
        #expect(m.receive(.restartFacts(latestCheckpoint: 20, previous: nil, restartsUsed: 0)) == [
            .countRestart, .setStatus(.restarting, "Every node of the gang is gone; launching a new gang (on the cluster's own offer first)."), .relaunchGang,
        ])
        #expect(m.receive(.gangMoved) == [.loadJob])
    }

    // MARK: - Blame rules

    @Test("blame 1: a gone instance is blamed before an agent that died")
    func blameGoneInstanceOverDeadAgent() {
        var m = Self.running()
        #expect(m.receive(Self.pass(1, [Self.agent(0, beat: 1), Self.agent(1, beat: 1)], running: false)) == [.syncCheckpoints, .checkInstances])
        let actions = m.receive(.instancesChecked([M.Seen(rank: 0, instance: "i-0", state: .running), M.Seen(rank: 1, instance: "i-1", state: nil)]))
        #expect(Self.failure(actions) == AttemptFailure(kind: .instanceGone, node: 1, message: "instance i-1 is gone (the provider no longer lists it)"))
    }

    @Test("blame 2: an agent that died without its final word is blamed before a node's command failure (its symptom)")
    func blameDeadAgentOverCommandFailure() {
        var m = Self.running()
        let dead = Self.answer(Self.agent(1, beat: 1), running: false)
        let follower = Self.answer(Self.exited(0, .exited(1), endedAt: 1))
        Self.feed(&m, .observed(M.Pass(readsBegan: Self.at(1), answered: Self.at(1), now: Self.at(1), answers: [follower, dead])))
        let actions = m.receive(.instancesChecked([]))
        #expect(Self.failure(actions) == AttemptFailure(kind: .heartbeat, node: 1, message: "the agent on node 1 (i-1) died"))
        // A lost heartbeat's node is neither waited for nor forced, and its log is not drained.
        #expect(Self.stop(actions)?.silent == [1])
        #expect(m.receive(.gangStopped(attemptFound: true)).first == .drainLogs(skipping: [1]))
    }

    @Test("blame 3: a gone instance is blamed before a command failure")
    func blameGoneInstanceOverCommandFailure() {
        var m = Self.running()
        Self.feed(&m, Self.pass(1, [Self.exited(0, .exited(1)), Self.agent(1, beat: 1)]))
        let actions = m.receive(.instancesChecked([M.Seen(rank: 1, instance: "i-1", state: .preempted)]))
        #expect(Self.failure(actions) == AttemptFailure(kind: .instanceGone, node: 1, message: "instance i-1 is preempted"))
        #expect(Self.stop(actions)?.silent == [])
    }

    @Test("blame 4: of several failed nodes, the first to fail on the nodes' clocks, not its followers (NCCL/peer timeouts)")
    func blameFirstFailerNotFollowers() {
        var m = Self.running()
        // Node 0 timed out on its peer (later); node 1 failed first. A status without a time is last.
        Self.feed(&m, Self.pass(1, [Self.exited(0, .exited(1), endedAt: 20), Self.exited(1, .exited(3), endedAt: 10)]))
        #expect(m.receive(.instancesChecked([])) == [.pullLogs(only: [1]), .readErrorLine(node: 1)])
        m = Self.running()
        Self.feed(&m, Self.pass(1, [Self.exited(0, .exited(1), endedAt: nil), Self.exited(1, .exited(3), endedAt: 30)]))
        #expect(m.receive(.instancesChecked([])) == [.pullLogs(only: [1]), .readErrorLine(node: 1)])
    }

    @Test("blame 5: a node that answered is measured up to when the pass began to read (another node's slow read never counts against it)")
    func blameSilenceUpToReadsBegan() {
        var m = Self.running()
        _ = Self.quietPass(&m, 0, beat: 1)
        // Node 0's beat has not changed since t=0; the pass began at 29 but node 1's read took
        // until 45: node 0 is quiet for 29 s, not 45.
        let actions = Self.through(&m, Self.pass(45, [Self.agent(0, beat: 1), Self.agent(1, beat: 2)], began: 29))
        #expect(Self.failure(actions) == nil)
        #expect(actions.last == .sleep(.milliseconds(500)))
    }

    @Test("blame 6: one failed status read is a glitch; from the second in a row a node is silent up to now")
    func blameOneFailedReadIsAGlitch() {
        var m = Self.running()
        _ = Self.quietPass(&m, 0, beat: 1)
        // Node 1 does not answer: measured to the pass's start (29 s): not silent.
        #expect(Self.failure(Self.through(&m, Self.pass(45, [Self.agent(0, beat: 2)], began: 29))) == nil)
        // Again: now it counts to now (46 s).
        let actions = Self.through(&m, Self.pass(46, [Self.agent(0, beat: 3)], began: 29.5))
        #expect(Self.failure(actions) == AttemptFailure(kind: .heartbeat, node: 1, message: "node 1 (i-1) sent no heartbeat for 46 s"))
    }

    @Test("blame 7: of several silent nodes, the one silent longest (then the one whose reads fail), not the lowest rank")
    func blameLongestSilent() {
        var m = Self.running()
        _ = Self.quietPass(&m, 0, beat: 1)
        // Node 0 beat last at 5, node 1 at 0: both silent at 40; node 1 is the cause.
        #expect(Self.failure(Self.through(&m, Self.pass(5, [Self.agent(0, beat: 2), Self.agent(1, beat: 1)]))) == nil)
        #expect(Self.failure(Self.through(&m, Self.pass(40, [Self.agent(0, beat: 2), Self.agent(1, beat: 1)])))?.node == 1)
        // Equally silent: the one whose reads fail.
        m = Self.running()
        _ = Self.quietPass(&m, 0, beat: 1)
        #expect(Self.failure(Self.through(&m, Self.pass(1, [Self.agent(0, beat: 1)]))) == nil)
        #expect(Self.failure(Self.through(&m, Self.pass(2, [Self.agent(0, beat: 1)]))) == nil)
        let actions = Self.through(&m, Self.pass(31, [Self.agent(0, beat: 1)], began: 31))
        #expect(Self.failure(actions)?.node == 1)
        #expect(Self.failure(actions)?.kind == .heartbeat)
    }

    @Test("blame 8: an agent with no status after the start timeout: start-up failure if it printed something, else a lost node; before any silence")
    func blameAgentThatNeverStarted() {
        var settings = JobSettings()
        settings.describeSeconds = 1000
        var m = Self.running(settings: settings)
        Self.feed(&m, Self.pass(0, [Self.agent(0, beat: 1)]), .instancesChecked([]))
        #expect(m.receive(Self.pass(60, [Self.agent(0, beat: 2)])) == [.syncCheckpoints, .sleep(.milliseconds(500))])
        var said = m
        #expect(m.receive(Self.pass(60.5, [Self.agent(0, beat: 3)])) == [.readAgentOutput(node: 1)])
        #expect(Self.failure(m.receive(.agentSaid(nil))) == AttemptFailure(kind: .heartbeat, node: 1, message: "the agent on node 1 (i-1) did not start within 60 s"))
        Self.feed(&said, Self.pass(60.5, [Self.agent(0, beat: 3)]))
        let actions = said.receive(.agentSaid("python3: not found"))
        #expect(Self.failure(actions) == AttemptFailure(kind: .startup, node: 1, message: "the agent on node 1 (i-1) did not start within 60 s; it said: python3: not found"))
        #expect(Self.stop(actions)?.silent == [])
        // Node 0 silent for 61 s too: the agent that never started is still the one blamed.
        m = Self.running(settings: settings)
        Self.feed(&m, Self.pass(0, [Self.agent(0, beat: 1)]), .instancesChecked([]))
        #expect(m.receive(Self.pass(61, [Self.agent(0, beat: 1)])) == [.syncCheckpoints, .readAgentOutput(node: 1)])
    }

    @Test("blame 9: a node that cannot be reached to start its part is a lost node (replaced)")
    func blameUnreachableNodeAtStart() {
        var m = Self.machine()
        Self.feed(&m, .jobLoaded(.pending, attempt: 0), .clusterReady(missing: []), .attemptFound(nil, nil, sameNodes: false, at: Self.at(0)))
        let actions = m.receive(.nodeUnreachable(Self.attempt1, rank: 1, error: "ssh: connect timed out"))
        #expect(Self.failure(actions) == AttemptFailure(kind: .heartbeat, node: 1, message: "node 1 (i-1) could not be reached to start attempt 1: ssh: connect timed out"))
        #expect(Self.stop(actions)?.silent == [1])
        Self.feed(&m, .gangStopped(attemptFound: true))
        #expect(m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0)).last == .replaceNode(1))
    }

    @Test("blame 10: a rank that has not exited exitGrace after another finished is hung at exit")
    func blameHungAtExit() {
        var m = Self.running()
        #expect(Self.quietPass(&m, 0, beat: 1) == [.sleep(.milliseconds(100))])
        Self.feed(&m, Self.pass(1, [Self.exited(0, .exited(0)), Self.agent(1, beat: 2)]))
        #expect(m.receive(Self.pass(121, [Self.exited(0, .exited(0)), Self.agent(1, beat: 3)], began: 121)).last == .checkInstances)
        let notYet = m.receive(.instancesChecked([]))
        #expect(notYet == [.sleep(.milliseconds(500))])
        let actions = m.receive(Self.pass(121.5, [Self.exited(0, .exited(0)), Self.agent(1, beat: 4)]))
        #expect(Self.failure(actions) == AttemptFailure(kind: .hungAtExit, node: 1, message: "node 1 had not exited 120 s after the others finished"))
    }

    @Test("blame 11: a node that exited is never silent")
    func blameExitedNodeIsNeverSilent() {
        var m = Self.running()
        _ = Self.quietPass(&m, 0, beat: 1)
        // Node 0 exited 0 at t=0 and beats no more; node 1 still runs. At t=100: no heartbeat failure.
        let actions = Self.quietPassWith(&m, 100, [Self.exited(0, .exited(0)), Self.agent(1, beat: 2)])
        #expect(Self.failure(actions) == nil)
    }

    /// Feeds `e`, and when the machine asks about the instances, answers that none is gone.
    static func through(_ m: inout M, _ e: M.Event) -> [Action] {
        var actions = m.receive(e)
        if actions.last == .checkInstances { actions += m.receive(.instancesChecked([])) }
        return actions
    }

    static func quietPassWith(_ m: inout M, _ s: Double, _ answers: [AgentStatus]) -> [Action] {
        let actions = m.receive(pass(s, answers))
        if actions.last == .checkInstances { return m.receive(.instancesChecked([])) }
        return actions
    }

    @Test("blame 12: what a node's final status says: corrupt checkpoint, start-up, agent, worker signal, signal, 128+N, command")
    func blameExitClassification() {
        func kind(_ edit: (inout AgentStatus) -> Void) -> AttemptFailure {
            var s = Self.exited(0, .exited(1))
            edit(&s)
            return M.failure(of: s, node: 0)
        }
        #expect(kind { $0.corruptCheckpoint = CorruptCheckpoint(step: 4, reason: "r") }.kind == .corruptCheckpoint)
        #expect(kind { $0.endedIn = AgentStatus.startPhase; $0.failure = "no credentials" }.kind == .startup)
        #expect(kind { $0.exit = nil; $0.failure = "upload failed" } == AttemptFailure(kind: .agent, node: 0, message: "upload failed"))
        #expect(kind { $0.workerSignal = 9 }.kind == .signal)
        #expect(kind { $0.exit = .signaled(9) }.kind == .signal)
        #expect(kind { $0.exit = .exited(137) } == AttemptFailure(kind: .signal, node: 0, exit: .exited(137), message: "the command on node 0 ended with 137 (signal 9)"))
        #expect(kind { $0.exit = .exited(2) } == AttemptFailure(kind: .command, node: 0, exit: .exited(2), message: "the command on node 0 ended with exit code 2"))
        #expect(kind { $0.exit = .exited(2); $0.endedIn = "setup" }.message == "setup on node 0 ended with exit code 2")
        #expect(kind { $0.exit = nil } == AttemptFailure(kind: .agent, node: 0, message: "the agent on node 0 ended without a result"))
        // Only a command failure quotes the log's error line.
        var m = Self.running()
        Self.feed(&m, Self.pass(1, [Self.exited(0, .signaled(9)), Self.agent(1, beat: 1)]))
        #expect(Self.failure(m.receive(.instancesChecked([])))?.kind == .signal)
    }

    @Test("blame 13: which instance states count as gone")
    func blameGoneInstanceStates() {
        for state in Instance.State.allCases {
            let gone = M.goneFailure([M.Seen(rank: 0, instance: "i-0", state: state)]) != nil
            #expect(gone == [.terminated, .preempted, .failed, .stopped].contains(state), "\(state)")
        }
        #expect(M.goneFailure([M.Seen(rank: 0, instance: "i-0", state: nil)])?.message == "instance i-0 is gone (the provider no longer lists it)")
        // The first gone node in the order checked.
        let both = M.goneFailure([M.Seen(rank: 1, instance: "i-1", state: .failed), M.Seen(rank: 0, instance: "i-0", state: .terminated), M.Seen(rank: 2, instance: "i-2", state: .running)])
        #expect(both?.node == 1 && both?.alsoGone == [0] && both?.message == "instance i-1 is failed (and node(s) 0 too)")
        // Every node seen gone gets new capacity before the restart (a Slurm allocation cancelled
        // from outside takes all of them at once).
        #expect(RestartPolicy.decide(failure: both!, previous: nil, progressed: true, restartsUsed: 0, maxRestarts: 3) == .restart(replace: [1, 0]))
    }

    @Test("blame 14: the periodic instance check blames a gone instance while every agent looks fine")
    func blamePeriodicGoneInstance() {
        var m = Self.running()
        _ = Self.quietPass(&m, 0, beat: 1)
        #expect(m.receive(Self.pass(5, [Self.agent(0, beat: 2), Self.agent(1, beat: 2)])) == [.syncCheckpoints, .checkInstances])
        let actions = m.receive(.instancesChecked([M.Seen(rank: 0, instance: "i-0", state: .terminated)]))
        #expect(Self.failure(actions) == AttemptFailure(kind: .instanceGone, node: 0, message: "instance i-0 is terminated"))
        #expect(Self.stop(actions)?.silent == [])
    }

    // MARK: - Cancel

    @Test("cancel at the top of the loop: the current attempt is stopped and closed, the job is cancelled")
    func cancelAtTop() {
        var m = Self.machine()
        #expect(m.receive(.jobLoaded(.cancelling, attempt: 3)) == [.stopGang(M.StopGang(reason: .cancel, attempt: 3, waitAtMost: .seconds(50)))])
        #expect(m.receive(.gangStopped(attemptFound: true)) == [.closeAttempt(3, .stopped, nil), .finish(.cancelled, "Cancelled.", error: nil)])
        #expect(m.phase == .finished(.cancelled))
        m = Self.machine()
        Self.feed(&m, .jobLoaded(.cancelling, attempt: 0))
        #expect(m.receive(.gangStopped(attemptFound: false)) == [.finish(.cancelled, "Cancelled.", error: nil)])
    }

    @Test("cancel in every phase: acted on at once while running, or when a launch gives up for it (provisioning, restarting), at the next top of the loop elsewhere")
    func cancelInEveryPhase() {
        func cancelsAtTop(_ m: inout M) {
            #expect(m.receive(.jobLoaded(.cancelling, attempt: 1)).first.map { if case .stopGang(let s) = $0 { s.reason == .cancel } else { false } } == true)
            #expect(m.receive(.gangStopped(attemptFound: true)).last == .finish(.cancelled, "Cancelled.", error: nil))
        }
        // running: the pass that sees it goes back to the top.
        var m = Self.running()
        #expect(m.receive(.cancelRequested) == [.loadJob])
        cancelsAtTop(&m)
        // provisioning: a launch that gave up waiting (an allocation queued for hours) because
        // the job was cancelled answers with the cancel: back to the top.
        m = Self.machine()
        Self.feed(&m, .jobLoaded(.pending, attempt: 0))
        #expect(m.phase.kind == .provisioning)
        #expect(m.receive(.cancelRequested) == [.loadJob])
        cancelsAtTop(&m)
        // starting the gang
        m = Self.machine()
        Self.feed(&m, .jobLoaded(.pending, attempt: 0), .clusterReady(missing: []))
        #expect(m.receive(.cancelRequested) == [])
        #expect(m.phase == .startingGang)
        // stopping after a failure, then restarting: the restart is decided, then the top cancels.
        m = Self.lost(0)
        #expect(m.receive(.cancelRequested) == [])
        #expect(m.phase.kind == .stopping)
        Self.feed(&m, .gangStopped(attemptFound: true))
        #expect(m.phase.kind == .restarting)
        Self.feed(&m, .restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0))
        #expect(m.phase.kind == .restarting)
        // The replacement gave up for the cancel.
        #expect(m.receive(.cancelRequested) == [.loadJob])
        #expect(m.phase == .idle)
        cancelsAtTop(&m)
        // finished: nothing.
        m = Self.machine()
        Self.feed(&m, .jobLoaded(.succeeded, attempt: 1))
        #expect(m.receive(.cancelRequested) == [])
        #expect(m.phase == .finished(.succeeded))
    }

    // MARK: - maxDuration

    @Test("maxDuration: a pass past the budget goes to the top of the loop, which stops the gang like a cancel; the job fails saying how long it ran and the last checkpoint")
    func maxDurationWhileRunning() {
        var m = Self.running(maxDuration: .seconds(60))
        // Within the budget: passes go on.
        #expect(Self.quietPass(&m, 30, beat: 2).last == .sleep(.milliseconds(500)))
        // At the budget (60 s after the attempt started): back to the top.
        #expect(Self.quietPass(&m, 60, beat: 3) == [.loadJob])
        #expect(m.phase == .idle)
        // The record's startedAt says 61 s, but the budget began with the first start the
        // machine saw: the ran-for figure is the machine's own.
        #expect(m.receive(.jobLoaded(.running, attempt: 1, ranFor: .seconds(1), at: Self.at(62))) == [
            .setStatus(.running, "maxDuration 1m reached after 1m 2s; stopping the gang (SIGTERM: the command may write a final checkpoint)."),
            .stopGang(M.StopGang(reason: .maxDuration, attempt: 1, waitAtMost: .seconds(50))),
        ])
        #expect(m.phase.kind == .stopping)
        #expect(m.receive(.gangStopped(attemptFound: true)) == [.closeAttempt(1, .stopped, nil), .loadLatestCheckpoint])
        #expect(m.phase == .expiring)
        let message = "maxDuration 1m reached: the job ran 1m 2s since its first start (restarts included) and was stopped; the last checkpoint is step 40, kept in the bucket."
        #expect(m.receive(.latestCheckpoint(40)) == [.finish(.failed, message, error: message)])
        #expect(m.phase == .finished(.failed))
    }

    @Test("maxDuration at the top of the loop: a job adopted past its budget is stopped at once (no attempt left to stop: nothing closed); no checkpoint is said so")
    func maxDurationAtTop() {
        var m = Self.machine(maxDuration: .seconds(7200))
        #expect(m.receive(.jobLoaded(.restarting, attempt: 2, ranFor: .seconds(3 * 3600), at: Self.at(0))) == [
            .setStatus(.restarting, "maxDuration 2h reached after 3h; stopping the gang (SIGTERM: the command may write a final checkpoint)."),
            .stopGang(M.StopGang(reason: .maxDuration, attempt: 2, waitAtMost: .seconds(50))),
        ])
        #expect(m.receive(.gangStopped(attemptFound: false)) == [.loadLatestCheckpoint])
        let message = "maxDuration 2h reached: the job ran 3h since its first start (restarts included) and was stopped; no checkpoint was written."
        #expect(m.receive(.latestCheckpoint(nil)) == [.finish(.failed, message, error: message)])
        // A job that never started has spent nothing of its budget; one started within it goes on.
        m = Self.machine(maxDuration: .seconds(60))
        #expect(m.receive(.jobLoaded(.pending, attempt: 0, ranFor: nil, at: Self.at(1000))) == [.ensureCluster])
        m = Self.machine(maxDuration: .seconds(60))
        #expect(m.receive(.jobLoaded(.running, attempt: 1, ranFor: .seconds(59), at: Self.at(0))) == [.ensureCluster])
        // Without maxDuration, no budget.
        m = Self.machine()
        #expect(m.receive(.jobLoaded(.running, attempt: 1, ranFor: .seconds(1e7), at: Self.at(0))) == [.ensureCluster])
    }

    @Test("maxDuration counts restarts: the budget runs from the first start, through a failed attempt and its restart")
    func maxDurationAcrossRestarts() {
        var m = Self.running(maxDuration: .seconds(60))
        // Attempt 1 fails at 40 s; the gang stops, the restart is decided, back to the top.
        Self.feed(&m, Self.pass(40, [Self.exited(0, .signaled(9), endedAt: 40), Self.agent(1, beat: 1)]), .instancesChecked([]))
        Self.feed(&m, .gangStopped(attemptFound: true), .restartFacts(latestCheckpoint: 10, previous: nil, restartsUsed: 0))
        #expect(m.phase == .idle)
        // 45 s in: still within the budget, so attempt 2 starts.
        #expect(m.receive(.jobLoaded(.restarting, attempt: 1, ranFor: .seconds(45), at: Self.at(45))) == [.ensureCluster])
        Self.feed(&m, .clusterReady(missing: []), .attemptFound(Self.attempt1, .failed, sameNodes: true, at: Self.at(46)))
        let a2 = M.Attempt(number: 2, nodes: Self.ids, resumeStep: 10)
        Self.feed(&m, .attemptStarted(a2, masterAddress: "a", port: 1, reason: "r", at: Self.at(47)))
        // 60 s after the first start (not 60 s after attempt 2's): out of time.
        #expect(Self.quietPass(&m, 59, beat: 1).last == .sleep(.milliseconds(500)))
        #expect(Self.quietPass(&m, 60, beat: 2) == [.loadJob])
        #expect(m.receive(.jobLoaded(.running, attempt: 2, ranFor: .seconds(60), at: Self.at(61))).last == .stopGang(M.StopGang(reason: .maxDuration, attempt: 2, waitAtMost: .seconds(50))))
    }

    @Test("maxDuration: a job that succeeds in the pass that reaches the budget succeeds; a failure found in it is blamed first")
    func maxDurationLosesToTheEnd() {
        var m = Self.running(maxDuration: .seconds(60))
        let done = m.receive(Self.pass(70, [Self.exited(0, .exited(0)), Self.exited(1, .exited(0))]))
        #expect(done.last == .checkInstances)
        #expect(m.receive(.instancesChecked([])).last == .finish(.succeeded, "Succeeded in attempt 1.", error: nil))
        m = Self.running(maxDuration: .seconds(60))
        let failed = m.receive(Self.pass(70, [Self.exited(0, .exited(3), endedAt: 69), Self.agent(1, beat: 1)]))
        #expect(failed.last == .checkInstances)
        #expect(m.receive(.instancesChecked([])).last == .readErrorLine(node: 0))
    }

    // MARK: - Invariants

    @Test("a request is always the last action of a batch, and a batch that ends the job ends with it")
    func requestsLast() {
        var batches: [[Action]] = []
        var m = Self.running()
        batches.append(m.receive(Self.pass(1, [Self.exited(0, .exited(3), endedAt: 1), Self.agent(1, beat: 1)])))
        batches.append(m.receive(.instancesChecked([])))
        batches.append(m.receive(.errorLine(nil)))
        batches.append(m.receive(.gangStopped(attemptFound: true)))
        batches.append(m.receive(.restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0)))
        for (phase, event) in Self.pairs() {
            var f = Self.fixture(phase, event)
            batches.append(f.receive(Self.sample(event)))
        }
        for b in batches {
            #expect(b.dropLast().allSatisfy { !$0.isRequest && !$0.isEnd }, "\(b)")
        }
    }

    static func pairs() -> [(M.Phase.Kind, M.Event.Kind)] {
        M.Phase.Kind.allCases.flatMap { p in M.Event.Kind.allCases.map { (p, $0) } }
    }

    /// A representative event of each kind.
    static func sample(_ kind: M.Event.Kind) -> M.Event {
        switch kind {
        case .jobLoaded: .jobLoaded(.running, attempt: 1)
        case .bucketUnavailable: .bucketUnavailable("no bucket")
        case .clusterNeedsProvisioning: .clusterNeedsProvisioning(cluster: "c", nodes: 2, gpu: nil)
        case .clusterReady: .clusterReady(missing: [])
        case .nodeReplaced: .nodeReplaced(1)
        case .replacementUnavailable: .replacementUnavailable(node: 1, reason: "no capacity")
        case .gangMoved: .gangMoved
        case .attemptFound: .attemptFound(nil, nil, sameNodes: false, at: at(0))
        case .attemptStarted: .attemptStarted(attempt1, masterAddress: "a", port: 1, reason: "r", at: at(0))
        case .nodeUnreachable: .nodeUnreachable(attempt1, rank: 1, error: "x")
        case .cannotGoOn: .cannotGoOn("x")
        case .cancelRequested: .cancelRequested
        case .observed: pass(1, [agent(0, beat: 1), agent(1, beat: 1)])
        case .instancesChecked: .instancesChecked([])
        case .errorLine: .errorLine(nil)
        case .agentSaid: .agentSaid(nil)
        case .woke: .woke(at: at(1))
        case .gangStopped: .gangStopped(attemptFound: true)
        case .restartFacts: .restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0)
        case .latestCheckpoint: .latestCheckpoint(30)
        }
    }

    /// A machine in `phase`, set up for an event of kind `event` (a running machine waits for
    /// what that event answers; a restarting one has decided when the event is a replacement's).
    static func fixture(_ phase: M.Phase.Kind, _ event: M.Event.Kind) -> M {
        var m = machine()
        switch phase {
        case .idle: break
        case .provisioning: feed(&m, .jobLoaded(.pending, attempt: 0), .clusterReady(missing: [1]))
        case .startingGang: feed(&m, .jobLoaded(.pending, attempt: 0), .clusterReady(missing: []))
        case .running:
            m = running()
            switch event {
            case .instancesChecked: feed(&m, pass(0, [agent(0, beat: 1), agent(1, beat: 1)]))
            case .errorLine: feed(&m, pass(0, [exited(0, .exited(1)), agent(1, beat: 1)]), .instancesChecked([]))
            case .agentSaid: feed(&m, pass(61, [agent(0, beat: 1)]))
            default: break
            }
        case .stopping:
            m = lost(1)
        case .restarting:
            m = lost(1)
            feed(&m, .gangStopped(attemptFound: true))
            if event != .restartFacts { feed(&m, .restartFacts(latestCheckpoint: nil, previous: nil, restartsUsed: 0)) }
        case .expiring:
            m = machine(maxDuration: .seconds(60))
            feed(&m, .jobLoaded(.running, attempt: 1, ranFor: .seconds(61), at: at(0)), .gangStopped(attemptFound: true))
        case .finished: feed(&m, .bucketUnavailable("x"))
        }
        #expect(m.phase.kind == phase)
        return m
    }

    @Test("every (phase × event) pair is handled or explicitly ignored")
    func everyPair() {
        var handled: [String] = []
        for (phase, event) in Self.pairs() {
            var m = Self.fixture(phase, event)
            let before = m.phase
            let actions = m.receive(Self.sample(event))
            let acted = !actions.isEmpty || m.phase != before
            if M.ignores(phase, event) {
                #expect(!acted, "\(phase) × \(event) is listed as ignored but acts: \(actions)")
            } else {
                #expect(acted, "\(phase) × \(event) is neither handled nor listed as ignored")
                handled.append("\(phase) × \(event) -> \(m.phase.kind)")
            }
        }
        let total = M.Phase.Kind.allCases.count * M.Event.Kind.allCases.count
        print("JobLifecycle: \(handled.count) handled transitions of \(total) (phase × event) pairs; \(total - handled.count) explicitly ignored")
        for h in handled { print("  \(h)") }
        #expect(handled.count == 27)
    }
}
