public import CapstanCore
public import Foundation
import PostgresNIO

// Jobs, attempts, checkpoints, job events and API tokens: SQLiteStateStore's semantics.

extension PostgresStateStore {
    static let finishedStatuses = "(" + JobStatus.allCases.filter(\.isFinished).map { "'\($0.rawValue)'" }.joined(separator: ", ") + ")"

    // MARK: - Jobs

    /// Inserts a new job; fails with `.invalidRequest` when its id is taken.
    public func insert(_ job: JobRecord) async throws {
        let n = try await execute("""
            INSERT INTO job (\(unescaped: JobRecord.columns))
            VALUES (\(job.id), \(job.name), \(job.status.rawValue), \(job.spec.pg), \(job.specFolder.pg), \(job.settings.pg), \(job.clusterName),
                    \(job.ownsCluster), \(job.storage), \(job.attempt), \(job.restarts), \(job.latestCheckpoint), \(job.createdAt), \(job.startedAt),
                    \(job.finishedAt), \(job.lastError.pg), \(job.controllerPID.map { Int($0) }), \(job.metrics.pg), \(job.controllerFence), \(job.controllerHolder))
            ON CONFLICT (id) DO NOTHING RETURNING 1
            """)
        if n == 0 {
            throw CapstanError(.invalidRequest, "A job with id '\(job.id)' already exists.", hint: "Job ids are generated; retry the launch.")
        }
    }

    public func update(_ job: JobRecord) async throws {
        let logger = self.logger
        try await transaction { conn in try await Self.write(job, conn, logger) }
    }

    static func write(_ job: JobRecord, _ conn: PostgresConnection, _ logger: Logger) async throws {
        let n = try await rows(try await conn.query("""
            UPDATE job SET name = \(job.name), status = \(job.status.rawValue), spec = \(job.spec.pg), spec_folder = \(job.specFolder.pg),
                settings = \(job.settings.pg), cluster_name = \(job.clusterName), owns_cluster = \(job.ownsCluster), storage = \(job.storage),
                attempt = \(job.attempt), restarts = \(job.restarts), latest_checkpoint = \(job.latestCheckpoint), created_at = \(job.createdAt),
                started_at = \(job.startedAt), finished_at = \(job.finishedAt), last_error = \(job.lastError.pg),
                controller_pid = \(job.controllerPID.map { Int($0) }), metrics = \(job.metrics.pg), controller_fence = \(job.controllerFence),
                controller_holder = \(job.controllerHolder)
            WHERE id = \(job.id) RETURNING 1
            """, logger: logger)) { _ in () }.count
        if n == 0 { throw missing("job", job.id) }
    }

    /// Reads, changes and writes a job in one transaction, the row locked (`SELECT … FOR
    /// UPDATE`) from the read to the commit: a concurrent `cancel` is never lost.
    @discardableResult
    public func updateJob(_ id: String, _ change: @escaping @Sendable (inout JobRecord) throws -> Void) async throws -> JobRecord {
        let logger = self.logger
        return try await transaction { conn in try await Self.changeJob(conn, id, change, logger) }
    }

    /// Reads (locking the row), changes and writes a job inside the caller's transaction.
    static func changeJob(_ conn: PostgresConnection, _ id: String, _ change: (inout JobRecord) throws -> Void, _ logger: Logger) async throws -> JobRecord {
        let found = try await Self.rows(try await conn.query("SELECT \(unescaped: JobRecord.columns) FROM job WHERE id = \(id) FOR UPDATE", logger: logger), JobRecord.init(row:))
        guard var job = found.first else {
            throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs`.")
        }
        try change(&job)
        try await Self.write(job, conn, logger)
        return job
    }

    /// The job with this id, or else the newest job with this name.
    public func job(_ idOrName: String) async throws -> JobRecord? {
        try await one("""
            SELECT \(unescaped: JobRecord.columns) FROM job WHERE id = \(idOrName) OR name = \(idOrName)
            ORDER BY (id = \(idOrName)) DESC, created_at DESC LIMIT 1
            """, JobRecord.init(row:))
    }

    /// The newest `limit` jobs, or, without `includeFinished`, the newest `limit` unfinished
    /// ones (the status is filtered in the query).
    public func jobs(includeFinished: Bool = true, limit: Int = 100) async throws -> [JobRecord] {
        try await all("""
            SELECT \(unescaped: JobRecord.columns) FROM job
            \(unescaped: includeFinished ? "" : "WHERE status NOT IN \(Self.finishedStatuses)") ORDER BY created_at DESC, id DESC LIMIT \(max(0, limit))
            """, JobRecord.init(row:))
    }

    /// Every job that is not finished, oldest first.
    public func unfinishedJobs() async throws -> [JobRecord] {
        try await all("SELECT \(unescaped: JobRecord.columns) FROM job WHERE status NOT IN \(unescaped: Self.finishedStatuses) ORDER BY created_at, id", JobRecord.init(row:))
    }

    // MARK: - Attempts

    public func save(_ attempt: JobAttemptRecord) async throws {
        let nodes = try JSONColumn.encode(attempt.nodes)
        try await execute("""
            INSERT INTO job_attempt (job_id, attempt, outcome, nodes, master_address, master_port, resume_step, started_at, ended_at, failure_kind, failed_node, exit_code, message)
            VALUES (\(attempt.jobID), \(attempt.attempt), \(attempt.outcome.rawValue), \(nodes)::jsonb, \(attempt.masterAddress), \(attempt.masterPort),
                    \(attempt.resumeStep), \(attempt.startedAt), \(attempt.endedAt), \(attempt.failureKind.pg), \(attempt.failedNode), \(attempt.exitCode), \(attempt.message.pg))
            ON CONFLICT (job_id, attempt) DO UPDATE SET outcome = EXCLUDED.outcome, nodes = EXCLUDED.nodes, master_address = EXCLUDED.master_address,
                master_port = EXCLUDED.master_port, resume_step = EXCLUDED.resume_step, started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at,
                failure_kind = EXCLUDED.failure_kind, failed_node = EXCLUDED.failed_node, exit_code = EXCLUDED.exit_code, message = EXCLUDED.message
            """)
    }

    public func attempts(job id: String) async throws -> [JobAttemptRecord] {
        try await all("SELECT \(unescaped: JobAttemptRecord.columns) FROM job_attempt WHERE job_id = \(id) ORDER BY attempt", JobAttemptRecord.init(row:))
    }

    public func attempt(job id: String, number: Int) async throws -> JobAttemptRecord? {
        try await one("SELECT \(unescaped: JobAttemptRecord.columns) FROM job_attempt WHERE job_id = \(id) AND attempt = \(number)", JobAttemptRecord.init(row:))
    }

    // MARK: - Checkpoints

    public func save(_ checkpoint: CheckpointRecord) async throws {
        try await execute("""
            INSERT INTO checkpoint (job_id, step, attempt, bytes, committed_at, deleted)
            VALUES (\(checkpoint.jobID), \(checkpoint.step), \(checkpoint.attempt), \(checkpoint.bytes), \(checkpoint.committedAt), \(checkpoint.deleted))
            ON CONFLICT (job_id, step) DO UPDATE SET attempt = EXCLUDED.attempt, bytes = EXCLUDED.bytes, committed_at = EXCLUDED.committed_at, deleted = EXCLUDED.deleted
            """)
    }

    public func checkpoints(job id: String) async throws -> [CheckpointRecord] {
        try await all("SELECT \(unescaped: CheckpointRecord.columns) FROM checkpoint WHERE job_id = \(id) ORDER BY step", CheckpointRecord.init(row:))
    }

    // MARK: - Job events

    /// Records something that happened to a job; never fails its caller.
    public func jobEvent(_ kind: String, _ message: String, job: String, cluster: String? = nil) async {
        await writeEvent(kind, message, cluster: cluster, job: job)
    }

    public func events(job id: String, limit: Int = 500) async throws -> [StateEvent] {
        try await all("SELECT \(unescaped: StateEvent.columns) FROM event WHERE job_id = \(id) ORDER BY id DESC LIMIT \(max(0, limit))", StateEvent.init(row:)).reversed()
    }

    public func events(job id: String, after: Int64, limit: Int) async throws -> [StateEvent] {
        try await all("SELECT \(unescaped: StateEvent.columns) FROM event WHERE job_id = \(id) AND id > \(after) ORDER BY id LIMIT \(max(0, limit))", StateEvent.init(row:))
    }

    // MARK: - API tokens

    /// Stores a new token; fails with `.invalidRequest` when its id or hash is taken.
    public func insert(_ token: APIToken) async throws {
        let n = try await execute("""
            INSERT INTO api_token (id, name, hash, created_at, revoked_at, last_used_at)
            VALUES (\(token.id), \(token.name), \(token.hash), \(token.createdAt), \(token.revokedAt), \(token.lastUsedAt))
            ON CONFLICT (id) DO NOTHING RETURNING 1
            """)
        if n == 0 {
            throw CapstanError(.invalidRequest, "A token with id '\(token.id)' already exists.", hint: "Token ids are generated; create it again.")
        }
    }

    public func token(hash: String) async throws -> APIToken? {
        try await one("SELECT \(unescaped: APIToken.columns) FROM api_token WHERE hash = \(hash)", APIToken.init(row:))
    }

    public func tokens() async throws -> [APIToken] {
        try await all("SELECT \(unescaped: APIToken.columns) FROM api_token ORDER BY created_at, id", APIToken.init(row:))
    }

    /// Marks a token revoked (by id, else by the name of exactly one live token); returns it.
    @discardableResult
    public func revokeToken(_ idOrName: String, at: Date) async throws -> APIToken? {
        let logger = self.logger
        return try await transaction { conn in
            var found = try await Self.rows(try await conn.query("SELECT \(unescaped: APIToken.columns) FROM api_token WHERE id = \(idOrName) FOR UPDATE", logger: logger), APIToken.init(row:)).first
            if found == nil {
                let named = try await Self.rows(try await conn.query("SELECT \(unescaped: APIToken.columns) FROM api_token WHERE name = \(idOrName) AND revoked_at IS NULL FOR UPDATE", logger: logger), APIToken.init(row:))
                if named.count > 1 {
                    throw CapstanError(.invalidRequest, "\(named.count) live tokens are named '\(idOrName)'.", hint: "Revoke one by its id (`capstan serve token list`).")
                }
                found = named.first
            }
            guard var token = found else { return nil }
            if token.revokedAt == nil {
                token.revokedAt = at
                try await conn.query("UPDATE api_token SET revoked_at = \(at) WHERE id = \(token.id)", logger: logger)
            }
            return token
        }
    }

    public func touchToken(_ id: String, at: Date) async throws {
        try await execute("UPDATE api_token SET last_used_at = \(at) WHERE id = \(id)")
    }
}
