import CapstanCore
import CapstanPostgres
import CapstanSQLite
@_exported import CapstanTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

/// The PostgreSQL that scripts/test-servers.sh started (`start` or `postgres`): its URL (no
/// password) and the password, in the environment. Each test makes a database of its own.
enum TestPostgres {
    static func env(_ name: String) throws -> String {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else {
            throw CapstanError(.config, "\(name) is not set.", hint: "Run the tests with scripts/test.sh, or: eval \"$(scripts/test-servers.sh postgres DIR)\" (and `scripts/test-servers.sh stop DIR` after).")
        }
        return v
    }

    static var url: String { get throws { try env("CAPSTAN_TEST_POSTGRES_URL") } }
    static var password: String { get throws { try env("CAPSTAN_TEST_POSTGRES_PASSWORD") } }
    /// What a store is given to read the password from (as `CAPSTAN_POSTGRES_PASSWORD`).
    static var environment: [String: String] { get throws { ["CAPSTAN_POSTGRES_PASSWORD": try password] } }

    static var components: URLComponents { get throws { try #require(URLComponents(string: try url)) } }
    static var host: String { get throws { try components.host ?? "127.0.0.1" } }
    static var port: Int { get throws { try components.port ?? 5432 } }
    static var user: String { get throws { try components.user ?? "capstan" } }

    /// One connection to the server's own database, as the test role (which may CREATE DATABASE).
    static func admin<T>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let config = PostgresConnection.Configuration(host: try host, port: try port, username: try user, password: try password, database: try components.path.split(separator: "/").first.map(String.init) ?? "capstan", tls: .disable)
        let conn = try await PostgresConnection.connect(configuration: config, id: 1, logger: Logger(label: "capstan.test.admin"))
        do {
            let r = try await body(conn)
            try await conn.close()
            return r
        } catch {
            try? await conn.close()
            throw error
        }
    }

    /// A new, empty database; returns its URL (no password in it).
    static func freshDatabase(_ label: String = "t") async throws -> String {
        let name = "capstan_\(label)_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(16))"
        _ = try await admin { try await $0.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: Logger(label: "capstan.test.admin")) }
        var c = try components
        c.path = "/" + name
        return try #require(c.string)
    }

    static func dropDatabase(_ url: String) async {
        guard let name = URLComponents(string: url)?.path.dropFirst(), !name.isEmpty else { return }
        _ = try? await admin { try await $0.query(PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \(name) WITH (FORCE)"), logger: Logger(label: "capstan.test.admin")) }
    }

    /// A store on `url`. Its operations may wait 120 s for an answer (the product's default is
    /// 30 s): in the whole suite's first minutes on two cores, a query's answer can wait that
    /// long for a cooperative thread; the timeout itself is tested with its own short limit.
    static func connect(_ url: String, logger: Logger = PostgresStateStore.silent, operationTimeout: Duration = .seconds(120)) async throws -> PostgresStateStore {
        try await PostgresStateStore.connect(url: url, logger: logger, environment: try environment, operationTimeout: operationTimeout)
    }

    /// A store on a fresh database, closed and dropped after `body`.
    static func withStore<T>(_ body: (PostgresStateStore) async throws -> T) async throws -> T {
        let url = try await freshDatabase()
        let store = try await connect(url)
        do {
            let r = try await body(store)
            await store.close()
            await dropDatabase(url)
            return r
        } catch {
            await store.close()
            await dropDatabase(url)
            throw error
        }
    }
}

/// The two stores the conformance suite runs every test body against.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case sqlite, postgres
    var testDescription: String { rawValue }

    func withStore<T>(_ body: (any StateStore) async throws -> T) async throws -> T {
        switch self {
        case .sqlite:
            let dir = TempDir("capstan-conformance")
            defer { dir.cleanup() }
            return try await body(try SQLiteStateStore(path: dir.file("capstan.db")))
        case .postgres:
            return try await TestPostgres.withStore { try await body($0) }
        }
    }
}

/// Polls `condition` until it holds or `deadline` passes (generous: no timing is asserted).
func eventually(_ deadline: Duration = .seconds(60), every: Duration = .milliseconds(100), _ condition: () async throws -> Bool) async throws -> Bool {
    let end = ContinuousClock.now + deadline
    while ContinuousClock.now < end {
        if try await condition() { return true }
        try await Task.sleep(for: every)
    }
    return try await condition()
}

/// Collects every log line (message and metadata), to check that none holds a secret.
final class CapturedLogs: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    var all: [String] { lock.withLock { lines } }
    func append(_ s: String) { lock.withLock { lines.append(s) } }

    var logger: Logger {
        var l = Logger(label: "capstan.test.captured") { _ in Handler(sink: self) }
        l.logLevel = .trace
        return l
    }

    struct Handler: LogHandler {
        let sink: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            sink.append("\(event.level) \(event.message) \(metadata.merging(event.metadata ?? [:]) { $1 }) \(event.error.map { "\($0) \(String(reflecting: $0))" } ?? "")")
        }
    }
}
