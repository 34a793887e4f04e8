import CapstanCore
import CapstanPostgres
import CapstanProviders
import CapstanRuntime
import CapstanSQLite
import Foundation

/// The state a home is configured for (config.yaml `state:`): its store and the locks that go
/// with it — `flock`s beside the SQLite file, or leases with fencing tokens in PostgreSQL.
struct StateBackend: Sendable {
    var store: any StateStore
    var clusterLocks: any LockService
    var jobLocks: any LockService
    /// `sqlite` or `postgres`.
    var kind: String
}

extension GlobalOptions {
    /// Opens the home's state: SQLite in the home unless config.yaml names a PostgreSQL URL.
    func openState(_ registry: ProviderRegistry) async throws -> StateBackend {
        if let url = registry.config.state {
            let store = try await PostgresStateStore.connect(url: url, logger: logger)
            let ttl = ProcessInfo.processInfo.environment["CAPSTAN_LEASE_SECONDS"].flatMap(Double.init).map { Duration.milliseconds(Int64($0 * 1000)) } ?? .seconds(15)
            return StateBackend(
                store: store, clusterLocks: PostgresLeases(store: store, namespace: "cluster", ttl: ttl),
                jobLocks: PostgresLeases(store: store, namespace: "job", ttl: ttl), kind: "postgres")
        }
        let store = try SQLiteStateStore.open(home: registry.home, faults: .fromEnvironment())
        return StateBackend(
            store: store, clusterLocks: ClusterLocks(folder: registry.home.stateFolder + "/locks"),
            jobLocks: ClusterLocks(folder: registry.home.stateFolder + "/locks/jobs"), kind: "sqlite")
    }
}

extension GlobalOptions {
    /// A provisioner over the configured providers and `state`.
    func provisioner(_ registry: ProviderRegistry, state: StateBackend, progress: (@Sendable (String) -> Void)? = nil) -> Provisioner {
        var options = ProvisionOptions()
        options.clusterKeys = ClusterKeys(folder: registry.home.path("ssh/clusters"))
        return Provisioner(
            providers: registry.compute, store: state.store, locks: state.clusterLocks,
            options: options, faults: .fromEnvironment(), logger: logger, progress: progress)
    }
}
