public import Foundation

/// A machine a provider runs for Capstan: a cloud VM, or a node slot of the local provider.
public struct Instance: Sendable, Hashable, Codable, Identifiable {
    /// Lifecycle states, common to every cloud (each plugin maps its own status values).
    public enum State: String, Sendable, Hashable, Codable, CaseIterable {
        case pending, running, stopping, stopped, terminating, terminated
        /// Taken back by the cloud (spot interruption).
        case preempted
        /// The cloud reports it broken (e.g. Lambda `unhealthy`).
        case failed
        case unknown

        /// No longer billed and never coming back.
        public var isGone: Bool { self == .terminated || self == .preempted }
        /// Billed or about to be.
        public var isLive: Bool { !isGone }
    }

    public var id: String
    public var provider: String
    public var instanceType: String
    public var region: String
    public var zone: String?
    public var state: State
    /// The cloud's own word for the state, verbatim (`active`, `shutting-down`, …).
    public var providerState: String?
    public var privateAddress: String?
    public var publicAddress: String?
    public var sshPort: Int?
    public var sshUser: String?
    public var spot: Bool
    public var pricePerHour: Double?
    public var tags: [String: String]
    public var launchedAt: Date?
    /// Why it is in this state, when the cloud says (e.g. `Server.SpotInstanceTermination`).
    public var stateReason: String?
    /// Provider-specific facts, free-form, for people to read (e.g. the ssh provider's host id
    /// and labels). How Capstan reaches the node is ``access``, never a detail.
    public var details: [String: String]
    /// How Capstan reaches the node (``NodeAccess``); nil when the provider does not say (a
    /// cloud plugin: SSH to its address with the cluster's key) — read it through
    /// ``resolvedAccess``, which applies that default.
    public var access: NodeAccess?
    /// A command, run on the node, that shuts it down **and stops its billing** — set only by a
    /// provider where a guest shutdown does (EC2 launched with
    /// `InstanceInitiatedShutdownBehavior=terminate`). Nil (the local provider, SSH hosts, any
    /// cloud where a shut-down machine is still billed or kept): the node must never shut
    /// itself down; the agent's dead-man switch then only stops the command.
    public var shutdownCommand: String?

    public init(
        id: String, provider: String, instanceType: String, region: String, zone: String? = nil,
        state: State, providerState: String? = nil, privateAddress: String? = nil,
        publicAddress: String? = nil, sshPort: Int? = nil, sshUser: String? = nil, spot: Bool = false,
        pricePerHour: Double? = nil, tags: [String: String] = [:], launchedAt: Date? = nil,
        stateReason: String? = nil, details: [String: String] = [:], access: NodeAccess? = nil
    ) {
        self.id = id
        self.provider = provider
        self.instanceType = instanceType
        self.region = region
        self.zone = zone
        self.state = state
        self.providerState = providerState
        self.privateAddress = privateAddress
        self.publicAddress = publicAddress
        self.sshPort = sshPort
        self.sshUser = sshUser
        self.spot = spot
        self.pricePerHour = pricePerHour
        self.tags = tags
        self.launchedAt = launchedAt
        self.stateReason = stateReason
        self.details = details
        self.access = access
    }
}

/// Tag keys Capstan puts on everything it creates, so reconcile can find what it owns.
public enum CapstanTags {
    /// Marks a resource as Capstan's. Value: "true".
    public static let managed = "capstan:managed"
    /// The state store that created it (``StateStore/ownerID()``): reconcile touches only its own.
    public static let owner = "capstan:owner"
    /// The cluster's name (for people reading the cloud console).
    public static let cluster = "capstan:cluster"
    /// The cluster's id (what reconcile matches on).
    public static let clusterID = "capstan:cluster-id"
    /// The idempotency key of the launch intent that created it.
    public static let intent = "capstan:intent"
    /// Node index within the cluster (0 = leader).
    public static let node = "capstan:node"
    /// How many nodes the cluster has (so a cluster can be rebuilt from its instances alone).
    public static let nodes = "capstan:nodes"
    /// On a gang launched to move a cluster: the intent of the gang it replaces (so a move a
    /// crash interrupted can be finished or undone).
    public static let moveFrom = "capstan:move-from"
    /// On an instance launched so that a shutdown from inside terminates it (EC2's
    /// `InstanceInitiatedShutdownBehavior=terminate`). Value: "terminate". Read back by the
    /// provider to set ``Instance/shutdownCommand`` (the agent's dead-man switch).
    public static let shutdownBehavior = "capstan:shutdown"

    /// Whether `key` is one of Capstan's tags (they all start `capstan:`).
    public static func isCapstan(_ key: String) -> Bool { key.hasPrefix("capstan:") }
}

extension Instance {
    /// The node index from the ``CapstanTags/node`` tag (0 = leader); `Int.max` when untagged.
    public var nodeIndex: Int { tags[CapstanTags.node].flatMap(Int.init) ?? Int.max }
}
