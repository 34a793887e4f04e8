public import CapstanCore
public import Crypto
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The embedded-default object store: a bucket that is a folder (`file:///path`), with S3's
/// semantics — atomic puts (temp file + rename, never a partial object under a key), SHA-256
/// checksums recorded on put and verified on get, listing by prefix, conditional create.
///
/// Layout under `root`: objects at their keys; checksums and metadata in
/// `.capstan-meta/<key>.json`; in-flight writes in `.capstan-tmp/`. Both dot-folders are never
/// listed. A checksum sidecar is removed before an object is replaced and written after, so a
/// crash can leave an object with an unknown checksum, never with a wrong one.
///
/// No key reaches outside `root`: keys and the root itself are checked by ``ObjectKey`` (no `.`
/// or `..`), and every path is resolved (symbolic links followed) and refused unless it lies
/// under the root's real path.
public struct FileObjectStore: ObjectStore {
    public let root: String
    /// `root` with every symbolic link resolved: what each object path must lie under.
    let realRoot: String
    /// Bytes per read/write while streaming.
    public var bufferSize = 4 << 20

    /// `create`: make the folder (and its `.capstan-tmp`) when missing; false opens an existing
    /// folder to read, writing nothing there (a job's `file://` input, a read-only mount).
    public init(root: String, create: Bool = true) throws {
        let expanded = (root as NSString).expandingTildeInPath
        guard expanded.hasPrefix("/") else {
            throw CapstanError(.invalidRequest, "A file bucket needs an absolute path, got '\(root)'.", hint: "Use file:///absolute/path.")
        }
        try ObjectKey.validateLocation(expanded)
        self.root = expanded
        if create {
            do {
                try FileManager.default.createDirectory(atPath: expanded, withIntermediateDirectories: true)
            } catch {
                throw CapstanError(.io, "Cannot create the bucket folder \(expanded): \(error.localizedDescription)", hint: "Check that the path is writable.")
            }
        }
        guard let real = realpath(expanded, nil) else {
            throw CapstanError(.io, "Cannot resolve the bucket folder \(expanded): \(String(cString: strerror(errno))).", hint: "Check that the path is a folder you can read.")
        }
        realRoot = String(cString: real)
        free(real)
        guard create else { return }
        do {
            try FileManager.default.createDirectory(atPath: tmpFolder, withIntermediateDirectories: true)
        } catch {
            throw CapstanError(.io, "Cannot create the bucket folder \(tmpFolder): \(error.localizedDescription)", hint: "Check that the path is writable.")
        }
    }

    /// Opens `file:///abs/path` (or a plain absolute path).
    public init(location: String) throws {
        if location.hasPrefix("file://") {
            try self.init(root: String(location.dropFirst("file://".count)))
        } else if location.hasPrefix("/") {
            try self.init(root: location)
        } else {
            throw CapstanError(.invalidRequest, "'\(location)' is not a file bucket URI.", hint: "Use file:///absolute/path.")
        }
    }

    /// The file bucket `path` lies in or is: the nearest folder at or above it holding
    /// `.capstan-tmp` (nil: none, `path` is no bucket's).
    public static func enclosingBucket(of path: String, includingItself: Bool = true) -> String? {
        var dir = includingItself ? path : LocalPath.folder(of: path)
        while dir != "/" && !dir.isEmpty && dir != "." {
            if FileManager.default.fileExists(atPath: dir + "/.capstan-tmp") { return dir }
            dir = LocalPath.folder(of: dir)
        }
        return nil
    }

    public var location: String { "file://" + root }
    var tmpFolder: String { root + "/.capstan-tmp" }
    /// Where `key` lives; throws unless that resolves inside the bucket.
    func objectPath(_ key: String) throws -> String { try inside(root + "/" + key) }
    func metaPath(_ key: String) throws -> String { try inside(root + "/.capstan-meta/" + key + ".json") }

    /// `path` (a path under `root`) when it resolves inside the bucket: its deepest existing
    /// ancestor up to the root, symbolic links followed, must be the root's real path or below
    /// it. A link in the bucket that points elsewhere cannot be used to read, write or delete
    /// there.
    func inside(_ path: String) throws -> String {
        var probe = path
        while true {
            if let r = realpath(probe, nil) {
                let real = String(cString: r)
                free(r)
                guard real == realRoot || real.hasPrefix(realRoot == "/" ? "/" : realRoot + "/") else {
                    throw CapstanError(
                        .invalidRequest, "Refused \(path): it resolves to \(real), outside the bucket \(location).",
                        hint: "A symbolic link inside the bucket points out of it; remove the link or copy the data into the bucket.")
                }
                return path
            }
            // Nothing exists below a root that is gone (removed since init), so no link there
            // can lead out: the operation goes ahead and finds nothing, as it always did.
            let parent = LocalPath.folder(of: probe)
            if probe == root || parent == probe || parent == "." { return path }
            probe = parent
        }
    }

    struct Sidecar: Codable {
        var size: Int64
        var sha256: String
        var metadata: [String: String]
    }

    public func put(file path: String, key: String, options: PutOptions, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        try ObjectKey.validate(key)
        try Self.checkReserved(key)
        let tmp = tmpFolder + "/" + UUID().uuidString
        defer { unlink(tmp) }
        let (size, digest) = try copyHashing(from: path, to: tmp, progress: progress)
        if let expected = options.expectedSHA256, expected.lowercased() != digest {
            throw CapstanError(.invalidRequest, "Upload of \(path) to \(key) refused: its SHA-256 is \(digest), expected \(expected).", hint: "The file changed while it was being uploaded; write it again and retry.")
        }
        let dest = try objectPath(key)
        let meta = try metaPath(key)
        try makeParent(of: dest)
        try makeParent(of: meta)
        unlink(meta)
        if options.ifNoneMatch {
            // link(2) fails atomically if the key exists: S3's If-None-Match: *.
            if link(tmp, dest) != 0 {
                let err = errno
                if err == EEXIST {
                    throw CapstanError(.invalidRequest, "Object \(key) already exists in \(location) and the upload asked not to overwrite it.", cloudCode: "PreconditionFailed")
                }
                throw ioError("store \(key)", err)
            }
        } else if rename(tmp, dest) != 0 {
            throw ioError("store \(key)", errno)
        }
        let sidecar = Sidecar(size: size, sha256: digest, metadata: options.metadata)
        try writeAtomically(try PluginWire.encoder.encode(sidecar), to: meta)
        return ObjectInfo(key: key, size: size, sha256: digest, etag: digest, lastModified: modified(dest), metadata: options.metadata)
    }

    public func get(key: String, to path: String, progress: TransferProgressHandler?) async throws -> ObjectInfo {
        try ObjectKey.validate(key)
        guard let info = try await head(key: key) else {
            throw CapstanError(.notFound, "No object \(key) in \(location).")
        }
        let dir = LocalPath.folder(of: path)
        try makeFolder(dir)
        let tmp = dir + "/.capstan-get-" + UUID().uuidString
        defer { unlink(tmp) }
        let (size, digest) = try copyHashing(from: try objectPath(key), to: tmp, progress: progress)
        if let expected = info.sha256, expected != digest {
            throw CapstanError(.io, "Object \(key) in \(location) is corrupt: its SHA-256 is \(digest), the recorded one is \(expected).", hint: "Restore it from another copy; Capstan will not use it.")
        }
        if rename(tmp, path) != 0 { throw ioError("write \(path)", errno) }
        var out = info
        out.size = size
        out.sha256 = digest
        return out
    }

    public func head(key: String) async throws -> ObjectInfo? {
        try ObjectKey.validate(key)
        let p = try objectPath(key), meta = try metaPath(key)
        var st = stat()
        guard stat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        let sidecar = (try? Data(contentsOf: URL(fileURLWithPath: meta))).flatMap { try? PluginWire.decoder.decode(Sidecar.self, from: $0) }
        let trusted = sidecar.flatMap { $0.size == Int64(st.st_size) ? $0 : nil }
        return ObjectInfo(key: key, size: Int64(st.st_size), sha256: trusted?.sha256, etag: trusted?.sha256, lastModified: modified(p), metadata: trusted?.metadata ?? [:])
    }

    public func list(prefix: String) async throws -> [ObjectInfo] {
        try ObjectKey.validatePrefix(prefix)
        // Walk only below the deepest folder the prefix names.
        let folderPart = prefix.lastIndex(of: "/").map { String(prefix[..<$0]) } ?? ""
        let start = try inside(folderPart.isEmpty ? root : root + "/" + folderPart)
        guard let walker = FileManager.default.enumerator(atPath: start) else { return [] }
        var out: [ObjectInfo] = []
        while let rel = walker.nextObject() as? String {
            let key = folderPart.isEmpty ? rel : folderPart + "/" + rel
            // The store's own records, here or in a bucket nested below (a home's `bucket/`).
            if key.hasPrefix(".capstan-") || key.contains("/.capstan-") { walker.skipDescendants(); continue }
            let type = walker.fileAttributes?[.type] as? FileAttributeType
            if type == .typeDirectory {
                // Descend only where keys below can still match the prefix.
                let dirKey = key + "/"
                if !dirKey.hasPrefix(prefix), !prefix.hasPrefix(dirKey) { walker.skipDescendants() }
                continue
            }
            guard type == .typeRegular, key.hasPrefix(prefix) else { continue }
            if let info = try await head(key: key) { out.append(info) }
        }
        return out.sorted { $0.key < $1.key }
    }

    public func delete(key: String) async throws {
        try ObjectKey.validate(key)
        // The store's own records (.capstan-meta, .capstan-tmp) are not objects: deleting
        // `.capstan-meta/K.json` would drop K's checksum.
        try Self.checkReserved(key)
        let object = try objectPath(key), meta = try metaPath(key)
        unlink(meta)
        if unlink(object) != 0, errno != ENOENT { throw ioError("delete \(key)", errno) }
        // Prune folders the delete emptied (rmdir fails harmlessly on non-empty ones); a
        // validated key has no empty, `.` or `..` segment, so this stays inside the bucket.
        var segments = key.split(separator: "/").dropLast()
        while !segments.isEmpty {
            let dir = segments.joined(separator: "/")
            rmdir(root + "/" + dir)
            rmdir(root + "/.capstan-meta/" + dir)
            segments.removeLast()
        }
    }

    // MARK: - Helpers

    static func checkReserved(_ key: String) throws {
        if key.hasPrefix(".capstan-") {
            throw CapstanError(.invalidRequest, "Object key '\(key)' uses the reserved prefix '.capstan-'.", hint: "Choose another key.")
        }
    }

    /// Streams `src` to a new file `dst`, hashing as it goes, and fsyncs it.
    func copyHashing(from src: String, to dst: String, progress: TransferProgressHandler?) throws -> (Int64, String) {
        let inFD = open(src, O_RDONLY)
        guard inFD >= 0 else {
            let err = errno
            if err == ENOENT { throw CapstanError(.notFound, "No file \(src) to upload.") }
            throw ioError("open \(src)", err)
        }
        defer { close(inFD) }
        var st = stat()
        fstat(inFD, &st)
        let total = UInt64(max(0, st.st_size))
        let outFD = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard outFD >= 0 else { throw ioError("create \(dst)", errno) }
        defer { close(outFD) }
        var hasher = SHA256()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)
        defer { buffer.deallocate() }
        var done: UInt64 = 0
        while true {
            let n = read(inFD, buffer.baseAddress, bufferSize)
            if n < 0 { if errno == EINTR { continue }; throw ioError("read \(src)", errno) }
            if n == 0 { break }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            hasher.update(bufferPointer: chunk)
            var off = 0
            while off < n {
                let w = write(outFD, chunk.baseAddress! + off, n - off)
                if w < 0 { if errno == EINTR { continue }; throw ioError("write \(dst)", errno) }
                off += w
            }
            done += UInt64(n)
            progress?(TransferProgress(bytesDone: done, bytesTotal: total))
        }
        if fsync(outFD) != 0 { throw ioError("sync \(dst)", errno) }
        return (Int64(done), hasher.finalize().hex)
    }

    func writeAtomically(_ data: Data, to path: String) throws {
        let tmp = tmpFolder + "/" + UUID().uuidString
        do {
            try data.write(to: URL(fileURLWithPath: tmp))
        } catch { throw CapstanError(.io, "Cannot write \(tmp): \(error.localizedDescription)") }
        if rename(tmp, path) != 0 { let e = errno; unlink(tmp); throw ioError("write \(path)", e) }
    }

    func makeParent(of path: String) throws { try makeFolder(LocalPath.folder(of: path)) }

    func makeFolder(_ dir: String) throws {
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw CapstanError(.io, "Cannot create folder \(dir): \(error.localizedDescription)", hint: "A file may stand where a folder is needed, or the disk is read-only.")
        }
    }

    func modified(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }

    func ioError(_ what: String, _ err: Int32) -> CapstanError {
        CapstanError(.io, "Cannot \(what) in \(location): \(String(cString: strerror(err))).", hint: err == ENOSPC ? "Free disk space and retry." : nil)
    }
}

extension Digest {
    /// Lower-case hex, for every module of the package (agent binaries, venv hashes).
    package var hex: String { Array(self).hex }
}
