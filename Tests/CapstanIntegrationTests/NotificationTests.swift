import CapstanCore
import CapstanPostgres
import CapstanRuntime
import CapstanSQLite
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Fixtures/notify_receiver.py on 127.0.0.1:`port`: refuses the first `refuse` POSTs (503),
/// logs every one with whether its signature verified. Stopped with SIGKILL (down, abruptly).
final class NotifyReceiver: @unchecked Sendable {
    let process = Process()
    let port: Int
    let log: String

    init(port: Int, log: String, refuse: Int, secret: String) async throws {
        self.port = port
        self.log = log
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", BuildProducts.fixtures + "/notify_receiver.py", "\(port)", log, "\(refuse)", "RECEIVER_SECRET"]
        process.environment = ProcessInfo.processInfo.environment.merging(["RECEIVER_SECRET": secret]) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        // Listening once it says so (a line on stdout).
        _ = try await Spawn.onThread { pipe.fileHandleForReading.availableData }
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    struct Delivery: Decodable {
        var path: String
        var key: String?
        var status: Int
        var signed: Bool
        var valid: Bool
        var body: String
    }

    var deliveries: [Delivery] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(Delivery.self, from: Data($0.utf8)) }
    }
}

@Suite("Notifications: at least once through capstan serve", .serialized)
struct NotificationTests {
    /// Polls until `condition` holds (false after `timeout` seconds).
    func wait(_ timeout: Double = 180, _ condition: () async throws -> Bool) async throws -> Bool {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if (try? await condition()) == true { return true }
            try await Task.sleep(for: .milliseconds(200))
        }
        return false
    }

    /// `postgres`: the state in the test PostgreSQL, and a second replica serving it all along
    /// (both deliverers claim from one outbox).
    @Test("a receiver that refuses the first 3 deliveries and is down while the server restarts (SIGTERM, then kill -9) still gets every event, each key at least once, signatures valid; no secret in the log, the state or an error", arguments: ["sqlite", "postgres"])
    func atLeastOnce(state: String) async throws {
        let dir = TempDir("capstan-notify")
        defer { dir.cleanup() }
        let secret = "whsec-" + UUID().uuidString
        let slackToken = "SLACKTOKEN" + UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let port = try freeLoopbackPort()
        let receiverLog = dir.file("received.jsonl")
        let stateURL = state == "postgres" ? try TestServers.freshPostgresDatabase("notify") : nil
        let pgPassword = state == "postgres" ? try TestServers.postgres.password : nil
        dir.write("config.yaml", """
            providers:
              local:
                slots: 2
            notifyDelivery: {retryBaseSeconds: 0.5, retryMaxSeconds: 2, leaseSeconds: 4, pollSeconds: 0.2, timeoutSeconds: 2}
            \(stateURL.map { "state: \($0)" } ?? "")
            """)
        dir.write("secret", secret + "\n")
        // Attempt 1 fails (exit 3) at once; attempt 2 prints no step for a while (no-progress),
        // long enough for the server to be restarted twice under it, then succeeds.
        let spec = """
            name: notified
            resources: {nodes: 1}
            run: if [ "$CAPSTAN_ATTEMPT" = 1 ]; then sleep 1; echo boom >&2; exit 3; fi; sleep 25; echo done
            maxRestarts: 2
            notify:
              webhooks:
                - name: ops
                  url: http://127.0.0.1:\(port)/hook
                  secretEnv: CAPSTAN_NOTIFY_HOOK_SECRET
              slack:
                urlEnv: CAPSTAN_NOTIFY_SLACK_URL
                events: [failed, succeeded, restarted]
              noProgressMinutes: 0.1
            """
        // (A job sent to a server may name only CAPSTAN_NOTIFY_… variables of the server's.)
        var env = ["CAPSTAN_NOTIFY_SLACK_URL": "http://127.0.0.1:\(port)/services/T0/B0/\(slackToken)", "CAPSTAN_NOTIFY_HOOK_SECRET": secret]
        if let pgPassword { env["CAPSTAN_POSTGRES_PASSWORD"] = pgPassword }
        let created = try await runProcess(BuildProducts.capstan, ["serve", "token", "create", "t"], environment: env.merging(["CAPSTAN_HOME": dir.path]) { $1 })
        #expect(created.status == 0, "\(created.stderr)")
        let token = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        var receiver = try await NotifyReceiver(port: port, log: receiverLog, refuse: 3, secret: secret)
        defer { receiver.stop() }
        var serve = try await ServeProcess(home: dir.path, env: env)
        defer { serve.terminate() }
        let replica = stateURL == nil ? nil : try await ServeProcess(home: dir.path, env: env, log: "serve-b.log")
        defer { replica?.terminate() }
        let launched = try await serve.request("POST", "/v1/jobs", token: token, body: try JSONSerialization.data(withJSONObject: ["spec": spec, "settings": ["heartbeatTimeoutSeconds": 6, "stopGraceSeconds": 2]]))
        #expect(launched.status == 201, "\(launched.text)")
        // A spec naming another variable of the server's, or a file on its machine, is refused.
        for (target, named) in [("secretEnv: CAPSTAN_POSTGRES_PASSWORD", "CAPSTAN_POSTGRES_PASSWORD"), ("secretFile: /etc/hostname", "/etc/hostname")] {
            let probe = "name: probe\nrun: 'true'\nnotify:\n  webhooks: [{url: 'http://127.0.0.1:9/x', \(target)}]\n"
            let refused = try await serve.request("POST", "/v1/jobs", token: token, body: try JSONSerialization.data(withJSONObject: ["spec": probe]))
            #expect(refused.status == 400 && refused.text.contains(named), "\(refused.text)")
        }
        let tooFast = try await serve.request("POST", "/v1/jobs", token: token, body: try JSONSerialization.data(withJSONObject: ["spec": "name: fast\nrun: 'true'\n", "settings": ["telemetrySeconds": 0.001]]))
        #expect(tooFast.status == 400 && tooFast.text.contains("telemetrySeconds"), "\(tooFast.text)")
        let id = try #require((try launched.json() as? [String: Any])?["id"] as? String)
        let store: any StateStore
        if let stateURL, let pgPassword {
            store = try await PostgresStateStore.connect(url: stateURL, logger: Logger(label: "t"), environment: ["CAPSTAN_POSTGRES_PASSWORD": pgPassword])
        } else {
            store = try SQLiteStateStore(path: dir.file("state/capstan.db"))
        }
        func job() async throws -> JobRecord? { try await store.job(id) }

        // The first 3 are refused; then one gets through.
        #expect(try await wait { receiver.deliveries.contains { $0.status == 200 } }, "\(receiver.deliveries.map(\.status)) \(serve.logText.suffix(3000))")
        #expect(receiver.deliveries.prefix(3).allSatisfy { $0.status == 503 })
        // Attempt 2 runs: the receiver goes down, and the server is stopped politely.
        let attempt2 = try await wait {
            let j = try await job()
            return (j?.attempt ?? 0) >= 2 && j?.status == .running
        }
        #expect(attempt2, "\(serve.logText.suffix(3000))")
        receiver.stop()
        await serve.stop()
        #expect(serve.process.terminationStatus == 0, "\(serve.logText.suffix(2000))")
        // A new server adopts the job; its deliveries fail (the receiver is down) and stay due.
        serve = try await ServeProcess(home: dir.path, env: env, log: "serve-2.log")
        let failedWhileDown = try await wait { try await store.outbox(job: id).contains { ($0.lastError ?? "").contains("could not be reached") } }
        let whileDown = try await store.outbox(job: id)
        #expect(failedWhileDown, "\(whileDown) \(serve.logText.suffix(3000))")
        #expect(whileDown.contains { $0.deliveredAt == nil }, "something is waiting while the receiver is down")
        // It dies mid-delivery (kill -9): its claims lapse after their lease.
        serve.kill9()
        serve = try await ServeProcess(home: dir.path, env: env, log: "serve-3.log")
        receiver = try await NotifyReceiver(port: port, log: receiverLog, refuse: 0, secret: secret)
        #expect(try await wait(240) { try await job()?.status.isFinished == true }, "\(serve.logText.suffix(3000))")
        let final = try #require(try await job())
        #expect(final.status == .succeeded, "\(final.lastError ?? "")")
        // Every entry of the outbox is delivered.
        let allDelivered = try await wait {
            let rows = try await store.outbox(job: id)
            return !rows.isEmpty && rows.allSatisfy { $0.deliveredAt != nil }
        }
        let rows = try await store.outbox(job: id)
        #expect(allDelivered, "\(rows.map { "\($0.key) \($0.lastError ?? "")" }) \(serve.logText.suffix(3000))")
        let expected: Set<String> = [
            "\(id):started:ops", "\(id):restarted:2:ops", "\(id):no-progress:2-none:ops", "\(id):succeeded:ops",
            "\(id):restarted:2:slack-0", "\(id):succeeded:slack-0",
        ]
        #expect(Set(rows.map(\.key)) == expected, "\(rows.map(\.key))")
        // The receiver got each key at least once with a 200, every webhook signed validly.
        let got = receiver.deliveries
        for key in expected {
            #expect(got.contains { $0.key == key && $0.status == 200 }, "\(key) never accepted: \(got.map { "\($0.key ?? "-") \($0.status)" })")
        }
        let accepted = got.filter { $0.status == 200 }.compactMap(\.key)
        print("notify figures (\(state)): \(got.count) POSTs for \(expected.count) keys; \(got.filter { $0.status != 200 }.count) refused; \(accepted.count - Set(accepted).count) accepted more than once")
        let hooks = got.filter { $0.path == "/hook" }
        #expect(!hooks.isEmpty && hooks.allSatisfy { $0.signed && $0.valid }, "\(hooks.map { "\($0.key ?? "-") signed \($0.signed) valid \($0.valid)" })")
        #expect(got.filter { $0.path.hasPrefix("/services/") }.allSatisfy { !$0.signed && $0.body.hasPrefix("{\"text\":") })
        // The restart says why.
        let restarted = try #require(got.first { $0.key == "\(id):restarted:2:ops" })
        let payload = try #require(try JSONSerialization.jsonObject(with: Data(restarted.body.utf8)) as? [String: Any])
        #expect(payload["event"] as? String == "restarted" && payload["id"] as? String == "\(id):restarted:2:ops")
        let reason = try #require(payload["reason"] as? [String: Any])
        #expect(reason["kind"] as? String == "command" && reason["message"] as? String == "the command on node 0 ended with exit code 3", "\(reason)")
        #expect((payload["job"] as? [String: Any])?["attempt"] as? Int == 2)
        // The secret and the Slack URL's token: in no log, no state file, no error.
        await serve.stop()
        await replica?.stop()
        let events = try await store.events(job: id).map(\.message).joined(separator: "\n")
        for needle in [secret, slackToken] {
            let scan = SecretScan([dir.path], for: needle, skip: { $0 == dir.file("secret") || $0 == receiverLog })
            #expect(scan.covered("serve.log") && scan.covered("serve-2.log") && (stateURL != nil || scan.covered("state/capstan.db")))
            #expect(scan.hits.isEmpty, "\(needle.prefix(6))… found in \(scan.hits)")
            #expect(!rows.contains { ($0.lastError ?? "").contains(needle) || $0.payload.contains(needle) } && !events.contains(needle))
        }
        if let pg = store as? PostgresStateStore { await pg.close() }
    }

    @Test("embedded: `capstan launch` delivers its job's notifications from its own process, by config.yaml's default notify:; `notify: false` opts a job out")
    func embedded() async throws {
        let dir = TempDir("capstan-notify-embedded")
        defer { dir.cleanup() }
        let secret = "whsec-" + UUID().uuidString
        let port = try freeLoopbackPort()
        let receiverLog = dir.file("received.jsonl")
        dir.write("home/config.yaml", """
            providers:
              local:
                slots: 2
            notify:
              webhooks: [{url: 'http://127.0.0.1:\(port)/hook', secretEnv: TEST_HOOK_SECRET, events: [started, succeeded, failed, checkpoint]}]
              checkpoints: true
            notifyDelivery: {retryBaseSeconds: 0.2, retryMaxSeconds: 0.5}
            """)
        // One checkpoint (the protocol of docs/jobs.md: files, then `.done`), then success.
        dir.write("job.yaml", "name: embedded\nresources: {nodes: 1}\nrun: d=$CAPSTAN_CHECKPOINT_DIR/step-5; mkdir -p $d; echo w > $d/weights; touch $d/.done; sleep 2; echo done\n")
        dir.write("quiet.yaml", "name: quiet\nresources: {nodes: 1}\nrun: echo done\nnotify: false\n")
        let receiver = try await NotifyReceiver(port: port, log: receiverLog, refuse: 1, secret: secret)
        defer { receiver.stop() }
        let env = ["CAPSTAN_HOME": dir.file("home"), "TEST_HOOK_SECRET": secret]
        let r = try await runProcess(BuildProducts.capstan, ["launch", dir.file("job.yaml")], environment: env, timeout: 300)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        let store = try SQLiteStateStore(path: dir.file("home/state/capstan.db"))
        let job = try #require(try await store.jobs().first { $0.name == "embedded" })
        #expect(job.settings.contains("notify"), "config.yaml's default is recorded with the job")
        // Delivered before `launch` returned (the refused first one retried).
        let rows = try await store.outbox(job: job.id)
        #expect(Set(rows.map(\.key)) == ["\(job.id):started:webhook-0", "\(job.id):checkpoint:5:webhook-0", "\(job.id):succeeded:webhook-0"])
        #expect(rows.allSatisfy { $0.deliveredAt != nil }, "\(rows.map { "\($0.key) \($0.lastError ?? "")" })")
        let got = receiver.deliveries
        #expect(got.first?.status == 503)
        // At least once: a delivery cut by the end of `launch` may be sent again by its drain.
        #expect(Set(got.filter { $0.status == 200 }.compactMap(\.key)) == Set(rows.map(\.key)))
        #expect(got.allSatisfy { $0.signed && $0.valid })
        let checkpoint = try #require(got.first { $0.key == "\(job.id):checkpoint:5:webhook-0" })
        #expect(checkpoint.body.contains("\"checkpoint\":5"), "\(checkpoint.body)")
        // Opted out: nothing enqueued.
        let q = try await runProcess(BuildProducts.capstan, ["launch", dir.file("quiet.yaml")], environment: env, timeout: 300)
        #expect(q.status == 0, "\(q.stderr)")
        let quiet = try #require(try await store.jobs().first { $0.name == "quiet" })
        #expect(try await store.outbox(job: quiet.id).isEmpty)
        #expect(SecretScan([dir.file("home")], for: secret).hits.isEmpty)
    }

    @Test("capstan notify test: a signed test event to every target; a missing secret or no targets is a clear error without the secret")
    func notifyTest() async throws {
        let dir = TempDir("capstan-notify-test")
        defer { dir.cleanup() }
        let secret = "whsec-" + UUID().uuidString
        let port = try freeLoopbackPort()
        let receiver = try await NotifyReceiver(port: port, log: dir.file("received.jsonl"), refuse: 0, secret: secret)
        defer { receiver.stop() }
        dir.write("home/config.yaml", "providers:\n  local:\n    slots: 1\n")
        dir.write("job.yaml", "name: tested\nrun: echo\nnotify:\n  webhooks: [{url: 'http://127.0.0.1:\(port)/hook', secretEnv: TEST_HOOK_SECRET}]\n")
        let home = ["CAPSTAN_HOME": dir.file("home")]
        let ok = try await runProcess(BuildProducts.capstan, ["notify", "test", "--job-spec", dir.file("job.yaml")], environment: home.merging(["TEST_HOOK_SECRET": secret]) { $1 })
        #expect(ok.status == 0 && ok.stdout.contains("ok   webhook-0: delivered to webhook 'webhook-0' (http://127.0.0.1:\(port))"), "\(ok.stdout)\(ok.stderr)")
        let got = try #require(receiver.deliveries.first)
        #expect(got.signed && got.valid && got.body.contains("\"event\":\"test\"") && got.body.contains("\"name\":\"tested\""), "\(got)")
        // The secret's variable is not set: FAIL, naming the variable.
        let missing = try await runProcess(BuildProducts.capstan, ["notify", "test", "--job-spec", dir.file("job.yaml")], environment: home)
        #expect(missing.status == 1 && missing.stdout.contains("FAIL webhook-0") && missing.stdout.contains("TEST_HOOK_SECRET is empty or missing"), "\(missing.stdout)\(missing.stderr)")
        // No targets anywhere.
        let none = try await runProcess(BuildProducts.capstan, ["notify", "test"], environment: home)
        #expect(none.status == 1 && none.stderr.contains("has no notify: targets") && none.stderr.contains("--job-spec"), "\(none.stderr)")
        for r in [ok, missing, none] { #expect(!(r.stdout + r.stderr).contains(secret)) }
    }
}
