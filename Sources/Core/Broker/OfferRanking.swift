import Foundation

/// An offer that satisfies a request, priced for the whole cluster.
public struct RankedOffer: Sendable, Hashable, Codable {
    public var offer: Offer
    /// Whether the price assumes spot capacity.
    public var spot: Bool
    public var pricePerNode: Double
    public var nodes: Int
    /// `pricePerNode × nodes`, $/h.
    public var clusterPricePerHour: Double
}

/// An offer that does not satisfy a request, and why (shown by `capstan offers --explain`).
/// The reason is kept structured and formatted only when read: a search over 100,000 offers
/// rejects most of them, and formatting every message would dominate the ranking's cost.
public struct OfferRejection: Error, Sendable, Hashable, Codable {
    enum Why: Sendable, Hashable {
        case provider(String)
        case region(String, [String])
        case noGPU
        case unknownGPU(String)
        case otherGPU(String, String)
        case gpuCount(Int, Int)
        case maxNodes(Int, Int)
        case unavailable
        case noPrice(ResourceRequest.SpotPolicy)
        case overBudget(Double, Int, Double)
        case other(String)
    }
    public var offer: Offer
    let why: Why

    init(offer: Offer, why: Why) {
        self.offer = offer
        self.why = why
    }

    /// A short machine-readable reason: `provider`, `region`, `gpu`, `gpuCount`, `nodes`,
    /// `capacity`, `price`, `budget`.
    public var code: String {
        switch why {
        case .provider: "provider"
        case .region: "region"
        case .noGPU, .unknownGPU, .otherGPU: "gpu"
        case .gpuCount: "gpuCount"
        case .maxNodes: "nodes"
        case .unavailable: "capacity"
        case .noPrice: "price"
        case .overBudget: "budget"
        case .other: "other"
        }
    }

    /// Why, in words.
    public var reason: String {
        switch why {
        case .provider(let p): "provider \(p) not requested"
        case .region(let r, let allowed): "region \(r) not in \(allowed.joined(separator: ","))"
        case .noGPU: "no GPU"
        case .unknownGPU(let name): "GPU '\(name)' is not in Capstan's catalog"
        case .otherGPU(let gpu, let wanted): "GPU \(gpu) is not \(wanted)"
        case .gpuCount(let has, let want): "\(has) GPU(s) per node, not \(want)"
        case .maxNodes(let max, let need): "only \(max) node(s) available, \(need) needed"
        case .unavailable: "no capacity reported"
        case .noPrice(let policy): policy == .only ? "no spot price" : policy == .never ? "no on-demand price" : "no price"
        case .overBudget(let total, let nodes, let cap): String(format: "$%.2f/h for %d node(s) is over the $%.2f/h limit", total, nodes, cap)
        case .other(let s): s
        }
    }

    enum CodingKeys: String, CodingKey { case offer, code, reason }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        offer = try c.decode(Offer.self, forKey: .offer)
        why = .other(try c.decode(String.self, forKey: .reason))
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(offer, forKey: .offer)
        try c.encode(code, forKey: .code)
        try c.encode(reason, forKey: .reason)
    }
}

/// Filters offers by a request and ranks the rest by total cluster $/h. Pure and deterministic.
public enum OfferRanking {
    /// Checks one offer. `acceptedGPUs` is `GPUCatalog.resolve(request.gpu)` (resolved once).
    public static func evaluate(_ offer: Offer, for request: ResourceRequest, acceptedGPUs: Set<String>?) -> Result<RankedOffer, OfferRejection> {
        func reject(_ why: OfferRejection.Why) -> Result<RankedOffer, OfferRejection> { .failure(OfferRejection(offer: offer, why: why)) }
        if !request.providers.isEmpty, !request.providers.contains(offer.provider) {
            return reject(.provider(offer.provider))
        }
        if !request.regions.isEmpty, !request.regions.contains(offer.region), !(offer.zone.map(request.regions.contains) ?? false) {
            return reject(.region(offer.region, request.regions))
        }
        if let accepted = acceptedGPUs {
            guard let gpu = offer.gpu else {
                return reject(offer.gpusPerNode == 0 ? .noGPU : .unknownGPU(offer.gpuName ?? "?"))
            }
            guard accepted.contains(gpu) else { return reject(.otherGPU(gpu, request.gpu ?? "")) }
            guard offer.gpusPerNode >= 1 else { return reject(.noGPU) }
        }
        if let want = request.gpusPerNode, offer.gpusPerNode != want {
            return reject(.gpuCount(offer.gpusPerNode, want))
        }
        if let max = offer.maxNodes, max < request.nodes {
            return reject(.maxNodes(max, request.nodes))
        }
        if offer.availability == .unavailable { return reject(.unavailable) }
        let price: (Double, Bool)?
        switch request.spot {
        case .never: price = offer.onDemandPricePerHour.map { ($0, false) }
        case .only: price = offer.spotPricePerHour.map { ($0, true) }
        case .allowed:
            let candidates = [offer.onDemandPricePerHour.map { ($0, false) }, offer.spotPricePerHour.map { ($0, true) }].compactMap { $0 }
            price = candidates.min { $0.0 < $1.0 }
        }
        guard let (perNode, spot) = price, perNode >= 0, perNode.isFinite else {
            return reject(.noPrice(request.spot))
        }
        let total = perNode * Double(request.nodes)
        if let cap = request.maxPricePerHour, total > cap + 1e-9 {
            return reject(.overBudget(total, request.nodes, cap))
        }
        return .success(RankedOffer(offer: offer, spot: spot, pricePerNode: perNode, nodes: request.nodes, clusterPricePerHour: total))
    }

    /// Splits `offers` into the ones that fit, cheapest cluster first, and the ones that do not.
    /// Ties: better availability, then provider, region, zone and instance type by name.
    public static func rank(_ offers: [Offer], for request: ResourceRequest) throws -> (ranked: [RankedOffer], rejected: [OfferRejection]) {
        try request.validate()
        let accepted = try request.gpu.map(GPUCatalog.resolve)
        var ranked: [RankedOffer] = []
        var rejected: [OfferRejection] = []
        ranked.reserveCapacity(offers.count)
        for offer in offers {
            switch evaluate(offer, for: request, acceptedGPUs: accepted) {
            case .success(let r): ranked.append(r)
            case .failure(let f): rejected.append(f)
            }
        }
        ranked.sort(by: precedes)
        return (ranked, rejected)
    }

    static func availabilityOrder(_ a: Offer.Availability) -> Int {
        switch a {
        case .available: 0
        case .limited: 1
        case .unknown: 2
        case .unavailable: 3
        }
    }

    static func precedes(_ a: RankedOffer, _ b: RankedOffer) -> Bool {
        if a.clusterPricePerHour != b.clusterPricePerHour { return a.clusterPricePerHour < b.clusterPricePerHour }
        let aa = availabilityOrder(a.offer.availability), ba = availabilityOrder(b.offer.availability)
        if aa != ba { return aa < ba }
        if a.offer.provider != b.offer.provider { return a.offer.provider < b.offer.provider }
        if a.offer.region != b.offer.region { return a.offer.region < b.offer.region }
        if (a.offer.zone ?? "") != (b.offer.zone ?? "") { return (a.offer.zone ?? "") < (b.offer.zone ?? "") }
        if a.offer.instanceType != b.offer.instanceType { return a.offer.instanceType < b.offer.instanceType }
        return a.spot == false && b.spot == true
    }
}
