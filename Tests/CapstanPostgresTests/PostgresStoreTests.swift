import CapstanCore
@testable import CapstanPostgres
import Foundation
import Logging
import PostgresNIO
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("PostgreSQL store: connecting, migrations, secrets")
struct PostgresStoreTests {
    @Test("two replicas connecting to a fresh database at once both succeed; the schema is made once")
    func concurrentMigrations() async throws {
        let url = try await TestPostgres.freshDatabase("mig")
        defer { Task { await TestPostgres.dropDatabase(url) } }
        async let a = TestPostgres.connect(url)
        async let b = TestPostgres.connect(url)
        async let c = TestPostgres.connect(url)
        let stores = try await [a, b, c]
        let owners = try await Set(stores.asyncMap { try await $0.ownerID() })
        #expect(owners.count == 1)
        let versions = try await stores[0].all("SELECT version FROM schema_migrations ORDER BY version") { try $0.decode(Int.self) }
        #expect(versions == Array(1...PostgresSchema.migrations.count))
        // A later connect finds nothing to do, and the same owner and creation time.
        let created = try await stores[0].createdAt()
        for s in stores { await s.close() }
        let again = try await TestPostgres.connect(url)
        await #expect(try again.ownerID() == owners.first)
        await #expect(try again.createdAt() == created)
        await again.close()
    }

    @Test("a database written by a newer Capstan is refused with a clear error")
    func newerSchema() async throws {
        let url = try await TestPostgres.freshDatabase("new")
        defer { Task { await TestPostgres.dropDatabase(url) } }
        let store = try await TestPostgres.connect(url)
        try await store.execute("INSERT INTO schema_migrations(version, name) VALUES (999, 'future')")
        await store.close()
        let e = await #expect(throws: CapstanError.self) { try await TestPostgres.connect(url) }
        #expect(e?.code == .config && e?.message.contains("999") == true)
    }

    @Test("two databases get two owner ids")
    func ownerPerDatabase() async throws {
        let a = try await TestPostgres.withStore { try await $0.ownerID() }
        let b = try await TestPostgres.withStore { try await $0.ownerID() }
        #expect(a != b)
    }

    @Test("location is the URL without its password, whether the password came in the URL or the environment")
    func location() async throws {
        let url = try await TestPostgres.freshDatabase("loc")
        defer { Task { await TestPostgres.dropDatabase(url) } }
        let password = try TestPostgres.password
        var c = try #require(URLComponents(string: url))
        c.password = password
        let withPassword = try #require(c.string)
        let store = try await PostgresStateStore.connect(url: withPassword, logger: Logger(label: "t"), environment: [:])
        #expect(!store.location.contains(password))
        var dumped = ""
        dump(store, to: &dumped)
        for shown in ["\(store)", String(reflecting: store), dumped] {
            #expect(!shown.contains(password) && shown.contains(store.location), "\(shown)")
        }
        #expect(store.location.contains("capstan_loc_") && store.location.contains("127.0.0.1") && store.location.contains("sslmode=disable"))
        await store.close()
        let fromEnv = try await TestPostgres.connect(url)
        #expect(fromEnv.location == store.location)
        await fromEnv.close()
    }

    @Test("a NUL character (which PostgreSQL text cannot hold) is stored as U+FFFD instead of failing the write")
    func nulCharacters() async throws {
        try await TestPostgres.withStore { store in
            var j = StoreConformanceTests.job("nul")
            j.lastError = "bad\u{0}byte"
            try await store.insert(j)
            await #expect(try store.job("nul")?.lastError == "bad\u{FFFD}byte")
            await store.event("k", "a\u{0}b")
            await #expect(try store.events().last?.message == "a\u{FFFD}b")
            let i = Instance(id: "i", provider: "p", instanceType: "t", region: "r", state: .running, tags: ["k": "v\u{0}"])
            try await store.record(i, clusterID: "c", intentKey: "k")
            await #expect(try store.instance(provider: "p", id: "i")?.instance.tags["k"] == "v\u{FFFD}")
        }
    }

    @Test("an operation that cannot get an answer fails with .timeout instead of hanging")
    func operationTimeout() async throws {
        let url = try await TestPostgres.freshDatabase("slow")
        defer { Task { await TestPostgres.dropDatabase(url) } }
        let store = try await TestPostgres.connect(url, operationTimeout: .seconds(2))
        let e = await #expect(throws: CapstanError.self) { try await store.execute("SELECT pg_sleep(30)") }
        #expect(e?.code == .timeout)
        // The store still works after (on another connection of the pool).
        #expect(try await eventually { (try? await store.ownerID()) != nil })
        await store.close()
    }
}

@Suite("PostgreSQL store: bad input")
struct PostgresBadInputTests {
    static let secret = "hunter2-Sup3rSecret"

    @Test("malformed URLs: a .config error that shows the URL without its password", arguments: [
        ("mysql://u:\(secret)@127.0.0.1/db", "scheme"),
        ("postgres://u:\(secret)@/db", "no host"),
        ("postgres://u:\(secret)@127.0.0.1:99999/db", "port"),
        ("postgres://u:\(secret)@127.0.0.1:abc/db", "port"),
        ("postgres://:\(secret)@127.0.0.1/db", "no user"),
        ("postgres://u:\(secret)@127.0.0.1/db?sslmode=sometimes", "sslmode"),
        ("postgres://u:\(secret)@127.0.0.1/db?sslmod=disable", "unknown parameter"),
        ("postgres://u@127.0.0.1/db?password=\(secret)", "query string"),
        ("not a url at all", "scheme"),
        ("postgres://u:p@ss:\(secret)@127.0.0.1:5432:1/db", ""),
    ])
    func malformed(url: String, says: String) async throws {
        let e = await #expect(throws: CapstanError.self) { try await PostgresStateStore.connect(url: url, logger: Logger(label: "t"), environment: [:]) }
        #expect(e?.code == .config)
        let text = "\(e.map { "\($0)" } ?? "") \(e?.hint ?? "")"
        #expect(!text.contains("Sup3rSecret"), "\(text)")
        #expect(says.isEmpty || text.lowercased().contains(says.lowercased()), "\(text)")
    }

    @Test("a wrong password: .auth, naming user, database and host, PostgreSQL's reason, and never the password (nor in the logs)")
    func wrongPassword() async throws {
        let logs = CapturedLogs()
        let url = try TestPostgres.url
        let e = await #expect(throws: CapstanError.self) {
            try await PostgresStateStore.connect(url: url, logger: logs.logger, environment: ["CAPSTAN_POSTGRES_PASSWORD": Self.secret])
        }
        #expect(e?.code == .auth)
        let text = "\(e.map { "\($0)" } ?? "") \(e?.hint ?? "")"
        #expect(text.contains("password authentication failed"), "\(text)")
        let port = try TestPostgres.port
        #expect(text.contains("'capstan'") && text.contains("127.0.0.1:\(port)"), "\(text)")
        #expect(!text.contains(Self.secret))
        #expect(!logs.all.joined(separator: "\n").contains(Self.secret))

        // The same with the password in the URL.
        var c = try #require(URLComponents(string: url))
        c.password = Self.secret
        let e2 = await #expect(throws: CapstanError.self) { try await PostgresStateStore.connect(url: try #require(c.string), logger: logs.logger, environment: [:]) }
        #expect(e2?.code == .auth)
        let text2 = "\(e2.map { "\($0)" } ?? "") \(e2?.hint ?? "")"
        #expect(!text2.contains(Self.secret))
        #expect(!logs.all.joined(separator: "\n").contains(Self.secret))
    }

    @Test("sslmode=require against a server without TLS: .config, saying so")
    func tlsRequired() async throws {
        var c = try TestPostgres.components
        c.query = "sslmode=require"
        let e = await #expect(throws: CapstanError.self) { try await TestPostgres.connect(try #require(c.string)) }
        #expect(e?.code == .config && e?.message.contains("TLS") == true, "\(e.map { "\($0)" } ?? "")")
    }

    @Test("no password at all: .auth, saying where to put one")
    func noPassword() async throws {
        let e = await #expect(throws: CapstanError.self) { try await PostgresStateStore.connect(url: try TestPostgres.url, logger: Logger(label: "t"), environment: [:]) }
        #expect(e?.code == .auth)
        #expect(e?.hint?.contains("CAPSTAN_POSTGRES_PASSWORD") == true || e?.message.contains("CAPSTAN_POSTGRES_PASSWORD") == true)
    }

    @Test("a database that does not exist: .config, saying how to create it")
    func noDatabase() async throws {
        var c = try TestPostgres.components
        c.path = "/capstan_no_such_db"
        let e = await #expect(throws: CapstanError.self) { try await TestPostgres.connect(try #require(c.string)) }
        #expect(e?.code == .config)
        #expect(e?.message.contains("capstan_no_such_db") == true && e?.hint?.contains("CREATE DATABASE") == true)
    }

    @Test("nothing listening on the port: .io naming host and port, with what to check")
    func unreachable() async throws {
        let port = try freeLoopbackPort()
        let e = await #expect(throws: CapstanError.self) {
            try await PostgresStateStore.connect(url: "postgres://capstan:\(Self.secret)@127.0.0.1:\(port)/capstan?sslmode=disable", logger: Logger(label: "t"), environment: [:])
        }
        #expect(e?.code == .io)
        let text = "\(e.map { "\($0)" } ?? "") \(e?.hint ?? "")"
        #expect(text.contains("127.0.0.1:\(port)") && text.contains("capstan"), "\(text)")
        #expect(text.lowercased().contains("refused"), "\(text)")
        #expect(!text.contains(Self.secret))
    }

    @Test("no secret in any log line of a working store either")
    func logsHoldNoPassword() async throws {
        let logs = CapturedLogs()
        let url = try await TestPostgres.freshDatabase("logs")
        defer { Task { await TestPostgres.dropDatabase(url) } }
        let password = try TestPostgres.password
        var c = try #require(URLComponents(string: url))
        c.password = password
        let store = try await PostgresStateStore.connect(url: try #require(c.string), logger: logs.logger, environment: [:])
        try await store.insert(StoreConformanceTests.job("j"))
        await #expect(throws: CapstanError.self) { try await store.insert(StoreConformanceTests.job("j")) }
        await store.event("k", "m")
        await store.close()
        #expect(!logs.all.isEmpty)
        #expect(!logs.all.joined(separator: "\n").contains(password))
    }
}

extension Sequence {
    func asyncMap<T>(_ f: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await f(e)) }
        return out
    }
}
