public import Foundation

// What a node agent samples of its machine (CPU, memory, GPUs) and ships with its heartbeat;
// the job controller keeps the newest sample per job and node in the state store
// (``TelemetryRepository``), and `capstan jobs`, `capstan top`, the API
// (`GET /v1/jobs/:id/telemetry`), the dashboard and `/metrics` read it from there.

/// One sample of one node of a job: its machine's CPU and memory use and each GPU's state.
public struct NodeTelemetry: Sendable, Hashable, Codable {
    /// The job's id.
    public var job: String
    /// The node's index in the job (0 is the leader).
    public var node: Int
    /// The attempt the sampling agent runs.
    public var attempt: Int
    /// When the agent took the sample (the node's clock).
    public var sampledAt: Date
    /// The whole machine's CPU use since the previous sample, 0–100 (not per core).
    public var cpuPercent: Double
    /// Memory in use (total less available), bytes.
    public var memoryUsedBytes: Int64
    public var memoryTotalBytes: Int64
    /// One entry per GPU `nvidia-smi` lists; empty on a machine without one (or without nvidia-smi).
    public var gpus: [GPUSample]

    public init(job: String, node: Int, attempt: Int, sampledAt: Date, cpuPercent: Double, memoryUsedBytes: Int64, memoryTotalBytes: Int64, gpus: [GPUSample] = []) {
        self.job = job
        self.node = node
        self.attempt = attempt
        self.sampledAt = sampledAt
        self.cpuPercent = cpuPercent
        self.memoryUsedBytes = memoryUsedBytes
        self.memoryTotalBytes = memoryTotalBytes
        self.gpus = gpus
    }
}

/// One GPU as `nvidia-smi --query-gpu` reports it. A value nvidia-smi gives as `[N/A]` (or
/// `[Not Supported]`) is nil.
public struct GPUSample: Sendable, Hashable, Codable {
    /// nvidia-smi's index of the GPU on its machine.
    public var index: Int
    /// The product name ("NVIDIA H100 80GB HBM3").
    public var name: String
    /// Percent of the last sample period a kernel ran, 0–100.
    public var utilizationPercent: Double?
    public var memoryUsedMiB: Double?
    public var memoryTotalMiB: Double?
    public var temperatureC: Double?
    /// Power draw, watts.
    public var powerW: Double?

    public init(index: Int, name: String, utilizationPercent: Double? = nil, memoryUsedMiB: Double? = nil, memoryTotalMiB: Double? = nil, temperatureC: Double? = nil, powerW: Double? = nil) {
        self.index = index
        self.name = name
        self.utilizationPercent = utilizationPercent
        self.memoryUsedMiB = memoryUsedMiB
        self.memoryTotalMiB = memoryTotalMiB
        self.temperatureC = temperatureC
        self.powerW = powerW
    }
}

/// The newest telemetry sample of each node of each job.
public protocol TelemetryRepository: Sendable {
    /// Keeps `t` as the newest sample of its job and node (replacing the one kept before).
    func saveTelemetry(_ t: NodeTelemetry) async throws
    /// The newest sample of each node of the job `id`, by node; empty when none was kept.
    func telemetry(job id: String) async throws -> [NodeTelemetry]
}
