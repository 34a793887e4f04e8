import ArgumentParser
import CapstanAWS
import CapstanCore
import CapstanProviders
import CapstanRuntime
import CapstanSDK
import Foundation
import Logging

/// `capstan check`: what this home can use, and what is wrong with the rest — per provider
/// whether it is enabled, where its credentials were found (names and paths, never values),
/// whether its API answers one short call, and the config.yaml lines that enable it; then the
/// state store and the default bucket. Exit 0 when everything enabled answers, 1 otherwise.
struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check every provider, the state store and the default bucket: enabled, credentials found, API answering.",
        discussion: """
            Each enabled provider is asked one short question (the list of its instances; for ssh, its hosts' health), all at once, each bounded by --timeout. Credentials are reported by where they were found (an environment variable's name, a file's path, a profile), never by value. A provider that is off is shown with the config.yaml lines that turn it on.

            Exits 0 when every enabled provider, the state store and the default bucket answer; 1 otherwise. --json prints the same report as one object (docs/cli.md).
            """)

    @OptionGroup var global: GlobalOptions
    @Option(parsing: .unconditional, help: "Seconds each provider, the state store and the bucket have to answer.") var timeout: Double = 10

    func validate() throws {
        guard timeout.isFinite, timeout > 0, timeout <= 600 else {
            throw ValidationError("--timeout \(timeout) is out of range: give seconds above 0, at most 600.")
        }
    }

    func run() async throws {
        try await reportingErrors {
            let registry = try global.loadRegistry()
            let report = await CheckReport.make(registry, timeout: timeout, logger: global.logger)
            if global.json { try printJSON(report) } else { print(report.text(style: .stdout)) }
            if !report.ok {
                if !global.json { printError(report.failureLine) }
                throw ExitCode(1)
            }
        }
    }
}

/// What `capstan check` found (its `--json` form).
struct CheckReport: Codable {
    /// Every enabled provider, the state store and the bucket answered.
    var ok: Bool
    var home: String
    var config: ConfigFile
    var providers: [ProviderCheck]
    var state: Probe
    var bucket: Probe

    struct ConfigFile: Codable {
        var path: String
        var exists: Bool
    }

    /// One provider: built in or a plugin found on the search path or named in config.yaml.
    struct ProviderCheck: Codable {
        var name: String
        /// `built-in` or `plugin`.
        var kind: String
        /// `ok`, `disabled`, `not started` (it could not be created: ``error``), `error` (its API
        /// answered with an error) or `no answer` (not within the timeout).
        var status: String
        var enabled: Bool
        /// The plugin file, when it is a plugin that was found.
        var plugin: PluginFile?
        var credentials: Credentials
        /// The call made and what came of it; nil when the provider is off or did not start.
        var api: Probe?
        /// Why it did not start.
        var error: CapstanError?
        /// When it is off: the config.yaml lines that turn it on.
        var enable: String?

        var working: Bool { !enabled || status == "ok" }
    }

    struct PluginFile: Codable {
        var path: String
        var source: String
    }

    struct Credentials: Codable {
        /// `found`, `missing`, `not needed` or `unknown` (a plugin Capstan knows nothing about).
        var status: String
        /// Where they were found: a variable's name, a file's path, a profile; never a value.
        var foundIn: String?
        /// Everything looked at, in order.
        var searched: [String]
    }

    /// One bounded call and its outcome.
    struct Probe: Codable {
        /// What was asked (`compute.describe`, `offers`, `sqlite …`, the bucket's URI).
        var call: String
        /// For the state and the bucket: which one (`sqlite`/`postgres`; where the bucket came from).
        var detail: String?
        var answered: Bool
        var timedOut: Bool
        var seconds: Double
        /// What the answer held (`2 instances`, `0 clusters, 1 job`).
        var result: String?
        var error: CapstanError?
    }

    var failureLine: String {
        var parts: [String] = []
        let broken = providers.filter { !$0.working }.map(\.name)
        if !broken.isEmpty { parts.append("\(broken.count) enabled provider\(broken.count == 1 ? "" : "s") did not answer: \(broken.joined(separator: ", "))") }
        if !state.answered { parts.append("the state store did not answer") }
        if !bucket.answered { parts.append("the default bucket did not answer") }
        return "error: " + parts.joined(separator: "; ") + ".\n  → Each is shown above with what was looked at; fix it, or turn a provider off with enabled: false in its config.yaml section."
    }

    // MARK: making the report

    static func make(_ registry: ProviderRegistry, timeout: Double, logger: Logger) async -> CheckReport {
        let config = registry.config
        var names: [String] = ["local", "ssh"]
        var found: [String: PluginFile] = [:]
        for c in registry.candidates where c.shadowedBy == nil {
            guard let name = c.name, !ProviderRegistry.builtInNames.contains(name) else { continue }
            // A library that is not a plugin (a dependency beside the binary) is left out,
            // unless config.yaml names it: its file is read, none of its code runs.
            guard config.providers[name] != nil || Self.exportsPluginEntry(c.path) else { continue }
            found[name] = PluginFile(path: c.path, source: c.source)
        }
        let files = found
        let pluginNames = Set(files.keys).union(config.providers.keys.filter { !ProviderRegistry.builtInNames.contains($0) })
        names += pluginNames.sorted()

        async let state = probeState(registry, timeout: timeout, logger: logger)
        async let bucket = probeBucket(registry, timeout: timeout)
        let checks = await withTaskGroup(of: (Int, ProviderCheck).self) { group in
            for (i, name) in names.enumerated() {
                group.addTask { (i, await check(name, registry: registry, plugin: files[name], timeout: timeout)) }
            }
            var out: [(Int, ProviderCheck)] = []
            for await r in group { out.append(r) }
            return out.sorted { $0.0 < $1.0 }.map(\.1)
        }
        let (s, b) = await (state, bucket)
        return CheckReport(
            ok: checks.allSatisfy(\.working) && s.answered && b.answered,
            home: registry.home.root, config: ConfigFile(path: registry.home.configFile, exists: FileManager.default.fileExists(atPath: registry.home.configFile)),
            providers: checks, state: s, bucket: b)
    }

    /// Whether the file names the plugin entry point (`capstan_plugin_entry`, in its dynamic
    /// symbol table), read without loading it.
    static func exportsPluginEntry(_ path: String) -> Bool {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else { return false }
        return data.range(of: Data("capstan_plugin_entry".utf8)) != nil
    }

    static func check(_ name: String, registry: ProviderRegistry, plugin: PluginFile?, timeout: Double) async -> ProviderCheck {
        let config = registry.config
        let builtIn = name == "local" || name == "ssh"
        let enabled = name == "local" ? config.isEnabled("local", defaultOn: true) : config.providers[name] != nil && config.isEnabled(name, defaultOn: false)
        var c = ProviderCheck(
            name: name, kind: builtIn ? "built-in" : "plugin", status: "disabled", enabled: enabled, plugin: plugin,
            credentials: CredentialProbe.lookup(name, settings: config.providerConfig(name), configured: config.providers[name] != nil))
        guard enabled else {
            c.enable = EnableSnippet.lines(for: name, sectionExists: config.providers[name] != nil)
            return c
        }
        if let problem = registry.problems.first(where: { $0.provider == name }) {
            c.status = "not started"
            c.error = problem.error
            return c
        }
        guard let provider = registry.compute.first(where: { $0.name == name }) else {
            if registry.instances[name] != nil {
                // A storage-only plugin: created, and nothing to list.
                c.status = "ok"
                c.api = Probe(call: "create", answered: true, timedOut: false, seconds: 0, result: "storage only: \((registry.instances[name]?.library.manifest.storageSchemes ?? []).map { $0 + "://" }.joined(separator: ", "))")
            } else {
                c.status = "not started"
                c.error = CapstanError(.config, "Provider \(name) was not started.", provider: name)
            }
            return c
        }
        let call = name == "ssh" ? "offers" : PluginWire.Method.describe
        let probe = await Deadline.run(call: call, seconds: timeout) { () async throws -> String in
            if name == "ssh" {
                let offers = try await provider.offers(for: ResourceRequest(nodes: 1))
                return "\(offers.count) host offer\(offers.count == 1 ? "" : "s")"
            }
            let instances = try await provider.describe(InstanceQuery(tags: [CapstanTags.managed: "true"]))
            return "\(instances.count) Capstan instance\(instances.count == 1 ? "" : "s")"
        }
        c.api = probe
        c.status = probe.answered ? "ok" : probe.timedOut ? "no answer" : "error"
        return c
    }

    static func probeState(_ registry: ProviderRegistry, timeout: Double, logger: Logger) async -> Probe {
        let postgres = registry.config.state
        let location = postgres.map(Redact.postgresURL) ?? registry.home.stateFolder + "/capstan.db"
        var probe = await Deadline.run(call: location, seconds: timeout) { () async throws -> String in
            let state = try await CapstanWiring.openState(registry, logger: logger)
            let clusters = try await state.store.clusters(includeFinished: false).count
            let jobs = try await state.store.unfinishedJobs().count
            return "\(clusters) running cluster\(clusters == 1 ? "" : "s"), \(jobs) unfinished job\(jobs == 1 ? "" : "s")"
        }
        probe.detail = postgres == nil ? "sqlite" : "postgres"
        return probe
    }

    static func probeBucket(_ registry: ProviderRegistry, timeout: Double) async -> Probe {
        let configured = registry.config.storage.defaultLocation
        let location = configured ?? "file://" + registry.home.path("bucket")
        var probe = await Deadline.run(call: location, seconds: timeout) { () async throws -> String in
            let store = try registry.store(for: location)
            _ = try await store.list(prefix: "capstan-check/")
            return "listed"
        }
        probe.detail = configured == nil ? "the home's bucket; config.yaml has no storage.default" : "storage.default in config.yaml"
        return probe
    }

    // MARK: text

    func text(style: TerminalStyle) -> String {
        var out = ["Capstan home \(home) (config.yaml: \(config.exists ? config.path : "none, the embedded default"))", ""]
        let width = max(8, (providers.map(\.name.count).max() ?? 0) + 2)
        func pad(_ s: String) -> String { s.padding(toLength: width, withPad: " ", startingAt: 0) }
        let indent = String(repeating: " ", count: width)
        for p in providers {
            var head: String
            switch p.status {
            case "ok": head = style.green("ok") + (p.api.map { ": answered \($0.call) in \(String(format: "%.2f", $0.seconds)) s" + ($0.result.map { " (\($0))" } ?? "") } ?? "")
            case "disabled": head = style.dim("disabled")
            default: head = style.red(p.status.uppercased())
            }
            out.append(pad(p.name) + head)
            if let f = p.plugin { out.append(indent + "plugin:      \(f.path) (\(f.source))") }
            let cred = p.credentials
            // (A provider that is off shows its credentials only when they are there.)
            switch p.enabled || cred.status == "found" ? cred.status : "" {
            case "found": out.append(indent + "credentials: \(cred.foundIn ?? "?")")
            case "not needed": out.append(indent + "credentials: none needed")
            case "unknown": out.append(indent + "credentials: not known to Capstan (see `capstan plugins inspect \(p.name)`)")
            case "": break
            default:
                out.append(indent + "credentials: " + style.red("not found") + "; looked at:")
                for s in cred.searched { out.append(indent + "               " + s) }
            }
            if let e = p.error ?? p.api?.error {
                out.append(indent + "error:       " + e.description.replacingOccurrences(of: "\n", with: "\n" + indent + "             "))
            } else if let api = p.api, api.timedOut {
                out.append(indent + "error:       no answer to \(api.call) within \(String(format: "%g", api.seconds)) s")
            }
            if let snippet = p.enable {
                out.append(indent + "to enable it, add to config.yaml:")
                for line in snippet.split(separator: "\n", omittingEmptySubsequences: false) { out.append(indent + "  " + line) }
            }
        }
        out.append("")
        for (label, probe) in [("state", state), ("bucket", bucket)] {
            var line = pad(label) + probe.call + " (\(probe.detail ?? "-")): "
            if probe.answered {
                line += style.green("ok") + ", \(probe.result ?? "answered") in \(String(format: "%.2f", probe.seconds)) s"
            } else if probe.timedOut {
                line += style.red("NO ANSWER") + " within \(String(format: "%g", probe.seconds)) s"
            } else {
                line += style.red("ERROR")
            }
            out.append(line)
            if let e = probe.error { out.append(indent + e.description.replacingOccurrences(of: "\n", with: "\n" + indent)) }
        }
        if ok {
            let n = providers.filter(\.enabled).count
            out.append("")
            out.append("All \(n) enabled provider\(n == 1 ? "" : "s"), the state store and the bucket answer.")
        }
        return out.joined(separator: "\n")
    }
}

/// Runs one call with a limit: its answer, its error, or "no answer" when the limit passes
/// first (the call is cancelled and left behind; a plugin call stuck in a cloud's API cannot
/// hold `capstan check` up).
enum Deadline {
    static func run(call: String, seconds: Double, _ body: @escaping @Sendable () async throws -> String) async -> CheckReport.Probe {
        let start = ContinuousClock.now
        let outcome: Result<String, any Error>? = await withCheckedContinuation { continuation in
            let done = LockedBox(false)
            @Sendable func finish(_ r: Result<String, any Error>?) {
                if done.withLock({ d in defer { d = true }; return !d }) { continuation.resume(returning: r) }
            }
            let work = Task {
                do { finish(.success(try await body())) } catch { finish(.failure(error)) }
            }
            Task {
                try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
                work.cancel()
                finish(nil)
            }
        }
        let elapsed = (ContinuousClock.now - start).seconds
        switch outcome {
        case .success(let result)?:
            return .init(call: call, answered: true, timedOut: false, seconds: elapsed, result: result)
        case .failure(let error)?:
            let e = (error as? CapstanError) ?? CapstanError(.internalError, "\(error)")
            return .init(call: call, answered: false, timedOut: false, seconds: elapsed, error: e)
        case nil:
            return .init(call: call, answered: false, timedOut: true, seconds: seconds, error: CapstanError(
                .timeout, "No answer to \(call) within \(String(format: "%g", seconds)) s.",
                hint: "Check the endpoint and the network; `capstan check --timeout SECONDS` waits longer."))
        }
    }
}

enum Redact {
    /// A PostgreSQL URL without its password (in the user part or a `password=` parameter).
    static func postgresURL(_ url: String) -> String {
        guard var c = URLComponents(string: url) else { return "postgres://(unparsable URL)" }
        c.password = nil
        c.queryItems = c.queryItems?.filter { $0.name.lowercased() != "password" }
        if c.queryItems?.isEmpty == true { c.queryItems = nil }
        return c.string ?? "postgres://(unparsable URL)"
    }
}
