public import CapstanCore
public import Foundation
public import GRDB

// The notification outbox (table `outbox`): entries written in the same transaction as the
// job event they announce, claimed by deliverers under a lease.

extension OutboxEntry: FetchableRecord, PersistableRecord {
    public static var databaseTableName: String { "outbox" }
}

extension SQLiteStateStore {
    static func registerOutboxMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v6-outbox") { db in
            try db.create(table: "outbox") { t in
                t.primaryKey("key", .text)
                t.column("jobID", .text).notNull()
                t.column("target", .text).notNull()
                t.column("event", .text).notNull()
                t.column("payload", .text).notNull()
                t.column("attempts", .integer).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("nextAttemptAt", .datetime).notNull()
                t.column("deliveredAt", .datetime)
                t.column("givenUpAt", .datetime)
                t.column("lastError", .text)
                t.column("claimedBy", .text)
                t.column("claimedUntil", .datetime)
            }
            // What a deliverer's claim reads: pending entries by when they are due.
            try db.execute(sql: "CREATE INDEX outbox_due ON outbox(nextAttemptAt) WHERE deliveredAt IS NULL AND givenUpAt IS NULL")
            try db.create(index: "outbox_job", on: "outbox", columns: ["jobID", "createdAt"])
        }
    }

    // MARK: - Outbox

    /// Records a job event and enqueues its notifications in one transaction.
    public func jobEvent(_ kind: String, _ message: String, job: String, cluster: String?, notifications: [OutboxEntry]) async throws {
        try await write { db in try Self.insertJobEvent(db, JobEventWrite(kind: kind, message: message, notifications: notifications), job: job, cluster: cluster) }
    }

    /// Changes a job and records its event and notifications in one write transaction.
    public func updateJob(_ id: String, _ change: @escaping @Sendable (inout JobRecord) throws -> Void, recording: @escaping @Sendable (JobRecord) -> JobEventWrite?) async throws -> JobRecord {
        try await write { db in
            let job = try Self.changeJob(db, id, change)
            if let e = recording(job) { try Self.insertJobEvent(db, e, job: id, cluster: nil) }
            return job
        }
    }

    static func insertJobEvent(_ db: Database, _ e: JobEventWrite, job: String, cluster: String?) throws {
        try db.execute(sql: "INSERT INTO event(time, clusterID, kind, message, jobID) VALUES (?, ?, ?, ?, ?)", arguments: [Date(), cluster, e.kind, e.message, job])
        for entry in e.notifications { try entry.insert(db, onConflict: .ignore) }
    }

    /// Claims due entries in one write transaction (SQLite has one writer at a time, so two
    /// deliverers never claim the same entry).
    public func claimOutbox(holder: String, now: Date, lease: Duration, limit: Int) async throws -> [OutboxEntry] {
        let until = now.addingTimeInterval(lease.seconds)
        // A read first (the partial index answers it): a poll that finds nothing due takes no
        // write lock away from the controllers.
        let due = try await read { db in
            try Bool.fetchOne(db, sql: """
                SELECT EXISTS(SELECT 1 FROM outbox WHERE deliveredAt IS NULL AND givenUpAt IS NULL AND nextAttemptAt <= ?
                AND (claimedUntil IS NULL OR claimedUntil <= ?))
                """, arguments: [now, now]) ?? false
        }
        guard due else { return [] }
        return try await write { db in
            var due = try OutboxEntry.fetchAll(db, sql: """
                SELECT * FROM outbox WHERE deliveredAt IS NULL AND givenUpAt IS NULL AND nextAttemptAt <= ?
                AND (claimedUntil IS NULL OR claimedUntil <= ?) ORDER BY nextAttemptAt, createdAt LIMIT ?
                """, arguments: [now, now, max(0, limit)])
            for i in due.indices {
                due[i].claimedBy = holder
                due[i].claimedUntil = until
                try db.execute(sql: "UPDATE outbox SET claimedBy = ?, claimedUntil = ? WHERE key = ?", arguments: [holder, until, due[i].key])
            }
            return due
        }
    }

    public func outboxDelivered(_ key: String, holder: String, at: Date) async throws {
        try await write { db in
            try db.execute(sql: """
                UPDATE outbox SET deliveredAt = COALESCE(deliveredAt, ?), attempts = attempts + 1, lastError = NULL,
                claimedBy = NULL, claimedUntil = NULL WHERE key = ?
                """, arguments: [at, key])
        }
    }

    public func outboxFailed(_ key: String, holder: String, error: String, retryAt: Date?, at: Date) async throws {
        try await write { db in
            try db.execute(sql: """
                UPDATE outbox SET attempts = attempts + 1, lastError = ?, nextAttemptAt = COALESCE(?, nextAttemptAt),
                givenUpAt = CASE WHEN ? IS NULL THEN ? ELSE NULL END, claimedBy = NULL, claimedUntil = NULL
                WHERE key = ? AND claimedBy = ? AND deliveredAt IS NULL
                """, arguments: [error, retryAt, retryAt, at, key, holder])
        }
    }

    public func releaseOutbox(holder: String) async throws {
        try await write { db in
            try db.execute(sql: "UPDATE outbox SET claimedBy = NULL, claimedUntil = NULL WHERE claimedBy = ?", arguments: [holder])
        }
    }

    public func outbox(job: String?, limit: Int) async throws -> [OutboxEntry] {
        try await read { db in
            if let job {
                return try OutboxEntry.fetchAll(db, sql: "SELECT * FROM outbox WHERE jobID = ? ORDER BY createdAt, key LIMIT ?", arguments: [job, max(0, limit)])
            }
            return try OutboxEntry.fetchAll(db, sql: "SELECT * FROM outbox ORDER BY createdAt, key LIMIT ?", arguments: [max(0, limit)])
        }
    }
}
