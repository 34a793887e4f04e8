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
///
/// A download stages each file in a folder of its own run's, `.capstan-sync-<host>-<pid>-<random>`
/// at the top of the destination, and renames it into place: runs into one folder at once
/// never touch each other's files in flight. A run removes its own staging folder as it ends,
/// and another run's only once that run is gone (same host, its pid dead) or a day old.
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

    /// How far a transfer is: files and bytes done of the total (a sync's unchanged files count
    /// as done), and the bytes actually moved (for a rate).
    public struct Progress: Sendable, Hashable {
        public var filesDone = 0
        public var filesTotal = 0
        public var bytesDone: Int64 = 0
        public var bytesTotal: Int64 = 0
        public var bytesMoved: Int64 = 0

        public init(filesDone: Int = 0, filesTotal: Int = 0, bytesDone: Int64 = 0, bytesTotal: Int64 = 0, bytesMoved: Int64 = 0) {
            self.filesDone = filesDone
            self.filesTotal = filesTotal
            self.bytesDone = bytesDone
            self.bytesTotal = bytesTotal
            self.bytesMoved = bytesMoved
        }
    }

    public var store: any ObjectStore
    public var direction: Direction
    /// Skip files the destination already holds (sync); false copies every file (cp -r).
    public var onlyChanged: Bool
    /// Files in flight at once.
    public var parallel: Int
    /// Called as each file is copied, with the step (`uploaded rel → key (n bytes)`,
    /// `downloaded key → rel (n bytes)`), and with nil as bytes move within a file or a file is
    /// found unchanged.
    public var progress: (@Sendable (Progress, _ step: String?) -> Void)?
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
        var staging: String?
        defer { if let staging { try? FileManager.default.removeItem(atPath: staging) } }
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
            staging = folder + "/" + Self.stagingName()
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
        if let staging { try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true) }
        let stage = staging
        let counter = LockedBox(Summary())
        let moving = LockedBox(Progress(filesTotal: work.count, bytesTotal: work.reduce(0) { $0 + $1.size }))
        let inFlight = LockedBox<[Int: Int64]>([:])
        let store = self.store, direction = self.direction, onlyChanged = self.onlyChanged, report = self.progress, afterFile = self.afterFile
        /// The progress now: files done, and bytes done including those in flight.
        @Sendable func now(_ change: (inout Progress) -> Void = { _ in }) -> Progress {
            let partial = inFlight.withLock { $0.values.reduce(0, +) }
            var p = moving.withLock { p in change(&p); return p }
            p.bytesDone += partial
            p.bytesMoved += partial
            return p
        }
        @Sendable func fileProgress(_ index: Int) -> TransferProgressHandler? {
            guard let report else { return nil }
            return { t in
                inFlight.withLock { $0[index] = Int64(t.bytesDone) }
                report(now(), nil)
            }
        }
        @Sendable func done(_ index: Int, size: Int64, moved: Bool) -> Progress {
            inFlight.withLock { $0[index] = nil }
            return now { p in
                p.filesDone += 1
                p.bytesDone += size
                if moved { p.bytesMoved += size }
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = 0
            func add() {
                guard next < work.count else { return }
                let item = work[next], index = next
                next += 1
                group.addTask {
                    let local = folder + "/" + item.rel
                    switch direction {
                    case .upload:
                        if onlyChanged, let remote = item.remote, try await Self.same(local: local, remote: remote, store: store) {
                            counter.withLock { $0.unchanged += 1 }
                            report?(done(index, size: item.size, moved: false), nil)
                            return
                        }
                        let info = try await store.put(file: local, key: item.key, options: PutOptions(), progress: fileProgress(index))
                        let n = counter.withLock { s -> Int in s.transferred += 1; s.bytes += info.size; return s.transferred }
                        report?(done(index, size: info.size, moved: true), "uploaded \(item.rel) → \(item.key) (\(info.size) bytes)")
                        afterFile?(n)
                    case .download:
                        if onlyChanged, let remote = item.remote, FileManager.default.fileExists(atPath: local), try await Self.same(local: local, remote: remote, store: store) {
                            counter.withLock { $0.unchanged += 1 }
                            report?(done(index, size: item.size, moved: false), nil)
                            return
                        }
                        try FileManager.default.createDirectory(atPath: LocalPath.folder(of: local), withIntermediateDirectories: true)
                        let info = try await Self.download(item.key, to: local, staged: stage.map { "\($0)/\(index)" }, store: store, progress: fileProgress(index))
                        let n = counter.withLock { s -> Int in s.transferred += 1; s.bytes += info.size; return s.transferred }
                        report?(done(index, size: info.size, moved: true), "downloaded \(item.key) → \(item.rel) (\(info.size) bytes)")
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

    /// Downloads `key` to `staged` (this run's staging folder) and renames it to `local`; where
    /// the rename cannot be done (another file system below the folder), straight to `local`.
    static func download(_ key: String, to local: String, staged: String?, store: any ObjectStore, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        guard let staged else { return try await store.get(key: key, to: local, progress: progress) }
        let info = try await store.get(key: key, to: staged, progress: progress)
        if rename(staged, local) == 0 { return info }
        let err = errno
        unlink(staged)
        guard err == EXDEV else {
            throw CapstanError(.io, "Cannot move the downloaded \(key) into place at \(local): \(String(cString: strerror(err))).", hint: "Check that the folder is writable.")
        }
        return try await store.get(key: key, to: local, progress: progress)
    }

    /// This run's staging folder's name: `.capstan-sync-<host>-<pid>-<random>`.
    public static func stagingName(host: String = thisHost, pid: Int32 = getpid()) -> String {
        ".capstan-sync-\(safeHost(host))-\(pid)-\(String(UInt32.random(in: 0 ... .max), radix: 16))"
    }

    /// This machine's name (`gethostname`, no DNS lookup).
    public static var thisHost: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "host" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `host` as it appears in a staging folder's name: letters, digits and dots.
    public static func safeHost(_ host: String) -> String {
        let s = String(host.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == ".") ? $0 : "_" }.prefix(64))
        return s.isEmpty ? "host" : s
    }

    /// Whether another run's staging folder `name` is left over: a day old, or its run's
    /// process is gone (a pid of this host's that no longer exists).
    public static func stale(_ name: String, modified: Date?, now: Date = Date(), host: String = thisHost) -> Bool {
        if let modified, now.timeIntervalSince(modified) > 86_400 { return true }
        let parts = name.dropFirst(".capstan-sync-".count).split(separator: "-")
        guard parts.count >= 3, let pid = Int32(parts[parts.count - 2]), pid > 0,
              parts[..<(parts.count - 2)].joined(separator: "-") == safeHost(host) else { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }

    /// Removes what downloads cut short left (kill -9): other runs' staging folders at the top
    /// of `folder` that are stale (``stale(_:modified:now:host:)``). A run still going keeps its
    /// files. Nothing below the top is looked at: the destination may be a big tree (a home),
    /// and every sync download stages at the top.
    public static func removeLeftovers(_ folder: String, now: Date = Date()) {
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: folder)) ?? [] where name.hasPrefix(".capstan-sync-") {
            let path = folder + "/" + name
            if stale(name, modified: (try? fm.attributesOfItem(atPath: path))?[.modificationDate] as? Date, now: now) { try? fm.removeItem(atPath: path) }
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
