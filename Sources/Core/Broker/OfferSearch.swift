public import Foundation

/// How one provider answered an offer search.
public struct ProviderReport: Sendable, Hashable, Codable {
    public var provider: String
    public var offers: Int
    public var seconds: Double
    /// Why the provider contributed nothing (timeout, auth, plugin failure), if it failed.
    public var error: CapstanError?
    /// When the offers came from the offer cache: when they were fetched.
    public var cachedAt: Date?
}

/// Where ``OfferSearch`` keeps offers between runs (the ``StateStore`` is one).
public protocol OfferCache: Sendable {
    func cachedOffers(provider: String, requestKey: String, maxAge: Duration) async throws -> (offers: [Offer], fetchedAt: Date)?
    func cacheOffers(_ offers: [Offer], provider: String, requestKey: String) async throws
}

/// The outcome of asking every provider for offers.
public struct OfferSearchResult: Sendable, Hashable, Codable {
    public var request: ResourceRequest
    public var ranked: [RankedOffer]
    public var rejected: [OfferRejection]
    public var providers: [ProviderReport]
}

/// Asks every provider for offers at once, each under its own time limit: a slow or failing
/// provider degrades the answer (its report says why) and never blocks it.
public struct OfferSearch: Sendable {
    public var providers: [any ComputeProvider]
    public var timeout: Duration
    /// Serves a provider's offers for its ``ComputeProvider/offerCacheTTL``; nil: always ask.
    public var cache: (any OfferCache)?
    /// Ask every provider even where the cache is fresh (`capstan offers --refresh`).
    public var refresh: Bool

    public init(providers: [any ComputeProvider], timeout: Duration = .seconds(30), cache: (any OfferCache)? = nil, refresh: Bool = false) {
        self.providers = providers
        self.timeout = timeout
        self.cache = cache
        self.refresh = refresh
    }

    /// The part of a request a provider's answer depends on, as a stable string: nodes,
    /// budget and provider filter are applied after gathering, so they do not split the cache.
    static func cacheKey(_ request: ResourceRequest) -> String {
        var r = request
        r.providers = []
        r.maxPricePerHour = nil
        r.nodes = 1
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return (try? e.encode(r)).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    public func run(_ request: ResourceRequest) async throws -> OfferSearchResult {
        try request.validate()
        let wanted = providers.filter { request.providers.isEmpty || request.providers.contains($0.name) }
        if !request.providers.isEmpty {
            let known = Set(providers.map(\.name))
            if let missing = request.providers.first(where: { !known.contains($0) }) {
                throw CapstanError(.invalidRequest, "Provider '\(missing)' is not enabled.", hint: "Enabled: \(known.sorted().joined(separator: ", ")). See `capstan plugins list`.")
            }
        }
        // Each `anyOf` entry is its own question to every provider (a provider may filter by
        // GPU); the answers are pooled, each offer once, and ranked together.
        let asks = request.alternatives
        var offers: [Offer] = []
        var reports: [ProviderReport] = []
        if asks.count == 1 {
            (reports, offers) = await gather(request, from: wanted)
        } else {
            var answers: [(Int, [ProviderReport], [Offer])] = []
            await withTaskGroup(of: (Int, [ProviderReport], [Offer]).self) { group in
                for (i, ask) in asks.enumerated() {
                    group.addTask { let (r, o) = await gather(ask, from: wanted); return (i, r, o) }
                }
                for await answer in group { answers.append(answer) }
            }
            var seen = Set<String>()
            var byProvider: [String: ProviderReport] = [:]
            for (_, found, list) in answers.sorted(by: { $0.0 < $1.0 }) {
                for o in list where seen.insert(o.id).inserted { offers.append(o) }
                for r in found {
                    guard var merged = byProvider[r.provider] else { byProvider[r.provider] = r; continue }
                    merged.offers += r.offers
                    merged.seconds = max(merged.seconds, r.seconds)
                    merged.error = merged.error ?? r.error
                    merged.cachedAt = [merged.cachedAt, r.cachedAt].compactMap { $0 }.min()
                    byProvider[r.provider] = merged
                }
            }
            reports = Array(byProvider.values)
        }
        reports.sort { $0.provider < $1.provider }
        let (ranked, rejected) = try OfferRanking.rank(offers, for: request)
        return OfferSearchResult(request: request, ranked: ranked, rejected: rejected, providers: reports)
    }

    /// Asks every provider in `wanted` for offers for `request` (one GPU), each under the time
    /// limit, through the cache.
    func gather(_ request: ResourceRequest, from wanted: [any ComputeProvider]) async -> ([ProviderReport], [Offer]) {
        let limit = timeout
        let cache = self.cache
        let refresh = self.refresh
        let key = Self.cacheKey(request)
        var offers: [Offer] = []
        var reports: [ProviderReport] = []
        await withTaskGroup(of: (ProviderReport, [Offer]).self) { group in
            for provider in wanted {
                group.addTask {
                    let start = ContinuousClock.now
                    let ttl = provider.offerCacheTTL
                    if !refresh, ttl > .zero, let cache, let hit = try? await cache.cachedOffers(provider: provider.name, requestKey: key, maxAge: ttl) {
                        let secs = (ContinuousClock.now - start).seconds
                        return (ProviderReport(provider: provider.name, offers: hit.offers.count, seconds: secs, cachedAt: hit.fetchedAt), hit.offers)
                    }
                    do {
                        var found = try await withDeadline(limit, provider: provider.name) { try await provider.offers(for: request) }
                        // In place, and only where a GPU id is missing: no second copy of a
                        // 100,000-offer catalog.
                        for k in found.indices where found[k].gpu == nil && found[k].gpuName != nil { found[k] = found[k].normalized() }
                        let secs = (ContinuousClock.now - start).seconds
                        if ttl > .zero, let cache { try? await cache.cacheOffers(found, provider: provider.name, requestKey: key) }
                        return (ProviderReport(provider: provider.name, offers: found.count, seconds: secs), found)
                    } catch {
                        let secs = (ContinuousClock.now - start).seconds
                        let e = (error as? CapstanError)?.attributed(to: provider.name)
                            ?? CapstanError(.internalError, "\(error)", provider: provider.name)
                        return (ProviderReport(provider: provider.name, offers: 0, seconds: secs, error: e), [])
                    }
                }
            }
            for await (report, found) in group {
                reports.append(report)
                offers.append(contentsOf: found)
            }
        }
        return (reports, offers)
    }
}

extension Duration {
    /// The duration in seconds as a Double.
    package var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}

/// Runs `body`, failing with `.timeout` after `limit`. The body is cancelled on timeout.
package func withDeadline<T: Sendable>(_ limit: Duration, provider: String? = nil, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw CapstanError(.timeout, "No answer within \(limit).", hint: "The provider may be slow or unreachable; it is skipped for this search.", provider: provider)
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
