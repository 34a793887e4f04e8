public import CapstanCore
public import Foundation
public import Yams

/// Who hears about a job, and about what: `notify:` in a job spec, or the default in
/// config.yaml for specs without one (docs/notifications.md).
///
/// ```yaml
/// notify:
///   webhooks:
///     - url: https://hooks.example.com/capstan
///       secretEnv: CAPSTAN_WEBHOOK_SECRET     # or secretFile: /etc/capstan/webhook-secret
///       events: [failed, succeeded, restarted]
///   slack:
///     urlEnv: SLACK_WEBHOOK_URL                # or urlFile: PATH (the URL is a credential)
///   checkpoints: true          # checkpoint events (off by default)
///   costAbove: 50              # dollars: once, when the job's cost crosses it
///   noProgressMinutes: 30      # the step has not advanced for this long while running
/// ```
/// Secrets and Slack URLs are named, never written: the spec is stored in the state database,
/// so an inline `secret:` or Slack `url:` is refused. `notify: false` turns the config's
/// default off for one job.
public struct NotifySpec: Sendable, Hashable, Codable {
    /// What a target can be told.
    public enum Event: String, Sendable, Hashable, Codable, CaseIterable {
        case started, restarted, failed, succeeded, cancelled, checkpoint
        case costAbove = "cost-above"
        case noProgress = "no-progress"
    }

    /// A JSON webhook, signed with HMAC-SHA256 when it has a secret.
    public struct Webhook: Sendable, Hashable, Codable {
        public var name: String
        /// The address, in the spec; or, for a URL that carries a token, named by `urlEnv` or
        /// `urlFile` (exactly one of the three).
        public var url: String?
        /// The environment variable holding the URL (in the process that delivers).
        public var urlEnv: String?
        /// The file holding the URL (its first line).
        public var urlFile: String?
        /// The environment variable holding the signing secret (in the process that delivers).
        public var secretEnv: String?
        /// The file holding the signing secret (its first line).
        public var secretFile: String?
        /// nil: every event the spec turns on.
        public var events: [Event]?
        public init(name: String, url: String? = nil, urlEnv: String? = nil, urlFile: String? = nil, secretEnv: String? = nil, secretFile: String? = nil, events: [Event]? = nil) {
            self.name = name
            self.url = url
            self.urlEnv = urlEnv
            self.urlFile = urlFile
            self.secretEnv = secretEnv
            self.secretFile = secretFile
            self.events = events
        }
    }

    /// A Slack-compatible incoming webhook; its URL is a credential, so it is named too.
    public struct Slack: Sendable, Hashable, Codable {
        public var name: String
        public var urlEnv: String?
        public var urlFile: String?
        public var events: [Event]?
        public init(name: String, urlEnv: String? = nil, urlFile: String? = nil, events: [Event]? = nil) {
            self.name = name
            self.urlEnv = urlEnv
            self.urlFile = urlFile
            self.events = events
        }
    }

    public var webhooks: [Webhook] = []
    public var slack: [Slack] = []
    /// Checkpoint-committed events (off by default: a job may checkpoint often).
    public var checkpoints = false
    /// Dollars: `cost-above` fires once when the job's cost crosses it.
    public var costAbove: Double?
    /// `no-progress` fires when the step has not advanced for this long while running.
    public var noProgressMinutes: Double?

    public init() {}

    /// No targets: `notify: false` (a job that opts out of the config's default).
    public var isOff: Bool { webhooks.isEmpty && slack.isEmpty }

    /// The events the spec turns on (the opt-in ones only when asked for).
    public var enabledEvents: Set<Event> {
        var out: Set<Event> = [.started, .restarted, .failed, .succeeded, .cancelled]
        if checkpoints { out.insert(.checkpoint) }
        if costAbove != nil { out.insert(.costAbove) }
        if noProgressMinutes != nil { out.insert(.noProgress) }
        return out
    }

    /// Every target's name and the events it gets.
    public var targets: [(name: String, events: Set<Event>)] {
        let on = enabledEvents
        return webhooks.map { ($0.name, $0.events.map { Set($0).intersection(on) } ?? on) }
            + slack.map { ($0.name, $0.events.map { Set($0).intersection(on) } ?? on) }
    }

    /// The names of the targets that get `event`.
    public func targets(for event: Event) -> [String] { targets.filter { $0.events.contains(event) }.map(\.name) }

    static let keys = ["webhooks", "slack", "checkpoints", "costAbove", "noProgressMinutes"]

    /// Parses `notify:` (`path` names it in errors: `notify`).
    package static func parse(_ v: Node, _ r: YAMLReader, path: String = "notify") throws -> NotifySpec {
        var spec = NotifySpec()
        if v.bool == false { return spec }
        guard let m = v.mapping else { throw r.bad("'\(path)' must be a mapping with `webhooks` and/or `slack` (or `false` to turn the config's default off)", v.mark?.line) }
        var eventLines: [(String, [Event], Int?)] = []
        for (k, value) in m {
            let key = try r.key(k)
            switch key {
            case "webhooks":
                let items: [Node]? = value.sequence.map { Array($0) } ?? (value.mapping != nil ? [value] : nil)
                guard let items else { throw r.bad("'\(path).webhooks' must be a list of webhooks, each with a `url`", value.mark?.line) }
                for item in items {
                    let i = spec.webhooks.count
                    let hook = try webhook(item, r, path: "\(path).webhooks[\(i)]", index: i)
                    if let e = hook.events { eventLines.append(("\(path).webhooks[\(i)].events", e, item.mark?.line)) }
                    spec.webhooks.append(hook)
                }
            case "slack":
                let items: [Node]? = value.sequence.map { Array($0) } ?? (value.mapping != nil ? [value] : nil)
                guard let items else { throw r.bad("'\(path).slack' must be a mapping with `urlEnv` or `urlFile` (or a list of them)", value.mark?.line) }
                for item in items {
                    let i = spec.slack.count
                    let s = try slack(item, r, path: "\(path).slack" + (value.sequence != nil ? "[\(i)]" : ""), index: i)
                    if let e = s.events { eventLines.append(("\(path).slack", e, item.mark?.line)) }
                    spec.slack.append(s)
                }
            case "checkpoints":
                guard let b = value.bool else { throw r.bad("'\(path).checkpoints' must be true or false", value.mark?.line) }
                spec.checkpoints = b
            case "costAbove":
                guard value.bool == nil, let d = value.float ?? value.int.map(Double.init), d.isFinite, d > 0 else {
                    throw r.bad("'\(path).costAbove' must be a positive number of dollars (e.g. 50), got '\(value.scalar?.string ?? "a collection")'", value.mark?.line)
                }
                spec.costAbove = d
            case "noProgressMinutes":
                guard value.bool == nil, let d = value.float ?? value.int.map(Double.init), d.isFinite, d > 0 else {
                    throw r.bad("'\(path).noProgressMinutes' must be a positive number of minutes (fractions allowed), got '\(value.scalar?.string ?? "a collection")'", value.mark?.line)
                }
                spec.noProgressMinutes = d
            default:
                throw r.unknown("\(path).\(key)", keys, k.mark?.line)
            }
        }
        if spec.isOff {
            throw r.bad("'\(path)' has no targets: add `webhooks` (a list with `url`) or `slack` (with `urlEnv`), or write `notify: false`", v.mark?.line)
        }
        let names = spec.webhooks.map(\.name) + spec.slack.map(\.name)
        if let dup = names.first(where: { n in names.filter { $0 == n }.count > 1 }) {
            throw r.bad("two notification targets are named '\(dup)'; give each a distinct `name`", v.mark?.line)
        }
        // An opt-in event named in a filter without its option would never fire.
        for (where_, events, line) in eventLines {
            for e in events where !spec.enabledEvents.contains(e) {
                let option = e == .checkpoint ? "checkpoints: true" : e == .costAbove ? "costAbove: DOLLARS" : "noProgressMinutes: N"
                throw r.bad("'\(where_)' lists '\(e.rawValue)', which is off; add `\(option)` to '\(path)'", line)
            }
        }
        return spec
    }

    static func name(_ m: [(Node, Node)], _ r: YAMLReader, path: String, default d: String) throws -> String {
        guard let v = m.first(where: { $0.0.string == "name" })?.1 else { return d }
        let n = try r.string(v, "\(path).name")
        guard n.range(of: "^[A-Za-z0-9_-]{1,40}$", options: .regularExpression) != nil else {
            throw r.bad("'\(path).name' must be 1–40 letters, digits, '-' or '_', got '\(n)'", v.mark?.line)
        }
        return n
    }

    static func envName(_ v: Node, _ r: YAMLReader, _ key: String) throws -> String {
        let n = try r.string(v, key)
        guard n.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil else {
            throw r.bad("'\(key)' must name an environment variable (letters, digits, '_'), not hold a value", v.mark?.line)
        }
        return n
    }

    /// A `…File:` value: a non-empty path, `~` expanded.
    static func filePath(_ v: Node, _ r: YAMLReader, _ key: String) throws -> String {
        let f = try r.string(v, key)
        guard !f.isEmpty else { throw r.bad("'\(key)' must be a file path", v.mark?.line) }
        return (f as NSString).expandingTildeInPath
    }

    static func events(_ v: Node, _ r: YAMLReader, _ key: String) throws -> [Event] {
        let names = try r.strings(v, key, "an event or a list of events")
        return try names.map { n in
            guard let e = Event(rawValue: n) else {
                let known = Event.allCases.map(\.rawValue)
                let suggestion = YAMLReader.closest(to: n, among: known, maxDistance: 3).map { " (did you mean '\($0)'?)" } ?? ""
                throw r.bad("'\(key)' names an unknown event '\(n)'\(suggestion); known: \(known.joined(separator: ", "))", v.mark?.line)
            }
            return e
        }
    }

    static func webhook(_ v: Node, _ r: YAMLReader, path: String, index: Int) throws -> Webhook {
        guard let m = v.mapping else { throw r.bad("'\(path)' must be a mapping with a `url`", v.mark?.line) }
        let pairs = m.map { ($0.key, $0.value) }
        var hook = Webhook(name: try name(pairs, r, path: path, default: "webhook-\(index)"))
        let keys = ["name", "url", "urlEnv", "urlFile", "secretEnv", "secretFile", "events"]
        for (k, value) in pairs {
            let key = try r.key(k)
            switch key {
            case "name": break
            case "url":
                let u = try r.string(value, "\(path).url")
                guard let url = URL(string: u), ["http", "https"].contains(url.scheme?.lowercased() ?? ""), url.host?.isEmpty == false else {
                    throw r.bad("'\(path).url' must be an http:// or https:// URL, got '\(u)'", value.mark?.line)
                }
                guard url.user == nil, url.password == nil else {
                    throw r.bad("'\(path).url' has credentials in it (user:password@), and the spec is stored in the state database; sign with `secretEnv`/`secretFile` instead, or name the URL with `urlEnv`/`urlFile`", value.mark?.line)
                }
                hook.url = u
            case "urlEnv": hook.urlEnv = try envName(value, r, "\(path).urlEnv")
            case "urlFile": hook.urlFile = try filePath(value, r, "\(path).urlFile")
            case "secret":
                throw r.bad("'\(path).secret' is not accepted: the spec is stored in the state database, so a secret in it would be too. Name it instead: `secretEnv: VARIABLE` (in the environment of the process that delivers) or `secretFile: PATH`", k.mark?.line)
            case "secretEnv": hook.secretEnv = try envName(value, r, "\(path).secretEnv")
            case "secretFile": hook.secretFile = try filePath(value, r, "\(path).secretFile")
            case "events": hook.events = try events(value, r, "\(path).events")
            default: throw r.unknown("\(path).\(key)", keys, k.mark?.line)
            }
        }
        switch [hook.url, hook.urlEnv, hook.urlFile].compactMap({ $0 }).count {
        case 0: throw r.bad("'\(path).url' is missing: the address notifications are POSTed to (or `urlEnv: VARIABLE` / `urlFile: PATH` naming where it is, for a URL that carries a token)", v.mark?.line)
        case 1: break
        default: throw r.bad("'\(path)' has more than one of `url`, `urlEnv` and `urlFile`; keep one", v.mark?.line)
        }
        if hook.secretEnv != nil, hook.secretFile != nil { throw r.bad("'\(path)' has both `secretEnv` and `secretFile`; keep one", v.mark?.line) }
        return hook
    }

    static func slack(_ v: Node, _ r: YAMLReader, path: String, index: Int) throws -> Slack {
        guard let m = v.mapping else { throw r.bad("'\(path)' must be a mapping with `urlEnv` or `urlFile`", v.mark?.line) }
        let pairs = m.map { ($0.key, $0.value) }
        var s = Slack(name: try name(pairs, r, path: path, default: "slack-\(index)"))
        for (k, value) in pairs {
            let key = try r.key(k)
            switch key {
            case "name": break
            case "url", "webhook":
                throw r.bad("'\(path).\(key)' is not accepted: a Slack incoming-webhook URL is a credential and the spec is stored in the state database. Name it instead: `urlEnv: VARIABLE` or `urlFile: PATH`", k.mark?.line)
            case "urlEnv": s.urlEnv = try envName(value, r, "\(path).urlEnv")
            case "urlFile": s.urlFile = try filePath(value, r, "\(path).urlFile")
            case "events": s.events = try events(value, r, "\(path).events")
            default: throw r.unknown("\(path).\(key)", ["name", "urlEnv", "urlFile", "events"], k.mark?.line)
            }
        }
        if (s.urlEnv == nil) == (s.urlFile == nil) {
            throw r.bad("'\(path)' needs exactly one of `urlEnv: VARIABLE` or `urlFile: PATH` (the incoming webhook's URL)", v.mark?.line)
        }
        return s
    }
}

/// How notifications are delivered (config.yaml `notifyDelivery:`): retries and timeouts.
public struct NotifyDelivery: Sendable, Hashable, Codable {
    /// The first retry's delay; each next one doubles (with jitter), up to `retryMaxSeconds`.
    public var retryBaseSeconds: Double = 2
    public var retryMaxSeconds: Double = 600
    /// Attempts before an entry is given up (about a day at the defaults).
    public var maxAttempts = 150
    /// One POST's limit.
    public var timeoutSeconds: Double = 10
    /// How long a claim lasts: a deliverer killed mid-delivery leaves its entries to others after
    /// this. Longer than `timeoutSeconds`: a claim that lapsed mid-POST would let another
    /// deliverer take the entry, and the first one's outcome would not be recorded.
    public var leaseSeconds: Double = 60
    /// How often due entries are looked for.
    public var pollSeconds: Double = 1
    public init() {}

    /// The lease a deliverer takes: `leaseSeconds`, but never shorter than one POST's limit plus
    /// a margin (for settings built in code, which skip the config check).
    public var effectiveLeaseSeconds: Double { Swift.max(leaseSeconds, timeoutSeconds + 2) }

    static let keys = ["retryBaseSeconds", "retryMaxSeconds", "maxAttempts", "timeoutSeconds", "leaseSeconds", "pollSeconds"]

    package static func parse(_ v: Node, _ r: YAMLReader) throws -> NotifyDelivery {
        guard let m = v.mapping else { throw r.bad("'notifyDelivery' must be a mapping", v.mark?.line) }
        var d = NotifyDelivery()
        for (k, value) in m {
            let key = try r.key(k)
            if key == "maxAttempts" {
                guard let n = value.int, n >= 1 else { throw r.bad("'notifyDelivery.maxAttempts' must be a whole number ≥ 1", value.mark?.line) }
                d.maxAttempts = n
                continue
            }
            guard Self.keys.contains(key) else { throw r.unknown("notifyDelivery.\(key)", keys, k.mark?.line) }
            guard value.bool == nil, let x = value.float ?? value.int.map(Double.init), x.isFinite, x > 0 else {
                throw r.bad("'notifyDelivery.\(key)' must be a positive number of seconds", value.mark?.line)
            }
            switch key {
            case "retryBaseSeconds": d.retryBaseSeconds = x
            case "retryMaxSeconds": d.retryMaxSeconds = x
            case "timeoutSeconds": d.timeoutSeconds = x
            case "leaseSeconds": d.leaseSeconds = x
            default: d.pollSeconds = x
            }
        }
        if d.retryMaxSeconds < d.retryBaseSeconds {
            throw r.bad("'notifyDelivery.retryMaxSeconds' (\(d.retryMaxSeconds)) is below retryBaseSeconds (\(d.retryBaseSeconds))", v.mark?.line)
        }
        if d.leaseSeconds <= d.timeoutSeconds {
            throw r.bad("'notifyDelivery.leaseSeconds' (\(d.leaseSeconds)) must be longer than timeoutSeconds (\(d.timeoutSeconds)): a claim that lapses while its POST is still waiting lets another deliverer send the same entry, and the outcome of the first is lost; raise leaseSeconds or lower timeoutSeconds", v.mark?.line)
        }
        return d
    }
}
