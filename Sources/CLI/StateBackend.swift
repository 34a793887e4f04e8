import CapstanCore
import CapstanProviders
import CapstanSDK
import Foundation

// The state a home is configured for, and the provisioner over it: CapstanSDK's wiring
// (``CapstanWiring``), shared with embedding programs.
extension GlobalOptions {
    /// Opens the home's state: SQLite in the home unless config.yaml names a PostgreSQL URL.
    func openState(_ registry: ProviderRegistry) async throws -> StateBackend {
        try await CapstanWiring.openState(registry, logger: logger)
    }

    /// A provisioner over the configured providers and `state`.
    func provisioner(_ registry: ProviderRegistry, state: StateBackend, progress: (@Sendable (String) -> Void)? = nil) -> Provisioner {
        CapstanWiring.provisioner(registry, state: state, logger: logger, progress: progress)
    }
}
