import CapstanCore
import CapstanRuntime
import CapstanStorage
import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The SHA-256 of the agent binary a transport ships to nodes (SSH hosts, a Slurm cluster's
/// shared folder): it names the copy there (`bin/capstan-<prefix>`), so a node never runs a
/// stale or foreign one. Read once per transport, and remembered across processes in a private
/// memo keyed by the file's identity (path, device, inode, size, modification and change times): hashing a
/// debug build (170 MB) took 0.3–0.6 s of every `capstan launch` before its agents could start.
enum AgentBinaryDigest {
    /// Hex SHA-256 of the file at `path`: from `cache`, else the memo in `memoFolder` for this
    /// very file, else computed (and kept in both).
    static func sha256(of path: String, cache: LockedBox<String?>, memoFolder: String? = defaultMemoFolder()) throws -> String {
        if let d = cache.withLock({ $0 }) { return d }
        // Only a folder of this user's that no one else may write is believed (or written).
        if let folder = memoFolder { try? PrivateFile.createFolder(folder) }
        let trusted = memoFolder.flatMap { isPrivate($0, folder: true) ? $0 : nil }
        let memo = trusted.flatMap { folder in identity(of: path).map { folder + "/" + $0 } }
        if let memo, isPrivate(memo, folder: false), let text = try? String(contentsOfFile: memo, encoding: .utf8), text.count == 64, text.allSatisfy(\.isHexDigit) {
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
        if let memo, identity(of: path) == (memo as NSString).lastPathComponent {
            try? PrivateFile.write(Data(d.utf8), to: memo)
        }
        return d
    }

    /// The memo's name for the file at `path` as it is now: a hash of its path, device, inode,
    /// size and modification time (any rebuild or copy changes one of them); nil when it cannot
    /// be read.
    static func identity(of path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        #if canImport(Darwin)
        let (m, c) = (st.st_mtimespec, st.st_ctimespec)
        #else
        let (m, c) = (st.st_mtim, st.st_ctim)
        #endif
        let key = "v2|\(path)|\(st.st_dev)|\(st.st_ino)|\(st.st_size)|\(m.tv_sec).\(m.tv_nsec)|\(c.tv_sec).\(c.tv_nsec)"
        return SHA256.hash(data: Data(key.utf8)).hex
    }

    /// Whether `path` is this user's own (not a link), and no one else may write it: a folder
    /// `0700`-like (no group or other write), a file likewise.
    static func isPrivate(_ path: String, folder: Bool) -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == (folder ? S_IFDIR : S_IFREG) else { return false }
        return st.st_uid == getuid() && st.st_mode & 0o022 == 0
    }

    /// `$XDG_CACHE_HOME/capstan/agent-digests`, else `~/.cache/capstan/agent-digests` (mode
    /// 0700: only this user's own memos are believed).
    static func defaultMemoFolder(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let x = environment["XDG_CACHE_HOME"], x.hasPrefix("/") { return x + "/capstan/agent-digests" }
        guard let home = environment["HOME"], home.hasPrefix("/") else { return nil }
        return home + "/.cache/capstan/agent-digests"
    }
}
