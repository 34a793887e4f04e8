import ArgumentParser
import CapstanAPI
import CapstanCore
import CapstanProviders
import CapstanRuntime
import CapstanSDK
import CapstanServer
import CapstanTrainer
import Foundation
import Logging

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the control plane: an HTTP API (docs/api.md) that owns every job's controller and every cluster's reconcile loop.",
        discussion: """
            Jobs keep running and recovering without anyone's shell: the server adopts every unfinished
            job in its state store (also after its own restart), reconciles the clusters, and stops
            clusters whose job ended or that sat idle past their --idle-minutes. Point the CLI at it
            with CAPSTAN_SERVER=http://HOST:PORT and CAPSTAN_TOKEN (from `capstan serve token create`).
            It binds 127.0.0.1 unless --host says otherwise. See docs/control-plane.md.
            """,
        subcommands: [ServeRunCommand.self, TokenCommand.self],
        defaultSubcommand: ServeRunCommand.self)
}

struct ServeRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Serve (the default of `capstan serve`).")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Address to bind (default 127.0.0.1: this machine only).") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: any free port; see --port-file).") var port = 8420
    @Option(help: "Write the port the server listens on to this file once it listens.") var portFile: String?
    @Option(help: "TLS certificate chain (PEM); with --tls-key the server speaks HTTPS only.") var tlsCert: String?
    @Option(help: "TLS private key (PEM).") var tlsKey: String?
    @Option(help: "Largest workdir a launch may upload, in MiB.") var maxUploadMb = 512
    @Flag(help: "Let launches name folders on this machine (an absolute workdir, file:// storage and inputs). Only for a server whose every token holder may read its files.") var allowServerPaths = false
    @Option(help: "Seconds between looks for jobs without a controller.") var superviseSeconds = 2.0
    @Option(help: "Seconds between cluster reconcile and autostop passes.") var clusterSeconds = 30.0
    @Flag(help: "Serve GET /metrics without a token (only where every client that can reach the port may read job names and costs).") var metricsWithoutToken = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0…65535, got \(port).") }
        guard maxUploadMb > 0 else { throw ValidationError("--max-upload-mb must be positive, got \(maxUploadMb).") }
        guard superviseSeconds > 0, clusterSeconds > 0 else { throw ValidationError("--supervise-seconds and --cluster-seconds must be positive.") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together.") }
    }

    func run() async throws {
        try await reportingErrors {
            // /metrics: every provider call is timed and its errors counted (docs/metrics.md).
            ServerMetrics.shared.bootstrapMetricsSystem()
            let registry = try global.loadRegistry().metered()
            let state = try await global.openState(registry)
            let provisioner = global.provisioner(registry, state: state)
            var jobs = global.jobService(registry, provisioner: provisioner, jobLocks: state.jobLocks)
            // Jobs launched through the API read secrets from the server's own environment (under
            // CAPSTAN_SECRET_ only) and its secrets file, never from a client.
            jobs.context.secretSource = .server(file: registry.config.secretsFile)
            var options = ControlPlaneOptions()
            options.host = host
            options.port = port
            options.portFile = portFile
            options.tlsCertificate = tlsCert
            options.tlsKey = tlsKey
            options.maxUploadBytes = Int64(maxUploadMb) * 1024 * 1024
            options.allowServerPaths = allowServerPaths
            options.metricsWithoutToken = metricsWithoutToken
            options.supervisePeriod = .milliseconds(Int64(superviseSeconds * 1000))
            options.clusterPeriod = .milliseconds(Int64(clusterSeconds * 1000))
            #if DEBUG
            // Test hook (debug builds only): judge idleness this many seconds in the future.
            if let offset = ProcessInfo.processInfo.environment["CAPSTAN_TEST_CLOCK_OFFSET_SECONDS"].flatMap(Double.init) {
                options.clock = { Date().addingTimeInterval(offset) }
            }
            #endif
            var logger = Logger(label: "capstan-serve") { label in StreamLogHandler.standardError(label: label) }
            logger.logLevel = global.verbose ? .debug : .info
            let global = global
            let plane = ControlPlane(
                jobs: jobs, options: options,
                offerSearch: { refresh in global.offerSearch(registry, store: provisioner.store, refresh: refresh) },
                problems: registry.problems.map { .init(provider: $0.provider, error: $0.error) },
                storeKind: state.kind, logger: logger)
            if try await provisioner.store.tokens().allSatisfy(\.isRevoked) {
                printError("warning: no live API token: every request will be refused. Create one with `capstan serve token create NAME`.")
            }
            try await plane.run()
        }
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Create, list and revoke the control plane's API tokens (stored hashed in the state store).",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a token; it is printed once, here, and stored only as a hash.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "What it is for (laptop, ci…).") var name: String

        func run() async throws {
            try await reportingErrors {
                let registry = try global.loadRegistry()
                let created = try await Tokens(store: try await global.openState(registry).store).create(name: name)
                if global.json {
                    struct Out: Encodable { var id: String; var name: String; var token: String }
                    try printJSON(Out(id: created.record.id, name: created.record.name, token: created.token))
                    return
                }
                print(created.token)
                printError("Token \(created.record.id) (\(created.record.name)) created. It is shown only now: store it, e.g. export CAPSTAN_TOKEN=…")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List tokens (never the tokens themselves).")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            try await reportingErrors {
                let registry = try global.loadRegistry()
                let tokens = try await global.openState(registry).store.tokens()
                if global.json {
                    struct Row: Encodable { var id: String; var name: String; var createdAt: Date; var lastUsedAt: Date?; var revokedAt: Date? }
                    try printJSON(tokens.map { Row(id: $0.id, name: $0.name, createdAt: $0.createdAt, lastUsedAt: $0.lastUsedAt, revokedAt: $0.revokedAt) })
                    return
                }
                if tokens.isEmpty { print("No tokens. Create one with: capstan serve token create NAME"); return }
                let f = ISO8601DateFormatter()
                var table = TextTable(header: ["ID", "NAME", "CREATED", "LAST USED", "REVOKED"])
                for t in tokens {
                    table.rows.append([t.id, t.name, f.string(from: t.createdAt), t.lastUsedAt.map { f.string(from: $0) } ?? "-", t.revokedAt.map { f.string(from: $0) } ?? "-"])
                }
                print(table.render())
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a token at once (by id, or by name when one live token has it).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Token id (tok_…) or name.") var token: String

        func run() async throws {
            try await reportingErrors {
                let registry = try global.loadRegistry()
                guard let t = try await global.openState(registry).store.revokeToken(token, at: Date()) else {
                    throw CapstanError(.notFound, "No token '\(token)'.", hint: "See `capstan serve token list`.")
                }
                print("Token \(t.id) (\(t.name)) is revoked.")
            }
        }
    }
}

extension ProviderRegistry {
    /// The same registry, its compute providers wrapped to report to `/metrics`.
    func metered(_ metrics: ServerMetrics = .shared) -> ProviderRegistry {
        var r = self
        r.compute = r.compute.map { MeteredComputeProvider($0, metrics: metrics) }
        return r
    }
}
