public import Foundation

/// An offer that satisfies a request, priced for the whole cluster.
public struct RankedOffer: Sendable, Hashable, Codable {
    public var offer: Offer
    /// Whether the price assumes spot capacity.
    public var spot: Bool
    public var pricePerNode: Double
    public var nodes: Int
    /// `pricePerNode × nodes`, $/h.
    public var clusterPricePerHour: Double
    /// The `resources.anyOf` entry it fits (the first that does), by index; nil without anyOf.
    public var alternative: Int? = nil
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
        switch verdict(offer, for: request, acceptedGPUs: acceptedGPUs) {
        case .fit(let price, let spot):
            return .success(RankedOffer(offer: offer, spot: spot, pricePerNode: price, nodes: request.nodes, clusterPricePerHour: price * Double(request.nodes)))
        case .reject(let why):
            return .failure(OfferRejection(offer: offer, why: why))
        }
    }

    /// Splits `offers` into the ones that fit, cheapest cluster first, and the ones that do not.
    /// Ties: better availability, then provider, region, zone and instance type by name.
    ///
    /// Works on indices and copies each offer once, into its result: an `Offer` is a large
    /// struct, and copying 100,000 of them per pass (or moving them while sorting) is what
    /// costs time here.
    public static func rank(_ offers: [Offer], for request: ResourceRequest) throws -> (ranked: [RankedOffer], rejected: [OfferRejection]) {
        try request.validate()
        // One request per `anyOf` entry (or the request alone): an offer fits when one of them
        // fits it, and ranks at its price (the same for every entry: only the GPU differs).
        // At the same price the entry listed first wins, then the usual tie-break.
        let alternatives = request.alternatives
        let accepted = try alternatives.map { try $0.gpu.map(GPUCatalog.resolve) }
        var fits: [(index: Int, price: Double, spot: Bool, alternative: Int)] = []
        var misses: [(index: Int, why: OfferRejection.Why)] = []
        misses.reserveCapacity(offers.count)
        offers.withUnsafeBufferPointer { buffer in
            for i in buffer.indices {
                var miss: OfferRejection.Why?
                var fit: (price: Double, spot: Bool, alternative: Int)?
                for a in alternatives.indices {
                    switch verdict(buffer[i], for: alternatives[a], acceptedGPUs: accepted[a]) {
                    case .fit(let price, let spot): fit = (price, spot, a)
                    case .reject(let why):
                        // The most telling reason: an entry whose GPU matched says more than
                        // "not an H100" from the entries whose GPU did not.
                        if miss == nil || (Self.isOtherGPU(miss!) && !Self.isOtherGPU(why)) { miss = why }
                    }
                    if fit != nil { break }
                }
                if let fit { fits.append((i, fit.price, fit.spot, fit.alternative)) } else if let miss { misses.append((i, miss)) }
            }
            fits.sort { a, b in
                if a.price != b.price { return a.price < b.price }
                if a.alternative != b.alternative { return a.alternative < b.alternative }
                return tieBreak(buffer[a.index], a.spot, buffer[b.index], b.spot)
            }
        }
        let marked = request.anyOf != nil
        let ranked = fits.map { f in
            RankedOffer(offer: offers[f.index], spot: f.spot, pricePerNode: f.price, nodes: request.nodes, clusterPricePerHour: f.price * Double(request.nodes), alternative: marked ? f.alternative : nil)
        }
        let rejected = misses.map { OfferRejection(offer: offers[$0.index], why: $0.why) }
        return (ranked, rejected)
    }

    static func isOtherGPU(_ why: OfferRejection.Why) -> Bool {
        switch why {
        case .otherGPU, .noGPU, .unknownGPU: true
        default: false
        }
    }

    enum Verdict {
        case fit(pricePerNode: Double, spot: Bool)
        case reject(OfferRejection.Why)
    }

    /// The decision for one offer, without copying it.
    static func verdict(_ offer: borrowing Offer, for request: ResourceRequest, acceptedGPUs: Set<String>?) -> Verdict {
        if !request.providers.isEmpty, !request.providers.contains(offer.provider) { return .reject(.provider(offer.provider)) }
        if !request.regions.isEmpty, !request.regions.contains(offer.region), !(offer.zone.map(request.regions.contains) ?? false) {
            return .reject(.region(offer.region, request.regions))
        }
        if let accepted = acceptedGPUs {
            guard let gpu = offer.gpu else { return .reject(offer.gpusPerNode == 0 ? .noGPU : .unknownGPU(offer.gpuName ?? "?")) }
            guard accepted.contains(gpu) else { return .reject(.otherGPU(gpu, request.gpu ?? "")) }
            guard offer.gpusPerNode >= 1 else { return .reject(.noGPU) }
        }
        if let want = request.gpusPerNode, offer.gpusPerNode != want { return .reject(.gpuCount(offer.gpusPerNode, want)) }
        if let max = offer.maxNodes, max < request.nodes { return .reject(.maxNodes(max, request.nodes)) }
        if offer.availability == .unavailable { return .reject(.unavailable) }
        let price: (Double, Bool)?
        switch request.spot {
        case .never: price = offer.onDemandPricePerHour.map { ($0, false) }
        case .only: price = offer.spotPricePerHour.map { ($0, true) }
        case .allowed:
            switch (offer.onDemandPricePerHour, offer.spotPricePerHour) {
            case (let od?, let sp?): price = sp < od ? (sp, true) : (od, false)
            case (let od?, nil): price = (od, false)
            case (nil, let sp?): price = (sp, true)
            case (nil, nil): price = nil
            }
        }
        guard let (perNode, spot) = price, perNode >= 0, perNode.isFinite else { return .reject(.noPrice(request.spot)) }
        let total = perNode * Double(request.nodes)
        if let cap = request.maxPricePerHour, total > cap + 1e-9 { return .reject(.overBudget(total, request.nodes, cap)) }
        return .fit(pricePerNode: perNode, spot: spot)
    }

    static func availabilityOrder(_ a: Offer.Availability) -> Int {
        switch a {
        case .available: 0
        case .limited: 1
        case .unknown: 2
        case .unavailable: 3
        }
    }

    /// Order of two offers at the same price.
    static func tieBreak(_ a: borrowing Offer, _ aSpot: Bool, _ b: borrowing Offer, _ bSpot: Bool) -> Bool {
        let aa = availabilityOrder(a.availability), ba = availabilityOrder(b.availability)
        if aa != ba { return aa < ba }
        if a.provider != b.provider { return a.provider < b.provider }
        if a.region != b.region { return a.region < b.region }
        if (a.zone ?? "") != (b.zone ?? "") { return (a.zone ?? "") < (b.zone ?? "") }
        if a.instanceType != b.instanceType { return a.instanceType < b.instanceType }
        return !aSpot && bSpot
    }
}
