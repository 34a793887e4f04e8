/// What a user asks for: "2 nodes of 8×H100, spot if cheaper, under $60/h".
public struct ResourceRequest: Sendable, Hashable, Codable {
    /// Whether spot (preemptible) capacity may be used.
    public enum SpotPolicy: String, Sendable, Hashable, Codable, CaseIterable {
        /// On-demand only.
        case never
        /// Spot where it is cheaper; on-demand otherwise.
        case allowed
        /// Spot only.
        case only
    }

    /// GPU as the user wrote it (`H100`, `A100-80GB`, `H100-PCIe`); nil accepts any, CPU included.
    public var gpu: String?
    /// GPUs per node; nil accepts any count (at least one when `gpu` is set).
    public var gpusPerNode: Int?
    /// Nodes in the cluster, all in one region (and zone where the cloud has zones).
    public var nodes: Int
    /// Allowed regions; empty allows all.
    public var regions: [String]
    public var spot: SpotPolicy
    /// Ceiling on the whole cluster's price in $/h.
    public var maxPricePerHour: Double?
    /// Restrict to these providers; empty allows all configured ones.
    public var providers: [String]

    public init(
        gpu: String? = nil, gpusPerNode: Int? = nil, nodes: Int = 1, regions: [String] = [],
        spot: SpotPolicy = .never, maxPricePerHour: Double? = nil, providers: [String] = []
    ) {
        self.gpu = gpu
        self.gpusPerNode = gpusPerNode
        self.nodes = nodes
        self.regions = regions
        self.spot = spot
        self.maxPricePerHour = maxPricePerHour
        self.providers = providers
    }

    /// Checks the request itself (not against any offer). Throws `.invalidRequest`.
    public func validate() throws {
        if let gpu { _ = try GPUCatalog.resolve(gpu) }
        // Zero is no count of GPUs a request can mean: leaving the count out (nil) accepts any,
        // CPU-only offers included when no GPU is named.
        if let g = gpusPerNode, g < 1 || g > 64 {
            throw CapstanError(.invalidRequest, "GPUs per node must be between 1 and 64, got \(g).", hint: "Leave the GPU count out to accept any count.")
        }
        if nodes < 1 || nodes > 1024 {
            throw CapstanError(.invalidRequest, "Nodes must be between 1 and 1024, got \(nodes).")
        }
        if let p = maxPricePerHour, !(p > 0) {
            throw CapstanError(.invalidRequest, "Max price must be a positive $/h figure, got \(p).")
        }
    }
}
