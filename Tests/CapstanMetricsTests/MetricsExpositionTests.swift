import CapstanCore
import CapstanRuntime
import CapstanServer
import CapstanSQLite
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing

/// `/metrics` rendered from a store the test fills (no server, no process metrics of another test).
@Suite("/metrics exposition")
struct MetricsExpositionTests {
    static let t0 = Date(timeIntervalSince1970: 1_790_000_000)

    func job(_ id: String, name: String = "train", status: JobStatus, at offset: Double = 0, metrics: String? = nil, restarts: Int = 0) -> JobRecord {
        var j = JobRecord(id: id, name: name, spec: "name: \(name)\nrun: x\n", specFolder: "/", settings: "{}", clusterName: id, ownsCluster: true, storage: "file:///b", createdAt: Self.t0.addingTimeInterval(offset))
        j.status = status
        j.metrics = metrics
        j.restarts = restarts
        j.attempt = restarts + 1
        return j
    }

    /// The exposition's sample lines, without comments.
    func samples(_ m: ServerMetrics, _ store: any StateStore, now: Date = t0.addingTimeInterval(3600)) async throws -> [String] {
        String(decoding: try await m.render(store: store, now: now, storeKind: "sqlite"), as: UTF8.self).split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
    }

    @Test("jobs and clusters from the store: status, attempt, restarts, step, loss, tokens/s and other keys, checkpoint; nodes, $/h and cost of live clusters")
    func stateGauges() async throws {
        let dir = TempDir("capstan-metrics")
        defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("capstan.db"))
        var running = job("train-1a2b3c", status: .running, metrics: #"{"step": 120, "loss": 4.37, "lr": 0.0011, "tokens_per_s": 6100, "attempt": 3}"#, restarts: 2)
        running.latestCheckpoint = 100
        try await store.insert(running)
        try await store.insert(job("eval-000001", name: "eval", status: .succeeded, at: -60))

        let request = ResourceRequest(gpu: nil, gpusPerNode: nil, nodes: 2, regions: [], spot: .never, maxPricePerHour: nil, providers: [])
        var c = Cluster(name: "train-1a2b3c", request: request, createdAt: Self.t0)
        c.status = .running
        c.readyAt = Self.t0
        try await store.insert(c)
        for n in 0..<3 {
            // Node 2 was replaced: gone, not counted in nodes or $/h, but in the cost so far.
            let inst = Instance(id: "i-\(n)", provider: "local", instanceType: "cpu", region: "local", state: n == 2 ? .terminated : .running, pricePerHour: 1.25, tags: [CapstanTags.node: "\(n)"], launchedAt: Self.t0)
            try await store.record(inst, clusterID: c.id, intentKey: "k")
        }

        // Telemetry of the running job's two nodes: one with a GPU (power unknown), one CPU-only.
        try await store.saveTelemetry(NodeTelemetry(job: "train-1a2b3c", node: 0, attempt: 3, sampledAt: Self.t0, cpuPercent: 12.5, memoryUsedBytes: 1_000, memoryTotalBytes: 4_000, gpus: [
            GPUSample(index: 0, name: "NVIDIA H100 80GB HBM3", utilizationPercent: 97, memoryUsedMiB: 70_000, memoryTotalMiB: 81_559, temperatureC: 64, powerW: nil),
        ]))
        try await store.saveTelemetry(NodeTelemetry(job: "train-1a2b3c", node: 1, attempt: 3, sampledAt: Self.t0, cpuPercent: 50, memoryUsedBytes: 2_000, memoryTotalBytes: 4_000))
        // A finished job's last sample is not exported.
        try await store.saveTelemetry(NodeTelemetry(job: "eval-000001", node: 0, attempt: 1, sampledAt: Self.t0, cpuPercent: 1, memoryUsedBytes: 1, memoryTotalBytes: 2))

        let m = ServerMetrics()
        let lines = try await samples(m, store)
        let l = #"job_id="train-1a2b3c",name="train""#
        for expected in [
            #"capstan_job_status{job_id="train-1a2b3c",name="train",status="running"} 1.0"#,
            "capstan_job_attempt{\(l)} 3.0",
            "capstan_job_restarts{\(l)} 2.0",
            "capstan_job_step{\(l)} 120.0",
            "capstan_job_loss{\(l)} 4.37",
            "capstan_job_tokens_per_second{\(l)} 6100.0",
            #"capstan_job_metric{job_id="train-1a2b3c",name="train",metric="lr"} 0.0011"#,
            "capstan_job_checkpoint_step{\(l)} 100.0",
            #"capstan_job_status{job_id="eval-000001",name="eval",status="succeeded"} 1.0"#,
            #"capstan_job_restarts{job_id="eval-000001",name="eval"} 0.0"#,
            #"capstan_cluster_status{cluster="train-1a2b3c",status="running"} 1.0"#,
            #"capstan_cluster_nodes{cluster="train-1a2b3c"} 2.0"#,
            #"capstan_cluster_hourly_cost_dollars{cluster="train-1a2b3c"} 2.5"#,
            // One hour of the two live nodes and of the replaced one (charged until now).
            "capstan_job_cost_dollars{\(l)} 3.75",
            #"capstan_job_cost_dollars{job_id="eval-000001",name="eval"} 0.0"#,
            #"capstan_node_cpu_percent{job_id="train-1a2b3c",node="0"} 12.5"#,
            #"capstan_node_cpu_percent{job_id="train-1a2b3c",node="1"} 50.0"#,
            #"capstan_node_memory_used_bytes{job_id="train-1a2b3c",node="1"} 2000.0"#,
            #"capstan_node_memory_total_bytes{job_id="train-1a2b3c",node="0"} 4000.0"#,
            #"capstan_node_sample_timestamp_seconds{job_id="train-1a2b3c",node="0"} 1790000000.0"#,
            #"capstan_node_gpu_info{job_id="train-1a2b3c",node="0",gpu="0",model="NVIDIA H100 80GB HBM3"} 1.0"#,
            #"capstan_node_gpu_utilization_percent{job_id="train-1a2b3c",node="0",gpu="0"} 97.0"#,
            #"capstan_node_gpu_memory_used_bytes{job_id="train-1a2b3c",node="0",gpu="0"} 73400320000.0"#,
            #"capstan_node_gpu_temperature_celsius{job_id="train-1a2b3c",node="0",gpu="0"} 64.0"#,
            #"capstan_server_info{version="\#(CapstanServerVersion.string)",store="sqlite"} 1.0"#,
        ] {
            #expect(lines.contains(expected), "missing \(expected) in\n\(lines.joined(separator: "\n"))")
        }
        // Two live nodes for an hour, and the replaced one for as long as it was recorded live.
        let cost = try #require(lines.first { $0.hasPrefix(#"capstan_cluster_cost_dollars{cluster="train-1a2b3c"} "#) }.flatMap { Double($0.split(separator: " ").last!) })
        #expect(cost >= 2.5, "\(cost)")
        #expect(!lines.contains { $0.hasPrefix("capstan_node_gpu_power_watts") }, "an unknown power draw has no series")
        #expect(!lines.contains { $0.hasPrefix("capstan_node_") && $0.contains("eval-000001") }, "a finished job's telemetry is not exported")
        // `attempt` is the record's, not the metrics line's; no step for a job without metrics.
        #expect(!lines.contains { $0.hasPrefix("capstan_job_metric{") && $0.contains("attempt") })
        #expect(!lines.contains { $0.hasPrefix("capstan_job_step{job_id=\"eval-000001\"") })
    }

    @Test("a series follows the store at every scrape: a status change replaces the old status series, a job that leaves the read and a finished cluster are gone")
    func seriesFollowTheStore() async throws {
        let dir = TempDir("capstan-metrics")
        defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("capstan.db"))
        try await store.insert(job("a-1", name: "a", status: .running, at: 0, metrics: #"{"step": 5, "loss": 1.5}"#))
        try await store.insert(job("b-1", name: "b", status: .succeeded, at: 10))
        try await store.insert(job("c-1", name: "c", status: .failed, at: 20))
        var cluster = Cluster(name: "gpu-pool", request: ResourceRequest(), createdAt: Self.t0)
        cluster.status = .running
        try await store.insert(cluster)
        // One finished job exported (the newest); every unfinished one always is.
        let m = ServerMetrics(finishedJobs: 1)
        var lines = try await samples(m, store)
        #expect(lines.contains(#"capstan_job_status{job_id="a-1",name="a",status="running"} 1.0"#))
        #expect(lines.contains(#"capstan_job_status{job_id="c-1",name="c",status="failed"} 1.0"#))
        #expect(!lines.contains { $0.contains(#"job_id="b-1""#) }, "\(lines)")

        _ = try await store.updateJob("a-1") { $0.status = .restarting; $0.restarts = 1; $0.metrics = #"{"step": 9, "loss": 1.25}"# }
        lines = try await samples(m, store)
        #expect(lines.contains(#"capstan_job_status{job_id="a-1",name="a",status="restarting"} 1.0"#))
        #expect(!lines.contains { $0.hasPrefix(#"capstan_job_status{job_id="a-1",name="a",status="running"}"#) }, "the old status series is gone: \(lines)")
        #expect(lines.contains(#"capstan_job_step{job_id="a-1",name="a"} 9.0"#) && lines.contains(#"capstan_job_loss{job_id="a-1",name="a"} 1.25"#))
        #expect(lines.contains(#"capstan_job_restarts{job_id="a-1",name="a"} 1.0"#))

        #expect(lines.contains(#"capstan_cluster_status{cluster="gpu-pool",status="running"} 1.0"#))
        cluster.status = .terminated
        try await store.update(cluster)
        // Finished, and older than the newest finished job (c-1): it leaves the read, and /metrics.
        _ = try await store.updateJob("a-1") { $0.status = .succeeded }
        lines = try await samples(m, store)
        #expect(!lines.contains { $0.contains(#"job_id="a-1""#) }, "\(lines)")
        #expect(lines.contains(#"capstan_job_status{job_id="c-1",name="c",status="failed"} 1.0"#))
        #expect(!lines.contains { $0.contains(#"cluster="gpu-pool""#) }, "a terminated cluster is not exported: \(lines)")

        // A fresh ServerMetrics (another replica, or this one restarted) renders the same state.
        let again = try await samples(ServerMetrics(finishedJobs: 1), store)
        #expect(Set(again.filter { $0.hasPrefix("capstan_job") }) == Set(lines.filter { $0.hasPrefix("capstan_job") }))
    }

    @Test("label values are escaped (quote, backslash, line feed) and the whole exposition parses (promtool check metrics, where installed)")
    func escaping() async throws {
        let dir = TempDir("capstan-metrics")
        defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("capstan.db"))
        try await store.insert(job("weird-1", name: "we\"ird\\name\nnext", status: .running, metrics: #"{"step": 1, "odd \"key\"\n": 2, "loss": 2.5}"#))
        try await store.insert(job("plain-1", name: "plain", status: .running, metrics: #"{"step": 3, "loss": 0.5}"#))
        let m = ServerMetrics()
        let text = String(decoding: try await m.render(store: store, storeKind: "sqlite"), as: UTF8.self)
        #expect(text.contains(#"capstan_job_status{job_id="weird-1",name="we\"ird\\name\nnext",status="running"} 1.0"#), "\(text)")
        #expect(text.contains(#"capstan_job_metric{job_id="weird-1",name="we\"ird\\name\nnext",metric="odd \"key\"\n"} 2.0"#), "\(text)")
        // Every sample line is one line: nothing a job wrote breaks the format.
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.hasPrefix("capstan_"), "a stray line: \(line)")
        }
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") {
            let file = dir.write("metrics.txt", text)
            let r = try runCapture("/bin/sh", ["-c", "/usr/bin/promtool check metrics < '\(file)'"])
            #expect(r.status == 0, "promtool: \(r.output)\n\(text)")
        }
    }

    @Test("no token, token hash, spec secret or error text ever appears in /metrics")
    func noSecrets() async throws {
        let dir = TempDir("capstan-metrics")
        defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("capstan.db"))
        let created = try await Tokens(store: store).create(name: "prometheus")
        var j = job("secret-1", name: "secret", status: .failed, metrics: #"{"step": 2, "loss": 1}"#)
        j.spec = "name: secret\nenv: {HF_TOKEN: hf_SpecSecretValue123}\nrun: x\n"
        j.lastError = "upload failed: AWS_SECRET_ACCESS_KEY=ErrorSecretValue456"
        j.settings = #"{"password": "SettingsSecret789"}"#
        try await store.insert(j)
        let text = String(decoding: try await ServerMetrics().render(store: store, storeKind: "sqlite"), as: UTF8.self)
        #expect(text.contains(#"job_id="secret-1""#))
        for secret in [created.token, created.record.hash, "hf_SpecSecretValue123", "ErrorSecretValue456", "SettingsSecret789", "cap_"] {
            #expect(!text.contains(secret), "\(secret) is in /metrics")
        }
    }

    @Test("checkpoint durations from controller events: the leader's stall, every node's upload; other nodes' stalls, other events and malformed lines are ignored")
    func checkpointHistograms() async throws {
        let dir = TempDir("capstan-metrics")
        defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("capstan.db"))
        try await store.insert(job("j-1", name: "j", status: .running, at: 0))
        let m = ServerMetrics()
        m.observe(job: "j-1", .log(node: 0, line: #"{"event": "checkpoint", "step": 10, "stall_s": 0.2, "waited_s": 0.0}"#))
        m.observe(job: "j-1", .log(node: 1, line: #"{"event": "checkpoint", "step": 10, "stall_s": 9.0}"#))
        m.observe(job: "j-1", .log(node: 0, line: #"{"event": "checkpoint_uploaded", "step": 10, "node": 0, "seconds": 1.5, "bytes": 100}"#))
        m.observe(job: "j-1", .log(node: 1, line: #"{"event": "checkpoint_uploaded", "step": 10, "node": 1, "seconds": 3.0, "bytes": 100}"#))
        for junk in [#"{"event": "checkpoint", "stall_s": "slow"}"#, #"{"event": "checkpoint_uploaded", "seconds": -1}"#, #"{"event": "checkpoint", "stall_s": 1"#, "{\"step\": 5, \"loss\": 1}", "plain text", ""] {
            m.observe(job: "j-1", .log(node: 0, line: junk))
        }
        let lines = try await samples(m, store)
        #expect(lines.contains(#"capstan_checkpoint_stall_seconds_count{job_id="j-1"} 1"#), "\(lines)")
        #expect(lines.contains(#"capstan_checkpoint_stall_seconds_bucket{job_id="j-1",le="0.25"} 1"#), "\(lines)")
        #expect(lines.contains(#"capstan_checkpoint_upload_seconds_count{job_id="j-1"} 2"#), "\(lines)")
        #expect(lines.contains(#"capstan_checkpoint_upload_seconds_sum{job_id="j-1"} 4.5"#), "\(lines)")
        #expect(lines.contains(#"capstan_checkpoint_upload_seconds_bucket{job_id="j-1",le="2.5"} 1"#), "\(lines)")
    }

    @Test("a job's checkpoint histograms are dropped once it leaves the exported jobs (finished, older than the newest finishedJobs); a running job's stay")
    func histogramsDropped() async throws {
        let dir = TempDir("capstan-metrics")
        defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("capstan.db"))
        try await store.insert(job("old-1", name: "old", status: .running, at: 0))
        try await store.insert(job("run-1", name: "run", status: .running, at: 5))
        let m = ServerMetrics(finishedJobs: 1)
        for id in ["old-1", "run-1"] {
            m.observe(job: id, .log(node: 0, line: #"{"event": "checkpoint", "step": 10, "stall_s": 0.2}"#))
            m.observe(job: id, .log(node: 1, line: #"{"event": "checkpoint_uploaded", "step": 10, "node": 1, "seconds": 1.0, "bytes": 1}"#))
        }
        var lines = try await samples(m, store)
        #expect(lines.contains(#"capstan_checkpoint_upload_seconds_count{job_id="old-1"} 1"#), "\(lines)")
        // old-1 ends; a newer job ends after it: old-1 leaves the read, and its histograms go.
        _ = try await store.updateJob("old-1") { $0.status = .succeeded }
        try await store.insert(job("new-1", name: "new", status: .failed, at: 10))
        lines = try await samples(m, store)
        #expect(!lines.contains { $0.contains(#"job_id="old-1""#) }, "\(lines)")
        #expect(lines.contains(#"capstan_checkpoint_stall_seconds_count{job_id="run-1"} 1"#), "\(lines)")
        #expect(lines.contains(#"capstan_checkpoint_upload_seconds_count{job_id="run-1"} 1"#), "\(lines)")
    }

    @Test("a metered provider times every call and counts failures by error code, and otherwise answers as the provider it wraps")
    func meteredProvider() async throws {
        let dir = TempDir("capstan-metrics")
        defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("capstan.db"))
        let m = ServerMetrics()
        let p = MeteredComputeProvider(FlakyProvider(), metrics: m)
        #expect(p.name == "flaky" && p.offerCacheTTL == .seconds(42))
        #expect(try await p.offers(for: ResourceRequest()).isEmpty)
        #expect(try await p.describe(InstanceQuery()).isEmpty)
        await #expect(throws: CapstanError.self) { try await p.launch(LaunchRequest(offer: FlakyProvider.offer, count: 1, idempotencyKey: "k")) }
        await #expect(throws: CapstanError.self) { try await p.launch(LaunchRequest(offer: FlakyProvider.offer, count: 1, idempotencyKey: "k")) }
        await #expect(throws: CapstanError.self) { try await p.terminate(ids: ["i-1"]) }
        let lines = try await samples(m, store)
        #expect(lines.contains(#"capstan_provider_request_duration_seconds_count{provider="flaky",operation="offers"} 1"#), "\(lines)")
        #expect(lines.contains(#"capstan_provider_request_duration_seconds_count{provider="flaky",operation="launch"} 2"#), "\(lines)")
        #expect(lines.contains(#"capstan_provider_errors_total{provider="flaky",operation="launch",code="capacity"} 2"#), "\(lines)")
        #expect(lines.contains(#"capstan_provider_errors_total{provider="flaky",operation="terminate",code="rateLimited"} 1"#), "\(lines)")
        #expect(!lines.contains { $0.hasPrefix("capstan_provider_errors_total") && $0.contains("describe") })
    }
}

/// Offers and describes nothing; launch fails for capacity, terminate is throttled.
struct FlakyProvider: ComputeProvider {
    static let offer = Offer(provider: "flaky", instanceType: "x", region: "r", gpusPerNode: 0, onDemandPricePerHour: 1)
    var name: String { "flaky" }
    var offerCacheTTL: Duration { .seconds(42) }
    func offers(for request: ResourceRequest) async throws -> [Offer] { [] }
    func launch(_ request: LaunchRequest) async throws -> [Instance] { throw CapstanError(.capacity, "none left") }
    func describe(_ query: InstanceQuery) async throws -> [Instance] { [] }
    func terminate(ids: [String]) async throws -> [Instance] { throw CapstanError(.rateLimited, "slow down") }
}

/// Runs a command; its exit status and output.
func runCapture(_ exe: String, _ args: [String]) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}
