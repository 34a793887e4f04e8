public import CapstanCore
public import Foundation
public import GRDB

extension SQLiteStateStore {
    static func registerJobMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v2-jobs") { db in
            try db.create(table: "job") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull()
                t.column("status", .text).notNull()
                t.column("spec", .text).notNull()
                t.column("specFolder", .text).notNull()
                t.column("settings", .text).notNull()
                t.column("clusterName", .text).notNull()
                t.column("ownsCluster", .boolean).notNull()
                t.column("storage", .text).notNull()
                t.column("attempt", .integer).notNull()
                t.column("restarts", .integer).notNull()
                t.column("latestCheckpoint", .integer)
                t.column("createdAt", .datetime).notNull()
                t.column("startedAt", .datetime)
                t.column("finishedAt", .datetime)
                t.column("lastError", .text)
                t.column("controllerPID", .integer)
            }
            try db.create(table: "jobAttempt") { t in
                t.column("jobID", .text).notNull()
                t.column("attempt", .integer).notNull()
                t.primaryKey(["jobID", "attempt"])
                t.column("outcome", .text).notNull()
                t.column("nodes", .text).notNull()
                t.column("masterAddress", .text).notNull()
                t.column("masterPort", .integer).notNull()
                t.column("resumeStep", .integer)
                t.column("startedAt", .datetime).notNull()
                t.column("endedAt", .datetime)
                t.column("failureKind", .text)
                t.column("failedNode", .integer)
                t.column("exitCode", .integer)
                t.column("message", .text)
            }
            try db.create(table: "checkpoint") { t in
                t.column("jobID", .text).notNull()
                t.column("step", .integer).notNull()
                t.primaryKey(["jobID", "step"])
                t.column("attempt", .integer).notNull()
                t.column("bytes", .integer).notNull()
                t.column("committedAt", .datetime).notNull()
                t.column("deleted", .boolean).notNull()
            }
            try db.alter(table: "event") { t in t.add(column: "jobID", .text) }
            try db.create(index: "event_job", on: "event", columns: ["jobID"])
        }
        m.registerMigration("v3-job-metrics") { db in
            try db.alter(table: "job") { t in t.add(column: "metrics", .text) }
        }
    }

    // MARK: - Jobs

    public func insert(_ job: JobRecord) async throws {
        try await write { db in
            if try JobRecord.fetchOne(db, key: job.id) != nil {
                throw CapstanError(.invalidRequest, "A job with id '\(job.id)' already exists.", hint: "Job ids are generated; retry the launch.")
            }
            try job.insert(db)
        }
    }

    public func update(_ job: JobRecord) async throws { try await write { try job.update($0) } }

    /// Reads, changes and writes a job in one transaction (so a concurrent `cancel` is never lost).
    @discardableResult
    public func updateJob(_ id: String, _ change: @escaping @Sendable (inout JobRecord) throws -> Void) async throws -> JobRecord {
        try await write { db in try Self.changeJob(db, id, change) }
    }

    /// Reads, changes and writes a job inside the caller's write transaction.
    static func changeJob(_ db: Database, _ id: String, _ change: (inout JobRecord) throws -> Void) throws -> JobRecord {
        guard var job = try JobRecord.fetchOne(db, key: id) else {
            throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs`.")
        }
        try change(&job)
        try job.update(db)
        return job
    }

    /// The job with this id, or else the newest job with this name.
    public func job(_ idOrName: String) async throws -> JobRecord? {
        try await read { db in
            if let j = try JobRecord.fetchOne(db, key: idOrName) { return j }
            return try JobRecord.filter(Column("name") == idOrName).order(Column("createdAt").desc).fetchOne(db)
        }
    }

    /// The newest `limit` jobs, or, without `includeFinished`, the newest `limit` unfinished
    /// ones: the status is filtered in the query, so unfinished jobs are never pushed out of
    /// the page by newer finished ones.
    public func jobs(includeFinished: Bool = true, limit: Int = 100) async throws -> [JobRecord] {
        try await read { db in
            var query = JobRecord.all()
            if !includeFinished { query = query.filter(!Self.finishedStatuses.contains(Column("status"))) }
            return try query.order(Column("createdAt").desc).limit(limit).fetchAll(db)
        }
    }

    /// Every job that is not finished, oldest first, however many jobs there are (what a
    /// controller must be re-attached to).
    public func unfinishedJobs() async throws -> [JobRecord] {
        try await read { db in
            try JobRecord.filter(!Self.finishedStatuses.contains(Column("status"))).order(Column("createdAt")).fetchAll(db)
        }
    }

    static var finishedStatuses: [String] { JobStatus.allCases.filter(\.isFinished).map(\.rawValue) }

    // MARK: - Attempts

    public func save(_ attempt: JobAttemptRecord) async throws { try await write { try attempt.save($0) } }

    public func attempts(job id: String) async throws -> [JobAttemptRecord] {
        try await read { try JobAttemptRecord.filter(Column("jobID") == id).order(Column("attempt")).fetchAll($0) }
    }

    public func attempt(job id: String, number: Int) async throws -> JobAttemptRecord? {
        try await read { try JobAttemptRecord.fetchOne($0, key: ["jobID": id, "attempt": number]) }
    }

    // MARK: - Checkpoints

    public func save(_ checkpoint: CheckpointRecord) async throws { try await write { try checkpoint.save($0) } }

    public func checkpoints(job id: String) async throws -> [CheckpointRecord] {
        try await read { try CheckpointRecord.filter(Column("jobID") == id).order(Column("step")).fetchAll($0) }
    }

    // MARK: - Job events

    /// Records something that happened to a job.
    public func jobEvent(_ kind: String, _ message: String, job: String, cluster: String? = nil) async {
        _ = try? await write { db in
            try db.execute(sql: "INSERT INTO event(time, clusterID, kind, message, jobID) VALUES (?, ?, ?, ?, ?)", arguments: [Date(), cluster, kind, message, job])
        }
    }

    public func events(job id: String, limit: Int = 500) async throws -> [StateEvent] {
        try await read { db in
            try StateEvent.fetchAll(db, sql: "SELECT id, time, clusterID, kind, message FROM event WHERE jobID = ? ORDER BY id DESC LIMIT ?", arguments: [id, limit]).reversed()
        }
    }

    public func events(job id: String, after: Int64, limit: Int) async throws -> [StateEvent] {
        try await read { db in
            try StateEvent.fetchAll(db, sql: "SELECT id, time, clusterID, kind, message FROM event WHERE jobID = ? AND id > ? ORDER BY id LIMIT ?", arguments: [id, after, limit])
        }
    }
}
