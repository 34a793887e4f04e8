import CapstanAPI
import CapstanCore
import CapstanRuntime
import CapstanTrainer
import Foundation
import Hummingbird
import NIOCore

/// The `/v1` routes (docs/api.md): each does what its CLI verb does in embedded mode.
struct Routes: Sendable {
    let plane: ControlPlane
    let supervisor: JobSupervisor

    var store: any StateStore { plane.store }
    var jobs: JobService { plane.jobs }

    func add(to router: Router<APIContext>) {
        router.get("metrics") { _, _ in try await metrics() }
        let v1 = router.group(RouterPath(CapstanAPI.prefix))
        v1.get("health") { _, _ in try json(HealthResponse(status: "ok", version: CapstanServerVersion.string, replica: plane.replica, store: plane.storeKind)) }
        v1.post("offers") { request, context in
            let body = try await decode(OffersRequest.self, request, context)
            try body.request.validate()
            let result = try await plane.offerSearch(body.refresh).run(body.request)
            return try json(OffersResponse(result: result, problems: plane.problems))
        }
        v1.get("clusters") { request, _ in
            let all = flag(request, "all")
            let report = flag(request, "reconcile", default: true) ? await plane.provisioner.reconcile() : ReconcileReport()
            let now = Date()
            let clusters = try await store.clusters(includeFinished: all)
            let instances = try await store.instances(clusters: clusters.map(\.id))
            let rows = clusters.map { c in ClusterStatusRow(cluster: c, instances: instances[c.id] ?? [], now: now) }
            return try json(StatusResponse(clusters: rows, reconcile: report))
        }
        v1.post("clusters") { request, context in
            let body = try await decode(UpRequest.self, request, context)
            _ = await plane.provisioner.reconcile()
            return try json(try await plane.provisioner.up(name: body.name, request: body.request, search: plane.offerSearch(body.refresh), idleMinutes: body.idleMinutes))
        }
        v1.delete("clusters/:name") { request, context in
            let name = try context.parameters.require("name")
            let cluster: Cluster
            // A job on it (or another process working on it): 409, the cluster as it was.
            do { cluster = try await plane.provisioner.down(name: name, force: flag(request, "force")) } catch let e as CapstanError where e.code == .invalidRequest {
                return ErrorMiddleware.response(e, status: .conflict)
            }
            _ = await plane.provisioner.reconcile()
            return try json(cluster)
        }
        v1.post("clusters/:name/move") { request, context in
            let name = try context.parameters.require("name")
            let body = try await decodeOptional(MoveRequest.self, request, context) ?? MoveRequest()
            _ = await plane.provisioner.reconcile()
            return try json(try await plane.provisioner.move(cluster: name, search: plane.offerSearch(body.refresh)))
        }
        v1.post("reconcile") { _, _ in try json(await plane.provisioner.reconcile()) }
        v1.post("uploads") { request, context in try await upload(request, context) }
        v1.post("jobs") { request, context in try await launch(request, context) }
        v1.get("jobs") { request, _ in
            return try json(try await store.jobs(includeFinished: !flag(request, "running"), limit: try limitParameter(request, default: 100)))
        }
        v1.get("jobs/:id") { _, context in try json(try await requireJob(context)) }
        v1.post("jobs/:id/cancel") { request, context in
            let job = try await requireJob(context)
            let wait = try intParameter(request, "wait") ?? 300
            return try json(try await jobs.cancel(job.id, wait: .seconds(max(0, min(wait, 3600)))))
        }
        v1.get("jobs/:id/metrics") { _, context in
            let job = try await requireJob(context)
            return try json(MetricsPoint.read(log: jobs.context.logFile(job: job.id, node: 0)))
        }
        v1.get("jobs/:id/checkpoints") { request, context in
            let job = try await requireJob(context)
            if flag(request, "verify") { return try json(try await jobs.verifyCheckpoints(job.id)) }
            return try json(try await jobs.checkpoints(job.id))
        }
        v1.get("jobs/:id/events") { request, context in
            let job = try await requireJob(context)
            let limit = try limitParameter(request, default: 500)
            // With `after`: the page of events above that id, oldest first (the whole history,
            // page by page); without: the newest `limit`.
            if let after = try int64Parameter(request, "after") { return try json(try await store.events(job: job.id, after: max(0, after), limit: limit)) }
            return try json(try await store.events(job: job.id, limit: limit))
        }
        v1.get("costs/jobs") { request, _ in
            let page = try await store.jobs(includeFinished: !flag(request, "running"), limit: try limitParameter(request, default: 100))
            return try json(JobCostsResponse(costs: try await store.jobCosts(page)))
        }
        v1.get("jobs/:id/logs") { request, context in try await logs(request, context) }
        v1.get("jobs/:id/telemetry") { _, context in
            let job = try await requireJob(context)
            return try json(TelemetryResponse(nodes: try await store.telemetry(job: job.id)))
        }
        v1.get("events") { request, _ in
            var clusterID: String?
            if let name = request.uri.queryParameters.get("cluster") {
                guard let c = try await store.cluster(named: name) else { throw CapstanError(.notFound, "No cluster '\(name)'.", hint: "See `capstan status --all`.") }
                clusterID = c.id
            }
            return try json(try await store.events(cluster: clusterID, limit: try limitParameter(request, default: 200)))
        }
        // The web dashboard at `/` and its routes (Sources/Server/Dashboard).
        Dashboard(plane: plane).add(to: router)
    }

    /// `GET /metrics`: the Prometheus text exposition (docs/metrics.md).
    func metrics() async throws -> Response {
        let bytes = try await plane.metrics.render(store: store, now: Date(), storeKind: plane.storeKind)
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    // MARK: - Jobs

    func requireJob(_ context: APIContext) async throws -> JobRecord {
        let id = try context.parameters.require("id")
        guard let job = try await store.job(id) else { throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs` for job ids.") }
        return job
    }

    /// `POST /v1/uploads`: the tar stream to a file (refused past the limit), then checked and unpacked.
    func upload(_ request: Request, _ context: APIContext) async throws -> Response {
        let uploads = plane.uploads
        if let length = request.headers[.contentLength].flatMap({ Int64($0) }), length > uploads.maxBytes {
            throw tooLarge(length, uploads.maxBytes)
        }
        try PrivateFile.createFolder(uploads.folder)
        let id = uploads.newID()
        let archive = uploads.path(id) + ".tar"
        guard let handle = FileHandle(forWritingAtPath: archive) ?? (FileManager.default.createFile(atPath: archive, contents: nil, attributes: [.posixPermissions: 0o600]) ? FileHandle(forWritingAtPath: archive) : nil) else {
            throw CapstanError(.io, "Cannot write the upload to \(archive).", hint: "Check the server's home folder.")
        }
        var bytes: Int64 = 0
        do {
            defer { try? handle.close() }
            for try await buffer in request.body {
                bytes += Int64(buffer.readableBytes)
                if bytes > uploads.maxBytes { throw tooLarge(bytes, uploads.maxBytes) }
                try handle.write(contentsOf: Data(buffer.readableBytesView))
            }
        } catch {
            unlink(archive)
            throw error
        }
        guard bytes > 0 else {
            unlink(archive)
            throw CapstanError(.invalidRequest, "The upload is empty.", hint: "Send the workdir as a tar stream (`tar -C WORKDIR -cf - .`).")
        }
        try await uploads.unpack(archive, id: id)
        return try json(UploadResponse(id: id, bytes: bytes), status: .created)
    }

    func tooLarge(_ bytes: Int64, _ limit: Int64) -> HTTPError {
        HTTPError(.contentTooLarge, message: "The workdir upload (\(bytes) bytes so far) is larger than this server takes (\(limit) bytes). Leave large files (models, datasets) out of the workdir and read them from a bucket, or raise the server's --max-upload-mb.")
    }

    /// `POST /v1/jobs`: writes the job and starts its controller here at once.
    func launch(_ request: Request, _ context: APIContext) async throws -> Response {
        let body = try await decode(LaunchJobRequest.self, request, context)
        let spec = try JobSpec.parse(body.spec, source: "the launch's job spec")
        let folder: String
        if let upload = body.upload {
            folder = try plane.uploads.specFolder(upload: upload, workdir: spec.workdir ?? ".")
        } else {
            if let w = spec.workdir, !w.hasPrefix("/") {
                throw CapstanError(.invalidRequest, "The spec's workdir '\(w)' is relative, but no upload came with it.", hint: "Upload the workdir first (POST /v1/uploads) and name it in `upload`; the CLI does this for you.")
            }
            // A folder on the server's machine would let any token holder copy it (keys,
            // credentials) to nodes and read it back through the logs.
            if let w = spec.workdir, !plane.options.allowServerPaths {
                throw CapstanError(.invalidRequest, "The spec's workdir '\(w)' is a folder on the server's machine; this server does not run jobs from its own folders.", hint: "Use a relative workdir (the CLI uploads it), or start the server with --allow-server-paths.")
            }
            folder = jobs.context.home.path("server/specs")
            try PrivateFile.createFolder(folder)
        }
        if let storage = spec.storage, storage.hasPrefix("file://"), !plane.options.allowServerPaths, !insideServerBucket(storage) {
            throw CapstanError(.invalidRequest, "The spec's storage '\(storage)' is a folder on the server's machine; this server does not write jobs' outputs to folders a request names.", hint: "Leave `storage` out (the server's default bucket), use a bucket URI such as s3://…, or start the server with --allow-server-paths.")
        }
        // A file:// input on local nodes is a copy of the server's own files (its state
        // database, keys, secrets file), which the job could print.
        if !plane.options.allowServerPaths, let input = spec.inputs.first(where: { $0.url.hasPrefix("file://") && !insideServerBucket($0.url) }) {
            throw CapstanError(.invalidRequest, "The spec's input '\(input.name)' (\(input.url)) is a path on the server's machine; this server does not let jobs read folders a request names.", hint: "Put the data in a bucket (s3://…, gs://…, or the server's own bucket) and name that, or start the server with --allow-server-paths.")
        }
        if let notify = spec.notify { try Self.checkServerNotify(notify, allowServerPaths: plane.options.allowServerPaths) }
        var options = JobService.Options(cluster: body.cluster)
        if let settings = body.settings {
            let t = settings.telemetrySeconds
            guard t == 0 || (t.isFinite && t >= 1 && t <= 3600) else {
                throw CapstanError(.invalidRequest, "settings.telemetrySeconds \(t) is out of range.", hint: "Give 0 (no sampling) or seconds from 1 to 3600 between samples.")
            }
            options.settings = settings
        }
        let job = try await jobs.create(yaml: body.spec, folder: folder, options: options)
        await supervisor.adopt(job.id)
        return try json(job, status: .created)
    }

    /// The server delivers a job's notifications with its own environment and files: a spec sent
    /// through the API may name only variables meant for it (`CAPSTAN_NOTIFY_…`), and files only
    /// on a server started with --allow-server-paths — else any token holder could have the server
    /// sign with (or send) its database password or any file it can read.
    static func checkServerNotify(_ notify: NotifySpec, allowServerPaths: Bool) throws {
        let envs = notify.webhooks.flatMap { [$0.secretEnv, $0.urlEnv].compactMap { $0 } } + notify.slack.compactMap(\.urlEnv)
        if let bad = envs.first(where: { !$0.hasPrefix(Self.notifyEnvPrefix) }) {
            throw CapstanError(.invalidRequest, "The spec's notify: names the variable \(bad); a server reads only variables named \(Self.notifyEnvPrefix)… for notifications.", hint: "Set the secret on the server as \(Self.notifyEnvPrefix)\(bad) (or another \(Self.notifyEnvPrefix) name) and name that in the spec.")
        }
        let files = notify.webhooks.flatMap { [$0.secretFile, $0.urlFile].compactMap { $0 } } + notify.slack.compactMap(\.urlFile)
        if let file = files.first, !allowServerPaths {
            throw CapstanError(.invalidRequest, "The spec's notify: names the file \(file) on the server's machine; this server does not read files a request names.", hint: "Name a \(Self.notifyEnvPrefix)… variable set on the server instead, or start the server with --allow-server-paths.")
        }
    }

    /// The prefix of the environment variables a job sent to a server may name in `notify:`.
    static let notifyEnvPrefix = "CAPSTAN_NOTIFY_"

    /// Whether a `file://` storage URI is the server's own bucket (its home's `bucket` folder or
    /// config.yaml's `storage.default`), or a folder inside it.
    func insideServerBucket(_ uri: String) -> Bool {
        func path(_ u: String) -> String { URL(fileURLWithPath: String(u.dropFirst("file://".count))).standardizedFileURL.path }
        let roots = [jobs.context.home.path("bucket")] + [jobs.defaultStorage].compactMap { $0 }.filter { $0.hasPrefix("file://") }.map(path)
        let p = path(uri)
        return roots.contains { root in
            let r = URL(fileURLWithPath: root).standardizedFileURL.path
            return p == r || p.hasPrefix(r.hasSuffix("/") ? r : r + "/")
        }
    }

    /// `GET /v1/jobs/{id}/logs`: the node logs (and events) as NDJSON; with `follow`, until
    /// the job has finished or the client has gone.
    func logs(_ request: Request, _ context: APIContext) async throws -> Response {
        let job = try await requireJob(context)
        let follow = flag(request, "follow"), withEvents = flag(request, "events")
        let nodeCount = max(1, (try? JobSpec.parse(job.spec))?.resources.nodes ?? 1)
        let nodes: [Int]
        if let n = try intParameter(request, "node") {
            guard (0..<nodeCount).contains(n) else { throw CapstanError(.invalidRequest, "Job \(job.id) has nodes 0…\(nodeCount - 1); there is no node \(n).") }
            nodes = [n]
        } else {
            nodes = Array(0..<nodeCount)
        }
        let store = store, ctx = jobs.context, id = job.id
        let body = ResponseBody { writer in
            var tail = NodeLogTail()
            var lastEvent: Int64 = -1
            let encoder = CapstanAPI.encoder
            func send(_ item: LogStreamItem) async throws {
                var data = try encoder.encode(item)
                data.append(0x0A)
                try await writer.write(ByteBuffer(bytes: data))
            }
            /// The node logs (files: cheap, every tick) and, with `database`, the new events.
            func pump(final: Bool, database: Bool = true) async throws {
                for n in nodes {
                    for line in tail.read(n, path: ctx.logFile(job: id, node: n), final: final) { try await send(LogStreamItem(node: n, line: line)) }
                }
                // Every event not sent yet, page by page.
                while withEvents && database {
                    let page = (try? await store.events(job: id, after: lastEvent, limit: 1000)) ?? []
                    for e in page {
                        lastEvent = e.id ?? lastEvent
                        try await send(LogStreamItem(event: e))
                    }
                    if page.count < 1000 { break }
                }
            }
            var current = job
            if follow {
                // Log lines within 50 ms of the controller copying them home; the database
                // (events, the job's status) every 250 ms.
                var tick = 0
                while !current.status.isFinished {
                    try await pump(final: false, database: tick % 5 == 0)
                    // An empty line every 15 s (clients skip it): a client that went away fails
                    // the write, which ends this loop.
                    if tick % 300 == 299 { try await writer.write(ByteBuffer(bytes: [0x0A])) }
                    try await Task.sleep(for: .milliseconds(50))
                    tick += 1
                    if tick % 5 == 0 { current = try await store.job(id) ?? current }
                }
            }
            try await pump(final: true)
            try await send(LogStreamItem(end: try await store.job(id) ?? current))
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson", .cacheControl: "no-store"], body: body)
    }
}

/// The server's version, in `/v1/health`.
public enum CapstanServerVersion {
    public static let string = "0.2.0"
}

// MARK: - Helpers

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
    let data = try CapstanAPI.encoder.encode(value)
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

func decode<T: Decodable>(_ type: T.Type, _ request: Request, _ context: APIContext) async throws -> T {
    guard let value = try await decodeOptional(type, request, context) else {
        throw CapstanError(.invalidRequest, "\(request.method) \(request.uri.path) needs a JSON body.", hint: "See docs/api.md.")
    }
    return value
}

func decodeOptional<T: Decodable>(_ type: T.Type, _ request: Request, _ context: APIContext) async throws -> T? {
    var request = request
    let buffer = try await request.collectBody(upTo: context.maxUploadSize)
    guard buffer.readableBytes > 0 else { return nil }
    do { return try CapstanAPI.decoder.decode(T.self, from: Data(buffer.readableBytesView)) } catch is DecodingError {
        // Re-thrown as a DecodingError, which the error middleware words for people.
        return try CapstanAPI.decoder.decode(T.self, from: Data(buffer.readableBytesView))
    }
}

func flag(_ request: Request, _ name: String, default value: Bool = false) -> Bool {
    guard let raw = request.uri.queryParameters.get(name) else { return value }
    return ["1", "true", "yes", ""].contains(raw.lowercased())
}

/// `limit`, 1…1000.
func limitParameter(_ request: Request, default value: Int) throws -> Int {
    let limit = try intParameter(request, "limit") ?? value
    guard (1...1000).contains(limit) else { throw CapstanError(.invalidRequest, "limit must be 1…1000, got \(limit).") }
    return limit
}

func int64Parameter(_ request: Request, _ name: String) throws -> Int64? {
    guard let raw = request.uri.queryParameters.get(name) else { return nil }
    guard let n = Int64(raw) else { throw CapstanError(.invalidRequest, "Query parameter `\(name)` must be an integer, got '\(raw)'.") }
    return n
}

func intParameter(_ request: Request, _ name: String) throws -> Int? {
    guard let raw = request.uri.queryParameters.get(name) else { return nil }
    guard let n = Int(raw) else { throw CapstanError(.invalidRequest, "Query parameter `\(name)` must be an integer, got '\(raw)'.") }
    return n
}
