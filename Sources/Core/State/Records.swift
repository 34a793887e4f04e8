public import Foundation

/// A cluster's lifecycle.
public enum ClusterStatus: String, Sendable, Hashable, Codable, CaseIterable {
    /// `capstan up` is acquiring capacity.
    case provisioning
    /// Every node is running.
    case running
    /// `capstan down` is terminating it.
    case terminating
    /// Gone; kept for history and cost.
    case terminated
    /// Provisioning gave up (every offer failed) or was interrupted and cleaned up.
    case failed

    /// Whether the cluster owns (or may own) billable instances.
    public var isLive: Bool { self == .provisioning || self == .running || self == .terminating }
}

/// A named group of nodes from one offer (one provider, one region/zone).
public struct Cluster: Sendable, Hashable, Codable {
    public var id: String
    public var name: String
    public var status: ClusterStatus
    public var request: ResourceRequest
    /// The offer it runs on, once provisioned.
    public var offer: Offer?
    public var spot: Bool
    public var nodes: Int
    /// The whole cluster's price, $/h, once provisioned.
    public var pricePerHour: Double?
    /// The launch intent whose instances form the cluster.
    public var intentKey: String?
    public var createdAt: Date
    public var readyAt: Date?
    public var terminatedAt: Date?
    public var lastError: String?
    /// Autostop: minutes without an unfinished job on it after which `capstan serve` takes the
    /// cluster down (nil: never).
    public var idleMinutes: Int?

    public init(id: String = UUID().uuidString.lowercased(), name: String, request: ResourceRequest, createdAt: Date = Date()) {
        self.id = id
        self.name = name
        self.status = .provisioning
        self.request = request
        self.offer = nil
        self.spot = false
        self.nodes = request.nodes
        self.pricePerHour = nil
        self.intentKey = nil
        self.createdAt = createdAt
    }
}

/// A launch written down *before* the cloud call, so a crash at any point can be reconciled.
public struct LaunchIntent: Sendable, Hashable, Codable {
    public enum Status: String, Sendable, Hashable, Codable {
        /// Written; the launch call may or may not have reached the cloud.
        case pending
        /// The cloud returned instances.
        case launched
        /// The launch failed (nothing to clean up, or cleaned up).
        case failed
        /// Its process died; reconcile has cleaned up whatever it created.
        case abandoned
    }

    public var key: String
    public var clusterID: String
    public var provider: String
    public var offer: Offer
    public var count: Int
    public var spot: Bool
    public var tags: [String: String]
    public var status: Status
    public var createdAt: Date
    public var updatedAt: Date
    public var error: String?
    /// The process that wrote it.
    public var pid: Int32

    public init(
        key: String, clusterID: String, provider: String, offer: Offer, count: Int, spot: Bool, tags: [String: String],
        status: Status = .pending, createdAt: Date = Date(), updatedAt: Date = Date(), error: String? = nil, pid: Int32 = ProcessInfo.processInfo.processIdentifier
    ) {
        self.key = key
        self.clusterID = clusterID
        self.provider = provider
        self.offer = offer
        self.count = count
        self.spot = spot
        self.tags = tags
        self.status = status
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.error = error
        self.pid = pid
    }
}

/// An instance as the state store knows it.
public struct InstanceRecord: Sendable, Hashable, Codable {
    public var provider: String
    public var id: String
    public var clusterID: String
    public var intentKey: String
    public var state: Instance.State
    public var pricePerHour: Double?
    public var launchedAt: Date
    public var terminatedAt: Date?
    /// The provider's last description.
    public var instance: Instance

    public init(instance: Instance, clusterID: String, intentKey: String, now: Date = Date()) {
        self.provider = instance.provider
        self.id = instance.id
        self.clusterID = clusterID
        self.intentKey = intentKey
        self.state = instance.state
        self.pricePerHour = instance.pricePerHour
        self.launchedAt = instance.launchedAt ?? now
        self.terminatedAt = instance.state.isGone ? now : nil
        self.instance = instance
    }

    /// What it has cost so far, at its hourly price.
    public func cost(now: Date = Date()) -> Double {
        let end = terminatedAt ?? now
        return max(0, end.timeIntervalSince(launchedAt)) / 3600 * (pricePerHour ?? 0)
    }
}

/// Something that happened to a cluster (or to the state as a whole).
public struct StateEvent: Sendable, Hashable, Codable {
    public var id: Int64?
    public var time: Date
    public var clusterID: String?
    public var kind: String
    public var message: String

    public init(clusterID: String?, kind: String, message: String, time: Date = Date()) {
        self.clusterID = clusterID
        self.kind = kind
        self.message = message
        self.time = time
    }
}
