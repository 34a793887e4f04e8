@_exported public import CapstanCore
@_exported public import CapstanRuntime
@_exported public import CapstanProviders
@_exported public import CapstanTrainer
import CapstanPostgres
public import Foundation
public import Logging

/// Capstan in one value: a home's configuration, providers and plugins, state store (SQLite, or
/// PostgreSQL by config.yaml `state:`), provisioner and jobs, wired exactly as the `capstan`
/// CLI wires them (it is built on this). See docs/public-api.md.
///
/// ```swift
/// let capstan = try await Capstan(home: "~/.capstan")
/// let handle = try await capstan.submit(specFile: "job.yaml")
/// for await event in handle.events { if case .metrics(let p) = event { print(p.step, p.values["loss"] ?? 0) } }
/// ```
///
/// Jobs run on nodes whose agent is the `capstan` executable (``AgentBinary``): ship it next to
/// the program, or set `CAPSTAN_AGENT_BINARY`.
public final class Capstan: Sendable {
    public let home: CapstanHome
    /// config.yaml, the providers (the built-in `local` and `ssh`, plugins it enables), the buckets.
    public let registry: ProviderRegistry
    /// The state store and its locks.
    public let state: StateBackend
    public let provisioner: Provisioner
    /// Jobs: what ``submit(specFile:cluster:settings:)`` and the job methods call.
    public let jobService: JobService
    /// The `capstan` that runs agents and detached controllers.
    public let agent: AgentBinary
    public let logger: Logger

    /// Opens a home (`home`, else `$CAPSTAN_HOME`, else `~/.capstan`, created if missing) as the
    /// CLI does. `agent`: the `capstan` to run jobs with (default: ``AgentBinary/locate(environment:executableFolder:buildFolders:)``).
    /// Throws for a bad config.yaml, a state database that cannot be opened, or no agent binary.
    public convenience init(
        home: String? = nil, agent: AgentBinary? = nil,
        logger: Logger = Logger(label: "capstan", factory: { _ in SwiftLogNoOpLogHandler() })
    ) async throws {
        let environment = ProcessInfo.processInfo.environment
        try await self.init(
            home: home.map(CapstanHome.init(root:)) ?? .fromEnvironment(environment), agent: try agent ?? AgentBinary.locate(environment: environment),
            environment: environment, logger: logger)
    }

    /// With everything given: what the CLI calls (its agent is itself).
    public init(home: CapstanHome, agent: AgentBinary, environment: [String: String] = ProcessInfo.processInfo.environment, logger: Logger, registry: ProviderRegistry? = nil) async throws {
        let registry = try registry ?? ProviderRegistry.load(home: home, environment: environment, logger: logger)
        let state = try await CapstanWiring.openState(registry, environment: environment, logger: logger)
        let provisioner = CapstanWiring.provisioner(registry, state: state, logger: logger)
        self.home = registry.home
        self.registry = registry
        self.state = state
        self.provisioner = provisioner
        self.agent = agent
        self.logger = logger
        self.jobService = CapstanWiring.jobService(registry, provisioner: provisioner, jobLocks: state.jobLocks, agents: agent, logger: logger)
    }

    /// What was done to the home folder's permissions (the CLI prints these as warnings).
    public var notices: [String] { registry.homeNotices }

    /// Releases the state store (a PostgreSQL pool, its leases). The value must not be used after.
    public func close() async {
        await PostgresLeases.finishReleases()
        if let pg = state.store as? PostgresStateStore { await pg.close() }
    }

    // MARK: - Offers and clusters (`capstan offers | up | down | status | reconcile`)

    /// Every configured provider's offers for `request`, ranked cheapest first.
    public func offers(_ request: ResourceRequest, refresh: Bool = false) async throws -> OfferSearchResult {
        try await CapstanWiring.offerSearch(registry, store: state.store, refresh: refresh).run(request)
    }

    /// Provisions cluster `name` on the cheapest offer with capacity, failing over down the
    /// ranking (reconciling first, as `capstan up` does). `progress` gets one line per step.
    public func up(_ name: String, _ request: ResourceRequest, idleMinutes: Int? = nil, refresh: Bool = false, progress: (@Sendable (String) -> Void)? = nil) async throws -> ProvisionReport {
        try Provisioner.validate(name: name)
        try Provisioner.validate(idleMinutes: idleMinutes)
        var p = provisioner
        p.progress = progress
        _ = await p.reconcile()
        return try await p.up(name: name, request: request, search: CapstanWiring.offerSearch(registry, store: state.store, refresh: refresh), idleMinutes: idleMinutes)
    }

    /// Terminates cluster `name`'s instances. Refused (`.invalidRequest`, naming the jobs)
    /// while a job that has not ended runs on it, unless `force` (the job loses its nodes).
    public func down(_ name: String, force: Bool = false) async throws -> Cluster {
        let cluster = try await provisioner.down(name: name, force: force)
        _ = await provisioner.reconcile()
        return cluster
    }

    /// The clusters in the state store (running ones unless `includeFinished`).
    public func clusters(includeFinished: Bool = false) async throws -> [Cluster] {
        try await state.store.clusters(includeFinished: includeFinished)
    }

    /// Compares every provider's Capstan instances with the state and repairs the difference.
    public func reconcile() async -> ReconcileReport { await provisioner.reconcile() }

    // MARK: - Jobs (`capstan launch | jobs | logs | events | metrics | cancel | checkpoints`)

    /// Submits the job spec at `specFile` (YAML, docs/jobs.md; its `workdir` is relative to its
    /// folder) and runs its controller in this process, delivering its notifications: the
    /// handle gives its events as they happen and its end. If this process stops, the job goes
    /// on; ``resume(_:)`` (or `capstan jobs`) re-attaches a controller.
    public func submit(specFile: String, cluster: String? = nil, settings: JobSettings = JobSettings()) async throws -> JobHandle {
        let (yaml, folder) = try Self.readSpec(specFile)
        return try await submit(yaml: yaml, folder: folder, cluster: cluster, settings: settings)
    }

    /// A spec file's text and its folder (what its `workdir` is relative to).
    static func readSpec(_ specFile: String) throws -> (yaml: String, folder: String) {
        let path = (specFile as NSString).expandingTildeInPath
        do {
            return (try String(contentsOfFile: path, encoding: .utf8), URL(fileURLWithPath: path).standardizedFileURL.deletingLastPathComponent().path)
        } catch {
            throw CapstanError(.invalidRequest, "Cannot read job spec \(specFile): \(error.localizedDescription)", hint: "Check the path.")
        }
    }

    /// Submits a job spec given as text; a relative `workdir` is relative to `folder`.
    public func submit(yaml: String, folder: String, cluster: String? = nil, settings: JobSettings = JobSettings()) async throws -> JobHandle {
        let job = try await create(yaml: yaml, folder: folder, cluster: cluster, settings: settings)
        var service = jobService
        service.deliversNotifications = true
        return service.attach(job.id)
    }

    /// Submits a job and leaves it to a detached controller (`capstan launch --detach`): it runs
    /// on after this process exits. Follow it with ``observe(_:)``.
    public func start(specFile: String, cluster: String? = nil, settings: JobSettings = JobSettings()) async throws -> JobRecord {
        let (yaml, folder) = try Self.readSpec(specFile)
        let job = try await create(yaml: yaml, folder: folder, cluster: cluster, settings: settings)
        try await jobService.ensureController(job.id)
        return try await self.job(job.id)
    }

    func create(yaml: String, folder: String, cluster: String?, settings: JobSettings) async throws -> JobRecord {
        _ = try JobSpec.parse(yaml, source: "job spec")
        _ = await provisioner.reconcile()
        var options = JobService.Options(cluster: cluster)
        options.settings = settings
        return try await jobService.create(yaml: yaml, folder: folder, options: options)
    }

    /// Jobs, newest first (unfinished ones only if `running`). Read-only: unlike `capstan
    /// jobs` it re-attaches no controller (see ``resume(_:)``).
    public func jobs(running: Bool = false, limit: Int = 100) async throws -> [JobRecord] {
        try await state.store.jobs(includeFinished: !running, limit: limit)
    }

    /// A job by id or name; `notFound` if there is none.
    public func job(_ idOrName: String) async throws -> JobRecord {
        guard let job = try await state.store.job(idOrName) else {
            throw CapstanError(.notFound, "No job '\(idOrName)'.", hint: "See `capstan jobs` (or `jobs()`) for job ids.")
        }
        return job
    }

    /// Stops a job: its nodes upload what is complete, then its own cluster is terminated.
    /// Returns the job as it ended.
    @discardableResult
    public func cancel(_ idOrName: String) async throws -> JobRecord {
        let id = try await job(idOrName).id
        let service = jobService
        // The `cancelled` notification, when this process ends the job, is delivered from here.
        return try await NotificationDeliverer.alongside(store: state.store, settings: service.notifyDelivery, logger: logger) { try await service.cancel(id) }
    }

    /// Starts a detached controller for an unfinished job that has none (its controller's
    /// process died); with no id, for every such job (what `capstan jobs` does). Returns the
    /// ids it started one for.
    @discardableResult
    public func resume(_ idOrName: String? = nil) async throws -> [String] {
        let ids = if let idOrName { [try await job(idOrName).id] } else { try await state.store.unfinishedJobs().map(\.id) }
        var started: [String] = []
        for id in ids { if try await jobService.ensureController(id) { started.append(id) } }
        return started
    }

    /// A read-only observer of the job: its events, metrics and log lines from the state store
    /// and the home, until it ends. It never takes the job from its controller, here or in
    /// another process (``JobObserver``).
    public func observe(_ idOrName: String) -> AsyncThrowingStream<JobEvent, any Error> {
        observer.events(idOrName)
    }

    /// The observer behind ``observe(_:)``, ``metrics(_:)`` and ``logs(_:node:)``.
    public var observer: JobObserver { JobObserver(context: jobService.context) }

    /// The job's history from the state store (`capstan events`): attempts, failures,
    /// restarts, replacements, checkpoints, controllers.
    public func events(_ idOrName: String, after: Int64 = 0, limit: Int = 1000) async throws -> [StateEvent] {
        try await state.store.events(job: try await job(idOrName).id, after: after, limit: limit)
    }

    /// The leader's metrics so far (`capstan metrics`).
    public func metrics(_ idOrName: String) async throws -> [MetricsPoint] {
        observer.metrics(try await job(idOrName).id)
    }

    /// Node `node`'s log lines so far, every attempt's (`capstan logs --node`).
    public func logs(_ idOrName: String, node: Int = 0) async throws -> [String] {
        observer.logs(try await job(idOrName).id, node: node)
    }

    /// The job's checkpoints in its bucket, each verified against its manifest.
    public func checkpoints(_ idOrName: String) async throws -> [CheckpointSummary] {
        try await jobService.checkpoints(try await job(idOrName).id)
    }
}
