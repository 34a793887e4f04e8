public import CapstanCore
public import CapstanRuntime
public import CapstanAWS
public import CapstanStorage
public import Foundation
public import Logging

/// The providers and stores a Capstan process works with: the built-in `local` provider and
/// `file` store, plus the plugins config.yaml enables (a `providers.<name>` section without
/// `enabled: false`), configured from `$CAPSTAN_HOME/config.yaml`.
///
/// Only those plugins are loaded: every other file on the search path is listed by name
/// (``candidates``) without running any of its code (see ``PluginDiscovery``), and
/// ``loadPlugin(named:)`` loads one more on request (`capstan plugins inspect/call NAME`).
///
/// Loading never fails because of one plugin: a plugin that cannot be loaded or refuses its
/// configuration becomes a ``Problem`` (shown by `capstan plugins list` and `capstan offers`),
/// and the rest work.
public struct ProviderRegistry: Sendable {
    /// Something that kept a provider out, and why.
    public struct Problem: Sendable {
        public var provider: String
        public var error: CapstanError
    }

    public let home: CapstanHome
    public let config: CapstanConfig
    /// The search path used.
    public let discovery: PluginDiscovery
    /// Every plugin file found on the search path, loaded or not (nothing of theirs ran to list them).
    public let candidates: [PluginDiscovery.Candidate]
    /// The plugins loaded: those config.yaml enables (a failure is kept with its error).
    public let plugins: [PluginDiscovery.Entry]
    public var compute: [any ComputeProvider]
    /// Plugin instances by name (enabled plugins only).
    public let instances: [String: PluginInstance]
    public let problems: [Problem]
    /// What was done to the home folder's permissions (tightened, or could not be).
    public let homeNotices: [String]

    /// Names the built-in providers own: never a plugin's.
    public static let builtInNames: Set<String> = ["local", "ssh", "slurm", "file"]

    /// Loads config, finds plugins and loads and creates the enabled ones.
    public static func load(
        home: CapstanHome = .fromEnvironment(), environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger = Logger(label: "capstan", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws -> ProviderRegistry {
        let homeNotices = try home.ensureExists()
        let config = try CapstanConfig.load(path: home.configFile)
        let discovery = try PluginDiscovery.standard(home: home, extraFolders: config.plugins.paths, environment: environment)
        let candidates = discovery.candidates()
        // Only the plugins config.yaml turns on are loaded (their code runs from here on).
        let wanted = config.providers.keys.filter { !builtInNames.contains($0) && config.isEnabled($0, defaultOn: false) }
        var entries: [PluginDiscovery.Entry] = []
        for name in wanted.sorted() {
            if let candidate = discovery.winner(named: name, in: candidates) { entries.append(PluginDiscovery.load(candidate)) }
        }
        // Every provider's settings against its schema, built in or from a loaded plugin's
        // manifest, before any provider is created: a typo or a wrong type is an error with its
        // line. Plugins found but not loaded are known by name (for "did you mean").
        var schemas: [String: JSONValue?] = [
            "local": LocalProvider.Configuration.schema, "ssh": SSHProvider.Configuration.schema, "slurm": SlurmProvider.Configuration.schema,
        ]
        for candidate in candidates where candidate.shadowedBy == nil {
            if let name = candidate.name, schemas[name] == nil { schemas.updateValue(nil, forKey: name) }
        }
        for entry in entries { if let library = entry.library { schemas.updateValue(library.manifest.configSchema, forKey: library.name) } }
        try ConfigSchema.checkProviders(config, schemas: schemas)
        var compute: [any ComputeProvider] = []
        var instances: [String: PluginInstance] = [:]
        var problems: [Problem] = []

        if config.isEnabled("local", defaultOn: true) {
            do {
                let local = try config.providerConfig("local").decode(LocalProvider.Configuration.self)
                compute.append(try LocalProvider(root: home.localFolder, configuration: local))
            } catch let e as CapstanError {
                problems.append(Problem(provider: "local", error: e))
            } catch {
                problems.append(Problem(provider: "local", error: CapstanError(.config, "providers.local is invalid: \(PluginWire.describe(error)).", hint: "The local provider accepts: slots (1–250), bootSeconds.")))
            }
        }

        // Machines the user owns, reached over SSH: on when providers.ssh lists hosts.
        if config.providers["ssh"] != nil, config.isEnabled("ssh", defaultOn: true) {
            do {
                let ssh = try config.providerConfig("ssh").decode(SSHProvider.Configuration.self)
                compute.append(try SSHProvider(configuration: ssh, root: home.path("ssh-hosts"), client: SSHClient(folder: home.path("ssh"))))
            } catch let e as CapstanError {
                problems.append(Problem(provider: "ssh", error: e))
            } catch {
                problems.append(Problem(provider: "ssh", error: CapstanError(.config, "providers.ssh is invalid: \(PluginWire.describe(error)).", hint: "providers.ssh takes user, key, checkSeconds and hosts: [{address, name, privateAddress, port, user, key, gpu, gpus, interface, workRoot, labels}].")))
            }
        }

        // A Slurm cluster, from a submit host: on when providers.slurm is there.
        if config.providers["slurm"] != nil, config.isEnabled("slurm", defaultOn: true) {
            do {
                let slurm = try config.providerConfig("slurm").decode(SlurmProvider.Configuration.self)
                compute.append(try SlurmProvider(configuration: slurm, environment: environment, ssh: SSHClient(folder: home.path("ssh"))))
            } catch let e as CapstanError {
                problems.append(Problem(provider: "slurm", error: e))
            } catch {
                problems.append(Problem(provider: "slurm", error: CapstanError(.config, "providers.slurm is invalid: \(PluginWire.describe(error)).", hint: "providers.slurm takes partitions, account, qos, timeLimit, stopBeforeLimitSeconds, pricePerNodeHour, workRoot, slurmConf, commandSeconds, login: {address, port, user, key} (docs/slurm.md).")))
            }
        }

        var found = Set<String>(["local", "ssh", "slurm"])
        for entry in entries {
            guard let library = entry.library else { continue }
            found.insert(library.name)
            do {
                let instance = try library.instantiate(config: config.providerConfig(library.name), logger: logger, timeout: .milliseconds(Int64(config.plugins.timeoutSeconds * 1000)))
                instances[library.name] = instance
                if library.manifest.capabilities.contains(.compute) {
                    compute.append(try PluginComputeProvider(instance))
                }
            } catch let e as CapstanError {
                problems.append(Problem(provider: library.name, error: e.attributed(to: library.name)))
            } catch {
                problems.append(Problem(provider: library.name, error: CapstanError(.pluginFailure, "\(error)", provider: library.name)))
            }
        }
        for candidate in candidates where candidate.shadowedBy == nil {
            // A failed load of a configured plugin is reported below with its entry.
            guard let name = candidate.name, wanted.contains(name) else { continue }
            found.insert(name)
        }
        for name in config.providers.keys.sorted() where !found.contains(name) && config.isEnabled(name, defaultOn: true) {
            let searched = discovery.searchPath.map(\.folder).joined(separator: ", ")
            problems.append(Problem(provider: name, error: CapstanError(
                .config, "providers.\(name) is configured, but no plugin named '\(name)' was found.",
                hint: "Install its .so into \(home.pluginsFolder) or set CAPSTAN_PLUGIN_PATH. Searched: \(searched).", provider: name)))
        }
        for entry in entries {
            if case .failure(let e) = entry.result {
                let name = PluginDiscovery.pluginName(fileName: (entry.path as NSString).lastPathComponent) ?? (entry.path as NSString).lastPathComponent
                problems.append(Problem(provider: name, error: e))
            }
        }
        // Files refused for their permissions are said even when nothing asked for them: someone
        // may be trying to plant code.
        for candidate in candidates where candidate.unsafe && !entries.contains(where: { $0.path == candidate.path }) {
            guard let problem = candidate.problem else { continue }
            problems.append(Problem(provider: candidate.name ?? (candidate.path as NSString).lastPathComponent, error: problem))
        }
        return ProviderRegistry(
            home: home, config: config, discovery: discovery, candidates: candidates, plugins: entries, compute: compute,
            instances: instances, problems: problems, homeNotices: homeNotices)
    }

    /// Loads the plugin called `name` that wins on the search path, whether or not config.yaml
    /// enables it: for `capstan plugins inspect NAME` and `call NAME`, where the user asked for it.
    public func loadPlugin(named name: String) throws -> PluginLibrary {
        if let loaded = plugins.first(where: { $0.library?.name == name }), let library = loaded.library { return library }
        guard let candidate = discovery.winner(named: name, in: candidates) else {
            let names = candidates.filter { $0.shadowedBy == nil }.compactMap(\.name)
            throw CapstanError(
                .notFound, "No plugin named '\(name)' on the search path.",
                hint: names.isEmpty ? "No plugins were found; see `capstan plugins list`." : "Found: \(names.joined(separator: ", ")).")
        }
        return try PluginDiscovery.load(candidate).result.get()
    }

    /// The enabled compute provider called `name`.
    public func provider(named name: String) throws -> any ComputeProvider {
        if let p = compute.first(where: { $0.name == name }) { return p }
        throw CapstanError(.invalidRequest, "Provider '\(name)' is not enabled.", hint: "Enabled: \(compute.map(\.name).joined(separator: ", ")). See `capstan plugins list`.")
    }

    /// Opens the bucket at `location`: `file://` is built in; any other scheme is served by the
    /// enabled plugin whose manifest lists it in `storageSchemes`; `s3://` falls back to the
    /// built-in S3 client (AWS credential chain, `AWS_ENDPOINT_URL_S3`) when no plugin serves it.
    public func store(for location: String) throws -> any ObjectStore {
        let scheme = try Self.scheme(of: location)
        if scheme != "file" {
            for instance in instances.values.sorted(by: { $0.name < $1.name }) where (instance.library.manifest.storageSchemes ?? []).contains(scheme) {
                return try PluginObjectStore(instance, location: location)
            }
        }
        do {
            return try Self.builtInStore(for: location, home: home, allowInsecureHTTP: config.storage.allowInsecureHTTP)
        } catch var e as CapstanError where scheme != "file" && scheme != "s3" && !problems.isEmpty {
            // The plugin that would serve it may be among those that failed to start: say why.
            e.message += " Not in use: " + problems.map { "\($0.provider) (\($0.error.message))" }.joined(separator: "; ") + "."
            throw e
        }
    }

    /// Opens a bucket with the clients compiled into Capstan, no plugins: `file://`, and
    /// `s3://` with the standard AWS credential chain and `AWS_ENDPOINT_URL_S3`. This is what
    /// the node agent uses: a bare node cannot load Swift plugins (DESIGN's agent note).
    /// `allowInsecureHTTP` (config.yaml's `storage.allowInsecureHTTP`) lets an `http://`
    /// endpoint on another machine be used.
    public static func builtInStore(
        for location: String, home: CapstanHome, environment: [String: String] = ProcessInfo.processInfo.environment, allowInsecureHTTP: Bool = false
    ) throws -> any ObjectStore {
        let scheme = try scheme(of: location)
        if scheme == "file" { return try FileObjectStore(location: location) }
        if scheme == "s3" {
            let chain = AWSSettings().credentialChain(environment: environment)
            var configuration = AWSSettings().s3Configuration(region: chain.region(), environment: environment, uploadStateFolder: home.path("uploads"))
            configuration.allowInsecureHTTP = allowInsecureHTTP
            configuration.allowInsecureHTTPSetting = "storage.allowInsecureHTTP: true in config.yaml"
            return try S3ObjectStore(location: location, credentials: chain.credentials(), configuration: configuration)
        }
        throw CapstanError(.unsupported, "No enabled storage plugin serves '\(scheme)://' buckets.", hint: "Install and enable the plugin for it; see `capstan plugins list`.")
    }

    /// How a node's agent opens the bucket at `location` exactly as ``store(for:)`` does here:
    /// the S3 settings (endpoint, region, path style) and credentials resolved once, from
    /// `providers.aws` in config.yaml (`credentialsFile`, `profile`, `s3Endpoint`,
    /// `s3PathStyle`) when the aws plugin serves `s3://`, else from the standard AWS chain
    /// (environment, `~/.aws` profiles, `AWS_ENDPOINT_URL_S3`). Nil for a scheme only a
    /// plugin serves (the agent then opens it itself). Throws when there are no credentials.
    public func bucketAccess(for location: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> BucketAccess? {
        let scheme = try Self.scheme(of: location)
        if scheme == "file" { return BucketAccess(location: location) }
        if scheme == "gs" { return try gcsAccess(for: location, environment: environment) }
        guard scheme == "s3" else { return nil }
        var settings = AWSSettings()
        settings.allowInsecureHTTP = config.storage.allowInsecureHTTP
        let server = instances.values.sorted(by: { $0.name < $1.name }).first(where: { ($0.library.manifest.storageSchemes ?? []).contains(scheme) })
        if let server {
            guard server.name == "aws" else { return nil }
            do { settings = try config.providerConfig("aws").decode(AWSSettings.self) } catch {
                throw CapstanError(.config, "providers.aws is invalid: \(error).", hint: "See `capstan plugins inspect aws`.", provider: "aws")
            }
        }
        let chain = settings.credentialChain(environment: environment)
        let credentials = try chain.credentials()
        let s3 = settings.s3Configuration(region: chain.region(), environment: environment)
        // The controller refuses a plain-HTTP endpoint here, before any agent gets the keys.
        if let endpoint = s3.endpoint {
            _ = try AWSEndpoint(url: endpoint, allowInsecureHTTP: s3.allowInsecureHTTP, setting: "The S3 endpoint (s3Endpoint, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL) for \(location)", allowSetting: server == nil ? "storage.allowInsecureHTTP: true in config.yaml" : "providers.aws.allowInsecureHTTP: true")
        }
        var access = BucketAccess.S3(
            endpoint: s3.endpoint, region: s3.region, pathStyle: s3.pathStyle, accessKeyID: credentials.accessKeyID,
            secretAccessKey: credentials.secretAccessKey, sessionToken: credentials.sessionToken)
        access.allowInsecureHTTP = s3.allowInsecureHTTP ? true : nil
        return BucketAccess(location: location, s3: access)
    }

    /// The lower-cased scheme of a bucket URI (`s3` of `s3://bucket/prefix`).
    static func scheme(of location: String) throws -> String {
        guard let range = location.range(of: "://") else {
            throw CapstanError(.invalidRequest, "'\(location)' is not a bucket URI.", hint: "Use file:///absolute/path, s3://bucket/prefix, …")
        }
        return String(location[..<range.lowerBound]).lowercased()
    }
}
