import CapstanCore
import CapstanRuntime
import CapstanStorage
import Crypto
import Foundation

/// The SHA-256 of the agent binary a transport ships to nodes (SSH hosts, a Slurm cluster's
/// shared folder): it names the copy there (`bin/capstan-<prefix>`), so a node never runs a
/// stale or foreign one. Read once per transport.
enum AgentBinaryDigest {
    /// Hex SHA-256 of the file at `path`, computed the first time and kept in `cache`.
    static func sha256(of path: String, cache: LockedBox<String?>) throws -> String {
        if let d = cache.withLock({ $0 }) { return d }
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw CapstanError(.io, "Cannot read the agent binary \(path).", hint: "Build capstan, or set CAPSTAN_AGENT_BINARY to a static build.")
        }
        defer { try? h.close() }
        var hasher = SHA256()
        while let chunk = try h.read(upToCount: 4 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        let d = hasher.finalize().hex
        cache.withLock { $0 = d }
        return d
    }
}
