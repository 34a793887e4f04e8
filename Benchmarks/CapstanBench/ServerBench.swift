// `capstan-bench server`: the control plane at scale (issue 16). A home with 10,000 jobs,
// 100,000 events and 1,000 running clusters, served by the release `capstan serve`; each figure
// through the server next to the same query in-process on the same store (the baseline).
import CapstanCore
import CapstanPostgres
import CapstanRuntime
import CapstanSQLite
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif

/// p50 and p99 of a list of durations, in milliseconds.
func percentiles(_ seconds: [Double]) -> (p50: Double, p99: Double) {
    let s = seconds.sorted()
    guard !s.isEmpty else { return (0, 0) }
    func at(_ q: Double) -> Double { s[min(s.count - 1, Int((Double(s.count - 1) * q).rounded()))] * 1000 }
    return (at(0.5), at(0.99))
}

/// Times `body` `n` times, one after another.
func timings(_ n: Int, _ body: () async throws -> Void) async rethrows -> [Double] {
    var out: [Double] = []
    out.reserveCapacity(n)
    for _ in 0..<n {
        let start = ContinuousClock.now
        try await body()
        out.append((ContinuousClock.now - start).seconds)
    }
    return out
}

func line(_ label: String, _ t: (p50: Double, p99: Double), baseline: (p50: Double, p99: Double)? = nil) {
    var s = "  " + label.padding(toLength: 50, withPad: " ", startingAt: 0) + String(format: " p50 %8.2f ms  p99 %8.2f ms", t.p50, t.p99)
    if let b = baseline { s += String(format: "   in-process p50 %7.2f ms (%.1f×)", b.p50, t.p50 / max(b.p50, 0.001)) }
    print(s)
}

/// Fills `store` with the issue's scale: `jobs` finished jobs with `eventsPerJob` events each,
/// and `clusters` running clusters of 2 instances (on a provider this home does not configure,
/// so reconcile leaves them be).
func seedScale(_ store: any StateStore, jobs: Int, eventsPerJob: Int, clusters: Int) async throws {
    let start = ContinuousClock.now
    let spec = "name: bench\nresources: {nodes: 2}\nrun: echo hi\n"
    let statuses: [JobStatus] = [.succeeded, .failed, .cancelled]
    try await withThrowingTaskGroup(of: Void.self) { group in
        for w in 0..<8 {
            group.addTask {
                for i in stride(from: w, to: jobs, by: 8) {
                    var j = JobRecord(id: "bench-\(i)", name: "bench", spec: spec, specFolder: "/tmp", settings: "{}", clusterName: "bench-\(i)", ownsCluster: true, storage: "file:///tmp/bench/\(i)", createdAt: Date(timeIntervalSince1970: 1_790_000_000 + Double(i)))
                    j.status = statuses[i % 3]
                    j.attempt = 1
                    j.finishedAt = j.createdAt.addingTimeInterval(60)
                    j.metrics = "{\"step\": 100, \"loss\": 1.25}"
                    try await store.insert(j)
                    for e in 0..<eventsPerJob { await store.jobEvent("checkpoint", "Checkpoint step \(e * 10) committed (1234 bytes, attempt 1).", job: j.id) }
                }
            }
        }
        try await group.waitForAll()
    }
    try await seedClusters(store, count: clusters)
    print(String(format: "  seeded %d jobs, %d events, %d clusters in %.1f s", jobs, jobs * eventsPerJob, clusters, (ContinuousClock.now - start).seconds))
}

/// `count` running 2-node clusters (`scale-N`, $2.50/h) with their instance records.
func seedClusters(_ store: any StateStore, count: Int) async throws {
    let request = ResourceRequest(gpu: nil, gpusPerNode: nil, nodes: 2, regions: [], spot: .never, maxPricePerHour: nil, providers: [])
    for i in 0..<count {
        var c = Cluster(name: "scale-\(i)", request: request)
        c.status = .running
        c.readyAt = Date()
        c.pricePerHour = 2.5
        try await store.insert(c)
        for n in 0..<2 {
            let inst = Instance(id: "i-\(i)-\(n)", provider: "bench", instanceType: "bench.large", region: "local", state: .running, privateAddress: "10.0.\(i % 250).\(n + 2)", pricePerHour: 1.25, tags: [CapstanTags.node: "\(n)"], launchedAt: Date())
            try await store.record(inst, clusterID: c.id, intentKey: "k-\(i)")
        }
    }
}

/// A running `capstan serve` (the release binary next to this one).
struct BenchServer {
    let process: Process
    let url: String
    let token: String

    static func start(home: String, binary: String) async throws -> BenchServer {
        let token = try runCapturingText(binary, ["serve", "token", "create", "bench"], home: home).trimmingCharacters(in: .whitespacesAndNewlines)
        let portFile = home + "/serve.port"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["serve", "--port", "0", "--port-file", portFile, "--cluster-seconds", "3600"]
        var env = ProcessInfo.processInfo.environment
        env["CAPSTAN_HOME"] = home
        env["CAPSTAN_PLUGIN_PATH"] = nil
        p.environment = env
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        for _ in 0..<600 {
            if let s = try? String(contentsOfFile: portFile, encoding: .utf8), let port = Int(s.trimmingCharacters(in: .whitespacesAndNewlines)) {
                return BenchServer(process: p, url: "http://127.0.0.1:\(port)", token: token)
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        p.terminate()
        throw CapstanError(.timeout, "capstan serve did not start")
    }

    func stop() {
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }

    /// GET `path`; the body decoded as JSON (as a client would), or an error.
    func get(_ path: String, session: URLSession = .shared) async throws -> Any {
        var r = URLRequest(url: URL(string: url + path)!)
        r.setValue("Bearer " + token, forHTTPHeaderField: "Authorization")
        let (data, response) = try await session.data(for: r)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else { throw CapstanError(.internalError, "GET \(path): \(String(decoding: data.prefix(300), as: UTF8.self))") }
        return try JSONSerialization.jsonObject(with: data)
    }
}

func runCapturingText(_ exe: String, _ args: [String], home: String, env extra: [String: String] = [:]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    env["CAPSTAN_HOME"] = home
    for (k, v) in extra { env[k] = v }
    p.environment = env
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

func capstanBinary() -> String {
    Bundle.main.executableURL!.resolvingSymlinksInPath().deletingLastPathComponent().path + "/capstan"
}

/// The control plane at scale on the SQLite store, and on PostgreSQL when
/// `CAPSTAN_BENCH_POSTGRES_URL` names an empty database (password in `CAPSTAN_POSTGRES_PASSWORD`).
func serverBench() async throws {
    try await serverBench(postgres: nil)
    if let url = ProcessInfo.processInfo.environment["CAPSTAN_BENCH_POSTGRES_URL"], !url.isEmpty {
        try await serverBench(postgres: url)
    }
}

func serverBench(postgres url: String?) async throws {
    let home = try scratchFolder("server-bench")
    defer { try? FileManager.default.removeItem(atPath: home) }
    try ("providers:\n  local:\n    slots: 4\n" + (url.map { "state: \($0)\n" } ?? "")).write(toFile: home + "/config.yaml", atomically: true, encoding: .utf8)
    print("\nControl plane at scale (\(url == nil ? "SQLite" : "PostgreSQL") store): 10,000 jobs, 100,000 events, 1,000 running clusters")
    let store: any StateStore = if let url { try await PostgresStateStore.connect(url: url) } else { try SQLiteStateStore.open(home: CapstanHome(root: home)) }
    try await seedScale(store, jobs: 10_000, eventsPerJob: 10, clusters: 1_000)
    let server = try await BenchServer.start(home: home, binary: capstanBinary())
    defer { server.stop() }
    _ = try await server.get("/v1/jobs")  // warm

    let n = 300
    let jobsAPI = percentiles(try await timings(n) { _ = try await server.get("/v1/jobs?limit=100") })
    let jobsLocal = percentiles(try await timings(n) { _ = try await store.jobs(includeFinished: true, limit: 100) })
    line("GET /v1/jobs (100 of 10,000)", jobsAPI, baseline: jobsLocal)
    let runningAPI = percentiles(try await timings(n) { _ = try await server.get("/v1/jobs?running=true") })
    line("GET /v1/jobs?running=true", runningAPI)
    let statusAPI = percentiles(try await timings(100) { _ = try await server.get("/v1/clusters?reconcile=false") })
    let statusLocal = percentiles(try await timings(100) {
        for c in try await store.clusters(includeFinished: false) { _ = try await store.instances(cluster: c.id) }
    })
    line("GET /v1/clusters (1,000 running, 2,000 instances)", statusAPI, baseline: statusLocal)
    let eventsAPI = percentiles(try await timings(n) { _ = try await server.get("/v1/jobs/bench-\(Int.random(in: 0..<10_000))/events") })
    line("GET /v1/jobs/{id}/events (10 of 100,000)", eventsAPI)

    // 100 clients at once, 20 requests each.
    let config = URLSessionConfiguration.default
    config.httpMaximumConnectionsPerHost = 100
    let session = URLSession(configuration: config)
    let start = ContinuousClock.now
    let all = try await withThrowingTaskGroup(of: [Double].self) { group in
        for _ in 0..<100 {
            group.addTask { try await timings(20) { _ = try await server.get("/v1/jobs?limit=100", session: session) } }
        }
        var out: [Double] = []
        for try await t in group { out += t }
        return out
    }
    let wall = (ContinuousClock.now - start).seconds
    line("100 concurrent clients × 20 GET /v1/jobs", percentiles(all))
    print(String(format: "  %@ %.0f requests/s (2,000 requests in %.2f s)", "throughput".padding(toLength: 50, withPad: " ", startingAt: 0), Double(all.count) / wall, wall))

    // The CLI through the server: a whole `capstan jobs` process (start, HTTP, table).
    // posix_spawn + waitpid (runCapstan): Foundation's Process would add up to 50 ms of polling.
    let cli = percentiles(try (0..<30).map { _ in try runCapstan(capstanBinary(), ["jobs"], home: home, env: ["CAPSTAN_SERVER": server.url, "CAPSTAN_TOKEN": server.token]) / 1000 })
    let cliLocal = percentiles(try (0..<30).map { _ in try runCapstan(capstanBinary(), ["jobs"], home: home, env: ["CAPSTAN_SERVER": ""]) / 1000 })
    line("`capstan jobs` process, via the server", cli, baseline: cliLocal)
    print("  (in-process for the CLI line: the same `capstan jobs` in embedded mode on the same home)")
}


/// Runs `capstan ARGS` and returns the seconds from its start to the first stdout line that
/// contains `marker` (then lets it finish).
func secondsToLine(_ args: [String], home: String, env extra: [String: String], marker: String) throws -> Double {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: capstanBinary())
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    env["CAPSTAN_HOME"] = home
    env["CAPSTAN_PLUGIN_PATH"] = nil
    for (k, v) in extra { env[k] = v }
    p.environment = env
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle(forWritingAtPath: "/dev/null")
    let start = ContinuousClock.now
    try p.run()
    var seen = Data()
    var at: Double?
    while at == nil {
        let chunk = out.fileHandleForReading.availableData
        if chunk.isEmpty { break }
        seen.append(chunk)
        if String(decoding: seen, as: UTF8.self).contains(marker) { at = (ContinuousClock.now - start).seconds }
    }
    _ = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard let at else { throw CapstanError(.internalError, "`capstan \(args.joined(separator: " "))` never printed \(marker): \(String(decoding: seen.suffix(500), as: UTF8.self))") }
    return at
}

/// Submit → first line of the job's output: `capstan launch` embedded against `capstan launch`
/// through a server (CAPSTAN_SERVER), same home, same 2-node local job, alternating.
func submitBench() async throws {
    let home = try scratchFolder("submit-bench")
    defer { try? FileManager.default.removeItem(atPath: home) }
    try "providers:\n  local:\n    slots: 4\n".write(toFile: home + "/config.yaml", atomically: true, encoding: .utf8)
    try FileManager.default.createDirectory(atPath: home + "/job", withIntermediateDirectories: true)
    try "name: first\nresources: {nodes: 2}\nworkdir: .\nrun: echo first-line-$NODE_RANK\n".write(toFile: home + "/job/job.yaml", atomically: true, encoding: .utf8)
    try "print('hi')\n".write(toFile: home + "/job/train.py", atomically: true, encoding: .utf8)
    let server = try await BenchServer.start(home: home, binary: capstanBinary())
    defer { server.stop() }
    print("\nSubmit → first line of a 2-node local job (`capstan launch`, until `[node 0] first-line-0`), 10 runs each, alternating")
    var embedded: [Double] = [], remote: [Double] = []
    let spec = home + "/job/job.yaml"
    _ = try secondsToLine(["launch", spec], home: home, env: ["CAPSTAN_SERVER": ""], marker: "first-line-0")  // warm
    for _ in 0..<10 {
        embedded.append(try secondsToLine(["launch", spec], home: home, env: ["CAPSTAN_SERVER": ""], marker: "first-line-0"))
        remote.append(try secondsToLine(["launch", spec], home: home, env: ["CAPSTAN_SERVER": server.url, "CAPSTAN_TOKEN": server.token], marker: "first-line-0"))
    }
    let e = percentiles(embedded), r = percentiles(remote)
    line("embedded `capstan launch`", e)
    line("`capstan launch` through the server", r)
    print(String(format: "  %@ %+.0f ms at p50 (goal ≤ +100 ms)", "through the server vs embedded".padding(toLength: 50, withPad: " ", startingAt: 0), (r.p50 - e.p50)))
}
