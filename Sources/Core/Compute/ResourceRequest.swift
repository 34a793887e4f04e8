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
    /// `resources.anyOf`: GPU alternatives ranked together by price (``Alternative``); set,
    /// `gpu` and `gpusPerNode` stay nil and every other field applies to each alternative.
    /// Nil: the one GPU of `gpu`/`gpusPerNode`.
    public var anyOf: [Alternative]?

    /// One entry of `anyOf`: a GPU and its count per node.
    public struct Alternative: Sendable, Hashable, Codable {
        public var gpu: String?
        public var gpusPerNode: Int?
        public init(gpu: String? = nil, gpusPerNode: Int? = nil) {
            self.gpu = gpu
            self.gpusPerNode = gpusPerNode
        }
        /// `H100×8`, `A100-80GB`, `any GPU×4`.
        public var description: String { (gpu ?? "any GPU") + (gpusPerNode.map { "×\($0)" } ?? "") }
    }

    public init(
        gpu: String? = nil, gpusPerNode: Int? = nil, nodes: Int = 1, regions: [String] = [],
        spot: SpotPolicy = .never, maxPricePerHour: Double? = nil, providers: [String] = [], anyOf: [Alternative]? = nil
    ) {
        self.anyOf = anyOf
        self.gpu = gpu
        self.gpusPerNode = gpusPerNode
        self.nodes = nodes
        self.regions = regions
        self.spot = spot
        self.maxPricePerHour = maxPricePerHour
        self.providers = providers
    }

    /// The requests a provider is asked and an offer is checked against: one per `anyOf`
    /// entry (its GPU and count, the rest of this request), or this request alone.
    public var alternatives: [ResourceRequest] {
        guard let anyOf else { return [self] }
        return anyOf.map { alt in
            var r = self
            r.anyOf = nil
            r.gpu = alt.gpu
            r.gpusPerNode = alt.gpusPerNode
            return r
        }
    }

    /// The GPU asked for, in words (`H100`, `H100×8 or A100-80GB×8`); nil: any.
    public var gpuDescription: String? {
        if let anyOf { return anyOf.map(\.description).joined(separator: " or ") }
        return gpu
    }

    /// The most `anyOf` entries a request may list (each is a search of every provider).
    public static let maxAlternatives = 8

    /// Checks the request itself (not against any offer). Throws `.invalidRequest`.
    public func validate() throws {
        if let anyOf {
            guard !anyOf.isEmpty else {
                throw CapstanError(.invalidRequest, "anyOf is an empty list.", hint: "List at least one alternative, e.g. anyOf: [{gpu: H100, gpusPerNode: 8}, {gpu: A100-80GB, gpusPerNode: 8}], or use gpu and gpusPerNode.")
            }
            guard gpu == nil, gpusPerNode == nil else {
                throw CapstanError(.invalidRequest, "anyOf goes with neither gpu nor gpusPerNode: each alternative names its own.", hint: "Move gpu and gpusPerNode into the anyOf entries.")
            }
            guard anyOf.count <= Self.maxAlternatives else {
                throw CapstanError(.invalidRequest, "anyOf lists \(anyOf.count) alternatives; at most \(Self.maxAlternatives) are searched.", hint: "Keep the alternatives you would really run on.")
            }
            for (i, alt) in anyOf.enumerated() {
                guard alt.gpu != nil || alt.gpusPerNode != nil else {
                    throw CapstanError(.invalidRequest, "anyOf[\(i)] names neither gpu nor gpusPerNode.", hint: "Give each alternative a gpu (and usually gpusPerNode), e.g. {gpu: A100-80GB, gpusPerNode: 8}.")
                }
                if let j = anyOf[..<i].firstIndex(of: alt) {
                    throw CapstanError(.invalidRequest, "anyOf[\(i)] repeats anyOf[\(j)] (\(alt.description)).", hint: "List each alternative once.")
                }
                do { try alternatives[i].validate() } catch let e as CapstanError {
                    throw CapstanError(.invalidRequest, "anyOf[\(i)]: \(e.message)", hint: e.hint)
                }
            }
            return
        }
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
