import AsyncHTTPClient
public import CapstanCore
public import CapstanRuntime
public import Foundation
public import Logging
import NIOCore
import NIOHTTP1
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Delivers the notification outbox: claims due entries (a lease, so replicas and an embedded
/// `capstan launch` never hold one entry at once), POSTs each to its target, and records the
/// outcome. A 2xx is delivered; a failure to connect, a timeout, 408, 429 or 5xx is retried
/// with exponential backoff and jitter (``RetryBackoff``); any other answer gives the entry
/// up with its error recorded. Entries stay in the state store, so a deliverer that stops
/// (SIGTERM, kill -9, a crash) leaves them to the next one: delivery is at least once, and the
/// `Capstan-Idempotency-Key` header lets a receiver drop repeats.
///
/// Targets are resolved from the job's spec when an entry is sent: secrets and Slack URLs are
/// read from this process's environment or files, and never written to the state, the log or
/// an error.
public final class NotificationDeliverer: Sendable {
    public let store: any StateStore
    public let settings: NotifyDelivery
    /// Who claims (`<host>:<pid>:<random>`).
    public let holder: String
    let logger: Logger
    let sender: NotificationSender
    /// The jobs whose entries this deliverer has claimed (what ``drain(for:)`` waits for).
    let triedJobs = Mutex<Set<String>>([])

    public init(store: any StateStore, settings: NotifyDelivery = NotifyDelivery(), logger: Logger, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.store = store
        self.settings = settings
        self.logger = logger
        self.sender = NotificationSender(settings: settings, environment: environment)
        self.holder = ProcessInfo.processInfo.hostName + ":\(getpid()):" + String(UUID().uuidString.prefix(8)).lowercased()
    }

    var backoff: RetryBackoff { RetryBackoff(base: settings.retryBaseSeconds, max: settings.retryMaxSeconds) }

    /// Delivers until cancelled, then ends this deliverer's claims (others take them at once).
    public func run() async {
        while !Task.isCancelled {
            let claimed = await deliverDue()
            if claimed == 0 { try? await Task.sleep(for: .milliseconds(Int64(settings.pollSeconds * 1000))) }
        }
        await release()
    }

    /// Delivers for at most `limit`, for an embedded controller that ends: what is due now, and
    /// the retries of entries this deliverer has tried that fall due before the limit (a
    /// receiver that answered 503 once). Entries due later, or whose receiver stays down, stay
    /// for a server or the next run.
    public func drain(for limit: Duration) async {
        let deadline = ContinuousClock.now + limit
        let end = Date().addingTimeInterval(limit.seconds)
        while ContinuousClock.now < deadline, !Task.isCancelled {
            if await deliverDue() > 0 { continue }
            guard let next = await nextRetry(), next < end else { break }
            let wait = Swift.min(Swift.max(next.timeIntervalSinceNow, 0.01), settings.pollSeconds)
            try? await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
        }
        await release()
    }

    /// The earliest pending entry's due time among the jobs this deliverer has claimed from.
    func nextRetry() async -> Date? {
        var next: Date?
        for job in triedJobs.withLock({ $0 }) {
            for e in (try? await store.outbox(job: job)) ?? [] where e.isPending {
                next = Swift.min(next ?? e.nextAttemptAt, e.nextAttemptAt)
            }
        }
        return next
    }

    /// Runs `body` (an embedded controller) with a deliverer alongside, then drains for up to
    /// `drain`.
    public static func alongside<T: Sendable>(store: any StateStore, settings: NotifyDelivery, logger: Logger, drain: Duration = .seconds(15), _ body: () async throws -> T) async throws -> T {
        let deliverer = NotificationDeliverer(store: store, settings: settings, logger: logger)
        let task = Task { await deliverer.run() }
        do {
            let result = try await body()
            task.cancel()
            await task.value
            await deliverer.drain(for: drain)
            return result
        } catch {
            task.cancel()
            await task.value
            throw error
        }
    }

    /// Ends this deliverer's claims, even when its task is being cancelled.
    func release() async {
        let store = self.store, holder = self.holder, logger = self.logger
        await Task {
            do { try await store.releaseOutbox(holder: holder) } catch { logger.warning("could not release notification claims", metadata: ["error": "\(error)"]) }
        }.value
    }

    /// One pass: claims due entries and delivers them concurrently; returns how many it claimed.
    @discardableResult
    public func deliverDue(now: Date = Date()) async -> Int {
        let claimed: [OutboxEntry]
        do {
            claimed = try await store.claimOutbox(holder: holder, now: now, lease: .milliseconds(Int64(settings.effectiveLeaseSeconds * 1000)), limit: 16)
        } catch {
            logger.warning("cannot claim notifications", metadata: ["error": "\(error)"])
            return 0
        }
        guard !claimed.isEmpty else { return 0 }
        triedJobs.withLock { $0.formUnion(claimed.map(\.jobID)) }
        var specs: [String: Result<NotifySpec, CapstanError>] = [:]
        for id in Set(claimed.map(\.jobID)) { specs[id] = await notifySpec(job: id) }
        let resolved = specs
        await withTaskGroup(of: Void.self) { group in
            for entry in claimed {
                group.addTask { await self.deliver(entry, spec: resolved[entry.jobID] ?? .failure(CapstanError(.notFound, "no job"))) }
            }
        }
        return claimed.count
    }

    func notifySpec(job id: String) async -> Result<NotifySpec, CapstanError> {
        do {
            guard let job = try await store.job(id) else { return .failure(CapstanError(.notFound, "Job \(id) is no longer in the state store.")) }
            let spec = try JobSpec.parse(job.spec, source: "job \(id)")
            let settings = (try? PluginWire.decoder.decode(JobSettings.self, from: Data(job.settings.utf8))) ?? JobSettings()
            guard let n = spec.notify ?? settings.notify else { return .failure(CapstanError(.notFound, "Job \(id) has no notify: targets any more.")) }
            return .success(n)
        } catch let e as CapstanError {
            return .failure(e)
        } catch {
            return .failure(CapstanError(.io, "\(error)"))
        }
    }

    func deliver(_ entry: OutboxEntry, spec: Result<NotifySpec, CapstanError>) async {
        let outcome: NotificationSender.Outcome
        var label = "target '\(entry.target)'"
        switch sender.resolve(entry, spec) {
        case .failure(let why):
            outcome = why.code == .notFound ? .giveUp(why.message) : .retry(why.message, after: nil)
        case .success(let target):
            label = target.label
            outcome = await sender.post(target)
        }
        if Task.isCancelled, outcome != .delivered { return }  // stopping: the claim is released
        let now = Date()
        do {
            switch outcome {
            case .delivered:
                try await store.outboxDelivered(entry.key, holder: holder, at: now)
                logger.info("notification delivered", metadata: ["capstan.job": "\(entry.jobID)", "event": "\(entry.event)", "key": "\(entry.key)", "target": "\(label)", "attempt": "\(entry.attempts + 1)"])
            case .retry(let why, let after):
                let attempts = entry.attempts + 1
                if attempts >= settings.maxAttempts {
                    let message = "\(why) (gave up after \(attempts) attempts)"
                    try await store.outboxFailed(entry.key, holder: holder, error: message, retryAt: nil, at: now)
                    logger.error("notification given up", metadata: ["capstan.job": "\(entry.jobID)", "key": "\(entry.key)", "target": "\(label)", "error": "\(message)"])
                } else {
                    let delay = Swift.max(backoff.delay(afterAttempts: attempts), Swift.min(after ?? 0, settings.retryMaxSeconds))
                    try await store.outboxFailed(entry.key, holder: holder, error: why, retryAt: now.addingTimeInterval(delay), at: now)
                    logger.warning("notification not delivered; retrying", metadata: ["capstan.job": "\(entry.jobID)", "key": "\(entry.key)", "target": "\(label)", "attempt": "\(attempts)", "retryIn": "\(String(format: "%.1f", delay))s", "error": "\(why)"])
                }
            case .giveUp(let why):
                try await store.outboxFailed(entry.key, holder: holder, error: why, retryAt: nil, at: now)
                logger.error("notification given up", metadata: ["capstan.job": "\(entry.jobID)", "key": "\(entry.key)", "target": "\(label)", "error": "\(why)"])
            }
        } catch {
            logger.warning("could not record a notification's delivery", metadata: ["key": "\(entry.key)", "error": "\(error)"])
        }
    }

}

/// Sends one notification: resolves its target from the job's `notify:` (secrets read now,
/// from this process's environment and files) and POSTs it. Used by the deliverer and by
/// `capstan notify test`.
public struct NotificationSender: Sendable {
    public let settings: NotifyDelivery
    let environment: [String: String]

    public init(settings: NotifyDelivery = NotifyDelivery(), environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.settings = settings
        self.environment = environment
    }

    /// What one attempt came to.
    enum Outcome: Equatable {
        case delivered
        /// Try again (no sooner than `after` seconds when the receiver said so).
        case retry(String, after: Double?)
        case giveUp(String)
    }

    /// A resolved target: where to POST, what, and what may never be written anywhere.
    struct Resolved {
        var url: String
        var body: Data
        var headers: [(String, String)]
        /// For messages: the target without its secrets.
        var label: String
        /// Strings to scrub from any error text (the secret, a Slack URL).
        var secrets: [String]
    }

    /// The URL, body and headers for `entry`, its secrets read now.
    func resolve(_ entry: OutboxEntry, _ spec: Result<NotifySpec, CapstanError>) -> Result<Resolved, CapstanError> {
        let n: NotifySpec
        switch spec {
        case .failure(let e): return .failure(e)
        case .success(let s): n = s
        }
        let body = Data(entry.payload.utf8)
        if let hook = n.webhooks.first(where: { $0.name == entry.target }) {
            var headers = [("Content-Type", "application/json"), ("User-Agent", "capstan-notify"), ("Capstan-Idempotency-Key", entry.key), ("Capstan-Event", entry.event)]
            var secrets: [String] = []
            let url: String
            let label: String
            if let fixed = hook.url {
                url = fixed
                label = "webhook '\(hook.name)' (\(Self.origin(fixed)))"
            } else {
                label = "webhook '\(hook.name)' (URL from \(hook.urlEnv.map { "$\($0)" } ?? hook.urlFile ?? "?"))"
                switch readSecret(env: hook.urlEnv, file: hook.urlFile, what: "the URL of \(label)") {
                case .failure(let e): return .failure(e)
                case .success(let named):
                    guard let u = URL(string: named), ["http", "https"].contains(u.scheme?.lowercased() ?? ""), u.host?.isEmpty == false else {
                        return .failure(CapstanError(.config, "The URL of \(label) is not an http(s) URL."))
                    }
                    url = named
                    secrets += [named, u.path, u.query ?? ""].filter { $0.count > 1 }
                }
            }
            if hook.secretEnv != nil || hook.secretFile != nil {
                switch readSecret(env: hook.secretEnv, file: hook.secretFile, what: "the signing secret of \(label)") {
                case .failure(let e): return .failure(e)
                case .success(let secret):
                    secrets.append(secret)
                    headers.append(("Capstan-Signature", WebhookSignature.header(body: body, secret: secret, at: Date())))
                }
            }
            return .success(Resolved(url: url, body: body, headers: headers, label: label, secrets: secrets))
        }
        if let slack = n.slack.first(where: { $0.name == entry.target }) {
            let label = "Slack '\(slack.name)' (URL from \(slack.urlEnv.map { "$\($0)" } ?? slack.urlFile ?? "?"))"
            switch readSecret(env: slack.urlEnv, file: slack.urlFile, what: "the incoming-webhook URL of \(label)") {
            case .failure(let e): return .failure(e)
            case .success(let url):
                guard let u = URL(string: url), ["http", "https"].contains(u.scheme?.lowercased() ?? ""), u.host != nil else {
                    return .failure(CapstanError(.config, "The incoming-webhook URL of \(label) is not an http(s) URL."))
                }
                let payload = (try? JSONDecoder().decode(NotificationPayload.self, from: body))?.slackText ?? entry.event
                let text = (try? JSONSerialization.data(withJSONObject: ["text": payload], options: [.sortedKeys])) ?? Data()
                return .success(Resolved(
                    url: url, body: text, headers: [("Content-Type", "application/json"), ("User-Agent", "capstan-notify"), ("Capstan-Idempotency-Key", entry.key)],
                    label: label, secrets: [url, u.path].filter { $0.count > 1 }))
            }
        }
        return .failure(CapstanError(.notFound, "The job's notify: has no target named '\(entry.target)' any more."))
    }

    /// The secret in `$env` or the first line of `file`; errors name where, never what.
    func readSecret(env: String?, file: String?, what: String) -> Result<String, CapstanError> {
        if let env {
            guard let v = environment[env]?.trimmingCharacters(in: .whitespacesAndNewlines), !v.isEmpty else {
                return .failure(CapstanError(.config, "\(what) is not set: the environment variable \(env) is empty or missing in the process that delivers (capstan serve, or the capstan that runs the job)."))
            }
            return .success(v)
        }
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8),
                let line = text.split(separator: "\n").first?.trimmingCharacters(in: .whitespacesAndNewlines), !line.isEmpty
            else {
                return .failure(CapstanError(.config, "\(what) cannot be read: the file \(file) is missing, unreadable or empty."))
            }
            return .success(line)
        }
        return .failure(CapstanError(.config, "\(what) names neither an environment variable nor a file."))
    }

    /// `scheme://host[:port]` of a URL (its path and query may carry tokens: never logged).
    static func origin(_ url: String) -> String {
        guard let u = URL(string: url), let scheme = u.scheme, let host = u.host else { return "?" }
        return "\(scheme)://\(host)" + (u.port.map { ":\($0)" } ?? "")
    }

    func post(_ target: Resolved) async -> Outcome {
        var request = HTTPClientRequest(url: target.url)
        request.method = .POST
        for (k, v) in target.headers { request.headers.add(name: k, value: v) }
        request.body = .bytes(ByteBuffer(bytes: Array(target.body)))
        let timeout = TimeAmount.milliseconds(Int64(settings.timeoutSeconds * 1000))
        do {
            let response = try await Self.client.execute(request, deadline: .now() + timeout)
            let code = Int(response.status.code)
            let text = (try? await response.body.collect(upTo: 4096)).map { String(buffer: $0) } ?? ""
            if (200..<300).contains(code) { return .delivered }
            let snippet = text.trimmingCharacters(in: .whitespacesAndNewlines).prefix(200)
            let why = scrub("\(target.label) answered HTTP \(code)\(snippet.isEmpty ? "" : ": \(snippet)")", target.secrets)
            if code == 408 || code == 429 || code >= 500 {
                return .retry(why, after: response.headers.first(name: "Retry-After").flatMap(Double.init))
            }
            if (300..<400).contains(code) { return .giveUp(why + " (a redirect: set the final URL; redirects are not followed)") }
            return .giveUp(why)
        } catch {
            let kind: String
            if let e = error as? HTTPClientError, e == .deadlineExceeded || e == .readTimeout || e == .connectTimeout {
                kind = "timed out after \(settings.timeoutSeconds) s"
            } else {
                kind = "could not be reached (\(type(of: error)): \(error))"
            }
            return .retry(scrub("\(target.label) \(kind)", target.secrets), after: nil)
        }
    }

    func scrub(_ text: String, _ secrets: [String]) -> String {
        secrets.reduce(text) { $0.replacingOccurrences(of: $1, with: "<redacted>") }
    }

    /// One client for the process: no redirects, connect timeout of 5 s. A refused connection
    /// fails the POST at once (the pool's own retries would hold it to its deadline, past a
    /// short lease); the deliverer's backoff does the retrying.
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow, timeout: .init(connect: .seconds(5), read: nil))
        configuration.httpVersion = .http1Only
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()
}

extension NotificationSender {
    /// What `capstan notify test` reports for one target.
    public struct TestResult: Sendable, Hashable, Codable {
        public var target: String
        public var delivered: Bool
        /// "HTTP 2xx", or why not (no secret, no URL).
        public var detail: String
    }

    /// Sends a `test` notification to every target of `spec` now, directly (not through the
    /// outbox, not retried), signed as a real one; one result per target.
    public func sendTest(_ spec: NotifySpec, jobName: String, now: Date = Date()) async -> [TestResult] {
        var out: [TestResult] = []
        let run = String(UUID().uuidString.prefix(8)).lowercased()
        for (target, _) in spec.targets {
            let key = "test-\(run):test:\(target)"
            let payload = NotificationPayload(
                id: key, event: "test", job: .init(id: "test", name: jobName, status: "running", attempt: 0, restarts: 0, step: nil, cost: nil, cluster: ""),
                message: "A test notification from `capstan notify test`.", at: NotificationPayload.timestamp(now))
            let entry = OutboxEntry(key: key, jobID: "test", target: target, event: "test", payload: payload.json(), createdAt: now)
            switch resolve(entry, .success(spec)) {
            case .failure(let e): out.append(TestResult(target: target, delivered: false, detail: e.message))
            case .success(let resolved):
                switch await post(resolved) {
                case .delivered: out.append(TestResult(target: target, delivered: true, detail: "delivered to \(resolved.label)"))
                case .retry(let why, _), .giveUp(let why): out.append(TestResult(target: target, delivered: false, detail: why))
                }
            }
        }
        return out
    }
}
