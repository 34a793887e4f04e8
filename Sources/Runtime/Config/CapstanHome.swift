public import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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

    /// Creates the root folder if needed, mode 0700: it holds the state database (with job
    /// specs' `env:` values), logs, keys and node configs. An existing home that group or others
    /// can reach is tightened to 0700 — Capstan's home is never meant to be shared (a team shares
    /// a `capstan serve` instead) — and said in the result; a home this user does not own and
    /// cannot tighten is used as it is, with a warning in the result. Files Capstan writes inside
    /// are 0600 besides (``PrivateFile``).
    @discardableResult
    public func ensureExists() throws -> [String] {
        var st = stat()
        if stat(root, &st) != 0 {
            do {
                try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw CapstanError(.io, "Cannot create Capstan's home folder \(root): \(error.localizedDescription)", hint: "Set CAPSTAN_HOME to a writable folder.")
            }
            // The umask may have taken bits away, never added any; chmod states it exactly.
            chmod(root, 0o700)
            return []
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw CapstanError(.io, "Capstan's home \(root) is not a folder.", hint: "Set CAPSTAN_HOME (or --home) to a folder, or move the file away.")
        }
        let mode = st.st_mode & 0o7777
        guard mode & 0o077 != 0 else { return [] }
        let was = String(format: "%04o", mode)
        if st.st_uid == geteuid(), chmod(root, 0o700) == 0 {
            return ["Capstan's home \(root) was open to \(mode & 0o007 != 0 ? "every user" : "its group") (mode \(was)); it is now 0700, as it holds job settings, logs and keys."]
        }
        return ["Capstan's home \(root) is open to \(mode & 0o007 != 0 ? "every user" : "its group") (mode \(was)) and could not be tightened (\(st.st_uid == geteuid() ? String(cString: strerror(errno)) : "you do not own it")): others may read job settings, logs and keys in it. Run `chmod 700 \(root)`, or set CAPSTAN_HOME to a folder of your own."]
    }
}
