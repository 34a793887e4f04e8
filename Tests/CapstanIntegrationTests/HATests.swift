import CapstanCore
import CapstanPostgres
import CapstanTestSupport
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension TestServers {
    /// The test PostgreSQL (scripts/test-servers.sh): its URL (no password) and password.
    static var postgres: (url: String, password: String) {
        get throws { (try env("CAPSTAN_TEST_POSTGRES_URL"), try env("CAPSTAN_TEST_POSTGRES_PASSWORD")) }
    }

    /// A new empty database on the test PostgreSQL, as the test role; its URL (no password).
    static func freshPostgresDatabase(_ label: String) throws -> String {
        let pg = try postgres
        var c = try #require(URLComponents(string: pg.url))
        let name = "capstan_\(label)_" + UUID().uuidString.lowercased().filter(\.isHexDigit).prefix(12)
        let psql = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql"))?.sorted().last.map { "/usr/lib/postgresql/\($0)/bin/psql" } ?? "psql"
        let r = try runProcessBlocking("/usr/bin/env", ["PGPASSWORD=\(pg.password)", psql, "-h", c.host ?? "127.0.0.1", "-p", "\(c.port ?? 5432)", "-U", c.user ?? "capstan", "-d", String(c.path.dropFirst()), "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE \(name)"], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        c.path = "/" + name
        return try #require(c.string)
    }
}

/// Two `capstan serve` replicas on one PostgreSQL, each in its own network namespace (two
/// "machines"), sharing the home folder for the local nodes' files. The database is reached
/// through a relay on the lab bridge, as a database on another machine would be.
struct ReplicaLab {
    let lab: NetnsLab
    let relay: LabRelay
    let home: JobHome
    /// The URL the replicas use (no password).
    let stateURL: String
    let password: String
    let token: String

    static func start(steps: Int, every: Int) async throws -> ReplicaLab {
        let lab = try await NetnsLab.up(2)
        do {
            let pg = try TestServers.postgres
            let local = try TestServers.freshPostgresDatabase("ha")
            let target = try #require(URL(string: local.replacingOccurrences(of: "postgres://", with: "http://")))
            let relay = try LabRelay.start(lab, to: target)
            let relayed = try #require(URL(string: relay.endpoint))
            var c = try #require(URLComponents(string: local))
            c.host = relayed.host
            c.port = relayed.port
            let url = try #require(c.string)
            var home = try JobHome(steps: steps, every: every)
            home.env["CAPSTAN_POSTGRES_PASSWORD"] = pg.password
            home.postgres = (url, pg.password)
            home.dir.write("config.yaml", "providers:\n  local:\n    slots: 6\nstate: \(url)\n")
            let t = try await runProcess(BuildProducts.capstan, ["serve", "token", "create", "ha"], environment: ["CAPSTAN_HOME": home.dir.path, "CAPSTAN_POSTGRES_PASSWORD": pg.password])
            #expect(t.status == 0, "\(t.stderr)")
            return ReplicaLab(lab: lab, relay: relay, home: home, stateURL: url, password: pg.password, token: t.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        } catch {
            lab.down()
            throw error
        }
    }

    /// Replica `i` (1 or 2) in host `i`'s namespace.
    func replica(_ i: Int, log: String? = nil) async throws -> ServeProcess {
        try await ServeProcess(home: home.dir.path, env: ["CAPSTAN_POSTGRES_PASSWORD": password, "TMPDIR": home.tmp], log: log ?? "replica-\(i).log",
                               netns: lab.hosts[i - 1].ns, address: lab.hosts[i - 1].address)
    }

    func down() {
        relay.stop()
        lab.down()
        home.dir.cleanup()
    }
}

/// The fencing tokens of a job's `controller` events, in order, with their holders.
func takeovers(_ events: [StateEvent]) -> [(holder: String, fence: Int64)] {
    events.filter { $0.kind == "controller" }.compactMap { e in
        // "Controller <holder> took the job (fencing token <n>)."
        guard let h = e.message.split(separator: " ").dropFirst().first, let n = e.message.split(separator: " ").last.flatMap({ Int64($0.trimmingCharacters(in: CharacterSet(charactersIn: ")."))) }) else { return nil }
        return (String(h), n)
    }
}

@Suite("capstan serve: two replicas on PostgreSQL", .serialized)
struct HATests {
    init() throws {
        if let why = NetnsLab.available() { throw CapstanError(.config, "The HA tests put replicas in network namespaces: \(why).") }
        guard torchAvailable() else { throw CapstanError(.config, "python3 cannot import torch.", hint: "pip install torch (CPU wheel); .ci/run installs it.") }
        _ = try TestServers.postgres
    }

    @Test("kill -9 the replica that controls a 2-node job: the other adopts it, the job finishes with exact resume, and the fencing tokens show one controller at a time")
    func failover() async throws {
        let ha = try await ReplicaLab.start(steps: 150, every: 10)
        defer { ha.down() }
        let a = try await ha.replica(1)
        defer { a.terminate() }
        let b = try await ha.replica(2)
        defer { b.terminate() }
        let home = ha.home
        // A 20 s heartbeat: the adoption, not a node missed under load, is what this checks
        // (a 4 s one restarted the gang once with a build beside the suite).
        let id = try await ServerJobTests().launch(home, a, token: ha.token, heartbeatTimeout: 20)
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 }, "no checkpoint: \(a.logText)")
        let before = try #require(try await home.job())
        #expect(before.controllerHolder?.hasSuffix(":\(a.pid)") == true, "replica 1 took the job it was given: \(before.controllerHolder ?? "-")")
        let killed = ContinuousClock.now
        a.kill9()
        #expect(try await home.wait(timeout: 120) { try await home.job()?.controllerHolder?.hasSuffix(":\(b.pid)") == true }, "replica 2 never adopted the job: \(b.logText)")
        let adoption = ContinuousClock.now - killed
        print(String(format: "HA failover: replica 2 adopted the job %.1f s after replica 1 was killed (lease TTL 15 s, sweeps every 0.5 s)", adoption.seconds))
        #expect(try await home.wait(timeout: 300) { try await home.job()?.status.isFinished == true }, "\(b.logText)")
        let final = try #require(try await home.job())
        #expect(final.status == .succeeded, "\(final.lastError ?? "")\n\(home.logTail(job: id))")
        #expect(final.attempt == 1 && final.restarts == 0, "the running attempt was adopted, not restarted: attempt \(final.attempt)")
        _ = try await home.checkContinuity(job: final, total: 150)
        for node in 0..<2 { #expect(try home.steps(job: id, node: node).map(\.step) == Array(1...150), "node \(node) lost or repeated a step") }
        #expect(try await home.liveNodes().isEmpty, "the job's cluster is terminated")
        // One controller at a time: each takeover has a larger token than the last, and the
        // job's record carries the last one.
        let t = takeovers(try await home.anyStore().events(job: id))
        #expect(t.count == 2 && t.map(\.fence) == t.map(\.fence).sorted() && Set(t.map(\.fence)).count == t.count, "\(t)")
        #expect(t.first?.holder.hasSuffix(":\(a.pid)") == true && t.last?.holder.hasSuffix(":\(b.pid)") == true, "\(t)")
        #expect(final.controllerFence == t.last?.fence)
    }

    @Test("a replica paused past its lease (SIGSTOP) wakes to find its job taken over: it stops without writing, the other finishes the job")
    func pausedReplica() async throws {
        let ha = try await ReplicaLab.start(steps: 150, every: 10)
        defer { ha.down() }
        let a = try await ha.replica(1)
        defer { a.terminate() }
        let b = try await ha.replica(2)
        defer { b.terminate() }
        let home = ha.home
        let id = try await ServerJobTests().launch(home, a, token: ha.token)
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 })
        kill(a.pid, SIGSTOP)
        #expect(try await home.wait(timeout: 120) { try await home.job()?.controllerHolder?.hasSuffix(":\(b.pid)") == true }, "replica 2 never adopted the job: \(b.logText)")
        let takenOver = try #require(try await home.job())
        kill(a.pid, SIGCONT)
        // Replica 1 wakes with a controller that still thinks it runs the job.
        #expect(try await home.wait(timeout: 60) { a.logText.contains("lost the job's lock") || a.logText.contains("controlled under fencing token") }, "replica 1 did not notice: \(a.logText.suffix(3000))")
        #expect(try await home.wait(timeout: 300) { try await home.job()?.status.isFinished == true })
        let final = try #require(try await home.job())
        #expect(final.status == .succeeded, "\(final.lastError ?? "")")
        #expect(final.controllerHolder == takenOver.controllerHolder && final.controllerFence == takenOver.controllerFence, "nobody took the job back")
        let t = takeovers(try await home.anyStore().events(job: id))
        #expect(t.count == 2 && t[0].fence < t[1].fence, "\(t)")
        _ = try await home.checkContinuity(job: final, total: 150)
    }
}

@Suite("embedded CLI on PostgreSQL state", .serialized)
struct PostgresCLITests {
    @Test("with `state: postgres://…` the embedded verbs keep their state in PostgreSQL: up, status, launch, jobs, down; a wrong password is a clear error without it")
    func embeddedVerbs() async throws {
        let pg = try TestServers.postgres
        let url = try TestServers.freshPostgresDatabase("cli")
        let dir = TempDir("capstan-pg-cli")
        defer { dir.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 4\nstate: \(url)\n")
        dir.write("job/job.yaml", "name: hello\nresources: {nodes: 2}\nrun: echo \"hello from $NODE_RANK\"\n")
        let env = ["CAPSTAN_HOME": dir.path, "CAPSTAN_POSTGRES_PASSWORD": pg.password, "TMPDIR": NSTemporaryDirectory()]
        func capstan(_ args: [String], env extra: [String: String] = [:]) async throws -> ProcessResult {
            try await runProcess(BuildProducts.capstan, args, environment: env.merging(extra) { $1 }, timeout: 300)
        }
        let up = try await capstan(["up", "pgc", "--nodes", "1"])
        #expect(up.status == 0, "\(up.stdout)\(up.stderr)")
        let status = try await capstan(["status", "--json"])
        #expect(status.status == 0 && status.stdout.contains("\"pgc\""), "\(status.stdout)\(status.stderr)")
        let launch = try await capstan(["launch", dir.file("job/job.yaml")])
        #expect(launch.status == 0 && launch.stdout.contains("hello from 1"), "\(launch.stdout)\(launch.stderr)")
        let jobs = try await capstan(["jobs", "--json"])
        #expect(jobs.stdout.contains("\"succeeded\""), "\(jobs.stdout)")
        let down = try await capstan(["down", "pgc"])
        #expect(down.status == 0, "\(down.stderr)")
        // Nothing went to a SQLite file in the home.
        #expect(!FileManager.default.fileExists(atPath: dir.file("state/capstan.db")))
        // The state is really in the database: a store opened on it sees the job and the cluster.
        let store = try await PostgresStateStore.connect(url: url, logger: Logger(label: "t"), environment: ["CAPSTAN_POSTGRES_PASSWORD": pg.password])
        #expect(try await store.jobs().first?.status == .succeeded)
        #expect(try await store.cluster(named: "pgc")?.status == .terminated)
        await store.close()
        let wrong = try await capstan(["status"], env: ["CAPSTAN_POSTGRES_PASSWORD": "not-the-password-\(pg.password.prefix(4))x"])
        #expect(wrong.status == 1 && wrong.stderr.contains("password authentication failed"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("not-the-password"), "the password is echoed: \(wrong.stderr)")
    }
}
