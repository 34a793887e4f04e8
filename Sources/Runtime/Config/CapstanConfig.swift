public import CapstanCore
public import Foundation
public import Yams

/// The user configuration, `$CAPSTAN_HOME/config.yaml`. Every field is optional; an absent file
/// means the embedded default (the built-in `local` provider and `file` storage).
///
/// ```yaml
/// providers:
///   local:
///     slots: 4              # node slots on this machine
///   sim:                    # any plugin: this section is passed to its create()
///     offers: [...]
///   aws:
///     enabled: false        # turn a provider off without removing its section
/// plugins:
///   paths: [/opt/capstan/plugins]
///   timeoutSeconds: 30      # per call (offers, launch); transfers are not limited
/// storage:
///   default: file:///data/capstan-bucket
/// state: postgres://capstan@db.internal:5432/capstan   # default: SQLite in the home
/// notify:                   # for job specs without their own (docs/notifications.md)
///   webhooks: [{url: https://hooks.example.com/capstan, secretEnv: CAPSTAN_WEBHOOK_SECRET}]
/// ```
/// Unknown keys are errors, so a typo never silently changes behaviour. The `providers.<name>`
/// sections are checked against their provider's schema by ``ConfigSchema`` when providers are
/// loaded (a plugin's schema is known only then), with the lines recorded here in ``lines``.
public struct CapstanConfig: Sendable, Hashable {
    public struct Plugins: Sendable, Hashable {
        public var paths: [String] = []
        public var timeoutSeconds: Double = 30
        public init() {}
    }
    public struct Storage: Sendable, Hashable {
        /// Bucket URI used when a job names none.
        public var defaultLocation: String?
        /// Let the built-in S3 client (`s3://` without the aws plugin: `AWS_ENDPOINT_URL_S3`)
        /// use a plain `http://` endpoint on another machine. Off: only loopback may be plain HTTP.
        public var allowInsecureHTTP = false
        public init() {}
    }

    /// Per-provider sections, keyed by provider name. Values are passed to the plugin's `create`
    /// (minus `enabled`).
    public var providers: [String: JSONValue] = [:]
    public var plugins = Plugins()
    public var storage = Storage()
    /// Where the state lives: nil for the embedded SQLite file in the home, or a
    /// `postgres://user@host:port/db` URL (the password from `CAPSTAN_POSTGRES_PASSWORD`, or
    /// in the URL), which several `capstan serve` replicas can share.
    public var state: String?
    /// The `notify:` a job spec without one gets (docs/notifications.md).
    public var notify: NotifySpec?
    /// How notifications are delivered (retries, timeouts).
    public var notifyDelivery = NotifyDelivery()
    /// `secrets: {file: PATH}`: the secrets file jobs' `secrets:` are read from after the
    /// environment (``SecretsFile``), absolute (`~` expanded; relative to config.yaml's folder).
    public var secretsFile: String?
    /// The file the config was read from, for messages ("config" when parsed from text).
    public var source = "config"
    /// Where each provider setting was written: `providers.local.slots` (list entries as
    /// `providers.ssh.hosts[0].address`) → its line in `source`.
    public var lines: [String: Int] = [:]

    public init() {}

    /// The line `path` was written on, or that of the nearest enclosing setting; nil when
    /// unknown.
    public func line(of path: String) -> Int? {
        var p = Substring(path)
        while !p.isEmpty {
            if let l = lines[String(p)] { return l }
            guard let cut = p.lastIndex(where: { $0 == "." || $0 == "[" }) else { break }
            p = p[..<cut]
        }
        return nil
    }

    /// Whether provider `name` is turned on: a section without `enabled: false`, or no section
    /// and `defaultOn` (the built-in local provider).
    public func isEnabled(_ name: String, defaultOn: Bool) -> Bool {
        guard let section = providers[name] else { return defaultOn }
        return section["enabled"]?.boolValue ?? true
    }

    /// The config object passed to provider `name` (its section without `enabled`).
    public func providerConfig(_ name: String) -> JSONValue {
        guard case .object(var o) = providers[name] ?? .object([:]) else { return .object([:]) }
        o["enabled"] = nil
        return .object(o)
    }

    /// Reads `path`; a missing file is the default config.
    public static func load(path: String) throws -> CapstanConfig {
        guard FileManager.default.fileExists(atPath: path) else { return CapstanConfig() }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CapstanError(.io, "Cannot read config file \(path): \(error.localizedDescription)", hint: "Check its permissions.")
        }
        return try parse(text, source: path)
    }

    /// Parses YAML `text` (named `source` in errors).
    public static func parse(_ text: String, source: String = "config") throws -> CapstanConfig {
        let r = YAMLReader(kind: "config", source: source, hint: "See docs/configuration.md for the keys Capstan reads.")
        let node = try r.compose(text)
        guard let node else { return CapstanConfig() }
        guard let top = node.mapping else { throw r.bad("the top level must be a mapping", node.mark?.line) }
        var config = CapstanConfig()
        config.source = source
        for (k, v) in top {
            let key = try r.key(k)
            switch key {
            case "providers":
                guard let m = v.mapping else { throw r.bad("'providers' must be a mapping of provider name to settings", v.mark?.line) }
                for (pk, pv) in m {
                    guard let name = pk.string else { throw r.bad("provider names must be strings", pk.mark?.line) }
                    config.lines["providers.\(name)"] = pk.mark?.line
                    let value = try json(pv, path: "providers.\(name)", reader: r, lines: &config.lines)
                    guard case .object = value else { throw r.bad("'providers.\(name)' must be a mapping", pv.mark?.line) }
                    if let enabled = value["enabled"], enabled.boolValue == nil {
                        throw r.bad("'providers.\(name).enabled' must be true or false", pv.mark?.line)
                    }
                    config.providers[name] = value
                }
            case "plugins":
                guard let m = v.mapping else { throw r.bad("'plugins' must be a mapping", v.mark?.line) }
                for (pk, pv) in m {
                    switch pk.string {
                    case "paths":
                        guard let seq = pv.sequence, let paths = Optional(seq.compactMap(\.string)), paths.count == seq.count else {
                            throw r.bad("'plugins.paths' must be a list of folders", pv.mark?.line)
                        }
                        config.plugins.paths = paths.map { ($0 as NSString).expandingTildeInPath }
                    case "timeoutSeconds":
                        guard let d = pv.float, d > 0 else { throw r.bad("'plugins.timeoutSeconds' must be a positive number", pv.mark?.line) }
                        config.plugins.timeoutSeconds = d
                    default: throw r.unknown("plugins.\(pk.string ?? "?")", ["paths", "timeoutSeconds"], pk.mark?.line)
                    }
                }
            case "storage":
                guard let m = v.mapping else { throw r.bad("'storage' must be a mapping", v.mark?.line) }
                for (sk, sv) in m {
                    switch sk.string {
                    case "default":
                        guard let s = sv.string, s.contains("://") else { throw r.bad("'storage.default' must be a bucket URI like file:///path or s3://bucket/prefix", sv.mark?.line) }
                        config.storage.defaultLocation = s
                    case "allowInsecureHTTP":
                        guard let b = sv.bool else { throw r.bad("'storage.allowInsecureHTTP' must be true or false", sv.mark?.line) }
                        config.storage.allowInsecureHTTP = b
                    default: throw r.unknown("storage.\(sk.string ?? "?")", ["default", "allowInsecureHTTP"], sk.mark?.line)
                    }
                }
            case "state":
                guard let url = v.string?.trimmingCharacters(in: .whitespaces), !url.isEmpty else {
                    throw r.bad("'state' must be `sqlite` or a PostgreSQL URL like postgres://capstan@db:5432/capstan", v.mark?.line)
                }
                if url == "sqlite" { break }
                guard url.hasPrefix("postgres://") || url.hasPrefix("postgresql://"), URL(string: url)?.host != nil else {
                    throw r.bad("'state' must be `sqlite` or a PostgreSQL URL like postgres://capstan@db:5432/capstan (got a value that is neither)", v.mark?.line)
                }
                config.state = url
            case "notify":
                let n = try NotifySpec.parse(v, r)
                config.notify = n.isOff ? nil : n
            case "notifyDelivery": config.notifyDelivery = try NotifyDelivery.parse(v, r)
            case "secrets":
                guard let m = v.mapping else { throw r.bad("'secrets' must be a mapping like {file: ~/.capstan/secrets.env}", v.mark?.line) }
                for (sk, sv) in m {
                    switch sk.string {
                    case "file":
                        guard let f = sv.string?.trimmingCharacters(in: .whitespaces), !f.isEmpty else { throw r.bad("'secrets.file' must be a path like ~/.capstan/secrets.env", sv.mark?.line) }
                        let path = (f as NSString).expandingTildeInPath
                        config.secretsFile = path.hasPrefix("/") ? path : ((source as NSString).deletingLastPathComponent as NSString).appendingPathComponent(path)
                    default: throw r.unknown("secrets.\(sk.string ?? "?")", ["file"], sk.mark?.line)
                    }
                }
            default:
                throw r.unknown(key, ["providers", "plugins", "storage", "state", "notify", "notifyDelivery", "secrets"], k.mark?.line)
            }
        }
        return config
    }

    private static func json(_ node: Node, path: String, reader r: YAMLReader, lines: inout [String: Int]) throws -> JSONValue {
        switch node {
        case .scalar(let s):
            if s.style == .plain {
                if let b = node.bool { return .bool(b) }
                if let i = node.int { return .number(Double(i)) }
                if let d = node.float { return .number(d) }
                if node.null != nil { return .null }
            }
            return .string(s.string)
        case .mapping(let m):
            var o: [String: JSONValue] = [:]
            for (k, v) in m {
                guard let key = k.string else { throw r.bad("keys under '\(path)' must be strings", k.mark?.line) }
                lines["\(path).\(key)"] = k.mark?.line
                o[key] = try json(v, path: "\(path).\(key)", reader: r, lines: &lines)
            }
            return .object(o)
        case .sequence(let seq):
            var items: [JSONValue] = []
            for (i, item) in seq.enumerated() {
                lines["\(path)[\(i)]"] = item.mark?.line
                items.append(try json(item, path: "\(path)[\(i)]", reader: r, lines: &lines))
            }
            return .array(items)
        case .alias:
            throw r.bad("aliases are not supported at '\(path)'", node.mark?.line)
        }
    }
}
