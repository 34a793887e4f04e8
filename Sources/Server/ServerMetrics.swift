import CapstanAPI
public import CapstanCore
public import CapstanTrainer
public import CoreMetrics
public import Foundation
import Prometheus
import Synchronization

/// What `GET /metrics` serves (docs/metrics.md), in Prometheus' text exposition format.
///
/// Two kinds of series:
/// - **State**, read from the state store at every scrape (jobs and their cost, clusters, the
///   newest telemetry sample of each node of a running job): right on any
///   replica and after any restart, since nothing is counted in this process. Kept as gauges of
///   one long-lived registry, set from each fresh read; a series whose job or cluster left the
///   read is unregistered, so it stops at once.
/// - **Process**, counted by this process through swift-metrics (provider call latency and
///   errors, the checkpoint stall and upload durations of the jobs it controls): histograms and
///   counters that start at zero when the process starts, as Prometheus expects of them.
public final class ServerMetrics: Sendable {
    /// Process metrics (swift-metrics lands here).
    let process = PrometheusCollectorRegistry()
    /// State metrics, refreshed at every scrape.
    let state = PrometheusCollectorRegistry()
    let factory: HelpfulPrometheusFactory
    let series = Mutex<[SeriesKey: Prometheus.Gauge]>([:])
    /// Each job's parsed metrics line, while it stays the same line.
    let parsed = Mutex<[String: (line: String, point: MetricsPoint?)]>([:])
    /// The size of the last exposition (the next one reserves it).
    let lastSize = Atomic<Int>(64 * 1024)
    /// Finished jobs exported: the newest this many (every unfinished job always is).
    public let finishedJobs: Int
    /// Jobs with checkpoint histograms in `process`: dropped once a job leaves the exported
    /// jobs (finished, and older than the newest `finishedJobs`), so a server that runs for
    /// months does not keep a histogram per job it ever ran.
    let histogramJobs = Mutex<Set<String>>([])

    /// The one `capstan serve` uses: its providers and job controllers report to it.
    public static let shared = ServerMetrics()

    public init(finishedJobs: Int = 1000) {
        self.finishedJobs = finishedJobs
        factory = HelpfulPrometheusFactory(registry: process, durationBuckets: [
            MetricName.checkpointStall: MetricHelp.stallSeconds,
            MetricName.checkpointUpload: MetricHelp.uploadSeconds,
        ])
    }

    /// The swift-metrics factory whose metrics this exposition serves.
    public var metricsFactory: any MetricsFactory { factory }

    private static let bootstrapped = Atomic<Bool>(false)

    /// Makes this the process's swift-metrics backend (once per process; later calls do nothing).
    public func bootstrapMetricsSystem() {
        guard Self.bootstrapped.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        MetricsSystem.bootstrap(factory)
    }

    // MARK: - Process metrics

    /// Reads what a job's controller reports for the checkpoint durations: the leader's
    /// `{"event": "checkpoint", "stall_s": S}` (the training loop's stall; the built-in recipe
    /// prints it) and each agent's `{"event": "checkpoint_uploaded", "seconds": S}`.
    public func observe(job: String, _ event: JobEvent) {
        guard case .log(let node, let line) = event, line.hasPrefix("{"), line.contains("\"event\"") else { return }
        guard let object = try? JSONDecoder().decode([String: JSONValue].self, from: Data(line.utf8)), case .string(let kind)? = object["event"] else { return }
        func seconds(_ key: String) -> Double? {
            if case .number(let s)? = object[key], s.isFinite, s >= 0 { return s }
            return nil
        }
        let label: String
        let value: Double?
        switch kind {
        case "checkpoint" where node == 0: (label, value) = (MetricName.checkpointStall, seconds("stall_s"))
        case "checkpoint_uploaded": (label, value) = (MetricName.checkpointUpload, seconds("seconds"))
        default: return
        }
        guard let value else { return }
        histogramJobs.withLock { jobs in
            jobs.insert(job)
            CoreMetrics.Timer(label: label, dimensions: [("job_id", job)], factory: factory).recordSeconds(value)
        }
    }

    /// Unregisters the checkpoint histograms of every job not in `exported`.
    func dropHistograms(keeping exported: Set<String>) {
        histogramJobs.withLock { jobs in
            for job in jobs.subtracting(exported) {
                for label in [MetricName.checkpointStall, MetricName.checkpointUpload] {
                    CoreMetrics.Timer(label: label, dimensions: [("job_id", job)], factory: factory).destroy()
                }
                jobs.remove(job)
            }
        }
    }

    /// Records one call of a compute provider (``MeteredComputeProvider``).
    func providerCall(_ provider: String, _ operation: String, _ duration: Duration, error: (any Error)?) {
        let dims = [("provider", provider), ("operation", operation)]
        CoreMetrics.Timer(label: MetricName.providerDuration, dimensions: dims, factory: factory).recordNanoseconds(duration.nanoseconds)
        if let error {
            let code: String = if let e = error as? CapstanError { e.code.name } else if error is CancellationError { "cancelled" } else { "other" }
            CoreMetrics.Counter(label: MetricName.providerErrors, dimensions: dims + [("code", code)], factory: factory).increment()
        }
    }

    // MARK: - The exposition

    /// The whole exposition: the state store read now, then this process's metrics.
    public func render(store: any StateStore, now: Date = Date(), storeKind: String = "") async throws -> [UInt8] {
        let values = try await stateValues(store: store, now: now, storeKind: storeKind)
        return series.withLock { series in
            for (key, value) in values {
                let gauge: Prometheus.Gauge
                if let g = series[key] { gauge = g } else {
                    gauge = state.makeGauge(descriptor: MetricHelp.descriptor(key.name), labels: Array(zip(MetricName.labels[key.name] ?? [], key.labels)))
                    series[key] = gauge
                }
                gauge.set(to: value)
            }
            for (key, gauge) in series where values[key] == nil {
                state.unregisterGauge(gauge)
                series[key] = nil
            }
            var buffer: [UInt8] = []
            buffer.reserveCapacity(lastSize.load(ordering: .relaxed))
            state.emit(into: &buffer)
            process.emit(into: &buffer)
            lastSize.store(buffer.count + 4096, ordering: .relaxed)
            return buffer
        }
    }

    /// The state series' values, by series.
    func stateValues(store: any StateStore, now: Date, storeKind: String) async throws -> [SeriesKey: Double] {
        var out: [SeriesKey: Double] = [:]
        func put(_ name: String, _ labels: [String], _ value: Double?) {
            if let value { out[SeriesKey(name: name, labels: labels)] = value }
        }
        put(MetricName.serverInfo, [CapstanServerVersion.string, storeKind], 1)

        // Jobs: every unfinished one, and the newest finished ones.
        var jobs = try await store.unfinishedJobs()
        var seen = Set(jobs.map(\.id))
        for j in try await store.jobs(includeFinished: true, limit: finishedJobs) where seen.insert(j.id).inserted { jobs.append(j) }
        dropHistograms(keeping: seen)
        let points = latestPoints(jobs)
        let costs = try await store.jobCosts(jobs, now: now)
        for j in jobs {
            let l = [j.id, j.name]
            put(MetricName.jobStatus, l + [j.status.rawValue], 1)
            put(MetricName.jobAttempt, l, Double(j.attempt))
            put(MetricName.jobRestarts, l, Double(j.restarts))
            put(MetricName.jobCheckpoint, l, j.latestCheckpoint.map(Double.init))
            put(MetricName.jobCost, l, costs[j.id])
            if let p = points[j.id] {
                put(MetricName.jobStep, l, Double(p.step))
                for (key, value) in p.values {
                    switch key {
                    case "loss": put(MetricName.jobLoss, l, value)
                    case "tokens_per_s": put(MetricName.jobTokens, l, value)
                    default: put(MetricName.jobMetric, l + [key], value)
                    }
                }
            }
        }

        // Nodes: the newest telemetry sample of each node of each running job.
        for j in jobs where j.status == .running {
            for t in (try? await store.telemetry(job: j.id)) ?? [] {
                let n = [j.id, "\(t.node)"]
                put(MetricName.nodeSampled, n, t.sampledAt.timeIntervalSince1970)
                put(MetricName.nodeCPU, n, t.cpuPercent)
                put(MetricName.nodeMemoryUsed, n, Double(t.memoryUsedBytes))
                put(MetricName.nodeMemoryTotal, n, Double(t.memoryTotalBytes))
                for g in t.gpus {
                    let gl = n + ["\(g.index)"]
                    put(MetricName.gpuInfo, gl + [g.name], 1)
                    put(MetricName.gpuUtilization, gl, g.utilizationPercent)
                    put(MetricName.gpuMemoryUsed, gl, g.memoryUsedMiB.map { $0 * 1_048_576 })
                    put(MetricName.gpuMemoryTotal, gl, g.memoryTotalMiB.map { $0 * 1_048_576 })
                    put(MetricName.gpuTemperature, gl, g.temperatureC)
                    put(MetricName.gpuPower, gl, g.powerW)
                }
            }
        }

        // Clusters: the live ones.
        let clusters = try await store.clusters(includeFinished: false)
        let instances = try await store.instances(clusters: clusters.map(\.id))
        for c in clusters {
            let live = (instances[c.id] ?? []).filter { !$0.state.isGone }
            let row = ClusterStatusRow(cluster: c, instances: instances[c.id] ?? [], now: now)
            put(MetricName.clusterStatus, [c.name, c.status.rawValue], 1)
            put(MetricName.clusterNodes, [c.name], Double(live.count))
            put(MetricName.clusterHourly, [c.name], live.isEmpty ? (c.status == .running ? c.pricePerHour ?? 0 : 0) : live.reduce(0) { $0 + ($1.pricePerHour ?? 0) })
            put(MetricName.clusterCost, [c.name], row.costSoFar)
        }
        return out
    }

    /// Each job's latest metrics point (parsed once per distinct line).
    func latestPoints(_ jobs: [JobRecord]) -> [String: MetricsPoint] {
        parsed.withLock { cache in
            var out: [String: MetricsPoint] = [:]
            var next: [String: (line: String, point: MetricsPoint?)] = [:]
            for j in jobs {
                guard let line = j.metrics else { continue }
                let point = cache[j.id].flatMap { $0.line == line ? $0.point : nil } ?? MetricsPoint.parse(line)
                next[j.id] = (line, point)
                out[j.id] = point
            }
            cache = next
            return out
        }
    }
}

/// One state series: a metric name and its label values (in ``MetricName/labels`` order).
struct SeriesKey: Hashable {
    var name: String
    var labels: [String]
}

/// The metric names (docs/metrics.md).
enum MetricName {
    static let serverInfo = "capstan_server_info"
    static let jobStatus = "capstan_job_status"
    static let jobAttempt = "capstan_job_attempt"
    static let jobRestarts = "capstan_job_restarts"
    static let jobCheckpoint = "capstan_job_checkpoint_step"
    static let jobStep = "capstan_job_step"
    static let jobLoss = "capstan_job_loss"
    static let jobTokens = "capstan_job_tokens_per_second"
    static let jobMetric = "capstan_job_metric"
    static let jobCost = "capstan_job_cost_dollars"
    static let clusterStatus = "capstan_cluster_status"
    static let clusterNodes = "capstan_cluster_nodes"
    static let clusterHourly = "capstan_cluster_hourly_cost_dollars"
    static let clusterCost = "capstan_cluster_cost_dollars"
    static let nodeSampled = "capstan_node_sample_timestamp_seconds"
    static let nodeCPU = "capstan_node_cpu_percent"
    static let nodeMemoryUsed = "capstan_node_memory_used_bytes"
    static let nodeMemoryTotal = "capstan_node_memory_total_bytes"
    static let gpuInfo = "capstan_node_gpu_info"
    static let gpuUtilization = "capstan_node_gpu_utilization_percent"
    static let gpuMemoryUsed = "capstan_node_gpu_memory_used_bytes"
    static let gpuMemoryTotal = "capstan_node_gpu_memory_total_bytes"
    static let gpuTemperature = "capstan_node_gpu_temperature_celsius"
    static let gpuPower = "capstan_node_gpu_power_watts"
    static let checkpointStall = "capstan_checkpoint_stall_seconds"
    static let checkpointUpload = "capstan_checkpoint_upload_seconds"
    static let providerDuration = "capstan_provider_request_duration_seconds"
    static let providerErrors = "capstan_provider_errors_total"

    /// The label names of each state metric, in order.
    static let labels: [String: [String]] = [
        serverInfo: ["version", "store"],
        jobStatus: ["job_id", "name", "status"],
        jobAttempt: ["job_id", "name"],
        jobRestarts: ["job_id", "name"],
        jobCheckpoint: ["job_id", "name"],
        jobStep: ["job_id", "name"],
        jobLoss: ["job_id", "name"],
        jobTokens: ["job_id", "name"],
        jobMetric: ["job_id", "name", "metric"],
        jobCost: ["job_id", "name"],
        nodeSampled: ["job_id", "node"],
        nodeCPU: ["job_id", "node"],
        nodeMemoryUsed: ["job_id", "node"],
        nodeMemoryTotal: ["job_id", "node"],
        gpuInfo: ["job_id", "node", "gpu", "model"],
        gpuUtilization: ["job_id", "node", "gpu"],
        gpuMemoryUsed: ["job_id", "node", "gpu"],
        gpuMemoryTotal: ["job_id", "node", "gpu"],
        gpuTemperature: ["job_id", "node", "gpu"],
        gpuPower: ["job_id", "node", "gpu"],
        clusterStatus: ["cluster", "status"],
        clusterNodes: ["cluster"],
        clusterHourly: ["cluster"],
        clusterCost: ["cluster"],
    ]
}

/// `# HELP` texts and histogram buckets.
enum MetricHelp {
    static let texts: [String: String] = [
        MetricName.serverInfo: "The capstan serve replica answering this scrape (always 1).",
        MetricName.jobStatus: "1 for the job's current status (pending, provisioning, running, restarting, cancelling, succeeded, failed, cancelled).",
        MetricName.jobAttempt: "The job's current (or last) attempt, 1-based; 0 before the first.",
        MetricName.jobRestarts: "Restarts the job has used (counted against its maxRestarts).",
        MetricName.jobCheckpoint: "The newest committed checkpoint step of the job.",
        MetricName.jobStep: "The step of the job's newest metrics line.",
        MetricName.jobLoss: "The loss in the job's newest metrics line.",
        MetricName.jobTokens: "Tokens per second in the job's newest metrics line (tokens_per_s).",
        MetricName.jobMetric: "Any other number in the job's newest metrics line, by key.",
        MetricName.jobCost: "What the job's instances have cost so far, in dollars.",
        MetricName.nodeSampled: "When the node's newest telemetry sample was taken (Unix seconds, the node's clock).",
        MetricName.nodeCPU: "The node's whole-machine CPU use, 0-100, in its newest telemetry sample.",
        MetricName.nodeMemoryUsed: "Memory in use on the node (total less available), bytes.",
        MetricName.nodeMemoryTotal: "The node's memory, bytes.",
        MetricName.gpuInfo: "1 for each GPU of a node, with its model name.",
        MetricName.gpuUtilization: "Percent of the last sample period a kernel ran on the GPU (nvidia-smi utilization.gpu).",
        MetricName.gpuMemoryUsed: "GPU memory in use, bytes.",
        MetricName.gpuMemoryTotal: "The GPU's memory, bytes.",
        MetricName.gpuTemperature: "GPU temperature, degrees Celsius.",
        MetricName.gpuPower: "GPU power draw, watts.",
        MetricName.clusterStatus: "1 for the live cluster's current status.",
        MetricName.clusterNodes: "Live instances of the cluster.",
        MetricName.clusterHourly: "What the cluster's live instances cost per hour, in dollars.",
        MetricName.clusterCost: "What the cluster's instances have cost so far, in dollars.",
        MetricName.checkpointStall: "Seconds a checkpoint stalled the training loop (the leader's checkpoint event), by job; jobs this replica controls.",
        MetricName.checkpointUpload: "Seconds a node took to upload its part of a checkpoint, by job; jobs this replica controls.",
        MetricName.providerDuration: "Latency of compute provider calls (offers, launch, describe, terminate) made by this replica.",
        MetricName.providerErrors: "Compute provider calls made by this replica that failed, by error code.",
    ]

    static func text(_ name: String) -> String { texts[name] ?? "" }
    /// `name` (whole, no unit suffix added) with its help text.
    static func descriptor(_ name: String) -> MetricNameDescriptor { MetricNameDescriptor(metricName: name, unitName: "", helpText: text(name)) }

    static let defaultSeconds: [Duration] = [.milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60)]
    static let stallSeconds: [Duration] = [.milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120)]
    static let uploadSeconds: [Duration] = [.milliseconds(100), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120), .seconds(300), .seconds(600), .seconds(1800)]
}

extension Duration {
    var nanoseconds: Int64 {
        let c = components
        return c.seconds * 1_000_000_000 + c.attoseconds / 1_000_000_000
    }
}
