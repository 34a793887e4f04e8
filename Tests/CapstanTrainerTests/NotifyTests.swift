import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Logging
import Testing

/// `notify:` (spec and config), payloads, signatures, backoff, and the deliverer against a
/// real HTTP receiver on 127.0.0.1 with a real SQLite outbox.
@Suite("Notifications")
struct NotifyTests {
    static let base = "name: n\nrun: echo hi\n"

    static func spec(_ notify: String) throws -> JobSpec { try JobSpec.parse(base + notify, source: "job.yaml") }

    static func error(_ notify: String) -> String {
        do {
            _ = try spec(notify)
            return "parsed"
        } catch let e as CapstanError {
            return e.message
        } catch { return "\(error)" }
    }

    @Test("a full notify: parses")
    func full() throws {
        let s = try Self.spec("""
            notify:
              webhooks:
                - url: https://hooks.example.com/capstan
                  secretEnv: HOOK_SECRET
                  events: [failed, succeeded, checkpoint]
                - name: ops
                  url: http://127.0.0.1:9000/x
                  secretFile: /etc/capstan/secret
              slack: {urlEnv: SLACK_URL, events: [failed, cost-above]}
              checkpoints: true
              costAbove: 50
              noProgressMinutes: 0.5
            """)
        let n = try #require(s.notify)
        #expect(n.webhooks.map(\.name) == ["webhook-0", "ops"])
        #expect(n.webhooks[0].secretEnv == "HOOK_SECRET")
        #expect(n.webhooks[1].secretFile == "/etc/capstan/secret")
        #expect(n.slack.map(\.name) == ["slack-0"])
        #expect(n.costAbove == 50 && n.noProgressMinutes == 0.5 && n.checkpoints)
        #expect(Set(n.targets(for: .failed)) == ["webhook-0", "ops", "slack-0"])
        #expect(n.targets(for: .checkpoint) == ["webhook-0", "ops"])
        #expect(n.targets(for: .started) == ["ops"])
        #expect(n.targets(for: .costAbove) == ["ops", "slack-0"])
        #expect(try Self.spec("notify: false").notify?.isOff == true)
    }

    @Test("bad notify: input is refused with what, where and what to do", arguments: [
        ("notify:\n  webhooks:\n    - url: https://h.example.com\n      secret: hunter2", "secretEnv"),
        ("notify:\n  slack: {url: https://hooks.slack.com/services/T/B/X}", "urlEnv"),
        ("notify:\n  slack: {}", "exactly one of `urlEnv"),
        ("notify:\n  webhooks: [{url: ftp://h.example.com}]", "http:// or https://"),
        ("notify:\n  webhooks: [{url: 'https://user:pw@h.example.com/'}]", "credentials"),
        ("notify:\n  webhooks: [{secretEnv: X}]", "'notify.webhooks[0].url' is missing"),
        ("notify:\n  webhooks: [{url: https://h.example.com, secretEnv: X, secretFile: /f}]", "both"),
        ("notify:\n  webhooks: [{url: https://h.example.com, urlEnv: HOOK_URL}]", "more than one of `url`, `urlEnv` and `urlFile`"),
        ("notify:\n  webhooks: [{urlEnv: 'https://h.example.com/?token=x'}]", "must name an environment variable"),
        ("notify:\n  webhooks: [{url: https://h.example.com, secretEnv: 'not a name!'}]", "environment variable"),
        ("notify:\n  webhooks: [{url: https://h.example.com, events: [faild]}]", "did you mean 'failed'"),
        ("notify:\n  webhooks: [{url: https://h.example.com, events: [checkpoint]}]", "checkpoints: true"),
        ("notify:\n  webhooks: [{url: https://h.example.com, events: [no-progress]}]", "noProgressMinutes"),
        ("notify:\n  webhooks: [{url: https://h.example.com}]\n  costAbove: -3", "positive number of dollars"),
        ("notify:\n  webhooks: [{url: https://h.example.com}]\n  noProgressMinutes: soon", "positive number of minutes"),
        ("notify:\n  webhooks: [{url: https://h.example.com}]\n  checkpoints: often", "true or false"),
        ("notify:\n  webhooks: [{url: https://h.example.com}]\n  webhook: x", "did you mean 'webhooks'"),
        ("notify:\n  webhooks: [{url: https://h.example.com, name: a}, {url: https://h.example.com, name: a}]", "named 'a'"),
        ("notify:\n  checkpoints: true", "no targets"),
        ("notify: yes please", "must be a mapping"),
    ])
    func bad(input: String, expected: String) {
        let message = Self.error(input)
        #expect(message.contains(expected), "\(message)")
        #expect(message.contains("job.yaml"), "\(message)")
        #expect(!message.contains("hunter2") && !message.contains("hooks.slack.com/services"), "a secret was echoed: \(message)")
    }

    @Test("config.yaml: a default notify: and notifyDelivery; bad values refused")
    func config() throws {
        let c = try CapstanConfig.parse("""
            notify:
              webhooks: [{url: http://127.0.0.1:9/x, secretEnv: S}]
            notifyDelivery: {retryBaseSeconds: 0.5, retryMaxSeconds: 5, maxAttempts: 4, timeoutSeconds: 3, leaseSeconds: 7, pollSeconds: 0.2}
            """)
        #expect(c.notify?.webhooks.first?.url == "http://127.0.0.1:9/x")
        #expect(c.notifyDelivery.retryBaseSeconds == 0.5 && c.notifyDelivery.maxAttempts == 4 && c.notifyDelivery.leaseSeconds == 7)
        for (text, expected) in [
            ("notifyDelivery: {retryBaseSeconds: 0}", "positive number of seconds"),
            ("notifyDelivery: {maxAttempts: 0}", "≥ 1"),
            ("notifyDelivery: {retryBaseSeconds: 10, retryMaxSeconds: 1}", "below retryBaseSeconds"),
            ("notifyDelivery: {retries: 3}", "unknown key 'notifyDelivery.retries'"),
            ("notifyDelivery: {timeoutSeconds: 5, leaseSeconds: 3}", "must be longer than timeoutSeconds (5.0)"),
            ("notify: {slack: {url: https://hooks.slack.com/services/SECRET}}", "urlEnv"),
            ("notfy: {}", "did you mean 'notify'"),
        ] {
            do {
                _ = try CapstanConfig.parse(text, source: "config.yaml")
                Issue.record("\(text) parsed")
            } catch let e as CapstanError {
                #expect(e.message.contains(expected), "\(e.message)")
                #expect(e.message.contains("config.yaml"))
                #expect(!e.message.contains("SECRET"))
            }
        }
    }

    @Test("signatures: a published vector, and verification refuses tampering, another secret and stale times")
    func signature() {
        let body = Data(#"{"a":1}"#.utf8)
        let at = Date(timeIntervalSince1970: 1_700_000_000)
        let header = WebhookSignature.header(body: body, secret: "s3cret", at: at)
        // python3: hmac.new(b"s3cret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        #expect(header == "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940")
        #expect(WebhookSignature.verify(header: header, body: body, secret: "s3cret", now: at.addingTimeInterval(10)))
        #expect(!WebhookSignature.verify(header: header, body: Data(#"{"a":2}"#.utf8), secret: "s3cret", now: at))
        #expect(!WebhookSignature.verify(header: header, body: body, secret: "other", now: at))
        #expect(!WebhookSignature.verify(header: header, body: body, secret: "s3cret", now: at.addingTimeInterval(3600)))
        #expect(!WebhookSignature.verify(header: "garbage", body: body, secret: "s3cret", now: at))
    }

    @Test("backoff doubles from the base, is capped, and jitters within [d/2, d]")
    func backoff() {
        let b = RetryBackoff(base: 2, max: 60)
        #expect(b.delay(afterAttempts: 1, unit: 1) == 2)
        #expect(b.delay(afterAttempts: 1, unit: 0) == 1)
        #expect(b.delay(afterAttempts: 3, unit: 1) == 8)
        #expect(b.delay(afterAttempts: 10, unit: 1) == 60)
        #expect(b.delay(afterAttempts: 10, unit: 0) == 30)
        #expect(b.delay(afterAttempts: 10_000, unit: 1) == 60)
        for _ in 0..<100 { #expect((4...8).contains(b.delay(afterAttempts: 3))) }
    }

    static func job(_ notify: String = "notify:\n  webhooks: [{url: http://127.0.0.1:1/x}]\n  slack: {urlEnv: S, events: [failed]}\n") throws -> (JobRecord, Notifier) {
        let yaml = base + notify
        var job = JobRecord(id: "n-abc123", name: "n", spec: yaml, specFolder: "/", settings: "{}", clusterName: "n-abc123", ownsCluster: true, storage: "file:///tmp/x")
        job.status = .running
        job.attempt = 2
        job.restarts = 1
        job.metrics = #"{"step": 42, "loss": 1.5}"#
        return (job, try #require(Notifier.forJob(spec: try JobSpec.parse(yaml), settings: JobSettings())))
    }

    @Test("entries: one per target that takes the event, keyed by job, event, detail and target; the payload as documented")
    func payload() throws {
        let (job, notifier) = try Self.job()
        let at = Date(timeIntervalSince1970: 1_800_000_000)
        let entries = notifier.entries(.restarted, detail: "2", job: job, message: "Attempt 2 started.", reason: .init(kind: "exit", node: 1, message: "node 1 exited 1"), cost: 1.234, now: at)
        #expect(entries.map(\.key) == ["n-abc123:restarted:2:webhook-0"])
        #expect(notifier.entries(.failed, job: job, message: "x").map(\.key) == ["n-abc123:failed:webhook-0", "n-abc123:failed:slack-0"])
        #expect(notifier.entries(.checkpoint, detail: "5", job: job, message: "x").isEmpty)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(entries[0].payload.utf8)) as? [String: Any])
        #expect(object["id"] as? String == "n-abc123:restarted:2:webhook-0")
        #expect(object["event"] as? String == "restarted")
        #expect(object["message"] as? String == "Attempt 2 started.")
        #expect(object["at"] as? String == "2027-01-15T08:00:00.000Z")
        let j = try #require(object["job"] as? [String: Any])
        #expect(j["id"] as? String == "n-abc123" && j["name"] as? String == "n" && j["status"] as? String == "running")
        #expect(j["attempt"] as? Int == 2 && j["step"] as? Int == 42 && j["cost"] as? Double == 1.23)
        let reason = try #require(object["reason"] as? [String: Any])
        #expect(reason["kind"] as? String == "exit" && reason["message"] as? String == "node 1 exited 1")
        #expect(Notifier.cost(pricePerHour: 10, startedAt: at, now: at.addingTimeInterval(1800)) == 5)
        #expect(Notifier.cost(pricePerHour: 0, startedAt: at, now: at) == nil)
    }

    /// A receiver on 127.0.0.1 answering each request with the next status of `statuses`
    /// (then 200).
    final class Receiver: @unchecked Sendable {
        let lock = NSLock()
        var statuses: [Int]
        var server: FakeHTTPServer!
        init(_ statuses: [Int]) throws {
            self.statuses = statuses
            server = try FakeHTTPServer { [unowned self] _ in
                let code = self.lock.withLock { self.statuses.isEmpty ? 200 : self.statuses.removeFirst() }
                return [Data("HTTP/1.1 \(code) X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno".utf8)]
            }
        }
    }

    static func store(_ dir: TempDir) throws -> SQLiteStateStore { try SQLiteStateStore(path: dir.file("state.db")) }

    static func enqueue(_ store: SQLiteStateStore, notify: String, event: NotifySpec.Event = .failed) async throws -> [OutboxEntry] {
        let (job, notifier) = try Self.job(notify)
        try await store.insert(job)
        let entries = notifier.entries(event, job: job, message: "Attempt 1 failed.")
        try await store.jobEvent(event.rawValue, "Attempt 1 failed.", job: job.id, cluster: nil, notifications: entries)
        // A repeat (a controller re-doing the step) adds nothing.
        try await store.jobEvent(event.rawValue, "Attempt 1 failed.", job: job.id, cluster: nil, notifications: entries)
        #expect(try await store.outbox(job: job.id).count == entries.count)
        return entries
    }

    static var logger: Logger { Logger(label: "test") { _ in SwiftLogNoOpLogHandler() } }

    @Test("the deliverer: 503 and 429 are retried with backoff, then delivered, signed, with the idempotency key")
    func retried() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let receiver = try Receiver([503, 429])
        defer { receiver.server.stop() }
        let store = try Self.store(dir)
        let entries = try await Self.enqueue(store, notify: "notify:\n  webhooks: [{url: '\(receiver.server.url)/hook?token=abc', secretEnv: HOOK_SECRET}]\n")
        var settings = NotifyDelivery()
        settings.retryBaseSeconds = 0.05
        settings.retryMaxSeconds = 0.1
        let deliverer = NotificationDeliverer(store: store, settings: settings, logger: Self.logger, environment: ["HOOK_SECRET": "topsecret"])
        #expect(await deliverer.deliverDue() == 1)
        var row = try #require(try await store.outbox().first)
        #expect(row.attempts == 1 && row.deliveredAt == nil && row.givenUpAt == nil)
        #expect(row.lastError?.contains("HTTP 503") == true)
        #expect(row.nextAttemptAt > row.createdAt)
        // Not due yet: nothing claimed.
        #expect(await deliverer.deliverDue(now: row.nextAttemptAt.addingTimeInterval(-0.001)) == 0)
        for _ in 0..<2 { _ = await deliverer.deliverDue(now: Date().addingTimeInterval(1)) }
        row = try #require(try await store.outbox().first)
        #expect(row.deliveredAt != nil && row.attempts == 3 && row.lastError == nil)
        let requests = receiver.server.requests
        #expect(requests.count == 3)
        for r in requests {
            #expect(r.method == "POST" && r.target == "/hook?token=abc")
            #expect(r.headers["capstan-idempotency-key"] == entries[0].key)
            #expect(WebhookSignature.verify(header: r.headers["capstan-signature"] ?? "", body: r.body, secret: "topsecret"))
            #expect(String(decoding: r.body, as: UTF8.self) == entries[0].payload)
        }
        #expect(await deliverer.deliverDue(now: Date().addingTimeInterval(3600)) == 0)
    }

    @Test("an embedded run's drain waits for retries that fall due before its limit, and stops at once when none can")
    func drainWaitsForRetries() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let receiver = try Receiver([503, 503])
        defer { receiver.server.stop() }
        let store = try Self.store(dir)
        _ = try await Self.enqueue(store, notify: "notify:\n  webhooks: [{url: '\(receiver.server.url)/hook'}]\n")
        var settings = NotifyDelivery()
        settings.retryBaseSeconds = 0.2
        settings.retryMaxSeconds = 0.4
        settings.pollSeconds = 0.1
        let deliverer = NotificationDeliverer(store: store, settings: settings, logger: Self.logger)
        await deliverer.drain(for: .seconds(30))
        let row = try #require(try await store.outbox().first)
        #expect(row.deliveredAt != nil && row.attempts == 3, "\(row)")
        #expect(receiver.server.requests.count == 3)
        // A receiver that keeps failing past the limit: drain gives up at its limit, the entry stays pending.
        let down = try Receiver(Array(repeating: 503, count: 50))
        defer { down.server.stop() }
        let other = TempDir()
        defer { other.cleanup() }
        let store2 = try Self.store(other)
        _ = try await Self.enqueue(store2, notify: "notify:\n  webhooks: [{url: '\(down.server.url)/hook'}]\n")
        settings.retryBaseSeconds = 5
        settings.retryMaxSeconds = 5
        await NotificationDeliverer(store: store2, settings: settings, logger: Self.logger).drain(for: .seconds(2))
        #expect(try await store2.outbox().first?.isPending == true)
        #expect(down.server.requests.count == 1, "the retry falls due after the limit: not waited for")
    }

    @Test("the deliverer gives up on a 4xx other than 408/429, and after maxAttempts")
    func givenUp() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let receiver = try Receiver([400])
        defer { receiver.server.stop() }
        let store = try Self.store(dir)
        _ = try await Self.enqueue(store, notify: "notify:\n  webhooks: [{url: '\(receiver.server.url)/'}]\n")
        let deliverer = NotificationDeliverer(store: store, logger: Self.logger)
        #expect(await deliverer.deliverDue() == 1)
        let row = try #require(try await store.outbox().first)
        #expect(row.givenUpAt != nil && row.deliveredAt == nil && row.lastError?.contains("HTTP 400") == true)
        #expect(await deliverer.deliverDue(now: Date().addingTimeInterval(86400)) == 0)

        // A receiver that is down: retried until maxAttempts, then given up.
        let dir2 = TempDir()
        defer { dir2.cleanup() }
        let store2 = try Self.store(dir2)
        _ = try await Self.enqueue(store2, notify: "notify:\n  webhooks: [{url: 'http://127.0.0.1:\(try FakeHTTPServer.closedPort())/'}]\n")
        var settings = NotifyDelivery()
        settings.maxAttempts = 2
        settings.retryBaseSeconds = 0.01
        let down = NotificationDeliverer(store: store2, settings: settings, logger: Self.logger)
        _ = await down.deliverDue()
        var r = try #require(try await store2.outbox().first)
        #expect(r.attempts == 1 && r.givenUpAt == nil && r.lastError?.contains("could not be reached") == true)
        _ = await down.deliverDue(now: Date().addingTimeInterval(10))
        r = try #require(try await store2.outbox().first)
        #expect(r.attempts == 2 && r.givenUpAt != nil && r.lastError?.contains("gave up after 2 attempts") == true)
    }

    @Test("Slack: a text body to the URL from the environment; a missing secret is retried and never echoed")
    func slackAndSecrets() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let receiver = try Receiver([])
        defer { receiver.server.stop() }
        let store = try Self.store(dir)
        _ = try await Self.enqueue(store, notify: "notify:\n  slack: {urlEnv: SLACK_URL}\n  webhooks: [{url: '\(receiver.server.url)/w', secretFile: '\(dir.file("missing"))'}]\n")
        let slackURL = receiver.server.url + "/services/T000/B000/XXXXSECRETXXXX"
        let deliverer = NotificationDeliverer(store: store, logger: Self.logger, environment: ["SLACK_URL": slackURL])
        #expect(await deliverer.deliverDue() == 2)
        let rows = try await store.outbox()
        let slack = try #require(rows.first { $0.target == "slack-0" })
        #expect(slack.deliveredAt != nil)
        let request = try #require(receiver.server.requests.first { $0.target.hasPrefix("/services/") })
        let body = try #require(try JSONSerialization.jsonObject(with: request.body) as? [String: String])
        #expect(body["text"]?.contains("Capstan job *n*") == true && body["text"]?.contains("failed") == true)
        let hook = try #require(rows.first { $0.target == "webhook-0" })
        #expect(hook.deliveredAt == nil && hook.givenUpAt == nil)
        #expect(hook.lastError?.contains(dir.file("missing")) == true)
        // A webhook whose URL (with a token in its query) is named by urlEnv: delivered; an unset
        // variable is an error naming the variable, never a URL.
        let tokenURL = receiver.server.url + "/named?token=TOKENXYZ123"
        let store3 = try SQLiteStateStore(path: dir.file("state3.db"))
        _ = try await Self.enqueue(store3, notify: "notify:\n  webhooks: [{name: named, urlEnv: HOOK_URL}, {name: unset, urlEnv: NOT_SET_HOOK_URL}]\n")
        #expect(await NotificationDeliverer(store: store3, logger: Self.logger, environment: ["HOOK_URL": tokenURL]).deliverDue() == 2)
        let named = try await store3.outbox()
        #expect(named.first { $0.target == "named" }?.deliveredAt != nil)
        #expect(receiver.server.requests.contains { $0.target == "/named?token=TOKENXYZ123" })
        let unset = try #require(named.first { $0.target == "unset" })
        #expect(unset.deliveredAt == nil && unset.lastError?.contains("NOT_SET_HOOK_URL") == true, "\(unset.lastError ?? "")")
        let db3 = try String(decoding: Data(contentsOf: URL(fileURLWithPath: dir.file("state3.db"))), as: UTF8.self)
        #expect(!db3.contains("TOKENXYZ123"))
        // Nothing in the outbox holds the Slack URL.
        let db = try String(decoding: Data(contentsOf: URL(fileURLWithPath: dir.file("state.db"))), as: UTF8.self)
        #expect(!db.contains("XXXXSECRETXXXX"))
        #expect(!rows.contains { ($0.lastError ?? "").contains("XXXXSECRETXXXX") || $0.payload.contains("XXXXSECRETXXXX") })
    }
}
