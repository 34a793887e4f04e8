public import CapstanCore
public import Foundation

/// `GET /v1/overview`: the dashboard's front page in one answer — every live cluster with its
/// price and cost so far, and the newest jobs with their progress and cost — computed by the
/// server in one pass over the state (instead of a request per job).
public struct OverviewResponse: Sendable, Codable, Hashable {
    /// When the server computed it (costs are as of this time).
    public var generatedAt: Date
    /// Live clusters (provisioning, running, terminating), newest first.
    public var clusters: [OverviewCluster]
    /// Jobs newest first, at most the request's `limit`.
    public var jobs: [OverviewJob]
    public init(generatedAt: Date, clusters: [OverviewCluster], jobs: [OverviewJob]) {
        self.generatedAt = generatedAt
        self.clusters = clusters
        self.jobs = jobs
    }
}

/// One cluster of ``OverviewResponse``.
public struct OverviewCluster: Sendable, Codable, Hashable {
    public var id: String
    public var name: String
    public var status: ClusterStatus
    public var provider: String?
    public var region: String?
    public var instanceType: String?
    /// GPUs per node and their model, when the offer has them.
    public var gpusPerNode: Int?
    public var gpu: String?
    public var nodes: Int
    public var spot: Bool
    /// The whole cluster's price, $/h (nil before it is provisioned).
    public var pricePerHour: Double?
    /// What its instances have cost so far, $.
    public var costSoFar: Double
    public var uptimeSeconds: Double
    public var createdAt: Date

    /// The row for ``ClusterStatusRow``'s data.
    public init(_ row: ClusterStatusRow) {
        let c = row.cluster
        id = c.id
        name = c.name
        status = c.status
        provider = c.offer?.provider
        region = c.offer?.region
        instanceType = c.offer?.instanceType
        gpusPerNode = c.offer.map(\.gpusPerNode)
        gpu = c.offer?.gpuName ?? c.offer?.gpu
        nodes = c.nodes
        spot = c.spot
        pricePerHour = c.pricePerHour
        costSoFar = row.costSoFar
        uptimeSeconds = row.uptimeSeconds
        createdAt = c.createdAt
    }
}

/// One job of ``OverviewResponse``: its record's headline fields and what its newest metrics
/// line says.
public struct OverviewJob: Sendable, Codable, Hashable {
    public var id: String
    public var name: String
    public var status: JobStatus
    public var attempt: Int
    public var restarts: Int
    public var cluster: String
    /// Nodes the spec asks for (nil when the spec cannot be read).
    public var nodes: Int?
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    /// The newest metrics line's `step`, and the total when that line says it (`total_steps`
    /// or `max_steps`).
    public var step: Int?
    public var totalSteps: Int?
    public var loss: Double?
    public var tokensPerSecond: Double?
    public var latestCheckpoint: Int?
    /// What the job has cost so far, $ (nil when the server cannot tell).
    public var cost: Double?
    public var lastError: String?

    /// The row for `job`; `nodes` from its spec, `cost` from the state's cost accounting.
    public init(_ job: JobRecord, nodes: Int?, cost: Double?) {
        id = job.id
        name = job.name
        status = job.status
        attempt = job.attempt
        restarts = job.restarts
        cluster = job.clusterName
        self.nodes = nodes
        createdAt = job.createdAt
        startedAt = job.startedAt
        finishedAt = job.finishedAt
        latestCheckpoint = job.latestCheckpoint
        self.cost = cost
        lastError = job.lastError
        if let line = job.metrics, let data = line.data(using: .utf8),
           let object = try? JSONDecoder().decode([String: JSONValue].self, from: data) {
            func number(_ key: String) -> Double? {
                if case .number(let n)? = object[key], n.isFinite { return n }
                return nil
            }
            step = number("step").flatMap { Int(exactly: $0) }
            totalSteps = (number("total_steps") ?? number("max_steps")).flatMap { Int(exactly: $0) }
            loss = number("loss")
            tokensPerSecond = number("tokens_per_s")
        }
    }
}
