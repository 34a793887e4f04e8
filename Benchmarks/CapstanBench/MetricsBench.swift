// `capstan-bench metrics`: the scrape time of `GET /metrics` with 1,000 jobs (issue 17; goal
// < 100 ms), from the release `capstan serve`, next to `GET /v1/jobs?limit=1000` (the same jobs
// as JSON) on the same server as the baseline.
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

func metricsBench() async throws {
    let home = try scratchFolder("metrics-bench")
    defer { try? FileManager.default.removeItem(atPath: home) }
    try "providers:\n  local:\n    slots: 4\n".write(toFile: home + "/config.yaml", atomically: true, encoding: .utf8)
    let jobs = 1_000, clusters = 100
    print("\n/metrics scrape (SQLite store): \(jobs) jobs with metrics lines, \(clusters) running clusters of 2 instances")
    let store = try SQLiteStateStore.open(home: CapstanHome(root: home))
    // Finished jobs: a server adopts unfinished ones (and would run them); the exposition costs
    // the same per job either way (every unfinished job and the newest 1,000 are exported).
    let statuses: [JobStatus] = [.succeeded, .failed, .cancelled]
    for i in 0..<jobs {
        var j = JobRecord(id: "bench-\(i)", name: "bench-\(i % 20)", spec: "name: bench\nresources: {nodes: 2}\nrun: echo hi\n", specFolder: "/tmp", settings: "{}", clusterName: "bench-\(i)", ownsCluster: true, storage: "file:///tmp/bench/\(i)", createdAt: Date(timeIntervalSince1970: 1_790_000_000 + Double(i)))
        j.status = statuses[i % 3]
        j.attempt = 1 + i % 3
        j.restarts = i % 3
        j.latestCheckpoint = 100 * (i % 7)
        j.finishedAt = j.createdAt.addingTimeInterval(60)
        j.metrics = "{\"step\": \(100 + i), \"loss\": \(1.0 + Double(i % 100) / 100), \"lr\": 0.0002, \"tokens_per_s\": \(6000 + i), \"step_time_s\": 0.41, \"epoch\": 1.25, \"attempt\": \(j.attempt)}"
        try await store.insert(j)
    }
    try await seedClusters(store, count: clusters)
    let server = try await BenchServer.start(home: home, binary: capstanBinary())
    defer { server.stop() }

    func getBytes(_ path: String) async throws -> Int {
        var r = URLRequest(url: URL(string: server.url + path)!)
        r.setValue("Bearer " + server.token, forHTTPHeaderField: "Authorization")
        let (data, response) = try await URLSession.shared.data(for: r)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else { throw CapstanError(.internalError, "GET \(path): \(String(decoding: data.prefix(300), as: UTF8.self))") }
        return data.count
    }
    // The first scrape registers every series (later ones only set values).
    let first = try await timings(1) { _ = try await getBytes("/metrics") }[0]
    let size = try await getBytes("/metrics")
    _ = try await getBytes("/v1/jobs?limit=1000")
    let n = 200
    let scrape = percentiles(try await timings(n) { _ = try await getBytes("/metrics") })
    let baseline = percentiles(try await timings(n) { _ = try await getBytes("/v1/jobs?limit=1000") })
    print(String(format: "  first scrape (registers every series)                %8.2f ms, %d bytes", first * 1000, size))
    line("GET /metrics (\(jobs) jobs, \(clusters) clusters), \(n)×", scrape)
    line("GET /v1/jobs?limit=1000 (the same jobs as JSON)", baseline)
    print(String(format: "  ratio /metrics : /v1/jobs?limit=1000 at p50 %.2f×, p99 %.2f×; goal p50 < 100 ms: %@", scrape.p50 / max(baseline.p50, 0.001), scrape.p99 / max(baseline.p99, 0.001), scrape.p50 < 100 ? "met" : "NOT met"))
}
