// capstan-bench scale: the state store with many clusters and jobs — `capstan status` with
// 1,000 clusters, one `up` with 10/100/1,000 clusters already there, `capstan jobs` with
// 10,000 jobs and 100,000 events.
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanTesting
import Foundation

/// Writes `count` running clusters, each with a launched intent, `nodes` instances (launched
/// in `cloud`, so a reconcile finds them where the store says) and `events` events, in one
/// transaction. Names are `prefix-<k>`.
func seedClusters(_ store: SQLiteStateStore, cloud: SimulatedCloud, owner: String, prefix: String, count: Int, nodes: Int = 2, events: Int = 5) async throws {
    let offer = SimulatedCloud.defaultCatalog[0]
    var batch = SQLiteStateStore.BulkLoad()
    let start = Date().addingTimeInterval(-3600)
    for k in 0..<count {
        var cluster = Cluster(name: "\(prefix)-\(k)", request: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: nodes), createdAt: start)
        let key = "cap-" + UUID().uuidString.lowercased()
        let tags = [
            CapstanTags.managed: "true", CapstanTags.owner: owner, CapstanTags.cluster: cluster.name,
            CapstanTags.clusterID: cluster.id, CapstanTags.intent: key, CapstanTags.nodes: "\(nodes)",
        ]
        var launched = try await cloud.launch(LaunchRequest(offer: offer, count: nodes, idempotencyKey: key, tags: tags))
        launched = try await cloud.describe(InstanceQuery(ids: launched.map(\.id)))  // running now
        cluster.status = .running
        cluster.offer = offer
        cluster.pricePerHour = (offer.onDemandPricePerHour ?? 0) * Double(nodes)
        cluster.intentKey = key
        cluster.readyAt = start.addingTimeInterval(60)
        batch.clusters.append(cluster)
        batch.intents.append(LaunchIntent(key: key, clusterID: cluster.id, provider: offer.provider, offer: offer, count: nodes, spot: false, tags: tags, status: .launched))
        for (n, var i) in launched.enumerated() {
            i.tags[CapstanTags.node] = "\(n)"
            batch.instances.append(InstanceRecord(instance: i, clusterID: cluster.id, intentKey: key))
        }
        for e in 0..<events { batch.events.append(StateEvent(clusterID: cluster.id, kind: "note", message: "event \(e) of \(cluster.name)")) }
    }
    try await store.bulkLoad(batch)
}

/// `capstan status` with 1,000 clusters (2 instances and 5 events each): the status rows as the
/// CLI builds them (clusters, their instances, cost so far), one query per cluster (the old
/// path, still reachable through ``ClusterRepository/instances(cluster:)``) against the set query
/// (``ClusterRepository/instances(clusters:)``); then the whole command, reconcile included,
/// against an in-process sim cloud that lists all 2,000 instances. p50/p99 of 50 runs (20 with
/// reconcile).
func statusBench(clusters count: Int = 1000) async throws {
    let dir = try scratchFolder("status")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let store = try SQLiteStateStore(path: dir + "/capstan.db")
    let cloud = SimulatedCloud()
    let owner = try await store.ownerID()
    try await seedClusters(store, cloud: cloud, owner: owner, prefix: "c", count: count)
    print("Status: \(count) clusters, 2 instances and 5 events each (SQLite), p50/p99")

    func rows(batched: Bool) async throws -> Int {
        let now = Date()
        let clusters = try await store.clusters(includeFinished: false)
        let instances: [String: [InstanceRecord]]
        if batched {
            instances = try await store.instances(clusters: clusters.map(\.id))
        } else {
            var out: [String: [InstanceRecord]] = [:]
            for c in clusters { out[c.id] = try await store.instances(cluster: c.id) }
            instances = out
        }
        var cost = 0.0
        for c in clusters { cost += (instances[c.id] ?? []).reduce(0) { $0 + $1.cost(now: now) } }
        return clusters.count + (cost > 0 ? 1 : 0)
    }
    // Same answer both ways (the unit tests check the records themselves).
    let batchedRows = try await rows(batched: true), perClusterRows = try await rows(batched: false)
    precondition(batchedRows == perClusterRows)
    let old = try await percentilesMs(runs: 50) { _ = try await rows(batched: false) }
    let new = try await percentilesMs(runs: 50) { _ = try await rows(batched: true) }
    print(String(format: "  status rows, one query per cluster (old):  p50 %7.1f ms  p99 %7.1f ms", old.p50, old.p99))
    print(String(format: "  status rows, set query (new):              p50 %7.1f ms  p99 %7.1f ms   (%.1f× faster)", new.p50, new.p99, old.p50 / new.p50))

    let provisioner = Provisioner(providers: [cloud], store: store, locks: ClusterLocks(folder: dir + "/locks"))
    _ = await provisioner.reconcile()
    let full = try await percentilesMs(runs: 20) {
        _ = await provisioner.reconcile()
        _ = try await rows(batched: true)
    }
    print(String(format: "  status with reconcile (sim lists all %d instances): p50 %7.1f ms  p99 %7.1f ms", count * 2, full.p50, full.p99))
    try await statusCLIBench(clusters: count)
}

/// `capstan status` as a process on a home with `count` seeded clusters (their provider, sim,
/// is not enabled there: reconcile lists the local provider only, and still reads and checks
/// every cluster), with and without reconcile, medians of 5, against `capstan --version`.
func statusCLIBench(clusters count: Int) async throws {
    let dir = Bundle.main.executableURL!.resolvingSymlinksInPath().deletingLastPathComponent().path
    let capstan = dir + "/capstan"
    guard FileManager.default.isExecutableFile(atPath: capstan) else {
        print("  (capstan status as a process: build capstan in the same configuration first; scripts/bench.sh does)")
        return
    }
    let home = try scratchFolder("status-home")
    defer { try? FileManager.default.removeItem(atPath: home) }
    let store = try SQLiteStateStore.open(home: CapstanHome(root: home))
    try await seedClusters(store, cloud: SimulatedCloud(), owner: try await store.ownerID(), prefix: "c", count: count)
    _ = try runCapstan(capstan, ["status"], home: home)
    func median(_ args: [String]) throws -> Double {
        try (0..<5).map { _ in try runCapstan(capstan, args, home: home) }.sorted()[2]
    }
    let version = try median(["--version"])
    let status = try median(["status"])
    let noReconcile = try median(["status", "--no-reconcile"])
    print(String(format: "  capstan status (process, %d clusters): %7.1f ms   --no-reconcile: %7.1f ms   (capstan --version: %.1f ms)", count, status, noReconcile, version))
}

/// One `up` (2 nodes on the in-process sim cloud) with 10, 100 and 1,000 clusters already in the
/// store and the cloud: `Provisioner.up` alone, and reconcile + up as `capstan up` runs them.
/// Medians of 7; the ratio is against the 10-cluster figure, measured in the same process.
func upBench() async throws {
    let dir = try scratchFolder("up")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let store = try SQLiteStateStore(path: dir + "/capstan.db")
    let cloud = SimulatedCloud()
    let owner = try await store.ownerID()
    var options = ProvisionOptions()
    options.waitMinDelay = .milliseconds(1)
    let provisioner = Provisioner(providers: [cloud], store: store, locks: ClusterLocks(folder: dir + "/locks"), options: options)
    let search = OfferSearch(providers: [cloud], cache: store)
    let request = ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2)
    print("Up: one 2-node `up` on the sim cloud with N clusters already there (2 instances, 1 event each), medians of 7")
    var seeded = 0
    var base: (up: Double, cli: Double)?
    var serial = 0
    for n in [10, 100, 1000] {
        try await seedClusters(store, cloud: cloud, owner: owner, prefix: "seed\(n)", count: n - seeded, events: 1)
        seeded = n
        _ = await provisioner.reconcile()
        func oneUp() async throws {
            serial += 1
            let report = try await provisioner.up(name: "bench-\(serial)", request: request, search: search)
            precondition(report.cluster.status == .running, "up failed: \(report.cluster.lastError ?? "?")")
        }
        let up = try await medianMs(runs: 7) { try await oneUp() }.ms
        let cli = try await medianMs(runs: 7) {
            _ = await provisioner.reconcile()
            try await oneUp()
        }.ms
        if base == nil { base = (up, cli) }
        print(String(format: "  N = %4d: up %7.1f ms (%.2f× N=10)   reconcile + up %7.1f ms (%.2f× N=10)", n, up, up / base!.up, cli, cli / base!.cli))
    }
}

/// `capstan jobs` with 10,000 jobs (a tenth unfinished) and 100,000 events (job and cluster
/// events): the listing as the CLI calls it (every unfinished job, then the newest 100), and
/// `--running`; p50/p99 of 50 runs, against one job read by id as the floor.
func jobsBench(jobs count: Int = 10_000, events: Int = 100_000) async throws {
    let dir = try scratchFolder("jobs")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let store = try SQLiteStateStore(path: dir + "/capstan.db")
    var batch = SQLiteStateStore.BulkLoad()
    let start = Date().addingTimeInterval(-Double(count) * 60)
    let statuses: [JobStatus] = [.succeeded, .failed, .cancelled, .succeeded, .succeeded, .failed, .succeeded, .cancelled, .succeeded, .running]
    for k in 0..<count {
        var j = JobRecord(id: "job-\(String(format: "%06d", k))", name: "train-\(k % 50)", spec: "name: train\nrecipe: sft\n", specFolder: "/tmp", settings: "{}", clusterName: "c-\(k % 100)", ownsCluster: true, storage: "file:///tmp/bucket", createdAt: start.addingTimeInterval(Double(k) * 60))
        j.status = statuses[k % statuses.count]
        batch.jobs.append(j)
    }
    for e in 0..<events {
        let event = StateEvent(clusterID: "cluster-\(e % 1000)", kind: "note", message: "event \(e)")
        if e % 2 == 0 { batch.jobEvents.append((job: "job-\(String(format: "%06d", e % count))", event: event)) } else { batch.events.append(event) }
    }
    try await store.bulkLoad(batch)
    print("Jobs: \(count) jobs (\(count / 10) unfinished), \(events) events (SQLite), p50/p99 of 50")
    let floor = try await percentilesMs(runs: 50) { _ = try await store.job("job-004242") }
    let listing = try await percentilesMs(runs: 50) {
        _ = try await store.unfinishedJobs()
        _ = try await store.jobs(includeFinished: true, limit: 100)
    }
    let running = try await percentilesMs(runs: 50) {
        _ = try await store.unfinishedJobs()
        _ = try await store.jobs(includeFinished: false, limit: 100)
    }
    let jobEvents = try await percentilesMs(runs: 50) { _ = try await store.events(job: "job-004242", limit: 500) }
    let clusterEvents = try await percentilesMs(runs: 50) { _ = try await store.events(cluster: "cluster-42", limit: 200) }
    print(String(format: "  floor: one job by id:                         p50 %7.2f ms  p99 %7.2f ms", floor.p50, floor.p99))
    print(String(format: "  capstan jobs (unfinished + newest 100):       p50 %7.2f ms  p99 %7.2f ms  (%.1f× the floor)", listing.p50, listing.p99, listing.p50 / floor.p50))
    print(String(format: "  capstan jobs --running:                       p50 %7.2f ms  p99 %7.2f ms", running.p50, running.p99))
    print(String(format: "  a job's events (capstan logs/status of a job): p50 %7.2f ms  p99 %7.2f ms", jobEvents.p50, jobEvents.p99))
    print(String(format: "  a cluster's events:                           p50 %7.2f ms  p99 %7.2f ms", clusterEvents.p50, clusterEvents.p99))
    for line in try await store.queryPlans() { print("  plan: " + line) }

    // The same listing without the indexes migration v5 adds (as every store had before it).
    try await store.dropIndexesForBenchmark(["job_created", "job_status", "job_name"])
    let unindexed = try await percentilesMs(runs: 50) {
        _ = try await store.unfinishedJobs()
        _ = try await store.jobs(includeFinished: true, limit: 100)
    }
    print(String(format: "  capstan jobs without v5's job indexes:        p50 %7.2f ms  p99 %7.2f ms  (%.1f× slower than with them)", unindexed.p50, unindexed.p99, unindexed.p50 / listing.p50))
}

/// Every scale case.
func scaleBench() async throws {
    try await statusBench()
    try await upBench()
    try await jobsBench()
}
