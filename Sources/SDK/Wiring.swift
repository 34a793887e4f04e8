public import CapstanCore
import CapstanPostgres
public import CapstanProviders
public import CapstanRuntime
public import CapstanSQLite
public import CapstanTrainer
public import Foundation
public import Logging

/// The state a home is configured for (config.yaml `state:`): its store and the locks that go
/// with it — `flock`s beside the SQLite file, or leases with fencing tokens in PostgreSQL.
public struct StateBackend: Sendable {
    public var store: any StateStore
    public var clusterLocks: any LockService
    public var jobLocks: any LockService
    /// `sqlite` or `postgres`.
    public var kind: String

    public init(store: any StateStore, clusterLocks: any LockService, jobLocks: any LockService, kind: String) {
        self.store = store
        self.clusterLocks = clusterLocks
        self.jobLocks = jobLocks
        self.kind = kind
    }
}

/// How a Capstan process puts itself together from a home: the one wiring the `capstan` CLI,
/// `capstan serve` and an embedding program (``Capstan``) share.
public enum CapstanWiring {
    /// Opens the home's state: SQLite in the home unless config.yaml names a PostgreSQL URL
    /// (leases last `CAPSTAN_LEASE_SECONDS`, default 15).
    public static func openState(_ registry: ProviderRegistry, environment: [String: String] = ProcessInfo.processInfo.environment, logger: Logger) async throws -> StateBackend {
        if let url = registry.config.state {
            let store = try await PostgresStateStore.connect(url: url, logger: logger)
            let ttl = environment["CAPSTAN_LEASE_SECONDS"].flatMap(Double.init).map { Duration.milliseconds(Int64($0 * 1000)) } ?? .seconds(15)
            return StateBackend(
                store: store, clusterLocks: PostgresLeases(store: store, namespace: "cluster", ttl: ttl),
                jobLocks: PostgresLeases(store: store, namespace: "job", ttl: ttl), kind: "postgres")
        }
        let store = try SQLiteStateStore.open(home: registry.home, faults: .fromEnvironment())
        return StateBackend(
            store: store, clusterLocks: ClusterLocks(folder: registry.home.stateFolder + "/locks"),
            jobLocks: ClusterLocks(folder: registry.home.stateFolder + "/locks/jobs"), kind: "sqlite")
    }

    /// A provisioner over the configured providers and `state`, with the home's per-cluster
    /// SSH keys and the crash-test hooks of a debug build.
    public static func provisioner(_ registry: ProviderRegistry, state: StateBackend, logger: Logger, progress: (@Sendable (String) -> Void)? = nil) -> Provisioner {
        var options = ProvisionOptions()
        options.clusterKeys = ClusterKeys(folder: registry.home.path("ssh/clusters"))
        return Provisioner(
            providers: registry.compute, store: state.store, locks: state.clusterLocks,
            options: options, faults: .fromEnvironment(), logger: logger, progress: progress)
    }

    /// An offer search over the configured providers, cached in `store`.
    public static func offerSearch(_ registry: ProviderRegistry, store: (any StateStore)?, refresh: Bool = false) -> OfferSearch {
        OfferSearch(providers: registry.compute, timeout: .milliseconds(Int64(registry.config.plugins.timeoutSeconds * 1000)), cache: store, refresh: refresh)
    }

    /// Jobs over the configured providers: local nodes run agents of `agents.local`, remote
    /// ones (SSH, Slurm) get `agents.remote` shipped to them; detached controllers are
    /// `agents.local`.
    public static func jobService(_ registry: ProviderRegistry, provisioner: Provisioner, jobLocks: any LockService, agents: AgentBinary, logger: Logger) -> JobService {
        let ssh = SSHTransport(client: SSHClient(folder: registry.home.path("ssh")), agentBinary: agents.remote, clusterKeys: ClusterKeys(folder: registry.home.path("ssh/clusters")))
        var context = JobContext(
            home: registry.home, store: provisioner.store, provisioner: provisioner, search: offerSearch(registry, store: provisioner.store),
            transports: [LocalTransport(agentExecutable: agents.local), ssh, SlurmTransport(agentBinary: agents.remote, ssh: ssh)], openBucket: { try registry.store(for: $0) },
            bucketAccess: { try registry.bucketAccess(for: $0) }, logger: logger, jobLocks: jobLocks)
        context.secretSource = SecretSource(file: registry.config.secretsFile)
        var service = JobService(context: context, agentExecutable: agents.local, defaultStorage: registry.config.storage.defaultLocation)
        service.defaultNotify = registry.config.notify
        service.notifyDelivery = registry.config.notifyDelivery
        return service
    }
}
