import CapstanCore
import CapstanRuntime
import CapstanStorage
import Crypto
import Foundation

/// The SHA-256 of the agent binary a transport ships to nodes (SSH hosts, a Slurm cluster's
/// shared folder): it names the copy there (`bin/capstan-<prefix>`), so a node never runs a
/// stale or foreign one. Read once per transport, and remembered across processes in a private
/// memo keyed by the file's identity (path, device, inode, size, modification time): hashing a
/// debug build (170 MB) took 0.3–0.6 s of every `capstan launch` before its agents could start.
enum AgentBinaryDigest {
    /// Hex SHA-256 of the file at `path`: from `cache`, else the memo in `memoFolder` for this
    /// very file, else computed (and kept in both).
    static func sha256(of path: String, cache: LockedBox<String?>, memoFolder: String? = defaultMemoFolder()) throws -> String {
        if let d = cache.withLock({ $0 }) { return d }
        let memo = memoFolder.flatMap { folder in identity(of: path).map { folder + "/" + $0 } }
        if let memo, let text = try? String(contentsOfFile: memo, encoding: .utf8), text.count == 64, text.allSatisfy(\.isHexDigit) {
            cache.withLock { $0 = text }
            return text
        }
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw CapstanError(.io, "Cannot read the agent binary \(path).", hint: "Build capstan, or set CAPSTAN_AGENT_BINARY to a static build.")
        }
        defer { try? h.close() }
        var hasher = SHA256()
        while let chunk = try h.read(upToCount: 4 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        let d = hasher.finalize().hex
        cache.withLock { $0 = d }
        // Only a file that did not change while it was read is remembered.
        if let memo, let folder = memoFolder, identity(of: path) == (memo as NSString).lastPathComponent {
            try? PrivateFile.createFolder(folder)
            try? PrivateFile.write(Data(d.utf8), to: memo)
        }
        return d
    }

    /// The memo's name for the file at `path` as it is now: a hash of its path, device, inode,
    /// size and modification time (any rebuild or copy changes one of them); nil when it cannot
    /// be read.
    static func identity(of path: String) -> String? {
        guard let a = try? FileManager.default.attributesOfItem(atPath: path),
              let size = a[.size] as? NSNumber, let inode = a[.systemFileNumber] as? NSNumber, let device = a[.systemNumber] as? NSNumber,
              let modified = a[.modificationDate] as? Date else { return nil }
        let key = "v1|\(path)|\(device)|\(inode)|\(size)|\(modified.timeIntervalSince1970.bitPattern)"
        return SHA256.hash(data: Data(key.utf8)).hex
    }

    /// `$XDG_CACHE_HOME/capstan/agent-digests`, else `~/.cache/capstan/agent-digests` (mode
    /// 0700: only this user's own memos are believed).
    static func defaultMemoFolder(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let x = environment["XDG_CACHE_HOME"], x.hasPrefix("/") { return x + "/capstan/agent-digests" }
        guard let home = environment["HOME"], home.hasPrefix("/") else { return nil }
        return home + "/.cache/capstan/agent-digests"
    }
}
