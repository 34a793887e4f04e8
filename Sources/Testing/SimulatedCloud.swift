public import CapstanCore
public import Foundation
import CapstanStorage
public import CapstanPluginKit
public import Logging
#if canImport(Glibc)
import Glibc
#endif

extension Double {
    /// Rounded to `places` decimals (prices in a generated catalog read like a cloud's).
    fileprivate func rounded(toPlaces places: Int) -> Double {
        let scale = pow(10, Double(places))
        return (self * scale).rounded() / scale
    }
}

/// An in-memory cloud with a configurable catalog and fault switches: the test double every
/// broker and plugin test can run against (as NIOEmbedded is to NIOPosix), and the worked
/// example behind the `sim` plugin in plugins/sim.
///
/// Instances go `pending` → `running` on the first describe after launch, keep their tags, and
/// honour idempotency keys (a repeated key returns the same instances).
public final class SimulatedCloud: ComputeProvider, @unchecked Sendable {
    public struct Configuration: Sendable, Hashable, Codable {
        /// The catalog; the default is a small 3-region catalog of common GPU boxes.
        public var offers: [Offer]?
        /// The first N launches fail with a capacity error (InsufficientInstanceCapacity).
        public var capacityFailures: Int?
        /// Launches into these regions always fail with a capacity error.
        public var noCapacityRegions: [String]?
        /// Added latency per call, in milliseconds.
        public var latencyMs: Int?
        /// Every call fails with an auth error (wrong credentials).
        public var badCredentials: Bool?
        /// Seconds an instance stays `pending` after launch (0: running on the first describe).
        public var bootSeconds: Double?
        /// The first N launches are throttled (rateLimited, Retry-After 0.05 s), then succeed.
        public var rateLimitedLaunches: Int?
        /// Instances launched into these regions fail while booting (state `failed`).
        public var failBootRegions: [String]?
        /// Keep instances in this JSON file (shared by every process that names it), so they
        /// outlive the process that launched them — as a real cloud's do.
        public var stateFile: String?
        /// Spot-style interruption: an instance is taken back (state `preempted`, reason
        /// `Server.SpotInstanceTermination`) this many seconds after it could run (launch +
        /// boot) — once per node of a cluster, so its replacement is left alone.
        public var preemptAfterSeconds: Double?
        /// Which node indices `preemptAfterSeconds` applies to (default: every node).
        public var preemptNodes: [Int]?
        /// A generated catalog of this many offers (``SimulatedCloud/generatedCatalog(count:)``)
        /// instead of `offers`: a large cloud's catalog without writing it out in config.yaml
        /// (the `capstan-bench offers` case asks for 100,000).
        public var generatedOffers: Int?
        public init(offers: [Offer]? = nil, capacityFailures: Int? = nil, noCapacityRegions: [String]? = nil, latencyMs: Int? = nil, badCredentials: Bool? = nil, bootSeconds: Double? = nil, stateFile: String? = nil, rateLimitedLaunches: Int? = nil, failBootRegions: [String]? = nil, preemptAfterSeconds: Double? = nil, preemptNodes: [Int]? = nil, generatedOffers: Int? = nil) {
            self.generatedOffers = generatedOffers
            self.preemptAfterSeconds = preemptAfterSeconds
            self.preemptNodes = preemptNodes
            self.rateLimitedLaunches = rateLimitedLaunches
            self.failBootRegions = failBootRegions
            self.bootSeconds = bootSeconds
            self.stateFile = stateFile
            self.offers = offers
            self.capacityFailures = capacityFailures
            self.noCapacityRegions = noCapacityRegions
            self.latencyMs = latencyMs
            self.badCredentials = badCredentials
        }
    }

    public let name: String
    public let configuration: Configuration
    private let lock = NSLock()
    private var memory = SimState()

    /// Everything the simulated cloud remembers.
    struct SimState: Codable {
        var instances: [String: Instance] = [:]
        var launches = 0
    }

    /// Runs `body` on the state: in memory, or in `stateFile` under an exclusive `flock`.
    private func withState<T>(_ body: (inout SimState) throws -> T) throws -> T {
        try lock.withLock {
            guard let file = configuration.stateFile else { return try body(&memory) }
            let fd = open(file + ".lock", O_RDWR | O_CREAT, 0o644)
            guard fd >= 0 else { throw CapstanError(.io, "Cannot open \(file).lock.", provider: name) }
            defer { close(fd) }
            flock(fd, LOCK_EX)
            defer { flock(fd, LOCK_UN) }
            var state = (FileManager.default.contents(atPath: file)).flatMap { try? PluginWire.decoder.decode(SimState.self, from: $0) } ?? SimState()
            let out = try body(&state)
            let tmp = file + ".tmp"
            try PluginWire.encoder.encode(state).write(to: URL(fileURLWithPath: tmp))
            guard rename(tmp, file) == 0 else { throw CapstanError(.io, "Cannot write \(file).", provider: name) }
            return out
        }
    }

    public init(name: String = "sim", configuration: Configuration = .init()) {
        self.name = name
        self.configuration = configuration
        catalog = (configuration.generatedOffers.map(Self.generatedCatalog(count:)) ?? configuration.offers ?? Self.defaultCatalog).map { $0.normalized() }
    }

    /// What `offers(for:)` answers, normalized once (named there).
    private let catalog: [Offer]

    /// `count` offers shaped like a large multi-cloud catalog: GPU names spelled as different
    /// clouds spell them, 1–8 GPUs per node, 23 regions with 3 zones each, on-demand prices and
    /// (for two in three) spot prices. Deterministic: the same count gives the same catalog.
    public static func generatedCatalog(count: Int) -> [Offer] {
        let gpus = ["H100", "nvidia-a100-80gb", "NVIDIA L4", "gpu_8x_h100_sxm5", "NVIDIA H100 80GB HBM3", "L40S", "A10G", "nvidia-h200-141gb"]
        let availability: [Offer.Availability] = [.available, .limited, .unknown]
        var out: [Offer] = []
        out.reserveCapacity(max(0, count))
        for i in 0..<max(0, count) {
            let perNode = [1, 2, 4, 8][i % 4]
            // A cheap, fixed scramble of i, so prices are spread without a random generator.
            let mix = Double((i &* 2_654_435_761) % 10_000) / 10_000
            out.append(Offer(
                provider: "sim", instanceType: "sim.g\(i % 97).\(perNode)x", region: "sim-r\(i % 23)", zone: "sim-r\(i % 23)\(["a", "b", "c"][i % 3])",
                gpuName: gpus[i % gpus.count], gpusPerNode: perNode, vcpus: 12 * perNode, memoryGiB: Double(96 * perNode),
                onDemandPricePerHour: (0.5 + mix * 99.5).rounded(toPlaces: 4), spotPricePerHour: i % 3 == 0 ? nil : (0.2 + mix * 49.8).rounded(toPlaces: 4),
                availability: availability[i % 3]))
        }
        return out
    }

    public static let defaultCatalog: [Offer] = {
        var out: [Offer] = []
        for (region, factor) in [("sim-east-1", 1.0), ("sim-west-1", 1.05), ("sim-eu-1", 1.12)] {
            out.append(Offer(provider: "sim", instanceType: "sim.8xh100", region: region, gpuName: "H100", gpusPerNode: 8, vcpus: 192, memoryGiB: 2048, onDemandPricePerHour: 24.0 * factor, spotPricePerHour: 12.5 * factor, availability: .available, details: ["gpuMemoryMiB": "81920"]))
            out.append(Offer(provider: "sim", instanceType: "sim.8xa100", region: region, gpuName: "nvidia-a100-80gb", gpusPerNode: 8, vcpus: 96, memoryGiB: 1360, onDemandPricePerHour: 14.3 * factor, spotPricePerHour: 6.1 * factor, availability: .available))
            out.append(Offer(provider: "sim", instanceType: "sim.1xl4", region: region, gpuName: "NVIDIA L4", gpusPerNode: 1, vcpus: 8, memoryGiB: 32, onDemandPricePerHour: 0.8 * factor, spotPricePerHour: 0.3 * factor, availability: .available))
        }
        return out
    }()

    private func pause() async throws {
        if let ms = configuration.latencyMs, ms > 0 { try await Task.sleep(for: .milliseconds(ms)) }
        if configuration.badCredentials == true {
            throw CapstanError(.auth, "The simulated cloud rejected the credentials.", hint: "Fix providers.\(name) in the config.", provider: name, cloudCode: "AuthFailure")
        }
    }

    public func offers(for request: ResourceRequest) async throws -> [Offer] {
        try await pause()
        return catalog.map { var o = $0; o.provider = name; return o }
    }

    public func launch(_ request: LaunchRequest) async throws -> [Instance] {
        try await pause()
        return try withState { state in
            let existing = state.instances.values.filter { $0.tags[CapstanTags.intent] == request.idempotencyKey }
            if !existing.isEmpty { return existing.sorted { $0.id < $1.id } }
            state.launches += 1
            if state.launches <= (configuration.rateLimitedLaunches ?? 0) {
                throw CapstanError(.rateLimited, "Too many launch requests.", provider: name, retryAfterSeconds: 0.05, cloudCode: "RequestLimitExceeded")
            }
            if state.launches <= (configuration.capacityFailures ?? 0) + (configuration.rateLimitedLaunches ?? 0) || (configuration.noCapacityRegions ?? []).contains(request.offer.region) {
                throw CapstanError(
                    .capacity, "No \(request.offer.instanceType) capacity in \(request.offer.region).", provider: name,
                    cloudCode: "InsufficientInstanceCapacity", cloudMessage: "We currently do not have sufficient \(request.offer.instanceType) capacity in the region you requested.")
            }
            var out: [Instance] = []
            for n in 0..<request.count {
                var tags = request.tags
                tags[CapstanTags.managed] = "true"
                tags[CapstanTags.intent] = request.idempotencyKey
                let id = "sim-" + UUID().uuidString.prefix(12).lowercased()
                let price = request.spot ? request.offer.spotPricePerHour : request.offer.onDemandPricePerHour
                let i = Instance(id: id, provider: name, instanceType: request.offer.instanceType, region: request.offer.region, zone: request.offer.zone, state: .pending, providerState: "pending", privateAddress: "10.0.0.\(state.instances.count % 250 + 2)", spot: request.spot, pricePerHour: price, tags: tags, launchedAt: Date(), details: [PreemptionSwitch.launchIndex: "\(n)"])
                state.instances[id] = i
                out.append(i)
            }
            return out
        }
    }

    public func describe(_ query: InstanceQuery) async throws -> [Instance] {
        try await pause()
        let boot = configuration.bootSeconds ?? 0
        return try withState { state in
            for (id, i) in state.instances where i.state == .pending && Date().timeIntervalSince(i.launchedAt ?? .distantPast) >= boot {
                let fails = (configuration.failBootRegions ?? []).contains(i.region)
                state.instances[id]?.state = fails ? .failed : .running
                state.instances[id]?.providerState = fails ? "unhealthy" : "running"
            }
            let preemption = PreemptionSwitch(afterSeconds: configuration.preemptAfterSeconds, nodes: configuration.preemptNodes, bootSeconds: boot)
            for (i, at) in preemption.due(in: Array(state.instances.values)) {
                state.instances[i.id] = PreemptionSwitch.preempted(i, at: at)
            }
            return state.instances.values.filter(query.matches).sorted { $0.id < $1.id }
        }
    }

    public func terminate(ids: [String]) async throws -> [Instance] {
        try await pause()
        return try withState { state in
            ids.map { id in
                guard var i = state.instances[id] else {
                    return Instance(id: id, provider: name, instanceType: "?", region: "?", state: .terminated, providerState: "not-found")
                }
                i.state = .terminated
                i.providerState = "terminated"
                state.instances[id] = i
                return i
            }
        }
    }

    /// Simulates a spot interruption of `id`.
    public func preempt(_ id: String) throws {
        try withState { state in
            state.instances[id]?.state = .preempted
            state.instances[id]?.stateReason = "Server.SpotInstanceTermination"
        }
    }

    /// `config` as a ``Configuration``. A catalog in `offers` (it may hold 100,000) is read by
    /// ``OfferJSON`` when it has the usual shape; the rest, and any catalog it cannot read,
    /// by JSONDecoder (whose errors name the bad setting).
    static func decodeConfiguration(_ config: JSONValue) throws -> Configuration {
        guard case .object(var settings) = config, let offers = settings["offers"], let json = offers.jsonData, let catalog = OfferJSON.decode(json) else {
            return try config.decode(Configuration.self)
        }
        settings["offers"] = nil
        var configuration = try JSONValue.object(settings).decode(Configuration.self)
        configuration.offers = catalog
        return configuration
    }

    /// The plugin definition that exports this cloud (used by plugins/sim).
    public static let pluginDefinition = PluginDefinition(
        manifest: PluginManifest(
            name: "sim", version: "1.0.0",
            description: "A simulated cloud with a configurable catalog and fault switches, for tests and demos. Enable it with a providers.sim section.",
            capabilities: [.compute, .storage],
            configSchema: .object([
                "type": .string("object"),
                "properties": .object([
                    "offers": .object(["type": .string("array"), "description": .string("The catalog (Offer objects); defaults to a small 3-region catalog.")]),
                    "capacityFailures": .object(["type": .string("integer"), "description": .string("The first N launches fail with a capacity error.")]),
                    "noCapacityRegions": .object(["type": .string("array"), "items": .object(["type": .string("string")])]),
                    "latencyMs": .object(["type": .string("integer"), "description": .string("Added latency per call.")]),
                    "badCredentials": .object(["type": .string("boolean")]),
                    "bootSeconds": .object(["type": .string("number"), "description": .string("Seconds an instance stays pending.")]),
                    "stateFile": .object(["type": .string("string"), "description": .string("Keep instances in this file so they outlive the process.")]),
                    "rateLimitedLaunches": .object(["type": .string("integer"), "description": .string("The first N launches are throttled.")]),
                    "failBootRegions": .object(["type": .string("array"), "items": .object(["type": .string("string")]), "description": .string("Instances in these regions fail while booting.")]),
                    "preemptAfterSeconds": .object(["type": .string("number"), "minimum": .number(0), "description": .string("Preempt an instance this long after it starts running (once per node of a cluster), as spot does.")]),
                    "preemptNodes": .object(["type": .string("array"), "items": .object(["type": .string("integer")]), "description": .string("Node indices preemptAfterSeconds applies to (default: all).")]),
                    "generatedOffers": .object(["type": .string("integer"), "minimum": .number(0), "description": .string("Answer a generated catalog of this many offers instead of `offers` (benchmarks).")]),
                ]),
                "additionalProperties": .bool(false),
            ]),
            autoEnable: false, storageSchemes: ["simfile"]),
        make: { config, logger in
            let configuration: Configuration
            let known: Set<String> = ["offers", "capacityFailures", "noCapacityRegions", "latencyMs", "badCredentials", "bootSeconds", "stateFile", "rateLimitedLaunches", "failBootRegions", "preemptAfterSeconds", "preemptNodes", "generatedOffers"]
            if case .object(let o) = config, let unknown = o.keys.sorted().first(where: { !known.contains($0) }) {
                throw CapstanError(.config, "Unknown key 'providers.sim.\(unknown)'.", hint: "Known: \(known.sorted().joined(separator: ", ")).")
            }
            do { configuration = try decodeConfiguration(config) } catch {
                throw CapstanError(.config, "providers.sim is invalid: \(error).", hint: "See `capstan plugins inspect sim` for its schema.")
            }
            logger.debug("simulated cloud created", metadata: ["offers": "\(configuration.generatedOffers ?? configuration.offers?.count ?? defaultCatalog.count)"])
            // Storage: `simfile:///path` buckets are file buckets served through the ABI, so
            // the storage side of the kit is exercised end to end.
            return PluginServices(compute: SimulatedCloud(configuration: configuration), openStore: { location in
                guard location.hasPrefix("simfile://") else {
                    throw CapstanError(.invalidRequest, "The sim plugin serves simfile:// buckets, not '\(location)'.")
                }
                return try FileObjectStore(root: String(location.dropFirst("simfile://".count)))
            })
        })
}
