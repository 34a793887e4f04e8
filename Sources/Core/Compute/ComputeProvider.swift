/// Asks for capacity: instances on the `offer`, with what they need to boot and be found again.
public struct LaunchRequest: Sendable, Hashable, Codable {
    public var offer: Offer
    /// Instances to start (all in the offer's region/zone).
    public var count: Int
    /// Unique per launch attempt. Written to the intent log before the call, passed to the cloud
    /// (ClientToken, requestId) where it supports idempotency, and put on every instance as the
    /// ``CapstanTags/intent`` tag so a retried or crashed launch can be recognised.
    public var idempotencyKey: String
    /// Applied to every instance; Capstan adds its ownership tags (``CapstanTags``).
    public var tags: [String: String]
    /// OpenSSH public key line to authorise on the instances.
    public var sshPublicKey: String?
    /// cloud-init / startup script.
    public var userData: String?
    /// A human-readable name prefix.
    public var name: String?
    /// Launch as spot (preemptible) capacity.
    public var spot: Bool
    /// The node index (0 = leader) each of the `count` instances serves, in order: Capstan
    /// numbers the k-th instance a launch returns `nodeIndices[k]` when it records the launch.
    /// A plugin may use it (in names, say); it never has to echo it back (``CapstanTags/node``
    /// is Capstan's, whatever `describe` returns). Nil from hosts older than this field.
    public var nodeIndices: [Int]?

    public init(
        offer: Offer, count: Int, idempotencyKey: String, tags: [String: String] = [:],
        sshPublicKey: String? = nil, userData: String? = nil, name: String? = nil, spot: Bool = false,
        nodeIndices: [Int]? = nil
    ) {
        self.nodeIndices = nodeIndices
        self.offer = offer
        self.count = count
        self.idempotencyKey = idempotencyKey
        self.tags = tags
        self.sshPublicKey = sshPublicKey
        self.userData = userData
        self.name = name
        self.spot = spot
    }
}

/// Selects instances: by id, by tags (all must match), or all of the provider's Capstan ones.
public struct InstanceQuery: Sendable, Hashable, Codable {
    public var ids: [String]?
    public var tags: [String: String]
    public var includeTerminated: Bool

    public init(ids: [String]? = nil, tags: [String: String] = [:], includeTerminated: Bool = false) {
        self.ids = ids
        self.tags = tags
        self.includeTerminated = includeTerminated
    }

    /// Whether `instance` is selected by this query.
    public func matches(_ instance: Instance) -> Bool {
        if let ids, !ids.contains(instance.id) { return false }
        if !includeTerminated, instance.state.isGone { return false }
        return tags.allSatisfy { instance.tags[$0.key] == $0.value }
    }
}

/// A source of compute capacity: a cloud, a fleet of machines, or this machine.
///
/// Implementations are `Sendable` and safe to call concurrently. Errors are ``CapstanError``s
/// with a code that tells the broker what to do (`.capacity`/`.quota` → next offer,
/// `.rateLimited` → wait `retryAfter`, `.auth` → stop asking this provider).
public protocol ComputeProvider: Sendable {
    /// The provider's name, e.g. `local`, `aws`.
    var name: String { get }
    /// Offers that may satisfy `request`. Providers may pre-filter; the broker filters again.
    func offers(for request: ResourceRequest) async throws -> [Offer]
    /// Starts `request.count` instances. Idempotent per `idempotencyKey` where the cloud allows.
    func launch(_ request: LaunchRequest) async throws -> [Instance]
    /// Current state of the selected instances.
    func describe(_ query: InstanceQuery) async throws -> [Instance]
    /// Terminates the instances; terminating one that is already gone is not an error.
    /// Returns their states after the call.
    func terminate(ids: [String]) async throws -> [Instance]
    /// How long this provider's offers may be served from the offer cache (`.zero`: never
    /// cached). Default 10 minutes: prices and catalogs change slowly.
    var offerCacheTTL: Duration { get }
    /// The wait between `describe` calls in a launch's first seconds (``Provisioner/fastPollPeriod``,
    /// after which the wait doubles up to the provisioner's longest); nil: the provisioner's own
    /// (from 0.5 s, doubling to 5 s), right for a cloud API's rate limits. A provider whose
    /// describe is cheap and whose instances start in seconds (a Slurm allocation) says less.
    var bootPollInterval: Duration? { get }
    /// How long a launch may take to run before it counts as failed; nil: the provisioner's
    /// `readyTimeout` (15 min), right for instances that boot. A batch scheduler's queue can
    /// hold a job for hours, and that is no failure.
    var readyTimeout: Duration? { get }
    /// Whether a launch of N is one all-or-nothing allocation whose nodes end together (a
    /// Slurm job): a lost node is then never replaced alone (a one-node allocation beside the
    /// rest, with its own time limit); the whole gang is relaunched. Default false.
    var allocatesGangs: Bool { get }
}

extension ComputeProvider {
    public var offerCacheTTL: Duration { .seconds(600) }
    public var bootPollInterval: Duration? { nil }
    public var readyTimeout: Duration? { nil }
    public var allocatesGangs: Bool { false }
}
