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
public struct OfferRejection: Error, Sendable, Hashable, Codable {
    public var offer: Offer
    public var reason: String
}

/// Filters offers by a request and ranks the rest by total cluster $/h. Pure and deterministic.
public enum OfferRanking {
    /// Checks one offer. `acceptedGPUs` is `GPUCatalog.resolve(request.gpu)` (resolved once).
    public static func evaluate(_ offer: Offer, for request: ResourceRequest, acceptedGPUs: Set<String>?) -> Result<RankedOffer, OfferRejection> {
        func reject(_ why: String) -> Result<RankedOffer, OfferRejection> { .failure(OfferRejection(offer: offer, reason: why)) }
        if !request.providers.isEmpty, !request.providers.contains(offer.provider) {
            return reject("provider \(offer.provider) not requested")
        }
        if !request.regions.isEmpty, !request.regions.contains(offer.region), !(offer.zone.map(request.regions.contains) ?? false) {
            return reject("region \(offer.region) not in \(request.regions.joined(separator: ","))")
        }
        if let accepted = acceptedGPUs {
            guard let gpu = offer.gpu else {
                return reject(offer.gpusPerNode == 0 ? "no GPU" : "GPU '\(offer.gpuName ?? "?")' is not in Capstan's catalog")
            }
            guard accepted.contains(gpu) else { return reject("GPU \(gpu) is not \(request.gpu ?? "")") }
            guard offer.gpusPerNode >= 1 else { return reject("no GPU") }
        }
        if let want = request.gpusPerNode, offer.gpusPerNode != want {
            return reject("\(offer.gpusPerNode) GPU(s) per node, not \(want)")
        }
        if let max = offer.maxNodes, max < request.nodes {
            return reject("only \(max) node(s) available, \(request.nodes) needed")
        }
        if offer.availability == .unavailable { return reject("no capacity reported") }
        let price: (Double, Bool)?
        switch request.spot {
        case .never: price = offer.onDemandPricePerHour.map { ($0, false) }
        case .only: price = offer.spotPricePerHour.map { ($0, true) }
        case .allowed:
            let candidates = [offer.onDemandPricePerHour.map { ($0, false) }, offer.spotPricePerHour.map { ($0, true) }].compactMap { $0 }
            price = candidates.min { $0.0 < $1.0 }
        }
        guard let (perNode, spot) = price, perNode >= 0, perNode.isFinite else {
            return reject(request.spot == .only ? "no spot price" : request.spot == .never ? "no on-demand price" : "no price")
        }
        let total = perNode * Double(request.nodes)
        if let cap = request.maxPricePerHour, total > cap + 1e-9 {
            return reject(String(format: "$%.2f/h for %d node(s) is over the $%.2f/h limit", total, request.nodes, cap))
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
