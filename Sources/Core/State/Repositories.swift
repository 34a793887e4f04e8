public import Foundation

// Capstan's state, behind protocols. Callers (the provisioner, the job service, the CLI, a
// server) see only these; CapstanSQLite implements them on one SQLite file (the embedded
// default), and another store (PostgreSQL) implements the same protocols without touching a
// caller. Every requirement is `async`: an implementation does its I/O off Swift
// concurrency's cooperative pool (SQLite on its own queues, a network store on its event loop).

/// Clusters, the launch intents written before every cloud call, and the instances they made.
public protocol ClusterRepository: Sendable {
    /// A random id for this store, put on every instance as ``CapstanTags/owner``, so that
    /// reconcile only ever touches instances this installation created.
    func ownerID() async throws -> String
    /// Every owner id this store has answered to: the current one first, then former ones.
    func ownerIDs() async throws -> [String]
    /// When this store was created: an instance of this owner launched before it, whose
    /// cluster the store does not know, is from a lost store; one launched after, an orphan.
    func createdAt() async throws -> Date

    /// Inserts a new cluster; fails with `.invalidRequest` when a live one has the name.
    func insert(_ cluster: Cluster) async throws
    func update(_ cluster: Cluster) async throws
    /// The live cluster called `name`, else the most recent finished one.
    func cluster(named name: String) async throws -> Cluster?
    func cluster(id: String) async throws -> Cluster?
    func clusters(includeFinished: Bool) async throws -> [Cluster]
    /// Every cluster, live or finished, called one of `names`, oldest first. Has a default built
    /// on ``clusters(includeFinished:)``; the stores answer it from their name index (a job's
    /// cost reads its cluster's history, not every cluster ever).
    func clusters(named names: [String]) async throws -> [Cluster]

    func insert(_ intent: LaunchIntent) async throws
    func setIntent(_ key: String, status: LaunchIntent.Status, error: String?) async throws
    func intent(_ key: String) async throws -> LaunchIntent?
    func intents(cluster id: String?, status: LaunchIntent.Status?) async throws -> [LaunchIntent]

    /// Records what a provider said about an instance (insert or update) and returns it as
    /// recorded: Capstan's own tags (`capstan:*`), once recorded, stand whatever a provider
    /// later echoes or drops.
    @discardableResult
    func record(_ instance: Instance, clusterID: String, intentKey: String) async throws -> Instance
    func instance(provider: String, id: String) async throws -> InstanceRecord?
    func instances(cluster id: String) async throws -> [InstanceRecord]
    /// The instances of each of the clusters `ids`, by cluster id (a cluster without any has no
    /// entry). Has a default built on ``instances(cluster:)``, one query per cluster; a store
    /// implements it with one set query where it can.
    func instances(clusters ids: [String]) async throws -> [String: [InstanceRecord]]
    func allInstances() async throws -> [InstanceRecord]
    /// Every recorded instance of the providers `names` (any state). Has a default built on
    /// ``allInstances()``; reconcile reads only the providers it could list.
    func instances(providers names: [String]) async throws -> [InstanceRecord]
}

extension ClusterRepository {
    public func clusters(named names: [String]) async throws -> [Cluster] {
        let wanted = Set(names)
        return try await clusters(includeFinished: true).filter { wanted.contains($0.name) }
    }

    public func clusters() async throws -> [Cluster] { try await clusters(includeFinished: false) }
    public func setIntent(_ key: String, status: LaunchIntent.Status) async throws { try await setIntent(key, status: status, error: nil) }
    public func intents(cluster id: String? = nil) async throws -> [LaunchIntent] { try await intents(cluster: id, status: nil) }
    public func intents(status: LaunchIntent.Status) async throws -> [LaunchIntent] { try await intents(cluster: nil, status: status) }

    /// The recorded instances of each of the clusters `ids`, by cluster id, each list ordered
    /// as ``instances(cluster:)`` orders it (a cluster without instances has no entry).
    ///
    /// This default asks once per cluster; a store that can answer with one set query
    /// (`SQLiteStateStore` does) implements it, so `capstan status` costs the same few queries
    /// for 1,000 clusters as for one.
    public func instances(clusters ids: [String]) async throws -> [String: [InstanceRecord]] {
        var out: [String: [InstanceRecord]] = [:]
        for id in Set(ids) {
            let records = try await instances(cluster: id)
            if !records.isEmpty { out[id] = records }
        }
        return out
    }

    public func instances(providers names: [String]) async throws -> [InstanceRecord] {
        let wanted = Set(names)
        return try await allInstances().filter { wanted.contains($0.provider) }
    }
}

/// Jobs and their attempts.
public protocol JobRepository: Sendable {
    /// Inserts a new job; fails with `.invalidRequest` when its id is taken.
    func insert(_ job: JobRecord) async throws
    func update(_ job: JobRecord) async throws
    /// Reads, changes and writes a job in one transaction (a concurrent `cancel` is never lost).
    @discardableResult
    func updateJob(_ id: String, _ change: @escaping @Sendable (inout JobRecord) throws -> Void) async throws -> JobRecord
    /// The job with this id, or else the newest job with this name.
    func job(_ idOrName: String) async throws -> JobRecord?
    /// The newest `limit` jobs (without `includeFinished`: the newest unfinished ones).
    func jobs(includeFinished: Bool, limit: Int) async throws -> [JobRecord]
    /// Every unfinished job, oldest first (what a controller must be re-attached to).
    func unfinishedJobs() async throws -> [JobRecord]

    func save(_ attempt: JobAttemptRecord) async throws
    func attempts(job id: String) async throws -> [JobAttemptRecord]
    func attempt(job id: String, number: Int) async throws -> JobAttemptRecord?
}

extension JobRepository {
    public func jobs(includeFinished: Bool = true) async throws -> [JobRecord] { try await jobs(includeFinished: includeFinished, limit: 100) }
}

/// The checkpoints a job committed.
public protocol CheckpointRepository: Sendable {
    func save(_ checkpoint: CheckpointRecord) async throws
    /// A job's checkpoints, by step.
    func checkpoints(job id: String) async throws -> [CheckpointRecord]
}

/// What happened, to clusters and jobs. Writing an event never fails its caller: an event
/// that cannot be written is dropped (the state it describes is written elsewhere).
public protocol EventLog: Sendable {
    func event(_ kind: String, _ message: String, cluster: String?) async
    func events(cluster id: String?, limit: Int) async throws -> [StateEvent]
    func jobEvent(_ kind: String, _ message: String, job: String, cluster: String?) async
    func events(job id: String, limit: Int) async throws -> [StateEvent]
    /// A job's events with an id above `after`, oldest first, at most `limit`: pages through
    /// the whole history (`capstan events`), and what a follower has not seen yet.
    func events(job id: String, after: Int64, limit: Int) async throws -> [StateEvent]
}

extension EventLog {
    public func event(_ kind: String, _ message: String) async { await event(kind, message, cluster: nil) }
    public func events(cluster id: String? = nil) async throws -> [StateEvent] { try await events(cluster: id, limit: 200) }
    public func jobEvent(_ kind: String, _ message: String, job: String) async { await jobEvent(kind, message, job: job, cluster: nil) }
    public func events(job id: String) async throws -> [StateEvent] { try await events(job: id, limit: 500) }
}

/// The control plane's API tokens (stored hashed).
public protocol TokenRepository: Sendable {
    /// Stores a new token; fails with `.invalidRequest` when its id or hash is taken.
    func insert(_ token: APIToken) async throws
    /// The token whose SHA-256 is `hash` (revoked ones included), if any.
    func token(hash: String) async throws -> APIToken?
    /// Every token, oldest first (revoked ones included).
    func tokens() async throws -> [APIToken]
    /// Marks a token revoked (by id or name); returns it, or nil when there is none.
    @discardableResult
    func revokeToken(_ idOrName: String, at: Date) async throws -> APIToken?
    /// Records that a token authenticated a request.
    func touchToken(_ id: String, at: Date) async throws
}

/// All of Capstan's state: what the provisioner, the job service and the CLI are given.
public protocol StateStore: ClusterRepository, JobRepository, CheckpointRepository, EventLog, OfferCache, TokenRepository, TelemetryRepository, NotificationOutbox {
    /// Where it is, for messages (a file path, or a database URL without its password).
    var location: String { get }
}

/// Exclusive work on one named cluster (or job): held while `up`, `down`, a replacement or a
/// controller works on it, so that a reconcile elsewhere leaves that work alone.
///
/// On one machine these are `flock`s (CapstanRuntime's `ClusterLocks`); across machines,
/// leases in the database (CapstanPostgres), renewed by their holder and lost when it stops
/// renewing. Either way every acquisition gets a ``HeldLock/fence``, a fencing token larger
/// than any earlier holder's of the same name.
public protocol LockService: Sendable {
    /// Takes the lock `name`, or returns nil at once when another holder has it.
    func acquire(_ name: String) async throws -> (any HeldLock)?
    /// Whether some holder (in any process) has `name` now.
    func isHeld(_ name: String) async -> Bool
}

/// A lock from ``LockService``. Released by `release()` or when its holder's process dies.
public protocol HeldLock: Sendable {
    /// The fencing token: strictly larger than the token of every earlier holder of the same
    /// name. Work done under the lock is written with it, and a write carrying an older token
    /// than the one recorded is refused (see ``JobRecord/controllerFence``).
    var fence: Int64 { get }
    /// Whether the lock is still this holder's. A `flock` is until released; a lease stops
    /// being valid when it could not be renewed in time (another holder may have it now).
    var isValid: Bool { get }
    func release()
}
