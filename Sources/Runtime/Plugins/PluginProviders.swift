public import CapstanCore
import Crypto
public import Foundation

/// A ``ComputeProvider`` backed by a loaded plugin: every call crosses the C ABI as JSON.
public struct PluginComputeProvider: ComputeProvider {
    public let instance: PluginInstance
    public var name: String { instance.name }
    /// Retries of `offers`, `describe` and `terminate` on `rateLimited`/`transient` (`launch` is
    /// retried by the broker, with the same idempotency key: ``ProvisionOptions/launchRetries``).
    public var retry = PluginRetry()
    public var offerCacheTTL: Duration {
        .milliseconds(Int64((instance.library.manifest.offerCacheSeconds ?? 600) * 1000))
    }

    public init(_ instance: PluginInstance) throws {
        guard instance.library.manifest.capabilities.contains(.compute) else {
            throw CapstanError(.unsupported, "Plugin '\(instance.name)' does not provide compute.", provider: instance.name)
        }
        self.instance = instance
    }

    public func offers(for request: ResourceRequest) async throws -> [Offer] {
        let body = try PluginWire.encoder.encode(request)
        let instance = self.instance
        let answer = try await retry.run { try await instance.invoke(PluginWire.Method.offers, request: body) }
        // A catalog can hold 100,000 offers: read by hand (OfferJSON) when the answer has the
        // usual shape; anything else goes through JSONDecoder, which accepts or refuses it with
        // its own error (so the fast path changes neither).
        var offers = try OfferJSON.decodeResponse(answer) ?? instance.decode(answer, of: PluginWire.Method.offers, as: PluginWire.OffersResponse.self).offers
        // The host owns naming: whatever the plugin claims, offers carry its name and a
        // normalized GPU id. (In place: no second array of 100,000 offers.)
        let name = self.name
        for k in offers.indices {
            if offers[k].gpu == nil { offers[k] = offers[k].normalized() }
            offers[k].provider = name
        }
        return offers
    }

    public func launch(_ request: LaunchRequest) async throws -> [Instance] {
        try await instance.call(PluginWire.Method.launch, request, as: PluginWire.InstancesResponse.self).instances
    }

    public func describe(_ query: InstanceQuery) async throws -> [Instance] {
        try await retry.run {
            try await instance.call(PluginWire.Method.describe, query, as: PluginWire.InstancesResponse.self).instances
        }
    }

    public func terminate(ids: [String]) async throws -> [Instance] {
        try await retry.run {
            try await instance.call(PluginWire.Method.terminate, PluginWire.TerminateRequest(ids: ids), as: PluginWire.InstancesResponse.self).instances
        }
    }
}

/// An ``ObjectStore`` backed by a loaded plugin, pointed at one bucket `location`.
/// Transfers may take long, so they run without the default call timeout unless one is given.
public struct PluginObjectStore: ObjectStore {
    public let instance: PluginInstance
    public let location: String
    /// Limit for one transfer; nil means no limit (progress keeps the user informed).
    public var transferTimeout: Duration?
    /// Retries of every storage call on `rateLimited`/`transient` (a put is whole or not at all).
    public var retry = PluginRetry()

    public init(_ instance: PluginInstance, location: String, transferTimeout: Duration? = nil) throws {
        guard instance.library.manifest.capabilities.contains(.storage) else {
            throw CapstanError(.unsupported, "Plugin '\(instance.name)' does not provide storage.", provider: instance.name)
        }
        try ObjectKey.validateLocation(location)
        self.instance = instance
        self.location = location
        self.transferTimeout = transferTimeout
    }

    private var longTimeout: Duration { transferTimeout ?? .seconds(7 * 24 * 3600) }

    public func put(file path: String, key: String, options: PutOptions, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        try ObjectKey.validate(key)
        let tries = LockedBox(0)
        do {
            return try await retry.run {
                tries.withLock { $0 += 1 }
                return try await instance.call(PluginWire.Method.put, PluginWire.PutRequest(location: location, file: path, key: key, options: options), as: ObjectInfo.self, timeout: longTimeout, progress: progress)
            }
        } catch let e as CapstanError where options.ifNoneMatch && e.cloudCode == "PreconditionFailed" && tries.withLock({ $0 }) > 1 {
            // A retried no-overwrite put that finds the object: an earlier try may have written
            // it and lost its answer. The same bytes are this put's success.
            if let there = try await head(key: key), let sha = there.sha256, sha == (try options.expectedSHA256 ?? Self.sha256(file: path)) {
                return there
            }
            throw e
        }
    }

    /// The SHA-256 (hex) of the file at `path`.
    static func sha256(file path: String) throws -> String {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw CapstanError(.io, "Cannot read \(path) to check its upload.", hint: "Check the file exists and is readable.")
        }
        defer { try? h.close() }
        var sha = SHA256()
        while let d = try h.read(upToCount: 8 << 20), !d.isEmpty { sha.update(data: d) }
        return sha.finalize().map { String(format: "%02x", $0) }.joined()
    }

    public func get(key: String, to path: String, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        try ObjectKey.validate(key)
        return try await retry.run { try await instance.call(PluginWire.Method.get, PluginWire.GetRequest(location: location, key: key, file: path), as: ObjectInfo.self, timeout: longTimeout, progress: progress) }
    }

    public func list(prefix: String) async throws -> [ObjectInfo] {
        try ObjectKey.validatePrefix(prefix)
        return try await retry.run { try await instance.call(PluginWire.Method.list, PluginWire.ListRequest(location: location, prefix: prefix), as: PluginWire.ListResponse.self).objects }
    }

    public func head(key: String) async throws -> ObjectInfo? {
        try ObjectKey.validate(key)
        return try await retry.run { try await instance.call(PluginWire.Method.head, PluginWire.KeyRequest(location: location, key: key), as: PluginWire.HeadResponse.self).object }
    }

    public func delete(key: String) async throws {
        try ObjectKey.validate(key)
        _ = try await retry.run { try await instance.call(PluginWire.Method.delete, PluginWire.KeyRequest(location: location, key: key), as: PluginWire.Empty.self) }
    }
}

/// The host's retry of a plugin call answered `rateLimited` or `transient`: the plugin's
/// `retryAfterSeconds` when it gives one (capped at `maxWait`), else jittered exponential
/// backoff; `maxRetries` retries, then the last error. Every other code fails at once.
public struct PluginRetry: Sendable {
    public var maxRetries = 4
    public var backoff = Backoff(initial: .milliseconds(500), max: .seconds(20))
    /// The longest wait a `retryAfterSeconds` may ask for.
    public var maxWait: Duration = .seconds(60)
    /// Waits between tries; a test may record them.
    public var pause: @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }

    public init() {}

    /// Runs `body`, again after each retryable failure, until it succeeds or the retries are spent.
    public func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        var attempt = 0
        while true {
            do {
                return try await body()
            } catch let e as CapstanError where (e.code == .rateLimited || e.code == .transient) && attempt < maxRetries {
                let wait = e.retryAfter.map { min($0, maxWait) } ?? backoff.delay(attempt)
                attempt += 1
                try await pause(wait)
            }
        }
    }
}
