public import CapstanCore

/// A compute provider that times every call of the one it wraps and counts its failures by
/// error code (`capstan_provider_request_duration_seconds`, `capstan_provider_errors_total`),
/// for `/metrics`. Behaves exactly as the wrapped provider otherwise.
public struct MeteredComputeProvider: ComputeProvider {
    public let base: any ComputeProvider
    let metrics: ServerMetrics

    public init(_ base: any ComputeProvider, metrics: ServerMetrics = .shared) {
        self.base = base
        self.metrics = metrics
    }

    public var name: String { base.name }
    public var offerCacheTTL: Duration { base.offerCacheTTL }
    public var bootPollInterval: Duration? { base.bootPollInterval }
    public var readyTimeout: Duration? { base.readyTimeout }
    public var allocatesGangs: Bool { base.allocatesGangs }

    public func offers(for request: ResourceRequest) async throws -> [Offer] {
        try await timed("offers") { try await base.offers(for: request) }
    }

    public func launch(_ request: LaunchRequest) async throws -> [Instance] {
        try await timed("launch") { try await base.launch(request) }
    }

    public func describe(_ query: InstanceQuery) async throws -> [Instance] {
        try await timed("describe") { try await base.describe(query) }
    }

    public func terminate(ids: [String]) async throws -> [Instance] {
        try await timed("terminate") { try await base.terminate(ids: ids) }
    }

    func timed<T>(_ operation: String, _ call: () async throws -> T) async throws -> T {
        let start = ContinuousClock.now
        do {
            let result = try await call()
            metrics.providerCall(base.name, operation, ContinuousClock.now - start, error: nil)
            return result
        } catch {
            metrics.providerCall(base.name, operation, ContinuousClock.now - start, error: error)
            throw error
        }
    }
}
