public import CapstanCore
public import Foundation
import Logging
import PostgresNIO

// The notification outbox: SQLiteStateStore's semantics; claims take rows with
// `FOR UPDATE SKIP LOCKED`, so replicas claiming at the same moment never get the same row.

extension OutboxEntry {
    static let columns = "key, job_id, target, event, payload, attempts, created_at, next_attempt_at, delivered_at, given_up_at, last_error, claimed_by, claimed_until"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        let key: String = try c.next(), job: String = try c.next(), target: String = try c.next(), event: String = try c.next(), payload: String = try c.next()
        let attempts = try c.int(), created: Date = try c.next()
        self.init(key: key, jobID: job, target: target, event: event, payload: payload, createdAt: created)
        self.attempts = attempts
        nextAttemptAt = try c.next()
        deliveredAt = try c.next()
        givenUpAt = try c.next()
        lastError = try c.next()
        claimedBy = try c.next()
        claimedUntil = try c.next()
    }
}

extension PostgresStateStore {
    static let outboxMigration = [
        """
        CREATE TABLE outbox (
            key text PRIMARY KEY,
            job_id text NOT NULL,
            target text NOT NULL,
            event text NOT NULL,
            payload text NOT NULL,
            attempts bigint NOT NULL,
            created_at timestamptz NOT NULL,
            next_attempt_at timestamptz NOT NULL,
            delivered_at timestamptz,
            given_up_at timestamptz,
            last_error text,
            claimed_by text,
            claimed_until timestamptz
        )
        """,
        "CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE delivered_at IS NULL AND given_up_at IS NULL",
        "CREATE INDEX outbox_job ON outbox(job_id, created_at)",
    ]

    /// Records a job event and enqueues its notifications in one transaction.
    public func jobEvent(_ kind: String, _ message: String, job: String, cluster: String?, notifications: [OutboxEntry]) async throws {
        let logger = self.logger
        try await transaction { conn in
            try await Self.insertJobEvent(conn, JobEventWrite(kind: kind, message: message, notifications: notifications), job: job, cluster: cluster, logger)
        }
    }

    /// Changes a job and records its event and notifications in one transaction.
    public func updateJob(_ id: String, _ change: @escaping @Sendable (inout JobRecord) throws -> Void, recording: @escaping @Sendable (JobRecord) -> JobEventWrite?) async throws -> JobRecord {
        let logger = self.logger
        return try await transaction { conn in
            let job = try await Self.changeJob(conn, id, change, logger)
            if let e = recording(job) { try await Self.insertJobEvent(conn, e, job: id, cluster: nil, logger) }
            return job
        }
    }

    static func insertJobEvent(_ conn: PostgresConnection, _ e: JobEventWrite, job: String, cluster: String?, _ logger: Logger) async throws {
        try await Self.lockEventOrder(conn, logger: logger)
        try await conn.query("INSERT INTO event (time, cluster_id, job_id, kind, message) VALUES (\(Date()), \(cluster), \(job), \(e.kind.pg), \(e.message.pg))", logger: logger)
        for n in e.notifications {
            try await conn.query("""
                INSERT INTO outbox (key, job_id, target, event, payload, attempts, created_at, next_attempt_at)
                VALUES (\(n.key), \(n.jobID), \(n.target), \(n.event), \(n.payload.pg), \(n.attempts), \(n.createdAt), \(n.nextAttemptAt))
                ON CONFLICT (key) DO NOTHING
                """, logger: logger)
        }
    }

    /// Claims due rows: the sub-select locks them and skips rows another replica's claim has
    /// locked, so two replicas never claim one row at the same moment.
    public func claimOutbox(holder: String, now: Date, lease: Duration, limit: Int) async throws -> [OutboxEntry] {
        let until = now.addingTimeInterval(lease.seconds)
        let logger = self.logger
        return try await transaction { conn in
            try await Self.rows(try await conn.query("""
                UPDATE outbox SET claimed_by = \(holder), claimed_until = \(until)
                WHERE key IN (
                    SELECT key FROM outbox WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= \(now)
                    AND (claimed_until IS NULL OR claimed_until <= \(now))
                    ORDER BY next_attempt_at, created_at LIMIT \(max(0, limit)) FOR UPDATE SKIP LOCKED
                )
                RETURNING \(unescaped: OutboxEntry.columns)
                """, logger: logger), OutboxEntry.init(row:)).sorted { ($0.nextAttemptAt, $0.createdAt) < ($1.nextAttemptAt, $1.createdAt) }
        }
    }

    public func outboxDelivered(_ key: String, holder: String, at: Date) async throws {
        try await execute("""
            UPDATE outbox SET delivered_at = COALESCE(delivered_at, \(at)), attempts = attempts + 1, last_error = NULL,
            claimed_by = NULL, claimed_until = NULL WHERE key = \(key)
            """)
    }

    public func outboxFailed(_ key: String, holder: String, error: String, retryAt: Date?, at: Date) async throws {
        let givenUp: Date? = retryAt == nil ? at : nil
        try await execute("""
            UPDATE outbox SET attempts = attempts + 1, last_error = \(error.pg), next_attempt_at = COALESCE(\(retryAt), next_attempt_at),
            given_up_at = \(givenUp), claimed_by = NULL, claimed_until = NULL
            WHERE key = \(key) AND claimed_by = \(holder) AND delivered_at IS NULL
            """)
    }

    public func releaseOutbox(holder: String) async throws {
        try await execute("UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = \(holder)")
    }

    public func outbox(job: String?, limit: Int) async throws -> [OutboxEntry] {
        try await all("""
            SELECT \(unescaped: OutboxEntry.columns) FROM outbox WHERE (\(job)::text IS NULL OR job_id = \(job))
            ORDER BY created_at, key LIMIT \(max(0, limit))
            """, OutboxEntry.init(row:))
    }
}
