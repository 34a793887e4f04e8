import Foundation

/// How one provider answered an offer search.
public struct ProviderReport: Sendable, Hashable, Codable {
    public var provider: String
    public var offers: Int
    public var seconds: Double
    /// Why the provider contributed nothing (timeout, auth, plugin failure), if it failed.
    public var error: CapstanError?
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

    public init(providers: [any ComputeProvider], timeout: Duration = .seconds(30)) {
        self.providers = providers
        self.timeout = timeout
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
        let limit = timeout
        var offers: [Offer] = []
        var reports: [ProviderReport] = []
        await withTaskGroup(of: (ProviderReport, [Offer]).self) { group in
            for provider in wanted {
                group.addTask {
                    let start = ContinuousClock.now
                    do {
                        let found = try await withDeadline(limit, provider: provider.name) { try await provider.offers(for: request) }
                        let secs = (ContinuousClock.now - start).seconds
                        return (ProviderReport(provider: provider.name, offers: found.count, seconds: secs), found.map { $0.normalized() })
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
        reports.sort { $0.provider < $1.provider }
        let (ranked, rejected) = try OfferRanking.rank(offers, for: request)
        return OfferSearchResult(request: request, ranked: ranked, rejected: rejected, providers: reports)
    }
}

extension Duration {
    /// The duration in seconds as a Double.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}

/// Runs `body`, failing with `.timeout` after `limit`. The body is cancelled on timeout.
public func withDeadline<T: Sendable>(_ limit: Duration, provider: String? = nil, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
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
