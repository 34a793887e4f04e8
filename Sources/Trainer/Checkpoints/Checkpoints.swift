public import CapstanCore
public import CapstanRuntime
public import Crypto
public import Foundation

/// The checkpoint protocol between a job, the node agents and the bucket.
///
/// **On the node.** The job writes checkpoint `N` into `$CAPSTAN_CHECKPOINT_DIR/step-N/` and,
/// when every file is flushed, creates the empty marker `step-N/.done` last. A folder without
/// the marker is still being written and is never uploaded. (A job that writes elsewhere and
/// renames the folder into place only has to add the marker before or after the rename.)
///
/// **In the bucket**, under `<prefix>/step-N/`:
/// 1. each node uploads its files to `attempt-A/node-R/<path>` (checksummed, atomic per object),
/// 2. then its part record `attempt-A/node-R.part.json` (files, sizes, SHA-256),
/// 3. the leader (rank 0), once every node's part record of its attempt is in, writes
///    `manifest.json` last, with if-none-match: the first complete attempt wins.
/// Files under `global/` (a sharded checkpoint: torch.distributed.checkpoint's per-rank files)
/// are restored on every node from every part, so a job can resume on a different node count.
/// Parts are kept apart by attempt because a restarted job writes the same step numbers again:
/// a part left by a dead attempt can never be mixed into the manifest of a new one.
/// A checkpoint exists iff its manifest exists and verifies: every file it lists is present with
/// its size and SHA-256. Retention deletes a manifest before its files, so a half-deleted
/// checkpoint is never mistaken for a complete one.
public enum CheckpointProtocol {
    public static let marker = ".done"
    public static let manifestName = "manifest.json"
    /// Files under `step-N/global/` belong to the whole job, not to the node that wrote them
    /// (each named uniquely, e.g. for its rank): every node restores all of them.
    public static let globalFolder = "global"

    /// The step number of a folder named `step-N`, else nil.
    public static func step(ofFolder name: String) -> Int? {
        guard name.hasPrefix("step-"), let n = Int(name.dropFirst(5)), n >= 0 else { return nil }
        return n
    }

    /// The regular files under `folder`, as sorted relative paths; nil when it cannot be read.
    public static func regularFiles(in folder: String) -> [String]? {
        guard let walker = FileManager.default.enumerator(atPath: folder) else { return nil }
        var paths: [String] = []
        while let rel = walker.nextObject() as? String {
            if (walker.fileAttributes?[.type] as? FileAttributeType) == .typeRegular { paths.append(rel) }
        }
        return paths.sorted()
    }

    /// Complete checkpoint folders in `dir` (those with the marker), by step.
    public static func completeSteps(in dir: String) -> [Int] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.compactMap { name in
            guard let n = step(ofFolder: name), FileManager.default.fileExists(atPath: "\(dir)/\(name)/\(marker)") else { return nil }
            return n
        }.sorted()
    }
}

/// One file of a checkpoint.
public struct CheckpointFile: Sendable, Hashable, Codable {
    /// Path inside the node's part (`model.safetensors`, `optimizer/shard-0.pt`).
    public var path: String
    public var size: Int64
    public var sha256: String
}

/// What one node contributed to a checkpoint.
public struct CheckpointPart: Sendable, Hashable, Codable {
    public var node: Int
    public var files: [CheckpointFile]
}

/// The record that makes a checkpoint exist.
public struct CheckpointManifest: Sendable, Hashable, Codable {
    public var format = 1
    public var job: String
    public var attempt: Int
    public var step: Int
    public var nodes: Int
    public var parts: [CheckpointPart]
    public var createdAt: Date

    public var totalBytes: Int64 { parts.flatMap(\.files).reduce(0) { $0 + $1.size } }

    /// Throws a ``CorruptCheckpoint`` for the first file path that is not a clean relative path
    /// inside the checkpoint — absolute, with a `.`, `..` or empty segment, or a NUL byte — so
    /// that a crafted or damaged manifest can never make a restore write outside its folder. The
    /// whole checkpoint is refused: the object store's own key check is not the only guard.
    public func checkPaths() throws {
        for part in parts {
            for f in part.files {
                if let why = Self.pathProblem(f.path) {
                    throw CorruptCheckpoint(step: step, reason: "its manifest lists the file \(Self.quoted(f.path)) for node \(part.node), which \(why); Capstan only restores relative paths inside the checkpoint folder, so the whole checkpoint is refused")
                }
            }
        }
    }

    /// What is wrong with `path` as a file inside a checkpoint, or nil.
    static func pathProblem(_ path: String) -> String? {
        if path.isEmpty { return "is empty" }
        if path.utf8.contains(0) { return "contains a NUL byte" }
        if path.hasPrefix("/") { return "is absolute" }
        for segment in path.split(separator: "/", omittingEmptySubsequences: false) {
            if segment.isEmpty { return "has an empty path segment" }
            if segment == "." || segment == ".." { return "has a '\(segment)' path segment" }
        }
        return nil
    }

    /// What node `node` restores, with the node whose part holds each file: its own part's
    /// files, and every part's `global/` files (``CheckpointProtocol/globalFolder``). A node
    /// beyond the nodes that wrote the checkpoint gets the `global/` files only; without any,
    /// it has nothing to resume from and is refused.
    public func files(forNode node: Int) throws -> [(node: Int, file: CheckpointFile)] {
        let prefix = CheckpointProtocol.globalFolder + "/"
        var out: [(node: Int, file: CheckpointFile)] = []
        var owner: [String: Int] = [:]
        for part in parts.sorted(by: { $0.node < $1.node }) {
            for f in part.files where f.path.hasPrefix(prefix) {
                if let other = owner[f.path] {
                    throw CorruptCheckpoint(step: step, reason: "its manifest lists the job-wide file \(Self.quoted(f.path)) for both node \(other) and node \(part.node); a file under \(prefix) must be written by one rank only, so the whole checkpoint is refused")
                }
                owner[f.path] = part.node
                out.append((part.node, f))
            }
        }
        let own = parts.first(where: { $0.node == node })
        guard own != nil || !out.isEmpty else {
            throw CapstanError(.notFound, "Checkpoint step \(step) has no part for node \(node).", hint: "The job's node count changed since it was written; only checkpoints with job-wide files (under \(prefix), as the sft recipe writes) resume on another node count.")
        }
        for f in own?.files ?? [] where !f.path.hasPrefix(prefix) { out.append((node, f)) }
        return out
    }

    /// `path` in quotes with control characters escaped (a manifest is untrusted input).
    static func quoted(_ path: String) -> String {
        "'" + path.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined() + "'"
    }
}

/// A checkpoint found damaged (a file's bytes do not hash to its manifest's SHA-256, or a file
/// is missing): recorded in the bucket as `step-N/corrupt.json`, so no later attempt restores it.
public struct CorruptCheckpoint: Sendable, Hashable, Codable, Error, CustomStringConvertible {
    public var step: Int
    /// What was wrong (which file, which checksum).
    public var reason: String
    public var detectedAt: Date

    public init(step: Int, reason: String, detectedAt: Date = Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down))) {
        self.step = step
        self.reason = reason
        self.detectedAt = detectedAt
    }

    public var description: String { "checkpoint step \(step) is corrupt: \(reason)" }
}

/// The result of re-hashing one checkpoint's files (`capstan checkpoints JOB --verify`).
public struct CheckpointCheck: Sendable, Hashable, Codable {
    public var step: Int
    public var attempt: Int?
    public var bytes: Int64?
    /// Every file was downloaded and hashes to its manifest's SHA-256.
    public var ok: Bool
    /// Why not.
    public var reason: String?
}

/// Checkpoints of one job in a bucket: upload a node's part, commit, find the latest verified
/// checkpoint, restore it, and keep the last K.
public struct CheckpointStore: Sendable {
    public let store: any ObjectStore
    /// Key prefix for this job's checkpoints, e.g. `jobs/<job>/checkpoints`.
    public let prefix: String

    public init(store: any ObjectStore, prefix: String) {
        self.store = store
        self.prefix = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
    }

    func key(_ step: Int, _ rest: String) -> String { "\(prefix)/step-\(step)/\(rest)" }
    func partKey(_ step: Int, attempt: Int, _ rest: String) -> String { key(step, "attempt-\(attempt)/\(rest)") }

    /// Uploads node `node`'s files of the complete checkpoint folder `folder` (written by
    /// attempt `attempt`), then its part record. Refuses a folder without the `.done` marker.
    /// `afterFile` runs after each file's upload (a test hook for cut uploads).
    @discardableResult
    public func uploadPart(
        folder: String, step: Int, node: Int, attempt: Int = 1, progress: TransferProgressHandler? = nil,
        afterFile: (@Sendable (Int) -> Void)? = nil
    ) async throws -> CheckpointPart {
        guard FileManager.default.fileExists(atPath: folder + "/" + CheckpointProtocol.marker) else {
            throw CapstanError(.invalidRequest, "Checkpoint folder \(folder) has no \(CheckpointProtocol.marker) marker: it may still be written.", hint: "Create \(CheckpointProtocol.marker) in the folder after every file is flushed.")
        }
        var files: [CheckpointFile] = []
        guard let paths = CheckpointProtocol.regularFiles(in: folder) else {
            throw CapstanError(.io, "Cannot read checkpoint folder \(folder).")
        }
        for rel in paths where rel != CheckpointProtocol.marker {
            let info = try await store.put(file: folder + "/" + rel, key: partKey(step, attempt: attempt, "node-\(node)/\(rel)"), options: PutOptions(), progress: progress)
            guard let sha = info.sha256 else {
                throw CapstanError(.io, "The store recorded no checksum for \(rel).", hint: "Use a store that records SHA-256 (file://, s3:// through Capstan).")
            }
            files.append(CheckpointFile(path: rel, size: info.size, sha256: sha))
            afterFile?(files.count)
        }
        let part = CheckpointPart(node: node, files: files)
        try await putJSON(part, key: partKey(step, attempt: attempt, "node-\(node).part.json"))
        return part
    }

    /// Writes the manifest (leader only) once all `nodes` part records of `attempt` are present;
    /// returns nil while some are missing. Idempotent: an existing manifest is returned as is.
    /// `beforeManifest` runs once every part is in, just before the manifest is written (a test
    /// hook: the leader killed mid-commit).
    public func commit(step: Int, job: String, attempt: Int, nodes: Int, beforeManifest: (@Sendable () -> Void)? = nil) async throws -> CheckpointManifest? {
        if let existing: CheckpointManifest = try await getJSON(key(step, CheckpointProtocol.manifestName)) { return existing }
        var parts: [CheckpointPart] = []
        for n in 0..<nodes {
            guard let part: CheckpointPart = try await getJSON(partKey(step, attempt: attempt, "node-\(n).part.json")) else { return nil }
            parts.append(part)
        }
        // Whole seconds: the record round-trips through ISO 8601 unchanged.
        let now = Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down))
        let manifest = CheckpointManifest(job: job, attempt: attempt, step: step, nodes: nodes, parts: parts, createdAt: now)
        beforeManifest?()
        try await putJSON(manifest, key: key(step, CheckpointProtocol.manifestName), ifNoneMatch: true)
        return manifest
    }

    /// Commits every step whose part records from one attempt are all in but which has no
    /// manifest: its leader died between the last part and the commit. The data is complete,
    /// so the checkpoint is made to exist. Returns the steps committed.
    @discardableResult
    public func commitComplete(job: String, nodes: Int) async throws -> [Int] {
        var parts: [Int: [Int: Set<Int>]] = [:]
        var manifests = Set<Int>()
        for o in try await store.list(prefix: prefix + "/") {
            let rel = o.key.dropFirst(prefix.count + 1).split(separator: "/").map(String.init)
            guard let first = rel.first, let step = CheckpointProtocol.step(ofFolder: first) else { continue }
            if rel.count == 2, rel[1] == CheckpointProtocol.manifestName { manifests.insert(step) }
            if rel.count == 3, rel[1].hasPrefix("attempt-"), let attempt = Int(rel[1].dropFirst(8)),
               rel[2].hasPrefix("node-"), rel[2].hasSuffix(".part.json"), let node = Int(rel[2].dropFirst(5).dropLast(10)) {
                parts[step, default: [:]][attempt, default: []].insert(node)
            }
        }
        var committed: [Int] = []
        for (step, byAttempt) in parts where !manifests.contains(step) {
            for (attempt, present) in byAttempt.sorted(by: { $0.key > $1.key }) where (0..<nodes).allSatisfy(present.contains) {
                if try await commit(step: step, job: job, attempt: attempt, nodes: nodes) != nil {
                    committed.append(step)
                    break
                }
            }
        }
        return committed.sorted()
    }

    /// Steps that have a manifest, ascending (not yet verified).
    public func committedSteps() async throws -> [Int] {
        try await store.list(prefix: prefix + "/").compactMap { o -> Int? in
            let parts = o.key.dropFirst(prefix.count + 1).split(separator: "/")
            guard parts.count == 2, parts[1] == Substring(CheckpointProtocol.manifestName) else { return nil }
            return CheckpointProtocol.step(ofFolder: String(parts[0]))
        }.sorted()
    }

    /// The manifest of `step` if every file it lists is present with its size and SHA-256.
    /// Throws a ``CorruptCheckpoint`` for a manifest listing a path that is not a clean relative
    /// one (``CheckpointManifest/checkPaths()``).
    public func verified(step: Int) async throws -> CheckpointManifest? {
        guard let manifest: CheckpointManifest = try await getJSON(key(step, CheckpointProtocol.manifestName)) else { return nil }
        try manifest.checkPaths()
        for part in manifest.parts {
            for f in part.files {
                guard let info = try await store.head(key: partKey(step, attempt: manifest.attempt, "node-\(part.node)/\(f.path)")),
                      info.size == f.size, info.sha256 == f.sha256 else { return nil }
            }
        }
        return manifest
    }

    static let corruptName = "corrupt.json"

    /// Steps recorded as corrupt (``markCorrupt(_:)``), ascending.
    public func corruptSteps() async throws -> [Int] {
        try await store.list(prefix: prefix + "/").compactMap { o -> Int? in
            let parts = o.key.dropFirst(prefix.count + 1).split(separator: "/")
            guard parts.count == 2, parts[1] == Substring(Self.corruptName) else { return nil }
            return CheckpointProtocol.step(ofFolder: String(parts[0]))
        }.sorted()
    }

    /// Why `step` was recorded as corrupt, if it was.
    public func corruption(step: Int) async throws -> CorruptCheckpoint? {
        try await getJSON(key(step, Self.corruptName))
    }

    /// Records `bad` in the bucket (`step-N/corrupt.json`): ``latestVerified()`` skips it from
    /// now on, for every controller. Its files stay for inspection; retention deletes them.
    public func markCorrupt(_ bad: CorruptCheckpoint) async throws {
        try await putJSON(bad, key: key(bad.step, Self.corruptName))
    }

    /// The newest checkpoint that verifies and is not recorded as corrupt (older ones are
    /// tried when a newer one does not).
    public func latestVerified() async throws -> CheckpointManifest? {
        let corrupt = Set(try await corruptSteps())
        for step in try await committedSteps().reversed() where !corrupt.contains(step) {
            // A damaged or foreign manifest only disqualifies its own step.
            if let m = try? await verified(step: step) { return m }
        }
        return nil
    }

    /// Downloads node `node`'s part of `manifest` into `folder` (each file checksum-verified by
    /// the store), and marks it complete. Files under `global/` are job-wide (a sharded
    /// checkpoint, each file named for the rank that wrote it): every node restores the union of
    /// every part's `global/` files, so a job resumes on fewer or more nodes than wrote it. A
    /// manifest with a path that could reach outside `folder` (absolute, `..`, `.`, empty
    /// segments, NUL), or a `global/` path in two parts, is refused as a whole, before any
    /// download: a ``CorruptCheckpoint``, recorded like any other corrupt checkpoint.
    public func restore(_ manifest: CheckpointManifest, node: Int, into folder: String) async throws {
        try manifest.checkPaths()
        let files = try manifest.files(forNode: node)
        for (owner, f) in files {
            let key = partKey(manifest.step, attempt: manifest.attempt, "node-\(owner)/\(f.path)")
            let info: ObjectInfo
            do { info = try await store.get(key: key, to: folder + "/" + f.path, progress: nil) } catch where Self.isCorruption(error) {
                throw CorruptCheckpoint(step: manifest.step, reason: "\(key): \((error as? CapstanError)?.message ?? "\(error)")")
            }
            guard info.sha256 == f.sha256 else {
                throw CorruptCheckpoint(step: manifest.step, reason: "\(key): its SHA-256 is \(info.sha256 ?? "unknown"), the manifest's is \(f.sha256)")
            }
        }
        guard FileManager.default.createFile(atPath: folder + "/" + CheckpointProtocol.marker, contents: nil) else {
            throw CapstanError(.io, "Cannot mark \(folder) complete.")
        }
    }

    /// Whether a store's error says an object's bytes do not hash to its recorded SHA-256
    /// (the built-in stores' "… is corrupt: its SHA-256 is …"), as opposed to a network or
    /// disk failure, which says nothing about the checkpoint.
    public static func isCorruption(_ error: any Error) -> Bool {
        if error is CorruptCheckpoint { return true }
        guard let e = error as? CapstanError, e.code == .io else { return false }
        return e.message.contains(" is corrupt: ")
    }

    /// Downloads every file of `step` into `scratch` (deleted again, file by file) and hashes
    /// it against the manifest: a real re-hash, not the checksums the store recorded at upload.
    /// Throws only for failures that say nothing about the data (network, local disk).
    public func check(step: Int, scratch: String) async throws -> CheckpointCheck {
        let manifest: CheckpointManifest?
        do { manifest = try await getJSON(key(step, CheckpointProtocol.manifestName)) } catch let e as CapstanError where e.code == .io {
            return CheckpointCheck(step: step, ok: false, reason: "its manifest is unreadable: \(e.message)")
        }
        guard let manifest else { return CheckpointCheck(step: step, ok: false, reason: "it has no manifest") }
        do { try manifest.checkPaths() } catch let bad as CorruptCheckpoint {
            return CheckpointCheck(step: step, attempt: manifest.attempt, bytes: manifest.totalBytes, ok: false, reason: bad.reason)
        }
        var out = CheckpointCheck(step: step, attempt: manifest.attempt, bytes: manifest.totalBytes, ok: true)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        for part in manifest.parts {
            for f in part.files {
                let key = partKey(step, attempt: manifest.attempt, "node-\(part.node)/\(f.path)")
                let tmp = scratch + "/" + UUID().uuidString
                defer { try? FileManager.default.removeItem(atPath: tmp) }
                do {
                    guard try await store.head(key: key) != nil else {
                        out.ok = false
                        out.reason = "\(key) is missing"
                        return out
                    }
                    _ = try await store.get(key: key, to: tmp, progress: nil)
                } catch where Self.isCorruption(error) {
                    out.ok = false
                    out.reason = "\(key): \((error as? CapstanError)?.message ?? "\(error)")"
                    return out
                }
                let (size, sha) = try Self.hashFile(tmp)
                if size != f.size || sha != f.sha256 {
                    out.ok = false
                    out.reason = "\(key): \(size) bytes with SHA-256 \(sha), the manifest says \(f.size) bytes with \(f.sha256)"
                    return out
                }
            }
        }
        return out
    }

    /// Size and SHA-256 (hex) of a local file, read in 4 MiB chunks.
    static func hashFile(_ path: String) throws -> (Int64, String) {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CapstanError(.io, "Cannot read \(path).") }
        defer { try? h.close() }
        var hasher = SHA256()
        var size: Int64 = 0
        while let chunk = try h.read(upToCount: 4 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
            size += Int64(chunk.count)
        }
        return (size, hasher.finalize().map { String(format: "%02x", $0) }.joined())
    }

    /// Keeps the newest `keep` committed checkpoints and deletes the rest (manifest first), plus
    /// uncommitted leftovers older than the oldest kept one. Returns the steps deleted.
    @discardableResult
    public func retain(keep: Int) async throws -> [Int] {
        let committed = try await committedSteps()
        guard committed.count > keep, let oldestKept = committed.suffix(keep).first else { return [] }
        let objects = try await store.list(prefix: prefix + "/")
        var deleted: Set<Int> = []
        for step in committed.dropLast(keep) {
            try await store.delete(key: key(step, CheckpointProtocol.manifestName))
            deleted.insert(step)
        }
        for o in objects {
            let first = o.key.dropFirst(prefix.count + 1).split(separator: "/").first.map(String.init) ?? ""
            guard let step = CheckpointProtocol.step(ofFolder: first), step < oldestKept else { continue }
            try await store.delete(key: o.key)
            deleted.insert(step)
        }
        return deleted.sorted()
    }

    // MARK: - JSON objects

    func putJSON<T: Encodable>(_ value: T, key: String, ifNoneMatch: Bool = false) async throws {
        let tmp = NSTemporaryDirectory() + "capstan-json-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try PluginWire.encoder.encode(value).write(to: URL(fileURLWithPath: tmp))
        _ = try await store.put(file: tmp, key: key, options: PutOptions(ifNoneMatch: ifNoneMatch), progress: nil)
    }

    func getJSON<T: Decodable>(_ key: String) async throws -> T? {
        guard try await store.head(key: key) != nil else { return nil }
        let tmp = NSTemporaryDirectory() + "capstan-json-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        _ = try await store.get(key: key, to: tmp, progress: nil)
        do {
            return try PluginWire.decoder.decode(T.self, from: Data(contentsOf: URL(fileURLWithPath: tmp)))
        } catch {
            throw CapstanError(.io, "\(key) in \(store.location) is not a valid Capstan record (\(error)).", hint: "It was not written by Capstan, or is damaged; that checkpoint is ignored.")
        }
    }
}
