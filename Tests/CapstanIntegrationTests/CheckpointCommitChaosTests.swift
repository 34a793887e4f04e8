import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTrainer
import Foundation
import Testing

extension JobTests {
    /// The checkpoint commit's fault points, on a real 2-node torch.distributed job: the leader's
    /// agent killed with every part in and no manifest yet (`agent-commit`), and the controller
    /// killed between recording a checkpoint and updating the job (`controller-checkpoint`).
    /// Afterwards no checkpoint is lost, none is recorded that does not verify, and the job's
    /// latest checkpoint is the newest in the bucket.
    @Suite("Checkpoint commit under kill -9", .serialized)
    struct CheckpointCommitChaosTests {
        /// Every recorded checkpoint verifies in the bucket; the bucket's newest is the job's latest.
        func checkAgreement(_ home: JobHome, job: JobRecord, sourceLocation: SourceLocation = #_sourceLocation) async throws {
            let bucket = CheckpointStore(store: try FileObjectStore(location: job.storage), prefix: "checkpoints")
            let inBucket = try await bucket.committedSteps()
            var verified: [Int] = []
            for s in inBucket where try await bucket.verified(step: s) != nil { verified.append(s) }
            let recorded = try await home.store().checkpoints(job: job.id).filter { !$0.deleted }.map(\.step)
            #expect(Set(recorded).isSubset(of: Set(verified)), "recorded but not verifying: \(Set(recorded).subtracting(verified).sorted())", sourceLocation: sourceLocation)
            #expect(Set(verified).isSubset(of: Set(recorded)), "in the bucket but not recorded: \(Set(verified).subtracting(recorded).sorted())", sourceLocation: sourceLocation)
            #expect(job.latestCheckpoint == verified.max(), "latest \(job.latestCheckpoint.map(String.init) ?? "none"), bucket's newest \(verified.max().map(String.init) ?? "none")", sourceLocation: sourceLocation)
        }

        @Test("the leader's agent killed with step 20's parts all in and no manifest: step 20 is committed anyway and the job resumes from it or later")
        func leaderKilledMidCommit() async throws {
            let home = try JobHome(steps: 60, every: 10, pause: 0.1)
            defer { home.dir.cleanup() }
            let r = try await home.capstan(["launch", home.spec, "--quiet"] + JobHome.fast, env: ["CAPSTAN_TEST_CRASH_AT": "agent-commit:2"])
            #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
            let job = try await #require(try home.job())
            #expect(job.status == .succeeded)
            let attempts = try await home.store().attempts(job: job.id)
            #expect(attempts.count == 2, "the leader's death ends attempt 1")
            #expect((attempts.last?.resumeStep ?? -1) >= 20, "resumed from \(attempts.last?.resumeStep.map(String.init) ?? "scratch"): step 20 was lost")
            // The controller committed what the leader could not (retention may since have
            // removed step 20 from the bucket).
            let events = try await home.store().events(job: job.id).map(\.message)
            #expect(events.contains { $0.hasPrefix("Checkpoint step 20 had every part but no manifest; committed it") }, "\(events)")
            try await checkAgreement(home, job: job)
            _ = try await home.checkContinuity(job: job, total: 60)
            #expect(try await home.liveNodes().isEmpty)
        }

        @Test("the controller killed between recording a checkpoint and updating the job: a re-attached controller finishes it, the records agree")
        func controllerKilledMidRecord() async throws {
            let home = try JobHome(steps: 80, every: 10, pause: 0.1)
            defer { home.dir.cleanup() }
            let r = try await home.capstan(["launch", home.spec, "--quiet"] + JobHome.fast, env: ["CAPSTAN_TEST_CRASH_AT": "controller-checkpoint:2"])
            #expect(r.status == 9, "the controller was not killed: \(r.stderr)")
            let stale = try await #require(try home.job())
            #expect(stale.latestCheckpoint == 10, "the kill came after step 20 was recorded and before the job said so")
            // The agents go on; the next command re-attaches a controller.
            let jobs = try await home.capstan(["jobs"])
            #expect(jobs.status == 0, "\(jobs.stderr)")
            #expect(try await home.wait(timeout: 180) { try await home.job()?.status.isFinished == true }, "\(home.logTail(job: stale.id))")
            let job = try await #require(try home.job())
            #expect(job.status == .succeeded, "\(job.lastError ?? "")")
            await #expect(try home.store().attempts(job: job.id).count == 1, "the agents never stopped; no restart was needed")
            try await checkAgreement(home, job: job)
            #expect(try await home.liveNodes().isEmpty)
        }
    }
}
