public import CapstanCore
public import CapstanRuntime
import Crypto
public import Foundation

/// The JSON body of a notification (webhooks get it as is; Slack a `text` made from it).
///
/// ```json
/// {"id": "llama-1a2b3c:restarted:2:ops", "event": "restarted", "at": "2026-11-30T10:00:00Z",
///  "message": "Attempt 2 started …", "reason": {"kind": "command", "node": 1, "message": "the command on node 1 ended with exit code 1"},
///  "job": {"id": "llama-1a2b3c", "name": "llama", "status": "running", "attempt": 2, "restarts": 1, "step": 1200, "cost": 12.5}}
/// ```
public struct NotificationPayload: Sendable, Hashable, Codable {
    public struct Job: Sendable, Hashable, Codable {
        public var id: String
        public var name: String
        public var status: String
        public var attempt: Int
        public var restarts: Int
        /// The newest step the leader reported (or the newest checkpoint's).
        public var step: Int?
        /// Dollars so far, where the cluster has a price.
        public var cost: Double?
        public var cluster: String
    }

    /// Why a job restarted: how the attempt before failed.
    public struct Reason: Sendable, Hashable, Codable {
        public var kind: String
        public var node: Int?
        public var message: String
        public init(kind: String, node: Int?, message: String) {
            self.kind = kind
            self.node = node
            self.message = message
        }
    }

    /// The idempotency key (also the `Capstan-Idempotency-Key` header).
    public var id: String
    public var event: String
    public var job: Job
    public var message: String
    /// ISO 8601, UTC.
    public var at: String
    public var reason: Reason?
    /// `checkpoint`: the step committed.
    public var checkpoint: Int?
    /// `cost-above`: the threshold crossed (dollars).
    public var threshold: Double?

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    public func json() -> String { String(decoding: (try? Self.encoder.encode(self)) ?? Data("{}".utf8), as: UTF8.self) }

    /// What a Slack message says.
    public var slackText: String {
        let icon = ["failed": ":x:", "succeeded": ":white_check_mark:", "restarted": ":arrows_counterclockwise:", "cancelled": ":no_entry_sign:", "cost-above": ":moneybag:", "no-progress": ":hourglass:"][event] ?? ":information_source:"
        var text = "\(icon) Capstan job *\(job.name)* (`\(job.id)`) \(event): \(message)"
        if let reason { text += "\nWhy: \(reason.kind)\(reason.node.map { " on node \($0)" } ?? ""): \(reason.message)" }
        var facts = ["attempt \(job.attempt)", "status \(job.status)"]
        if let step = job.step { facts.append("step \(step)") }
        if let cost = job.cost { facts.append(String(format: "$%.2f so far", cost)) }
        return text + "\n" + facts.joined(separator: " · ")
    }

    nonisolated(unsafe) static let iso: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()
    static let isoLock = NSLock()
    public static func timestamp(_ d: Date) -> String { isoLock.withLock { iso.string(from: d) } }
}

/// Builds a job's outbox entries from its `notify:`: one per target that takes the event,
/// each with its idempotency key `<job>:<event>[:<detail>]:<target>`.
public struct Notifier: Sendable {
    public let spec: NotifySpec

    public init(spec: NotifySpec) { self.spec = spec }

    /// The spec a job notifies by: its own `notify:`, else the config default recorded at
    /// submit; nil when neither has targets.
    public static func forJob(spec: JobSpec, settings: JobSettings) -> Notifier? {
        guard let n = spec.notify ?? settings.notify, !n.isOff else { return nil }
        return Notifier(spec: n)
    }

    /// The entries for `event` (none when no target takes it). `detail` makes the key unique
    /// where an event can happen more than once (an attempt number, a step).
    public func entries(
        _ event: NotifySpec.Event, detail: String? = nil, job: JobRecord, message: String, reason: NotificationPayload.Reason? = nil,
        checkpoint: Int? = nil, threshold: Double? = nil, cost: Double? = nil, now: Date = Date()
    ) -> [OutboxEntry] {
        let step = job.metrics.flatMap { MetricsPoint.parse($0)?.step } ?? job.latestCheckpoint
        let base = [job.id, event.rawValue] + (detail.map { [$0] } ?? [])
        return spec.targets(for: event).map { target in
            let key = (base + [target]).joined(separator: ":")
            let payload = NotificationPayload(
                id: key, event: event.rawValue,
                job: .init(id: job.id, name: job.name, status: job.status.rawValue, attempt: job.attempt, restarts: job.restarts, step: step, cost: cost.map { ($0 * 100).rounded() / 100 }, cluster: job.clusterName),
                message: message, at: NotificationPayload.timestamp(now), reason: reason, checkpoint: checkpoint, threshold: threshold)
            return OutboxEntry(key: key, jobID: job.id, target: target, event: event.rawValue, payload: payload.json(), createdAt: now)
        }
    }

    /// Dollars a job has cost: its cluster's price per hour over the time since it first started.
    public static func cost(pricePerHour: Double?, startedAt: Date?, now: Date = Date()) -> Double? {
        guard let price = pricePerHour, price > 0, let startedAt else { return nil }
        return price * max(0, now.timeIntervalSince(startedAt)) / 3600
    }
}

/// The `Capstan-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
/// A receiver recomputes it with the shared secret and compares in constant time, and refuses
/// a `t` too far from its clock (replays); docs/notifications.md has a Python recipe.
public enum WebhookSignature {
    public static func header(body: Data, secret: String, at time: Date) -> String {
        let t = Int(time.timeIntervalSince1970)
        return "t=\(t),v1=\(hex(body: body, secret: secret, t: t))"
    }

    static func hex(body: Data, secret: String, t: Int) -> String {
        var signed = Data("\(t).".utf8)
        signed.append(body)
        let mac = HMAC<SHA256>.authenticationCode(for: signed, using: SymmetricKey(data: Data(secret.utf8)))
        return mac.map { String(format: "%02x", $0) }.joined()
    }

    /// Whether `header` signs `body` with `secret`, within `tolerance` of `now`.
    public static func verify(header: String, body: Data, secret: String, now: Date = Date(), tolerance: TimeInterval = 300) -> Bool {
        var t: Int?, v1: [String] = []
        for part in header.split(separator: ",") {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { continue }
            if kv[0] == "t" { t = Int(kv[1]) } else if kv[0] == "v1" { v1.append(kv[1]) }
        }
        guard let t, abs(now.timeIntervalSince1970 - Double(t)) <= tolerance else { return false }
        let expected = Array(hex(body: body, secret: secret, t: t).utf8)
        return v1.contains { candidate in
            let c = Array(candidate.utf8)
            guard c.count == expected.count else { return false }
            return zip(c, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
        }
    }
}

/// Retry delays: exponential from `base`, capped at `max`, with "equal jitter" (half the
/// delay fixed, half random), so deliverers retrying a receiver that came back do not arrive
/// all at once.
public struct RetryBackoff: Sendable {
    public var base: Double
    public var max: Double
    public init(base: Double, max: Double) {
        self.base = base
        self.max = max
    }

    /// The delay before attempt `attempts + 1`, after `attempts` failed (1, 2, …); `unit` in
    /// 0...1 picks the jitter (random by default).
    public func delay(afterAttempts attempts: Int, unit: Double = Double.random(in: 0...1)) -> Double {
        let exp = base * pow(2, Double(Swift.max(0, Swift.min(attempts - 1, 40))))
        let d = Swift.min(max, exp)
        return d / 2 + d / 2 * Swift.min(1, Swift.max(0, unit))
    }
}
