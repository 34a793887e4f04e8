import CapstanCore
import CapstanRuntime
import CapstanSQLite
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `capstan-bench dashboard` (scripts/bench-dashboard.sh): the web dashboard's job list with
/// 1,000 jobs behind a `capstan serve` next to this binary — the server's `/v1/overview` time,
/// and first paint in a real headless Chromium (Benchmarks/dashboard/first_paint.py, through
/// the Python in `CAPSTAN_SELENIUM_PYTHON`, the repository's `.venv`, or `python3`).
func dashboardBench() async throws {
    let jobs = 1_000, runs = 15
    let home = try scratchFolder("dashboard-bench")
    defer { try? FileManager.default.removeItem(atPath: home) }
    try "providers:\n  local:\n    slots: 4\n".write(toFile: home + "/config.yaml", atomically: true, encoding: .utf8)
    print("Dashboard: job list first paint with \(jobs) jobs (SQLite store, \(runs) loads after a warm-up)")
    let store = try SQLiteStateStore.open(home: CapstanHome(root: home))
    let statuses: [JobStatus] = [.succeeded, .failed, .cancelled]
    for i in 0..<jobs {
        var j = JobRecord(id: "dash-\(i)-\(String(format: "%06x", i * 2_654_435 % 0xFFFFFF))", name: "finetune-\(i % 7)", spec: "name: finetune\nresources: {nodes: \(1 + i % 4)}\nrun: python train.py\n", specFolder: "/tmp", settings: "{}", clusterName: "dash-\(i)", ownsCluster: true, storage: "file:///tmp/dash/\(i)", createdAt: Date(timeIntervalSinceNow: -Double(jobs - i) * 600))
        j.status = statuses[i % 3]
        j.attempt = 1 + i % 3
        j.restarts = i % 3
        j.startedAt = j.createdAt.addingTimeInterval(30)
        j.finishedAt = j.createdAt.addingTimeInterval(3000)
        j.latestCheckpoint = 400
        j.lastError = j.status == .failed ? "node 1: the command exited with 1 (see `capstan logs`)" : nil
        j.metrics = "{\"step\": \(500 - i % 100), \"loss\": \(1.0 / Double(2 + i % 50)), \"lr\": 0.0002, \"tokens_per_s\": \(5000 + i), \"total_steps\": 500}"
        try await store.insert(j)
    }
    let request = ResourceRequest(gpu: nil, gpusPerNode: nil, nodes: 2, regions: [], spot: .never, maxPricePerHour: nil, providers: [])
    for i in 0..<10 {
        var c = Cluster(name: "dash-live-\(i)", request: request)
        c.status = .running
        c.readyAt = Date(timeIntervalSinceNow: -3600)
        c.pricePerHour = 2.5
        try await store.insert(c)
        for n in 0..<2 {
            let inst = Instance(id: "i-\(i)-\(n)", provider: "bench", instanceType: "bench.large", region: "local", state: .running, privateAddress: "10.0.\(i).\(n + 2)", pricePerHour: 1.25, tags: [CapstanTags.node: "\(n)"], launchedAt: Date(timeIntervalSinceNow: -3600))
            try await store.record(inst, clusterID: c.id, intentKey: "k-\(i)")
        }
    }
    let server = try await BenchServer.start(home: home, binary: capstanBinary())
    defer { server.stop() }

    // The route alone, as a client sees it (decoded JSON).
    _ = try await server.get("/v1/overview?limit=\(jobs)")
    let t = percentiles(try await timings(50) { _ = try await server.get("/v1/overview?limit=\(jobs)") })
    line("GET /v1/overview?limit=\(jobs) (server + JSON decode)", t)

    let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    var pythons = [repo + "/.venv/bin/python3", "/usr/bin/python3"]
    if let p = ProcessInfo.processInfo.environment["CAPSTAN_SELENIUM_PYTHON"], !p.isEmpty { pythons.insert(p, at: 0) }
    guard let python = pythons.first(where: { FileManager.default.isExecutableFile(atPath: $0) && (try? runCapturingText($0, ["-c", "import selenium; print('ok')"], home: home)) == "ok\n" }) else {
        throw CapstanError(.config, "No Python with Selenium for the browser part.", hint: "python3 -m venv .venv && .venv/bin/pip install selenium (and apt-get install chromium chromium-driver).")
    }
    let out = try runCapturingText(python, [repo + "/Benchmarks/dashboard/first_paint.py", server.url, "\(runs)"], home: home, env: ["CAPSTAN_DASHBOARD_TOKEN": server.token])
    guard let data = out.split(separator: "\n").last.map({ Data($0.utf8) }), let figures = try? JSONSerialization.jsonObject(with: data) as? [String: [Double]] else {
        throw CapstanError(.internalError, "first_paint.py printed no figures: \(out)")
    }
    func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s.isEmpty ? .nan : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2 }
    let rows = figures["rows"] ?? []
    for (key, label) in [("domContentLoaded", "DOMContentLoaded"), ("fcp", "first contentful paint (header)"), ("overviewFetch", "/v1/overview fetch, in the page"), ("jobsRendered", "job list first paint (first 60 rows)"), ("jobsAllRendered", "all rows rendered and painted")] {
        let xs = figures[key] ?? []
        print("  " + label.padding(toLength: 40, withPad: " ", startingAt: 0) + String(format: " median %7.1f ms   min %7.1f   max %7.1f", median(xs), xs.min() ?? .nan, xs.max() ?? .nan))
    }
    print("  rows in the table: \(Int(median(rows))); goal: job list first paint < 300 ms → " + (median(figures["jobsRendered"] ?? []) < 300 ? "met" : "NOT met"))
}
