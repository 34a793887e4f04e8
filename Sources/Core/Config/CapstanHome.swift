import Foundation

/// Where Capstan keeps its files: `CAPSTAN_HOME`, default `~/.capstan`.
///
/// ```
/// $CAPSTAN_HOME/
///   config.yaml     user configuration (optional; see docs/configuration.md)
///   plugins/        drop-in plugin libraries
///   local/          the local provider's node slots
///   state/          the state database (clusters, jobs, intents)
///   owner-id        this home's owner id (the `capstan:owner` tag): keep it with the home
/// ```
public struct CapstanHome: Sendable, Hashable {
    public var root: String

    public init(root: String) {
        self.root = (root as NSString).expandingTildeInPath
    }

    /// `CAPSTAN_HOME` when set, else `~/.capstan`.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> CapstanHome {
        if let home = environment["CAPSTAN_HOME"], !home.isEmpty { return CapstanHome(root: home) }
        return CapstanHome(root: (environment["HOME"].map { $0 + "/.capstan" }) ?? "~/.capstan")
    }

    public var configFile: String { path("config.yaml") }
    public var pluginsFolder: String { path("plugins") }
    public var localFolder: String { path("local") }
    public var stateFolder: String { path("state") }
    /// The owner id every instance this home launches is tagged with, kept apart from the
    /// state database so that losing the database loses nothing in the clouds.
    public var ownerIDFile: String { path("owner-id") }

    public func path(_ relative: String) -> String { (root as NSString).appendingPathComponent(relative) }

    /// Creates the root folder if needed (mode 0700: it may hold keys and state).
    public func ensureExists() throws {
        do {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw CapstanError(.io, "Cannot create Capstan's home folder \(root): \(error.localizedDescription)", hint: "Set CAPSTAN_HOME to a writable folder.")
        }
    }
}
