import CapstanCore
import CapstanSQLite
import Foundation
import Testing

@Suite("What a job has cost")
struct JobCostTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func record(_ id: String, cluster: String, price: Double?, from: TimeInterval, to: TimeInterval?) -> InstanceRecord {
        let instance = Instance(id: id, provider: "sim", instanceType: "x", region: "r", state: to == nil ? .running : .terminated, pricePerHour: price, launchedAt: t0.addingTimeInterval(from))
        var r = InstanceRecord(instance: instance, clusterID: cluster, intentKey: "k-\(id)", now: t0.addingTimeInterval(from))
        r.terminatedAt = to.map { t0.addingTimeInterval($0) }
        return r
    }

    func job(owns: Bool, created: TimeInterval, started: TimeInterval?, finished: TimeInterval?, cluster: String = "c") -> JobRecord {
        var j = JobRecord(id: "job-1", name: "j", spec: "", specFolder: "", settings: "", clusterName: cluster, ownsCluster: owns, storage: "", createdAt: t0.addingTimeInterval(created))
        j.startedAt = started.map { t0.addingTimeInterval($0) }
        j.finishedAt = finished.map { t0.addingTimeInterval($0) }
        return j
    }

    @Test("a job on its own cluster pays every node from its creation to its end, replaced nodes for their own lives")
    func ownCluster() {
        // Two nodes at $3.60/h ($0.001/s), one replaced after 1,000 s by a third; job 0…3,600 s.
        let j = job(owns: true, created: 0, started: 100, finished: 3600)
        let rs = [
            record("a", cluster: "c1", price: 3.6, from: 10, to: 3700),
            record("b", cluster: "c1", price: 3.6, from: 10, to: 1000),
            record("c", cluster: "c1", price: 3.6, from: 1100, to: nil),
        ]
        let cost = JobCost.cost(j, instances: rs, now: t0.addingTimeInterval(9999))
        // a: 10…3,600 = 3,590 s; b: 10…1,000 = 990 s; c: 1,100…3,600 = 2,500 s.
        #expect(abs(cost - (3590 + 990 + 2500) * 0.001) < 1e-9)
    }

    @Test("a job on a shared cluster pays from when it started running; a running job up to now; unpriced nodes are free")
    func sharedAndRunning() {
        let j = job(owns: false, created: 0, started: 500, finished: nil)
        let rs = [record("a", cluster: "c1", price: 7.2, from: 0, to: nil), record("free", cluster: "c1", price: nil, from: 0, to: nil)]
        let cost = JobCost.cost(j, instances: rs, now: t0.addingTimeInterval(1500))
        #expect(abs(cost - 1000 * 0.002) < 1e-9)
        // Not started (shared): nothing, running or failed before it ran.
        #expect(JobCost.cost(job(owns: false, created: 0, started: nil, finished: nil), instances: rs, now: t0.addingTimeInterval(1000)) == 0)
        #expect(JobCost.cost(job(owns: false, created: 0, started: nil, finished: 900), instances: rs, now: t0.addingTimeInterval(1000)) == 0)
        // Its own cluster's nodes are the job's from its creation, started or not.
        #expect(JobCost.cost(job(owns: true, created: 0, started: nil, finished: nil), instances: rs, now: t0.addingTimeInterval(1000)) > 0)
    }

    @Test("the job's cluster is the one of its name alive in its window, not an older or newer cluster of that name")
    func clusterByNameAndTime() {
        var old = Cluster(id: "old", name: "c", request: ResourceRequest(nodes: 1), createdAt: t0.addingTimeInterval(-5000))
        old.terminatedAt = t0.addingTimeInterval(-4000)
        let mine = Cluster(id: "mine", name: "c", request: ResourceRequest(nodes: 1), createdAt: t0.addingTimeInterval(5))
        let other = Cluster(id: "other", name: "d", request: ResourceRequest(nodes: 1), createdAt: t0)
        var j = job(owns: true, created: 0, started: 10, finished: 100)
        #expect(JobCost.clusters(of: j, in: [old, mine, other], now: t0.addingTimeInterval(200)).map(\.id) == ["mine"])
        let newer = Cluster(id: "newer", name: "c", request: ResourceRequest(nodes: 1), createdAt: t0.addingTimeInterval(150))
        #expect(JobCost.clusters(of: j, in: [mine, newer], now: t0.addingTimeInterval(200)).map(\.id) == ["mine"])
        j.finishedAt = nil
        #expect(Set(JobCost.clusters(of: j, in: [mine, newer], now: t0.addingTimeInterval(200)).map(\.id)) == ["mine", "newer"])
    }

    @Test("jobCosts reads a store: each job's cost by id, in two reads")
    func fromTheStore() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("state/capstan.db"))
        let now = Date()
        let c = Cluster(name: "shared", request: ResourceRequest(nodes: 1), createdAt: now.addingTimeInterval(-7200))
        try await store.insert(c)
        let node = Instance(id: "n1", provider: "sim", instanceType: "x", region: "r", state: .running, pricePerHour: 36, launchedAt: now.addingTimeInterval(-7200))
        _ = try await store.record(node, clusterID: c.id, intentKey: "k")
        var a = JobRecord(id: "job-a", name: "a", spec: "", specFolder: "", settings: "", clusterName: "shared", ownsCluster: false, storage: "", createdAt: now.addingTimeInterval(-3600))
        a.startedAt = now.addingTimeInterval(-3600)
        a.finishedAt = now.addingTimeInterval(-1800)
        let b = JobRecord(id: "job-b", name: "b", spec: "", specFolder: "", settings: "", clusterName: "elsewhere", ownsCluster: true, storage: "", createdAt: now)
        let costs = try await store.jobCosts([a, b], now: now)
        #expect(abs(costs["job-a"]! - 18) < 0.01)
        #expect(costs["job-b"] == 0)
        #expect(try await store.jobCosts([], now: now).isEmpty)
    }
}
