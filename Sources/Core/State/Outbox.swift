public import Foundation

/// One notification waiting in (or delivered from) the outbox: what happened to a job, for
/// one target of its `notify:` spec. Written in the same transaction as the job event it
/// announces (``NotificationOutbox/jobEvent(_:_:job:cluster:notifications:)``), delivered at
/// least once by a deliverer that claims due entries.
///
/// An entry names its target (`webhook-0`, `ops`, `slack-0`), never its URL or secret: the
/// deliverer resolves those from the job's spec and its own environment when it sends.
public struct OutboxEntry: Sendable, Hashable, Codable {
    /// The idempotency key: unique per job, event and target (`<job>:<event>[:<detail>]:<target>`).
    /// A second enqueue with the same key is ignored, so a controller that re-does a step
    /// never notifies twice.
    public var key: String
    public var jobID: String
    /// The target's name in the job's `notify:` (not its URL, never its secret).
    public var target: String
    /// `started`, `restarted`, `failed`, `succeeded`, `cancelled`, `checkpoint`, `cost-above`, `no-progress`.
    public var event: String
    /// The JSON body (webhooks get it as is; Slack gets a `text` made from it).
    public var payload: String
    /// Deliveries tried so far.
    public var attempts: Int
    public var createdAt: Date
    /// Not claimed before this.
    public var nextAttemptAt: Date
    /// Set once a target answered 2xx.
    public var deliveredAt: Date?
    /// Set when delivery was given up (a 4xx other than 408/429, or too many attempts).
    public var givenUpAt: Date?
    /// Why the last attempt failed (no secret, no URL credentials).
    public var lastError: String?
    /// The deliverer holding it, and until when (a holder that dies loses it then).
    public var claimedBy: String?
    public var claimedUntil: Date?

    public init(key: String, jobID: String, target: String, event: String, payload: String, createdAt: Date = Date()) {
        self.key = key
        self.jobID = jobID
        self.target = target
        self.event = event
        self.payload = payload
        self.attempts = 0
        self.createdAt = createdAt
        self.nextAttemptAt = createdAt
    }

    /// Neither delivered nor given up.
    public var isPending: Bool { deliveredAt == nil && givenUpAt == nil }
}

/// A job event with the notifications it enqueues (written with a job change by
/// ``NotificationOutbox/updateJob(_:_:recording:)``).
public struct JobEventWrite: Sendable, Hashable {
    public var kind: String
    public var message: String
    public var notifications: [OutboxEntry]

    public init(kind: String, message: String, notifications: [OutboxEntry] = []) {
        self.kind = kind
        self.message = message
        self.notifications = notifications
    }
}

/// The notification outbox: ``OutboxEntry``s written with the job events they announce,
/// claimed and delivered by deliverers (one in `capstan serve`, one in an embedded
/// `capstan launch`). Claims are leases, so two deliverers (two replicas on one PostgreSQL)
/// never hold one entry at once, and an entry whose holder died is claimed again when its
/// lease ends: delivery is at least once.
public protocol NotificationOutbox: Sendable {
    /// Records a job event and enqueues `notifications` in one transaction (both or neither);
    /// an entry whose key is already in the outbox is left as it is.
    func jobEvent(_ kind: String, _ message: String, job: String, cluster: String?, notifications: [OutboxEntry]) async throws
    /// Changes a job and records the event of the change with its notifications, in one
    /// transaction: a crash leaves the new status with its event and notifications, or none of
    /// them (a status written without its `succeeded` notification would never be announced).
    /// `recording` sees the job after `change`; nil records no event.
    func updateJob(_ id: String, _ change: @escaping @Sendable (inout JobRecord) throws -> Void, recording: @escaping @Sendable (JobRecord) -> JobEventWrite?) async throws -> JobRecord
    /// Claims up to `limit` due entries (pending, `nextAttemptAt` ≤ `now`, unclaimed or their
    /// claim ended) for `holder` until `now + lease`, oldest due first.
    func claimOutbox(holder: String, now: Date, lease: Duration, limit: Int) async throws -> [OutboxEntry]
    /// Marks an entry delivered (whoever holds it: it was delivered).
    func outboxDelivered(_ key: String, holder: String, at: Date) async throws
    /// Records a failed attempt of `holder`'s claim: tried again at `retryAt`, or given up
    /// when `retryAt` is nil. Ignored when `holder` no longer holds the entry.
    func outboxFailed(_ key: String, holder: String, error: String, retryAt: Date?, at: Date) async throws
    /// Ends every claim of `holder` (a deliverer stopping), so others take its entries at once.
    func releaseOutbox(holder: String) async throws
    /// A job's entries (every job's when nil), oldest first.
    func outbox(job: String?, limit: Int) async throws -> [OutboxEntry]
}

extension NotificationOutbox {
    public func outbox(job: String? = nil) async throws -> [OutboxEntry] { try await outbox(job: job, limit: 1000) }
}
