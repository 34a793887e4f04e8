public import Foundation

/// One way to get capacity: an instance type in a region of a provider, with its prices.
/// Prices are per node (one instance) per hour in USD.
public struct Offer: Sendable, Hashable, Codable, Identifiable {
    /// How likely a launch is to find capacity, as far as the cloud says.
    public enum Availability: String, Sendable, Hashable, Codable {
        case available, limited, unavailable, unknown
    }

    public var provider: String
    public var instanceType: String
    public var region: String
    public var zone: String?
    /// The GPU string as the cloud reported it (kept for display and debugging).
    public var gpuName: String?
    /// Canonical GPU id from ``GPUCatalog`` (filled from `gpuName` by ``normalized()``).
    public var gpu: String?
    public var gpusPerNode: Int
    public var vcpus: Int?
    public var memoryGiB: Double?
    public var onDemandPricePerHour: Double?
    public var spotPricePerHour: Double?
    public var availability: Availability
    /// Most nodes this offer can supply at once, when bounded (local slots, a fleet of hosts).
    public var maxNodes: Int?
    /// Free-form facts from the provider (e.g. price table date).
    public var details: [String: String]

    public init(
        provider: String, instanceType: String, region: String, zone: String? = nil,
        gpuName: String? = nil, gpu: String? = nil, gpusPerNode: Int, vcpus: Int? = nil,
        memoryGiB: Double? = nil, onDemandPricePerHour: Double? = nil, spotPricePerHour: Double? = nil,
        availability: Availability = .unknown, maxNodes: Int? = nil, details: [String: String] = [:]
    ) {
        self.provider = provider
        self.instanceType = instanceType
        self.region = region
        self.zone = zone
        self.gpuName = gpuName
        self.gpu = gpu
        self.gpusPerNode = gpusPerNode
        self.vcpus = vcpus
        self.memoryGiB = memoryGiB
        self.onDemandPricePerHour = onDemandPricePerHour
        self.spotPricePerHour = spotPricePerHour
        self.availability = availability
        self.maxNodes = maxNodes
        self.details = details
    }

    /// `provider/region[/zone]/instanceType`: unique within one gathering.
    public var id: String { [provider, region, zone, instanceType].compactMap { $0 }.joined(separator: "/") }

    /// The ``GPUModel`` behind `gpu`, if known.
    public var gpuModel: GPUModel? { gpu.flatMap(GPUCatalog.model(id:)) }

    /// A copy whose `gpu` is the canonical id for `gpuName` (left as is when already set or unknown).
    public func normalized() -> Offer {
        guard gpu == nil, let gpuName else { return self }
        var copy = self
        let memoryMiB = details["gpuMemoryMiB"].flatMap { Int($0) }
        copy.gpu = GPUCatalog.normalize(gpuName, memoryMiB: memoryMiB)?.id
        return copy
    }
}
