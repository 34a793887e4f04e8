public import CapstanCore
public import Foundation
public import Logging
import PostgresNIO

/// Capstan's state in PostgreSQL: the same repositories as ``CapstanSQLite``'s
/// `SQLiteStateStore` (clusters, intents, instances, jobs, attempts, checkpoints, events, the
/// offer cache, API tokens), with the same semantics, in a database several machines share
/// (`capstan serve` replicas, CLIs on other hosts). Leases for work across machines are
/// ``PostgresLeases``, on the same database.
///
/// ```swift
/// let store = try await PostgresStateStore.connect(url: "postgres://capstan@db:5432/capstan?sslmode=require", logger: logger)
/// defer { Task { await store.close() } }
/// ```
///
/// The store owns a pooled `PostgresClient` and runs it; ``close()`` stops it. Every
/// operation gives up after ``operationTimeout`` (a database that stopped answering fails its
/// callers with `.timeout` instead of hanging them).
public final class PostgresStateStore: StateStore, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The database URL without its password.
    public let location: String
    /// How long one operation (a query, a transaction) may take, waiting for a connection included.
    public let operationTimeout: Duration
    let client: PostgresClient
    let logger: Logger
    let password: String?
    private let runner: Task<Void, Never>

    private init(url: PostgresURL, client: PostgresClient, logger: Logger, operationTimeout: Duration) {
        self.location = url.redacted
        self.password = url.password
        self.client = client
        self.logger = logger
        self.operationTimeout = operationTimeout
        self.runner = Task { await client.run() }
    }

    deinit { runner.cancel() }

    // What prints the store shows its location only (never the password it holds).
    public var description: String { "PostgresStateStore(\(location))" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["location": location], displayStyle: .class) }

    /// Connects to the database at `url` and brings its schema up to date.
    ///
    /// `url`: `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require|verify-ca|verify-full]`
    /// (also `application_name=`, `connect_timeout=` in seconds). Without a password in the
    /// URL, the environment variable `CAPSTAN_POSTGRES_PASSWORD` is read. The password shows in
    /// no message, log line or ``location``.
    ///
    /// Creates Capstan's tables on first use (the role needs CREATE on the database's `public`
    /// schema); each migration runs once, in order, under an advisory lock, so replicas that
    /// start at the same moment do not race. Fails with a ``CapstanError`` that names the host,
    /// database and user, PostgreSQL's reason and what to do: `.config` for a malformed URL or
    /// a missing database, `.auth` for refused credentials, `.io` when the server cannot be
    /// reached.
    public static func connect(url: String, logger: Logger = PostgresStateStore.silent) async throws -> PostgresStateStore {
        try await connect(url: url, logger: logger, environment: ProcessInfo.processInfo.environment)
    }

    /// The default logger: none (a library never bootstraps logging; pass yours).
    public static let silent = Logger(label: "capstan.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    /// ``connect(url:logger:)`` with the environment given (tests) and the operation timeout.
    package static func connect(url: String, logger: Logger, environment: [String: String], operationTimeout: Duration = .seconds(30)) async throws -> PostgresStateStore {
        let parsed = try PostgresURL(url, environment: environment)
        let configuration = parsed.clientConfiguration(statementTimeout: operationTimeout)
        // One connection of our own first: the pool retries a refused connection forever (a
        // lease waits), which would hang `connect` on a wrong password or a closed port.
        let probe: PostgresConnection
        do {
            probe = try await PostgresConnection.connect(configuration: try parsed.connectionConfiguration(), id: 0, logger: logger)
        } catch {
            throw PostgresErrors.connecting(error, parsed)
        }
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        let store = PostgresStateStore(url: parsed, client: client, logger: logger, operationTimeout: operationTimeout)
        do {
            try await store.migrate(on: probe)
            try? await probe.close()
        } catch {
            try? await probe.close()
            await store.close()
            throw error
        }
        return store
    }

    /// Stops the connection pool (closing its connections). The store must not be used after.
    public func close() async {
        runner.cancel()
        await runner.value
    }

    // MARK: - Running statements

    /// Runs `body` with the pool, within ``operationTimeout``; maps failures to ``CapstanError``.
    func run<T: Sendable>(_ writing: Bool, _ body: @escaping @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let client = self.client
        return try await mapErrors(writing) { try await Deadline.run(self.operationTimeout) { try await body(client) } }
    }

    /// Runs `body` in one transaction (BEGIN … COMMIT, rolled back when it throws), within
    /// `timeout` (default ``operationTimeout``).
    func transaction<T: Sendable>(timeout: Duration? = nil, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let client = self.client, logger = self.logger
        return try await mapErrors(true) {
            try await Deadline.run(timeout ?? self.operationTimeout) {
                try await client.withTransaction(logger: logger) { conn in try await body(conn) }
            }
        }
    }

    func mapErrors<T: Sendable>(_ writing: Bool, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let e as CapstanError {
            throw PostgresErrors.scrub(e, password)
        } catch let e as PostgresTransactionError {
            // withTransaction wraps what the closure threw: a CapstanError of ours stays one.
            if let inner = e.closureError { throw error(from: inner, writing: writing) }
            throw error(from: e.commitError ?? e.beginError ?? e.rollbackError ?? e, writing: writing)
        } catch {
            throw self.error(from: error, writing: writing)
        }
    }

    func error(from error: any Error, writing: Bool) -> CapstanError {
        if let e = error as? CapstanError { return PostgresErrors.scrub(e, password) }
        if case let (state, message)? = PostgresErrors.server(error) {
            switch state {
            case "23505":
                return PostgresErrors.scrub(CapstanError(.invalidRequest, "State conflict: \(message)."), password)
            case "57014", "25P03":  // statement_timeout, idle_in_transaction_session_timeout
                return PostgresErrors.scrub(CapstanError(.timeout, "The state database \(location) ended a statement that ran past \(Int(operationTimeout.seconds)) s: \(message).", hint: "Check that PostgreSQL is not overloaded (locks held, slow disk)."), password)
            default:
                break
            }
        }
        let why = PostgresErrors.why(error)
        return PostgresErrors.scrub(
            CapstanError(.io, "Cannot \(writing ? "write" : "read") the state database \(location): \(why).", hint: "Check that PostgreSQL is up and reachable, and its log."),
            password)
    }

    /// The rows of `query`, each decoded by `decode`.
    static func rows<T>(_ sequence: PostgresRowSequence, _ decode: (PostgresRow) throws -> T) async throws -> [T] {
        var out: [T] = []
        for try await row in sequence { out.append(try decode(row)) }
        return out
    }

    func all<T: Sendable>(_ query: PostgresQuery, _ decode: @escaping @Sendable (PostgresRow) throws -> T) async throws -> [T] {
        let logger = self.logger
        return try await run(false) { try await Self.rows(try await $0.query(query, logger: logger), decode) }
    }

    func one<T: Sendable>(_ query: PostgresQuery, _ decode: @escaping @Sendable (PostgresRow) throws -> T) async throws -> T? {
        try await all(query, decode).first
    }

    /// Runs a statement; returns how many rows it returned.
    @discardableResult
    func execute(_ query: PostgresQuery) async throws -> Int {
        let logger = self.logger
        return try await run(true) { try await Self.rows(try await $0.query(query, logger: logger)) { _ in () }.count }
    }

    // MARK: - Schema

    /// The advisory lock every replica takes while it migrates (ASCII "capstan").
    static let migrationLock: Int64 = 0x63_61_70_73_74_61_6E
    /// How long migrating (waiting for another replica's migration included) may take.
    static let migrationTimeout: Duration = .seconds(300)

    /// Creates the tables, or brings them up to date: each migration once, in order, in one
    /// transaction that holds `pg_advisory_xact_lock` (replicas starting together wait for the
    /// first, then find nothing to do).
    ///
    /// On `conn`, the connection `connect` opened itself, not the pool's: connecting does not
    /// depend on the pool coming up (which retries refused connections without end).
    func migrate(on conn: PostgresConnection) async throws {
        let logger = self.logger, location = self.location
        // Longer than one operation: another replica may hold the lock while it migrates.
        try await mapErrors(true) {
            try await Deadline.run(max(self.operationTimeout, Self.migrationTimeout)) {
                try await conn.query("BEGIN", logger: logger)
                do {
                    try await Self.migrationSteps(conn, logger: logger, location: location)
                    try await conn.query("COMMIT", logger: logger)
                } catch {
                    _ = try? await conn.query("ROLLBACK", logger: logger)
                    throw error
                }
            }
        }
    }

    static func migrationSteps(_ conn: PostgresConnection, logger: Logger, location: String) async throws {
        do {
            try await conn.query("SET LOCAL statement_timeout = \(unescaped: String(Int(Self.migrationTimeout.seconds * 1000)))", logger: logger)
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: logger)
            try await conn.query("CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())", logger: logger)
            let migrations = PostgresSchema.migrations
            let done = Set(try await Self.rows(try await conn.query("SELECT version FROM schema_migrations", logger: logger)) { try $0.decode(Int.self) })
            if let newest = done.max(), newest > migrations.count {
                throw CapstanError(.config, "The state database \(location) has schema version \(newest); this Capstan knows up to \(migrations.count).", hint: "Upgrade Capstan: a newer version has written this database.")
            }
            for (i, m) in migrations.enumerated() where !done.contains(i + 1) {
                for statement in m.statements { try await conn.query(PostgresQuery(unsafeSQL: statement), logger: logger) }
                try await conn.query("INSERT INTO schema_migrations(version, name) VALUES (\(i + 1), \(m.name))", logger: logger)
                logger.info("state database migrated", metadata: ["version": "\(i + 1)", "name": "\(m.name)", "database": "\(location)"])
            }
        }
    }

    // MARK: - Owner

    public func ownerID() async throws -> String {
        if let id = try await one("SELECT value FROM meta WHERE key = 'owner'", { try $0.decode(String.self) }) { return id }
        // Created by the first migration; made again if someone deleted it (two statements, so
        // the SELECT sees a concurrent creator's row).
        try await execute("INSERT INTO meta(key, value) VALUES ('owner', \(PostgresSchema.newOwnerID())) ON CONFLICT (key) DO NOTHING")
        guard let id = try await one("SELECT value FROM meta WHERE key = 'owner'", { try $0.decode(String.self) }) else {
            throw CapstanError(.internalError, "The state database \(location) keeps no owner id.")
        }
        return id
    }

    public func ownerIDs() async throws -> [String] {
        let current = try await ownerID()
        let former = try await all("SELECT value FROM meta WHERE key LIKE 'owner.former.%' ORDER BY key") { try $0.decode(String.self) }
        return [current] + former.filter { $0 != current }
    }

    public func createdAt() async throws -> Date {
        let v = try await one("SELECT value FROM meta WHERE key = 'createdAt'") { try $0.decode(String.self) }
        return v.flatMap(Double.init).map { Date(timeIntervalSince1970: $0) } ?? .distantPast
    }
}

/// Races an operation against a time limit without waiting for a stuck operation to notice
/// its cancellation (a dead TCP connection may not for minutes).
enum Deadline {
    private final class Shot<T: Sendable>: Sendable {
        let continuation: LockedBox<CheckedContinuation<T, any Error>?>
        let tasks = LockedBox<[Task<Void, Never>]>([])
        init(_ c: CheckedContinuation<T, any Error>) { continuation = LockedBox(c) }
        func finish(_ result: Result<T, any Error>) {
            guard let c = continuation.withLock({ c -> CheckedContinuation<T, any Error>? in defer { c = nil }; return c }) else { return }
            c.resume(with: result)
            for t in tasks.withLock({ $0 }) { t.cancel() }
        }
    }

    static func run<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let holder = LockedBox<Shot<T>?>(nil)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
                let shot = Shot(c)
                holder.withLock { $0 = shot }
                let work = Task { shot.finish(await Result(catching: { try await body() })) }
                let timer = Task {
                    guard (try? await Task.sleep(for: limit)) != nil else { return }
                    shot.finish(.failure(CapstanError(.timeout, "The state database did not answer within \(Int(limit.seconds)) s.", hint: "Check that PostgreSQL is up and reachable, and not overloaded.")))
                }
                shot.tasks.withLock { $0 = [work, timer] }
                if shot.continuation.withLock({ $0 == nil }) { work.cancel(); timer.cancel() }
                if Task.isCancelled { shot.finish(.failure(CancellationError())) }
            }
        } onCancel: {
            holder.withLock { $0 }?.finish(.failure(CancellationError()))
        }
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
