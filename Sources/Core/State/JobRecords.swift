import Foundation
import GRDB

/// Where a job is in its life.
public enum JobStatus: String, Sendable, Hashable, Codable, CaseIterable {
    /// Written; capacity not yet acquired.
    case pending
    /// Acquiring its cluster.
    case provisioning
    /// An attempt is running on every node.
    case running
    /// An attempt failed; the gang is being stopped, repaired and restarted.
    case restarting
    /// `capstan cancel` asked it to stop; the controller is stopping it.
    case cancelling
    case succeeded, failed, cancelled

    /// No controller will ever work on it again.
    public var isFinished: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// A job as the state store knows it (table `job`).
public struct JobRecord: Sendable, Hashable, Codable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "job"

    /// `<name>-<6 hex>`, also the cluster name when the job provisions its own.
    public var id: String
    public var name: String
    public var status: JobStatus
    /// The job spec as the user wrote it (YAML).
    public var spec: String
    /// The folder the spec's relative paths (`workdir`) are resolved against.
    public var specFolder: String
    /// Run settings (heartbeat timeout, grace periods) as JSON, owned by CapstanTrainer.
    public var settings: String
    public var clusterName: String
    /// The job provisioned the cluster, so it terminates it when it ends.
    public var ownsCluster: Bool
    /// The bucket URI the job's checkpoints and outputs go to (`<storage>/<job id>/…`).
    public var storage: String
    /// The current (or last) attempt, 1-based; 0 before the first.
    public var attempt: Int
    /// Restarts used (counted against the spec's `maxRestarts`).
    public var restarts: Int
    /// Newest committed checkpoint step the controller has seen.
    public var latestCheckpoint: Int?
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    public var lastError: String?
    /// pid of the controller process that last worked on it (informational; the job lock is the truth).
    public var controllerPID: Int32?
    /// The newest metrics line of the leader's log (a JSON object with `step`: loss, lr,
    /// tokens/s…), as written; nil until the job prints one.
    public var metrics: String?

    public init(id: String, name: String, spec: String, specFolder: String, settings: String, clusterName: String, ownsCluster: Bool, storage: String, createdAt: Date = Date()) {
        self.id = id
        self.name = name
        self.status = .pending
        self.spec = spec
        self.specFolder = specFolder
        self.settings = settings
        self.clusterName = clusterName
        self.ownsCluster = ownsCluster
        self.storage = storage
        self.attempt = 0
        self.restarts = 0
        self.createdAt = createdAt
    }
}

/// One attempt of a job: the same command on every node, from one restored checkpoint.
public struct JobAttemptRecord: Sendable, Hashable, Codable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "jobAttempt"

    public enum Outcome: String, Sendable, Hashable, Codable {
        /// Agents are being started; a controller that finds an attempt here after a crash stops it.
        case starting
        case running, succeeded, failed
        /// Stopped by a cancel, or by a controller that could not tell its state.
        case stopped
    }

    public var jobID: String
    public var attempt: Int
    public var outcome: Outcome
    /// Instance ids in node-rank order.
    public var nodes: [String]
    public var masterAddress: String
    public var masterPort: Int
    /// The checkpoint step every node restored before starting, if any.
    public var resumeStep: Int?
    public var startedAt: Date
    public var endedAt: Date?
    /// What went wrong (`command`, `signal`, `heartbeat`, `instance-gone`, `hung-at-exit`, `agent`).
    public var failureKind: String?
    public var failedNode: Int?
    /// The failed command's exit code (shell convention: 128 + N for signal N).
    public var exitCode: Int?
    public var message: String?

    public init(jobID: String, attempt: Int, nodes: [String], masterAddress: String, masterPort: Int, resumeStep: Int?, startedAt: Date = Date()) {
        self.jobID = jobID
        self.attempt = attempt
        self.outcome = .starting
        self.nodes = nodes
        self.masterAddress = masterAddress
        self.masterPort = masterPort
        self.resumeStep = resumeStep
        self.startedAt = startedAt
    }
}

/// A committed checkpoint the controller saw in the bucket.
public struct CheckpointRecord: Sendable, Hashable, Codable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "checkpoint"
    public var jobID: String
    public var step: Int
    public var attempt: Int
    public var bytes: Int64
    public var committedAt: Date
    /// Deleted from the bucket by retention.
    public var deleted: Bool

    public init(jobID: String, step: Int, attempt: Int, bytes: Int64, committedAt: Date, deleted: Bool = false) {
        self.jobID = jobID
        self.step = step
        self.attempt = attempt
        self.bytes = bytes
        self.committedAt = committedAt
        self.deleted = deleted
    }
}

extension StateStore {
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

    public func insert(_ job: JobRecord) throws {
        try write { db in
            if try JobRecord.fetchOne(db, key: job.id) != nil {
                throw CapstanError(.invalidRequest, "A job with id '\(job.id)' already exists.", hint: "Job ids are generated; retry the launch.")
            }
            try job.insert(db)
        }
    }

    public func update(_ job: JobRecord) throws { try write { try job.update($0) } }

    /// Reads, changes and writes a job in one transaction (so a concurrent `cancel` is never lost).
    @discardableResult
    public func updateJob(_ id: String, _ change: (inout JobRecord) throws -> Void) throws -> JobRecord {
        try write { db in
            guard var job = try JobRecord.fetchOne(db, key: id) else {
                throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs`.")
            }
            try change(&job)
            try job.update(db)
            return job
        }
    }

    /// The job with this id, or else the newest job with this name.
    public func job(_ idOrName: String) throws -> JobRecord? {
        try read { db in
            if let j = try JobRecord.fetchOne(db, key: idOrName) { return j }
            return try JobRecord.filter(Column("name") == idOrName).order(Column("createdAt").desc).fetchOne(db)
        }
    }

    /// The newest `limit` jobs, or, without `includeFinished`, the newest `limit` unfinished
    /// ones: the status is filtered in the query, so unfinished jobs are never pushed out of
    /// the page by newer finished ones.
    public func jobs(includeFinished: Bool = true, limit: Int = 100) throws -> [JobRecord] {
        try read { db in
            var query = JobRecord.all()
            if !includeFinished { query = query.filter(!Self.finishedStatuses.contains(Column("status"))) }
            return try query.order(Column("createdAt").desc).limit(limit).fetchAll(db)
        }
    }

    /// Every job that is not finished, oldest first, however many jobs there are (what a
    /// controller must be re-attached to).
    public func unfinishedJobs() throws -> [JobRecord] {
        try read { db in
            try JobRecord.filter(!Self.finishedStatuses.contains(Column("status"))).order(Column("createdAt")).fetchAll(db)
        }
    }

    static var finishedStatuses: [String] { JobStatus.allCases.filter(\.isFinished).map(\.rawValue) }

    // MARK: - Attempts

    public func save(_ attempt: JobAttemptRecord) throws { try write { try attempt.save($0) } }

    public func attempts(job id: String) throws -> [JobAttemptRecord] {
        try read { try JobAttemptRecord.filter(Column("jobID") == id).order(Column("attempt")).fetchAll($0) }
    }

    public func attempt(job id: String, number: Int) throws -> JobAttemptRecord? {
        try read { try JobAttemptRecord.fetchOne($0, key: ["jobID": id, "attempt": number]) }
    }

    // MARK: - Checkpoints

    public func save(_ checkpoint: CheckpointRecord) throws { try write { try checkpoint.save($0) } }

    public func checkpoints(job id: String) throws -> [CheckpointRecord] {
        try read { try CheckpointRecord.filter(Column("jobID") == id).order(Column("step")).fetchAll($0) }
    }

    // MARK: - Job events

    /// Records something that happened to a job.
    public func jobEvent(_ kind: String, _ message: String, job: String, cluster: String? = nil) {
        _ = try? write { db in
            try db.execute(sql: "INSERT INTO event(time, clusterID, kind, message, jobID) VALUES (?, ?, ?, ?, ?)", arguments: [Date(), cluster, kind, message, job])
        }
    }

    public func events(job id: String, limit: Int = 500) throws -> [StateEvent] {
        try read { db in
            try StateEvent.fetchAll(db, sql: "SELECT id, time, clusterID, kind, message FROM event WHERE jobID = ? ORDER BY id DESC LIMIT ?", arguments: [id, limit]).reversed()
        }
    }
}
