import CapstanCore
import Foundation
import Testing

/// Autostop's decision, ``IdlePolicy``: clusters, jobs and `now` in, idle clusters out.
@Suite("Idle policy")
struct IdlePolicyTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    static func at(_ minutes: Double) -> Date { t0.addingTimeInterval(minutes * 60) }

    static func cluster(_ name: String, idle: Int?, ready: Double? = 0, status: ClusterStatus = .running, created: Double = -5) -> Cluster {
        var c = Cluster(name: name, request: ResourceRequest(), createdAt: at(created))
        c.status = status
        c.readyAt = ready.map(at)
        c.idleMinutes = idle
        return c
    }

    static func job(_ id: String, on cluster: String, _ status: JobStatus, finished: Double? = nil) -> JobRecord {
        var j = JobRecord(id: id, name: id, spec: "", specFolder: "", settings: "", clusterName: cluster, ownsCluster: false, storage: "", createdAt: at(0))
        j.status = status
        j.finishedAt = finished.map(at)
        return j
    }

    @Test("a cluster is idle from when it became ready, and goes once idle for its limit")
    func fromReady() {
        let c = Self.cluster("a", idle: 30)
        #expect(IdlePolicy.idleSince(c, jobs: []) == Self.at(0))
        #expect(IdlePolicy.idleClusters([c], jobs: [], now: Self.at(29.9)).isEmpty)
        #expect(IdlePolicy.idleClusters([c], jobs: [], now: Self.at(30)) == [IdlePolicy.Idle(cluster: "a", limitMinutes: 30, since: Self.at(0), idleFor: 1800)])
    }

    @Test("idle since the later of readyAt and the last job's end on it; other clusters' jobs do not count")
    func fromLastJob() {
        let c = Self.cluster("a", idle: 10)
        let jobs = [Self.job("j1", on: "a", .succeeded, finished: 20), Self.job("j2", on: "a", .failed, finished: 45), Self.job("j3", on: "b", .cancelled, finished: 100)]
        #expect(IdlePolicy.idleSince(c, jobs: jobs) == Self.at(45))
        #expect(IdlePolicy.idleClusters([c], jobs: jobs, now: Self.at(54)).isEmpty)
        #expect(IdlePolicy.idleClusters([c], jobs: jobs, now: Self.at(55)).map(\.cluster) == ["a"])
        // A job that ended before this cluster (an older cluster of the same name) is not its.
        let old = [Self.job("j0", on: "a", .succeeded, finished: -60)]
        #expect(IdlePolicy.idleSince(c, jobs: old) == Self.at(0))
    }

    @Test("a cluster with an unfinished job is never idle, in any of the job's unfinished states", arguments: JobStatus.allCases.filter { !$0.isFinished })
    func unfinishedJob(status: JobStatus) {
        let c = Self.cluster("a", idle: 1)
        let jobs = [Self.job("old", on: "a", .succeeded, finished: 1), Self.job("now", on: "a", status)]
        #expect(IdlePolicy.idleSince(c, jobs: jobs) == nil)
        #expect(IdlePolicy.idleClusters([c], jobs: jobs, now: Self.at(10_000)).isEmpty)
    }

    @Test("only running clusters with a limit are considered; the answer is sorted by name")
    func which() {
        let clusters = [
            Self.cluster("c", idle: 5), Self.cluster("a", idle: 5),
            Self.cluster("nolimit", idle: nil),
            Self.cluster("zero", idle: 0),
            Self.cluster("provisioning", idle: 5, ready: nil, status: .provisioning),
            Self.cluster("terminating", idle: 5, status: .terminating),
            Self.cluster("terminated", idle: 5, status: .terminated),
        ]
        #expect(IdlePolicy.idleClusters(clusters, jobs: [], now: Self.at(60)).map(\.cluster) == ["a", "c"])
    }
}
