import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanTrainer
import Testing

@Suite("Restart policy")
struct RestartPolicyTests {
    func command(_ code: Int32, node: Int = 1) -> AttemptFailure { AttemptFailure(kind: .command, node: node, exit: .exited(code), message: "exit \(code)") }

    @Test("a lost node is replaced, then the gang restarts")
    func lostNode() {
        let f = AttemptFailure(kind: .heartbeat, node: 1, message: "no heartbeat")
        #expect(RestartPolicy.decide(failure: f, previous: nil, progressed: false, restartsUsed: 0, maxRestarts: 3) == .restart(replace: [1]))
        let gone = AttemptFailure(kind: .instanceGone, node: 0, message: "preempted")
        #expect(RestartPolicy.decide(failure: gone, previous: gone, progressed: false, restartsUsed: 2, maxRestarts: 3) == .restart(replace: [0]))
    }

    @Test("a killed worker or a hung rank restarts on the same nodes")
    func sameNodes() {
        for kind in [AttemptFailure.Kind.signal, .hungAtExit, .agent] {
            let f = AttemptFailure(kind: kind, node: 1, message: "x")
            #expect(RestartPolicy.decide(failure: f, previous: f, progressed: false, restartsUsed: 0, maxRestarts: 3) == .restart(replace: []))
        }
    }

    @Test("a command failure is retried once; the same failure without progress is a user error")
    func userError() {
        #expect(RestartPolicy.decide(failure: command(3), previous: nil, progressed: false, restartsUsed: 0, maxRestarts: 3) == .restart(replace: []))
        guard case .giveUp(let why) = RestartPolicy.decide(failure: command(3), previous: command(3), progressed: false, restartsUsed: 1, maxRestarts: 3) else {
            Issue.record("expected give up"); return
        }
        #expect(why.contains("same way twice"))
        // Progress in between, or a different failure: it is not the same bug again.
        #expect(RestartPolicy.decide(failure: command(3), previous: command(3), progressed: true, restartsUsed: 1, maxRestarts: 3) == .restart(replace: []))
        #expect(RestartPolicy.decide(failure: command(3), previous: command(1), progressed: false, restartsUsed: 1, maxRestarts: 3) == .restart(replace: []))
        let sig = AttemptFailure(kind: .signal, node: 1, exit: .exited(1), message: "killed")
        #expect(RestartPolicy.decide(failure: command(1), previous: sig, progressed: false, restartsUsed: 1, maxRestarts: 3) == .restart(replace: []))
    }

    @Test("restarts are bounded by maxRestarts")
    func bounded() {
        let f = AttemptFailure(kind: .signal, node: 0, message: "x")
        #expect(RestartPolicy.decide(failure: f, previous: nil, progressed: true, restartsUsed: 2, maxRestarts: 3) == .restart(replace: []))
        guard case .giveUp(let why) = RestartPolicy.decide(failure: f, previous: nil, progressed: true, restartsUsed: 3, maxRestarts: 3) else {
            Issue.record("expected give up"); return
        }
        #expect(why.contains("3 restart(s)"))
        if case .restart = RestartPolicy.decide(failure: f, previous: nil, progressed: true, restartsUsed: 0, maxRestarts: 0) { Issue.record("maxRestarts 0 must not restart") }
    }

    @Test("a corrupt checkpoint restarts (from an older one) whatever restarts are left, and does not count as one")
    func corruptCheckpoint() {
        let f = AttemptFailure(kind: .corruptCheckpoint, node: 0, message: "checkpoint step 30 is corrupt")
        #expect(RestartPolicy.decide(failure: f, previous: f, progressed: false, restartsUsed: 3, maxRestarts: 3) == .restart(replace: []))
        #expect(!f.countsAsRestart && AttemptFailure(kind: .agent, node: 0, message: "x").countsAsRestart)
    }

    @Test("an agent that cannot start is retried once; the same start-up error twice ends the job")
    func startup() {
        let f = AttemptFailure(kind: .startup, node: 0, message: "cannot write to the bucket: AccessDenied")
        #expect(RestartPolicy.decide(failure: f, previous: nil, progressed: false, restartsUsed: 0, maxRestarts: 3) == .restart(replace: []))
        guard case .giveUp(let why) = RestartPolicy.decide(failure: f, previous: f, progressed: false, restartsUsed: 1, maxRestarts: 3) else {
            Issue.record("expected give up"); return
        }
        #expect(why.contains("AccessDenied") && why.contains("twice"))
        let other = AttemptFailure(kind: .startup, node: 0, message: "bucket unreachable")
        #expect(RestartPolicy.decide(failure: other, previous: f, progressed: false, restartsUsed: 1, maxRestarts: 3) == .restart(replace: []))
    }

    @Test("torchrun's failure summary names the signal that killed a worker")
    func torchrunSummary() {
        let log = """
            torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
            ============================================================
            train.py FAILED
            ------------------------------------------------------------
            Root Cause (first observed failure):
            [0]:
              time      : 2026-11-27_11:10:38
              rank      : 1 (local_rank: 0)
              exitcode  : -9 (pid: 27185)
              traceback : Signal 9 (SIGKILL) received by PID 27185
            """
        #expect(NodeAgent.workerSignal(inLogTail: log) == 9)
        #expect(NodeAgent.workerSignal(inLogTail: "Root Cause\n  exitcode  : 1 (pid: 3)\n") == nil)
        #expect(NodeAgent.workerSignal(inLogTail: "Traceback: ValueError\nexitcode : -9") == nil)
    }

    @Test("exit statuses round-trip through the shell convention")
    func exitCodes() {
        #expect(ExitStatus.signaled(9).code == 137)
        #expect(ExitStatus.fromCode(137) == .signaled(9))
        #expect(ExitStatus.fromCode(3) == .exited(3))
        #expect(ExitStatus.exited(0).succeeded)
    }
}
