public import CapstanCore
import Crypto
public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Copies a folder to a bucket prefix or a prefix to a folder (`capstan storage cp -r` and
/// `storage sync`), several files at a time. Each file goes through the store's own atomic
/// `put`/`get` (an object or a local file is whole or absent, never half written), so a copy
/// cut anywhere (kill -9) leaves only whole files, and a sync run again transfers only what
/// is missing or differs: same size, and the same SHA-256 (recorded by Capstan's stores) or,
/// for an S3 object without one, the same MD5 ETag.
public struct TreeTransfer: Sendable {
    public enum Direction: Sendable {
        /// Every regular file under `folder` to `prefix + relative path`.
        case upload(folder: String, prefix: String)
        /// Every object under `prefix` to `folder/relative path`.
        case download(prefix: String, folder: String)
    }

    /// What a transfer did.
    public struct Summary: Sendable, Hashable, Codable {
        /// Files copied.
        public var transferred = 0
        /// Files skipped because the destination already held them (sync).
        public var unchanged = 0
        /// Bytes copied.
        public var bytes: Int64 = 0
        public var seconds: Double = 0
        public init() {}
    }

    public var store: any ObjectStore
    public var direction: Direction
    /// Skip files the destination already holds (sync); false copies every file (cp -r).
    public var onlyChanged: Bool
    /// Files in flight at once.
    public var parallel: Int
    /// Called as each file is copied (`uploaded key`, `downloaded path`).
    public var report: (@Sendable (String) -> Void)?
    /// Called with the count of files copied so far (a test's crash point).
    public var afterFile: (@Sendable (Int) -> Void)?

    public init(store: any ObjectStore, direction: Direction, onlyChanged: Bool, parallel: Int = 8) {
        self.store = store
        self.direction = direction
        self.onlyChanged = onlyChanged
        self.parallel = max(1, parallel)
    }

    /// `prefix` as a folder's prefix: empty, or ending with one `/`.
    static func folderPrefix(_ prefix: String) -> String {
        var p = prefix
        while p.hasSuffix("/") { p.removeLast() }
        return p.isEmpty ? "" : p + "/"
    }

    /// Names of temporary and bookkeeping files Capstan's stores write (`.capstan-get-…`,
    /// `.capstan-tmp`, GCS's `….capstan-part`): never copied.
    static func isInternal(_ rel: String) -> Bool {
        rel.hasPrefix(".capstan-") || rel.contains("/.capstan-") || rel.hasSuffix(".capstan-part")
    }

    public func run() async throws -> Summary {
        let start = ContinuousClock.now
        var work: [(rel: String, key: String, size: Int64, remote: ObjectInfo?)] = []
        let folder: String
        switch direction {
        case .upload(let f, let p):
            folder = f
            let prefix = Self.folderPrefix(p)
            try ObjectKey.validatePrefix(prefix)
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
                throw CapstanError(.invalidRequest, "\(folder) is not a folder.", hint: "cp -r and sync copy a folder's files; copy one file with `capstan storage cp FILE URI`.")
            }
            let remote = onlyChanged ? Dictionary(try await store.list(prefix: prefix).map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a }) : [:]
            for (rel, size) in try Self.localFiles(folder) {
                let key = prefix + rel
                try ObjectKey.validate(key)
                work.append((rel, key, size, remote[key]))
            }
        case .download(let p, let f):
            folder = f
            let prefix = Self.folderPrefix(p)
            try ObjectKey.validatePrefix(prefix)
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            Self.removeLeftovers(folder)
            for o in try await store.list(prefix: prefix) where !o.key.hasSuffix("/") {
                let rel = String(o.key.dropFirst(prefix.count))
                do { try ObjectKey.validate(rel) } catch {
                    throw CapstanError(.invalidRequest, "\(store.location) holds the object '\(o.key)', which cannot be a file under \(folder): \((error as? CapstanError)?.message ?? "\(error)")", hint: "Rename that object, or copy a narrower prefix.")
                }
                if Self.isInternal(rel) { continue }
                work.append((rel, o.key, o.size, o))
            }
        }
        if work.isEmpty, case .download = direction {
            throw CapstanError(.notFound, "No objects under \(store.location)/\(Self.folderPrefix(prefixOf(direction))).", hint: "Check the URI with `capstan storage ls`.")
        }
        let counter = LockedBox(Summary())
        let store = self.store, direction = self.direction, onlyChanged = self.onlyChanged, report = self.report, afterFile = self.afterFile
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = 0
            func add() {
                guard next < work.count else { return }
                let item = work[next]
                next += 1
                group.addTask {
                    let local = folder + "/" + item.rel
                    switch direction {
                    case .upload:
                        if onlyChanged, let remote = item.remote, try await Self.same(local: local, remote: remote, store: store) {
                            counter.withLock { $0.unchanged += 1 }
                            return
                        }
                        let info = try await store.put(file: local, key: item.key, options: PutOptions(), progress: nil)
                        let n = counter.withLock { s -> Int in s.transferred += 1; s.bytes += info.size; return s.transferred }
                        report?("uploaded \(item.rel) → \(item.key) (\(info.size) bytes)")
                        afterFile?(n)
                    case .download:
                        if onlyChanged, let remote = item.remote, FileManager.default.fileExists(atPath: local), try await Self.same(local: local, remote: remote, store: store) {
                            counter.withLock { $0.unchanged += 1 }
                            return
                        }
                        try FileManager.default.createDirectory(atPath: LocalPath.folder(of: local), withIntermediateDirectories: true)
                        let info = try await store.get(key: item.key, to: local, progress: nil)
                        let n = counter.withLock { s -> Int in s.transferred += 1; s.bytes += info.size; return s.transferred }
                        report?("downloaded \(item.key) → \(item.rel) (\(info.size) bytes)")
                        afterFile?(n)
                    }
                }
            }
            for _ in 0..<parallel { add() }
            while try await group.next() != nil { add() }
        }
        var out = counter.withLock { $0 }
        out.seconds = (ContinuousClock.now - start).seconds
        return out
    }

    func prefixOf(_ d: Direction) -> String {
        switch d {
        case .upload(_, let p), .download(let p, _): return p
        }
    }

    /// The regular files under `folder` (relative paths, sorted) with their sizes; Capstan's
    /// own temporary files are left out.
    static func localFiles(_ folder: String) throws -> [(String, Int64)] {
        guard let walker = FileManager.default.enumerator(atPath: folder) else {
            throw CapstanError(.io, "Cannot read the folder \(folder).")
        }
        var out: [(String, Int64)] = []
        while let rel = walker.nextObject() as? String {
            if isInternal(rel) { walker.skipDescendants(); continue }
            guard walker.fileAttributes?[.type] as? FileAttributeType == .typeRegular else { continue }
            out.append((rel, (walker.fileAttributes?[.size] as? NSNumber)?.int64Value ?? 0))
        }
        return out.sorted { $0.0 < $1.0 }
    }

    /// Removes the temporary files of downloads cut before their rename (`.capstan-get-…`,
    /// `….capstan-part`).
    static func removeLeftovers(_ folder: String) {
        guard let walker = FileManager.default.enumerator(atPath: folder) else { return }
        while let rel = walker.nextObject() as? String {
            let name = (rel as NSString).lastPathComponent
            if name.hasPrefix(".capstan-get-") || name.hasSuffix(".capstan-part") { try? FileManager.default.removeItem(atPath: folder + "/" + rel) }
        }
    }

    /// Whether the file at `local` holds what `remote` does: the same size and the same
    /// SHA-256 (listed, or in the object's metadata), or the same MD5 for a single-part S3
    /// ETag. Unknown: false (copied again).
    static func same(local: String, remote: ObjectInfo, store: any ObjectStore) async throws -> Bool {
        guard let attrs = try? FileManager.default.attributesOfItem(atPath: local), (attrs[.size] as? NSNumber)?.int64Value == remote.size else { return false }
        var sha = remote.sha256
        let etag = remote.etag?.lowercased()
        let md5ETag = etag.flatMap { $0.count == 32 && $0.allSatisfy(\.isHexDigit) ? $0 : nil }
        if sha == nil, md5ETag == nil { sha = try await store.head(key: remote.key)?.sha256 }
        guard sha != nil || md5ETag != nil else { return false }
        let (localSHA, localMD5) = try hashes(local)
        if let sha { return sha.lowercased() == localSHA }
        return md5ETag == localMD5
    }

    /// SHA-256 and MD5 (hex) of the file at `path`, in one read.
    static func hashes(_ path: String) throws -> (sha256: String, md5: String) {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CapstanError(.io, "Cannot read \(path).") }
        defer { try? h.close() }
        var sha = SHA256(), md5 = Insecure.MD5()
        while let chunk = try h.read(upToCount: 4 << 20), !chunk.isEmpty {
            sha.update(data: chunk)
            md5.update(data: chunk)
        }
        return (sha.finalize().hex, md5.finalize().hex)
    }
}
