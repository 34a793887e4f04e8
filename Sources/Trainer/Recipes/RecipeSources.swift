public import CapstanCore
public import CapstanRuntime
import AsyncHTTPClient
import Crypto
public import Foundation
import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#endif

/// Where a recipe's model or data comes from: a path on the node (or in the workdir), a bucket
/// (`s3://bucket/prefix/` for a model folder, `s3://bucket/key` for a data file or a prefix of
/// them), or the Hugging Face Hub (`hf://org/name[@revision]`, models only).
public enum RecipeSource: Sendable, Hashable {
    case path(String)
    case bucket(String)
    case hub(repo: String, revision: String)

    /// Parses `text` (the spec's `model` or a `data` entry); throws a message for a malformed
    /// URL. `what` names it in errors (`model`, `data`).
    public static func parse(_ text: String, what: String) throws(RecipeSourceError) -> RecipeSource {
        if text.hasPrefix("hf://") {
            guard what == "model" else {
                throw RecipeSourceError("'\(what)' cannot come from the Hugging Face Hub ('\(text)'): use a file in the workdir, a path on the nodes, or s3://bucket/key")
            }
            var rest = String(text.dropFirst(5)), revision = "main"
            if let at = rest.lastIndex(of: "@") {
                revision = String(rest[rest.index(after: at)...])
                rest = String(rest[..<at])
                guard !revision.isEmpty, revision.allSatisfy({ $0.isLetter || $0.isNumber || "._-/".contains($0) }), !revision.contains("..") else {
                    throw RecipeSourceError("'\(what)' names the revision '\(revision)' in '\(text)': a branch, tag or commit is letters, digits, '.', '_', '-' and '/'")
                }
            }
            let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." && $0.allSatisfy { $0.isLetter || $0.isNumber || "._-".contains($0) } }) else {
                throw RecipeSourceError("'\(what)' is '\(text)', not a Hub model: write hf://org/name or hf://org/name@revision")
            }
            return .hub(repo: rest, revision: revision)
        }
        if text.hasPrefix("s3://") {
            let rest = text.dropFirst(5)
            guard let bucket = rest.split(separator: "/").first, !bucket.isEmpty, rest.count > bucket.count + 1 else {
                throw RecipeSourceError("'\(what)' is '\(text)': name the objects too, as s3://bucket/prefix/ (a model folder) or s3://bucket/key (a data file)")
            }
            return .bucket(text)
        }
        if let scheme = text.range(of: "://") {
            throw RecipeSourceError("'\(what)' is '\(text)': the scheme \(text[..<scheme.lowerBound]):// is not one Capstan fetches; use a path, s3://… or (models) hf://org/name[@revision]")
        }
        return .path(text)
    }

    public var isRemote: Bool {
        if case .path = self { return false }
        return true
    }
}

/// A malformed `model` or `data` source.
public struct RecipeSourceError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ message: String) { description = message }
}

/// The Hugging Face Hub's documented download API: `GET /api/models/{repo}/revision/{rev}`
/// (the commit and its files) and `GET /{repo}/resolve/{commit}/{file}` (a file's bytes), at
/// `HF_ENDPOINT` (default https://huggingface.co), with `HF_TOKEN` as a bearer token. The token
/// is never logged or put in an error.
public struct HubClient: Sendable {
    public struct File: Sendable, Hashable, Codable {
        public var name: String
        public var size: Int64?
        /// The SHA-256 the Hub records for LFS files (weights).
        public var sha256: String?
    }

    public struct Revision: Sendable, Hashable, Codable {
        public var repo: String
        /// The commit the revision resolves to: the content's identity.
        public var commit: String
        public var files: [File]
    }

    public var endpoint: String
    var token: String?

    public init(endpoint: String?, token: String?) {
        var e = (endpoint?.isEmpty == false ? endpoint! : "https://huggingface.co")
        while e.hasSuffix("/") { e.removeLast() }
        self.endpoint = e
        self.token = token?.isEmpty == false ? token : nil
    }

    /// Whether the launching environment's `HF_TOKEN` may go to the endpoint a job uses: only
    /// when the job spec names no `HF_ENDPOINT` of its own, or the same one as the launching
    /// environment (the user's choice, not a spec's).
    public static func mayReceiveToken(specEndpoint: String?, environment: [String: String]) -> Bool {
        guard let specEndpoint else { return true }
        return specEndpoint == environment["HF_ENDPOINT"]
    }

    /// The client the environment describes (`HF_ENDPOINT`, `HF_TOKEN`).
    public static func fromEnvironment(_ env: [String: String]) -> HubClient {
        HubClient(endpoint: env["HF_ENDPOINT"], token: env["HF_TOKEN"])
    }

    func request(_ url: String) -> HTTPClientRequest {
        var r = HTTPClientRequest(url: url)
        r.headers.add(name: "User-Agent", value: "capstan")
        if let token { r.headers.add(name: "Authorization", value: "Bearer \(token)") }
        return r
    }

    static func escape(_ path: String) -> String {
        path.split(separator: "/", omittingEmptySubsequences: false).map {
            String($0).addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? String($0)
        }.joined(separator: "/")
    }

    /// What `repo` at `revision` holds. Throws `.notFound` for a repo or revision the Hub does
    /// not have, `.permission` when it wants a token (none, or one without access).
    public func revision(repo: String, revision: String) async throws -> Revision {
        let url = "\(endpoint)/api/models/\(Self.escape(repo))/revision/\(Self.escape(revision))?blobs=true"
        let response: HTTPClientResponse
        do { response = try await HTTPClient.shared.execute(request(url), timeout: .seconds(30)) } catch {
            throw CapstanError(.transient, "Cannot reach the Hugging Face Hub at \(endpoint) for hf://\(repo)@\(revision): \(error).", hint: "Check the network, or set HF_ENDPOINT to a reachable mirror.")
        }
        let body = try await response.body.collect(upTo: 32 << 20)
        switch response.status.code {
        case 200: break
        case 401, 403:
            throw CapstanError(.auth, "The Hugging Face Hub at \(endpoint) refused access to hf://\(repo)@\(revision) (HTTP \(response.status.code)) \(token == nil ? "without a token" : "with the HF_TOKEN given").", hint: token == nil ? "Set HF_TOKEN in the environment you launch from (it is forwarded to the nodes, never written down)." : "The token lacks access to this repository: accept its license or use another token.")
        case 404:
            throw CapstanError(.notFound, "No model hf://\(repo)@\(revision) on the Hugging Face Hub at \(endpoint).", hint: "Check the repository name and revision\(token == nil ? "; a private repository needs HF_TOKEN" : "").")
        default:
            throw CapstanError(.transient, "The Hugging Face Hub at \(endpoint) answered HTTP \(response.status.code) for hf://\(repo)@\(revision).", hint: "Try again later.")
        }
        struct Sibling: Decodable {
            struct LFS: Decodable { var sha256: String?; var size: Int64? }
            var rfilename: String
            var size: Int64?
            var lfs: LFS?
        }
        struct Info: Decodable { var sha: String?; var siblings: [Sibling]? }
        guard let info = try? JSONDecoder().decode(Info.self, from: Data(body.readableBytesView)), let sha = info.sha, let siblings = info.siblings else {
            throw CapstanError(.transient, "The Hugging Face Hub at \(endpoint) sent no commit and file list for hf://\(repo)@\(revision).", hint: "Is HF_ENDPOINT a Hub?")
        }
        let files = siblings.map { File(name: $0.rfilename, size: $0.lfs?.size ?? $0.size, sha256: $0.lfs?.sha256) }
        for f in files where CheckpointManifest.pathProblem(f.name) != nil {
            throw CapstanError(.transient, "The Hub lists a file '\(f.name)' in hf://\(repo) that is not a plain relative path; refusing the model.")
        }
        return Revision(repo: repo, commit: sha, files: files)
    }

    /// Downloads `file` of `repo` at `commit` to `path`; returns its size and SHA-256 (hex).
    public func download(repo: String, commit: String, file: String, to path: String) async throws -> (Int64, String) {
        let url = "\(endpoint)/\(Self.escape(repo))/resolve/\(Self.escape(commit))/\(Self.escape(file))"
        var response = try await HTTPClient.shared.execute(request(url), timeout: .seconds(3600))
        // The Hub redirects weights to its CDN: follow (without the token off the Hub's host).
        var hops = 0
        while [301, 302, 303, 307, 308].contains(response.status.code), let location = response.headers.first(name: "Location"), hops < 5 {
            hops += 1
            let next = location.hasPrefix("/") ? endpoint + location : location
            var r = HTTPClientRequest(url: next)
            if next.hasPrefix(endpoint + "/"), let token { r.headers.add(name: "Authorization", value: "Bearer \(token)") }
            response = try await HTTPClient.shared.execute(r, timeout: .seconds(3600))
        }
        guard response.status.code == 200 else {
            throw CapstanError(.transient, "Downloading \(file) of hf://\(repo)@\(commit) from \(endpoint) failed: HTTP \(response.status.code).")
        }
        FileManager.default.createFile(atPath: path, contents: nil)
        guard let out = FileHandle(forWritingAtPath: path) else { throw CapstanError(.io, "Cannot write \(path).") }
        defer { try? out.close() }
        var hasher = SHA256(), size: Int64 = 0
        for try await chunk in response.body {
            let bytes = Data(chunk.readableBytesView)
            hasher.update(data: bytes)
            try out.write(contentsOf: bytes)
            size += Int64(bytes.count)
        }
        return (size, hasher.finalize().map { String(format: "%02x", $0) }.joined())
    }
}

/// A node's cache of fetched models and data, keyed by content: a Hub model by its commit, a
/// bucket prefix by the listing of its objects (keys, sizes, checksums). Each entry is
/// downloaded into a scratch folder, verified (sizes; SHA-256 where the source records one),
/// renamed into place and marked ready last, under a lock shared by the machine's nodes: a cut
/// download is redone, never used, and a restarted job finds its model without downloading.
public struct SourceCache: Sendable {
    public let root: String

    public init(root: String) { self.root = root }

    /// `$CAPSTAN_SOURCE_CACHE`, else `~/.cache/capstan/sources`.
    public static func root(environment: [String: String]) -> String {
        if let r = environment["CAPSTAN_SOURCE_CACHE"], !r.isEmpty { return r }
        return (environment["HOME"] ?? NSTemporaryDirectory()) + "/.cache/capstan/sources"
    }

    static func key(_ parts: [String]) -> String {
        SHA256.hash(data: Data(parts.joined(separator: "\n").utf8)).map { String(format: "%02x", $0) }.joined().prefix(24).description
    }

    func hubEntry(_ client: HubClient, repo: String, commit: String) -> String {
        "\(root)/hf-\(Self.key(["hf", client.endpoint, repo, commit]))"
    }

    func hubRef(_ client: HubClient, repo: String, revision: String) -> String {
        "\(root)/hf-ref-\(Self.key(["hf-ref", client.endpoint, repo, revision]))"
    }

    /// The ready folder of the commit `revision` resolved to when it was last fetched here, if
    /// any: a restart needs no Hub at all for a model it already has.
    public func cachedHub(_ client: HubClient, repo: String, revision: String) -> (folder: String, commit: String)? {
        guard let data = FileManager.default.contents(atPath: hubRef(client, repo: repo, revision: revision)) else { return nil }
        let commit = String(decoding: data, as: UTF8.self)
        let entry = hubEntry(client, repo: repo, commit: commit)
        return FileManager.default.fileExists(atPath: entry + "/.capstan-ready") ? (entry, commit) : nil
    }

    /// The folder holding `revision`'s files (asked for as `asked`: a branch, tag or commit),
    /// downloading them unless cached. `say` reports.
    public func hub(_ client: HubClient, _ revision: Revision, asked: String, say: @Sendable (String) -> Void) async throws -> String {
        let entry = hubEntry(client, repo: revision.repo, commit: revision.commit)
        defer {
            if FileManager.default.fileExists(atPath: entry + "/.capstan-ready") {
                try? Data(revision.commit.utf8).write(to: URL(fileURLWithPath: hubRef(client, repo: revision.repo, revision: asked)), options: .atomic)
            }
        }
        return try await fill(entry, label: "hf://\(revision.repo)@\(revision.commit.prefix(12))", say: say) { scratch in
            var bytes: Int64 = 0
            for f in revision.files {
                let dest = scratch + "/" + f.name
                try FileManager.default.createDirectory(atPath: (dest as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                let (size, sha) = try await client.download(repo: revision.repo, commit: revision.commit, file: f.name, to: dest)
                if let want = f.size, want != size {
                    throw CapstanError(.io, "\(f.name) of hf://\(revision.repo)@\(revision.commit) came as \(size) bytes, the Hub lists \(want).", hint: "The download was cut; it is retried on the next attempt.")
                }
                if let want = f.sha256, want.lowercased() != sha {
                    throw CapstanError(.io, "\(f.name) of hf://\(revision.repo)@\(revision.commit) hashes to \(sha), the Hub lists \(want).", hint: "The download was damaged; it is retried on the next attempt.")
                }
                bytes += size
            }
            return bytes
        }
    }
    public typealias Revision = HubClient.Revision

    /// The folder holding the objects of `store` under `prefix` (or the one object `prefix`
    /// names), downloading them unless cached; `location` names the source in messages.
    /// `afterFile`: called with the count of files fetched so far (a test's crash point).
    /// `localRoot`: the folder on this machine `store` reads (a `file://` input), whose files
    /// with no recorded checksum are keyed by ``localKey(_:now:)``.
    public func bucket(_ store: any ObjectStore, prefix: String, location: String, localRoot: String? = nil, say: @Sendable (String) -> Void, afterFile: (@Sendable (Int) -> Void)? = nil) async throws -> (folder: String, files: [String]) {
        let objects = try await Self.objects(store, prefix: prefix, location: location)
        var local: [String: LocalKey] = [:]
        if let localRoot {
            let now = Date()
            for o in objects where o.sha256 == nil { local[o.key] = try localKey(localRoot + "/" + o.key, now: now) }
        }
        let entry = "\(root)/s3-\(Self.key(["s3", location] + objects.map { "\($0.key) \($0.size) \(local[$0.key]?.text ?? $0.sha256 ?? $0.etag ?? $0.lastModified.map { "\($0.timeIntervalSince1970)" } ?? "")" }))"
        let folder = try await fill(entry, label: location, say: say) { scratch in
            var bytes: Int64 = 0
            var count = 0
            for o in objects {
                let rel = Self.relative(o.key, prefix: prefix)
                // A key is any string: one with `..` (or absolute) would write outside the cache.
                if let problem = CheckpointManifest.pathProblem(rel) {
                    throw CapstanError(.invalidRequest, "\(location) holds the object '\(o.key)', whose path \(problem); Capstan does not fetch it.", hint: "Remove or rename that object in the bucket.")
                }
                let dest = scratch + "/" + rel
                try FileManager.default.createDirectory(atPath: (dest as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                let info = try await store.get(key: o.key, to: dest, progress: nil)  // verified against a recorded SHA-256
                let size = (try? FileManager.default.attributesOfItem(atPath: dest)[.size] as? Int64) ?? -1
                guard size == o.size else {
                    throw CapstanError(.io, "\(location)/\(rel) came as \(size) bytes, the bucket lists \(o.size).")
                }
                if let localRoot, let key = local[o.key] {
                    // The copy is what the key names: the same bytes.
                    let same = switch key {
                    case .content(let sha): info.sha256 == sha
                    }
                    guard same else {
                        throw CapstanError(.transient, "\(location)/\(rel) changed while it was being fetched.", hint: "It is fetched again on the next attempt; write inputs before launching.")
                    }
                }
                bytes += size
                count += 1
                afterFile?(count)
            }
            return bytes
        }
        return (folder, objects.map { Self.relative($0.key, prefix: prefix) })
    }

    /// What a file on this machine is cached by (docs/inputs.md, "`file://` folders"): the
    /// SHA-256 of its bytes, always, so the same bytes are one cache entry whenever they are
    /// looked at.
    enum LocalKey: Equatable {
        case content(String)

        var text: String {
            switch self {
            case .content(let sha): "sha256 \(sha)"
            }
        }
    }

    /// How long after its last change a file's status (device, inode, size, modification and
    /// change times in nanoseconds) is trusted to name its bytes, so its hash is remembered by
    /// it and the file is not read again: far above any filesystem's timestamp granularity. A
    /// write (in place or by rename) moves the change time, which no one can set back.
    public var settleSeconds: Double = 2

    /// The key of the file at `path` looked at `now`: its SHA-256, from the memo of settled
    /// files' hashes (`<root>/local-hashes/`) when its status is in it, else read and hashed
    /// (and remembered once settled).
    func localKey(_ path: String, now: Date) throws -> LocalKey {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw CapstanError(.io, "Cannot read \(path): \(String(cString: strerror(errno))).")
        }
        let changed = Double(st.st_ctim.tv_sec) + Double(st.st_ctim.tv_nsec) / 1e9
        let settled = now.timeIntervalSince1970 - changed >= settleSeconds
        let status = "\(path)\u{0}\(st.st_dev):\(st.st_ino):\(st.st_size):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec):\(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)"
        let memo = "\(root)/local-hashes/\(Self.key([status]))"
        if settled, let known = try? String(contentsOfFile: memo, encoding: .utf8), known.count == 64 { return .content(known) }
        let sha = try CheckpointStore.hashFile(path).1
        if settled {
            try? FileManager.default.createDirectory(atPath: root + "/local-hashes", withIntermediateDirectories: true)
            try? Data(sha.utf8).write(to: URL(fileURLWithPath: memo), options: .atomic)
        }
        return .content(sha)
    }

    /// The objects a source names: every object under `prefix/`, or the object `prefix`.
    static func objects(_ store: any ObjectStore, prefix: String, location: String) async throws -> [ObjectInfo] {
        let folder = prefix.isEmpty || prefix.hasSuffix("/") ? prefix : prefix + "/"
        let under = try await store.list(prefix: folder).filter { !$0.key.hasSuffix("/") }.sorted { $0.key < $1.key }
        if !under.isEmpty { return under }
        if !prefix.isEmpty, !prefix.hasSuffix("/"), let one = try await store.head(key: prefix) { return [one] }
        throw CapstanError(.notFound, "Nothing at \(location): no object there or under it.", hint: "Upload the model folder or data file there, or fix the path.")
    }

    static func relative(_ key: String, prefix: String) -> String {
        let folder = prefix.isEmpty || prefix.hasSuffix("/") ? prefix : prefix + "/"
        if key.hasPrefix(folder), key.count > folder.count { return String(key.dropFirst(folder.count)) }
        return (key as NSString).lastPathComponent
    }

    /// The cache entry `entry`: ready, or filled by `download` (into a scratch folder) now.
    func fill(_ entry: String, label: String, say: @Sendable (String) -> Void, download: (String) async throws -> Int64) async throws -> String {
        let ready = entry + "/.capstan-ready"
        if FileManager.default.fileExists(atPath: ready) {
            say("\(label): cached in \(entry)")
            return entry
        }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let fd = open(entry + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CapstanError(.io, "Cannot open the lock \(entry).lock.") }
        defer { close(fd) }
        var waited = false
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if !waited { say("\(label): another node on this machine is fetching it; waiting") }
            waited = true
            try? await Task.sleep(for: .milliseconds(200))
        }
        if FileManager.default.fileExists(atPath: ready) {
            say("\(label): cached in \(entry)")
            return entry
        }
        let start = ContinuousClock.now
        say("\(label): fetching into \(entry)")
        let scratch = entry + ".partial"
        Self.removeTree(scratch)
        Self.removeTree(entry)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let bytes = try await download(scratch)
        // Read-only from here on: an entry is shared by every job on the machine.
        Self.makeReadOnly(scratch, top: false)
        try FileManager.default.moveItem(atPath: scratch, toPath: entry)
        guard FileManager.default.createFile(atPath: ready, contents: nil) else { throw CapstanError(.io, "Cannot mark \(entry) ready.") }
        chmod(ready, 0o444)
        chmod(entry, 0o555)
        say("\(label): fetched \(bytes) bytes in \(String(format: "%.1f", (ContinuousClock.now - start).seconds)) s")
        return entry
    }
}

extension SourceCache {
    /// Takes every write bit off the files and folders under `path` (and `path` itself when
    /// `top`), so a job cannot change what another job reads. (Root ignores the bits.)
    static func makeReadOnly(_ path: String, top: Bool) {
        if let walker = FileManager.default.enumerator(atPath: path) {
            var folders: [String] = []
            while let rel = walker.nextObject() as? String {
                let full = path + "/" + rel
                if walker.fileAttributes?[.type] as? FileAttributeType == .typeDirectory { folders.append(full) } else { chmod(full, 0o444) }
            }
            // Folders last, deepest first.
            for f in folders.reversed() { chmod(f, 0o555) }
        }
        if top { chmod(path, 0o555) }
    }

    /// Removes `path` (a read-only entry or a cut download) whatever its bits.
    static func removeTree(_ path: String) {
        guard FileManager.default.fileExists(atPath: path) else { return }
        chmod(path, 0o755)
        if let walker = FileManager.default.enumerator(atPath: path) {
            while let rel = walker.nextObject() as? String {
                if walker.fileAttributes?[.type] as? FileAttributeType == .typeDirectory { chmod(path + "/" + rel, 0o755) }
            }
        }
        try? FileManager.default.removeItem(atPath: path)
    }
}

extension RecipeSpec {
    /// The spec's remote sources (`model`, then `data`), parsed (the spec parser checked them).
    public var remoteSources: [(what: String, url: String, source: RecipeSource)] {
        var out: [(String, String, RecipeSource)] = []
        if let s = try? RecipeSource.parse(model, what: "model"), s.isRemote { out.append(("model", model, s)) }
        for d in data {
            if let s = try? RecipeSource.parse(d, what: "data"), s.isRemote { out.append(("data", d, s)) }
        }
        return out
    }
}

/// A bucket URL split into the store to open (`s3://bucket`) and the key or prefix in it.
public func splitBucketURL(_ url: String) -> (location: String, prefix: String) {
    let rest = url.dropFirst(5)  // s3://
    let bucket = rest.split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
    let prefix = rest.count > bucket.count + 1 ? String(rest.dropFirst(bucket.count + 1)) : ""
    return ("s3://" + bucket, prefix)
}
