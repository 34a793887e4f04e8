import AsyncHTTPClient
public import CapstanCore
public import CapstanTrainer
public import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL

/// The Swift SDK's client of a Capstan control plane (`capstan serve`, docs/api.md): one method
/// per route, answers decoded into the shared ``CapstanAPI`` types. The CLI uses it when
/// `CAPSTAN_SERVER` (or `--server`) is set.
///
/// ```swift
/// let client = try CapstanClient(server: URL(string: "https://capstan.example.com")!,
///                                token: ProcessInfo.processInfo.environment["CAPSTAN_TOKEN"])
/// let job = try await client.launch(specFile: "job.yaml")
/// for try await item in client.logs(job.id, follow: true) {
///     if let line = item.line { print("[node \(item.node ?? 0)] \(line)") }
///     if let end = item.end { print("job \(end.id) \(end.status)") }
/// }
/// ```
///
/// Errors: every error answer is the server's ``CapstanError``, thrown as it is; a server that
/// cannot be reached (refused, unknown host, TLS) is a ``CapstanError`` naming its URL and
/// saying what to check; an answer that is not what the route promises is `.internalError`
/// (or `.transient` for a proxy's 502/503/504), naming the route and status. The token never
/// appears in an error, a log line or ``description``. Redirects are not followed (they would
/// carry the token elsewhere).
public final class CapstanClient: Sendable, CustomStringConvertible {
    /// The server's base URL (routes go under `<server>/v1`).
    public let server: URL
    private let token: String?
    private let http: HTTPClient

    /// A client of the server at `server` (`http` or `https`), sending `token` as
    /// `Authorization: Bearer`. `https` trusts the system's CAs plus those in the PEM file
    /// `caFile`, if given. Connections are shared per CA file for the life of the process.
    public init(server: URL, token: String?, caFile: String? = nil) throws {
        self.server = try ServerSettings.parseServerURL(server.absoluteString)
        if let token { try ServerSettings.checkToken(token, source: "the token given") }
        self.token = token.flatMap { $0.isEmpty ? nil : $0 }
        self.http = try Self.httpClient(caFile: caFile)
    }

    /// A client for resolved settings (``ServerSettings/resolve(serverOption:tokenFile:environment:)``).
    public convenience init(_ settings: ServerSettings) throws {
        try self.init(server: settings.server, token: settings.token, caFile: settings.caFile)
    }

    public var description: String { "CapstanClient(\(server.absoluteString), token \(token == nil ? "none" : "set"))" }

    /// Whether a token is sent.
    public var hasToken: Bool { token != nil }

    // MARK: Routes

    /// `GET /v1/health` (needs no token).
    public func health() async throws -> HealthResponse {
        try await call(.GET, "/health")
    }

    /// `POST /v1/offers`: ranked offers for `request` (`capstan offers`).
    public func offers(_ request: ResourceRequest, refresh: Bool = false) async throws -> OffersResponse {
        try await call(.POST, "/offers", json: OffersRequest(request: request, refresh: refresh), timeout: Self.long)
    }

    /// `GET /v1/clusters`: clusters with their instances, uptime and cost (`capstan status`).
    /// `all` includes terminated and failed ones; `reconcile` reconciles with the providers first.
    public func status(all: Bool = false, reconcile: Bool = true) async throws -> StatusResponse {
        try await call(.GET, "/clusters", query: [("all", "\(all)"), ("reconcile", "\(reconcile)")], timeout: Self.long)
    }

    /// `POST /v1/clusters`: provisions a cluster (`capstan up`). The report says whether it came
    /// up (``ProvisionReport/cluster``'s status), with every offer tried.
    public func up(_ request: UpRequest) async throws -> ProvisionReport {
        try await call(.POST, "/clusters", json: request, timeout: Self.long)
    }

    /// `POST /v1/clusters`, from its parts.
    public func up(name: String, request: ResourceRequest, refresh: Bool = false, idleMinutes: Int? = nil) async throws -> ProvisionReport {
        try await up(UpRequest(name: name, request: request, refresh: refresh, idleMinutes: idleMinutes))
    }

    /// `DELETE /v1/clusters/{name}`: terminates a cluster's instances (`capstan down`). The
    /// server refuses (409) while a job that has not ended runs on it, unless `force`.
    public func down(_ cluster: String, force: Bool = false) async throws -> Cluster {
        try await call(.DELETE, "/clusters/\(Self.segment(cluster))", query: force ? [("force", "true")] : [], timeout: Self.long)
    }

    /// `POST /v1/clusters/{name}/move`: moves a running cluster to the cheapest other offer.
    public func move(_ cluster: String, refresh: Bool = false) async throws -> ProvisionReport {
        try await call(.POST, "/clusters/\(Self.segment(cluster))/move", json: MoveRequest(refresh: refresh), timeout: Self.long)
    }

    /// `POST /v1/reconcile` (`capstan reconcile`).
    public func reconcile() async throws -> ReconcileReport {
        try await call(.POST, "/reconcile", timeout: Self.long)
    }

    /// `POST /v1/jobs`: submits a job; the server's controller runs it from then on.
    public func launch(_ request: LaunchJobRequest) async throws -> JobRecord {
        try await call(.POST, "/jobs", json: request, timeout: Self.long)
    }

    /// Reads the job spec `specFile`, checks it, sends its workdir when it has a relative one
    /// (packed with `tar`, streamed; refused before sending when larger than `maxUploadBytes`),
    /// and submits it (`capstan launch`). An absolute `workdir` names a folder on the server's
    /// machine and is not sent.
    public func launch(specFile: String, cluster: String? = nil, settings: JobSettings? = nil, maxUploadBytes: Int64 = CapstanAPI.defaultMaxUploadBytes) async throws -> JobRecord {
        let path = (specFile as NSString).expandingTildeInPath
        let yaml: String
        do { yaml = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CapstanError(.invalidRequest, "Cannot read job spec \(specFile): \(error.localizedDescription)", hint: "Check the path.")
        }
        let spec = try JobSpec.parse(yaml, source: specFile)
        var upload: String?
        if let workdir = spec.workdir, !workdir.hasPrefix("/") {
            let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
            let local = URL(fileURLWithPath: folder + "/" + workdir).standardizedFileURL.path
            upload = try await self.upload(folder: local, maxBytes: maxUploadBytes).id
        }
        return try await launch(LaunchJobRequest(spec: yaml, upload: upload, cluster: cluster, settings: settings))
    }

    /// `POST /v1/uploads`: sends the folder `folder` as a tar stream (`tar -C folder -cf - .`,
    /// never held in memory) for a launch's workdir. A folder whose files add up to more than
    /// `maxBytes` is refused before anything is sent.
    public func upload(folder: String, maxBytes: Int64 = CapstanAPI.defaultMaxUploadBytes) async throws -> UploadResponse {
        let upload = try WorkdirUpload(folder: folder, maxBytes: maxBytes)
        let route = "POST \(CapstanAPI.prefix)/uploads"
        var request = try makeRequest(.POST, "/uploads")
        request.headers.replaceOrAdd(name: "Content-Type", value: "application/x-tar")
        let tar = try upload.start()
        request.body = .stream(tar.chunks, length: .unknown)
        let response: HTTPClientResponse
        do {
            response = try await execute(request, route: route, deadline: .now() + Self.long)
        } catch {
            await tar.stop()
            if let packing = tar.failure { throw redact(packing) }
            throw error
        }
        let body: ByteBuffer
        do { body = try await collect(response, route: route) } catch {
            await tar.stop()
            throw error
        }
        await tar.stop()
        if let packing = tar.failure, (200..<300).contains(response.status.code) { throw redact(packing) }
        return try decodeAnswer(UploadResponse.self, response, body, route: route)
    }

    /// `GET /v1/jobs`: jobs, newest first (`capstan jobs`). `running`: unfinished ones only;
    /// `limit`: at most this many (the server's default is 100, its maximum 1000).
    public func jobs(running: Bool = false, limit: Int? = nil) async throws -> [JobRecord] {
        var query = [("running", "\(running)")]
        if let limit { query.append(("limit", "\(limit)")) }
        return try await call(.GET, "/jobs", query: query)
    }

    /// `GET /v1/costs/jobs`: the cost so far of each job on the page `jobs(running:limit:)`
    /// lists, by job id.
    public func jobCosts(running: Bool = false, limit: Int? = nil) async throws -> [String: Double] {
        var query = [("running", "\(running)")]
        if let limit { query.append(("limit", "\(limit)")) }
        let answer: JobCostsResponse = try await call(.GET, "/costs/jobs", query: query)
        return answer.costs
    }

    /// `GET /v1/jobs/{id}`: one job, by id or name.
    public func job(_ id: String) async throws -> JobRecord {
        try await call(.GET, "/jobs/\(Self.segment(id))")
    }

    /// `POST /v1/jobs/{id}/cancel`: asks a job to stop and waits up to `wait` for it to
    /// (`capstan cancel`); the server's default when nil.
    public func cancel(_ id: String, wait: Duration? = nil) async throws -> JobRecord {
        var query: [(String, String)] = []
        if let wait { query.append(("wait", "\(Int(wait.components.seconds))")) }
        let timeout = wait.map { TimeAmount.seconds($0.components.seconds + 120) } ?? Self.long
        return try await call(.POST, "/jobs/\(Self.segment(id))/cancel", query: query, timeout: timeout)
    }

    /// `GET /v1/jobs/{id}/metrics`: the leader's metrics points (`capstan metrics`).
    public func metrics(_ id: String) async throws -> [MetricsPoint] {
        try await call(.GET, "/jobs/\(Self.segment(id))/metrics")
    }

    /// `GET /v1/jobs/{id}/checkpoints`: checkpoints in the job's bucket, each checked against
    /// its manifest (`capstan checkpoints`).
    public func checkpoints(_ id: String) async throws -> [CheckpointSummary] {
        try await call(.GET, "/jobs/\(Self.segment(id))/checkpoints", query: [("verify", "false")], timeout: Self.long)
    }

    /// `GET /v1/jobs/{id}/checkpoints?verify=true`: every file of every checkpoint downloaded
    /// and re-hashed on the server (`capstan checkpoints --verify`).
    public func verifyCheckpoints(_ id: String) async throws -> [CheckpointCheck] {
        try await call(.GET, "/jobs/\(Self.segment(id))/checkpoints", query: [("verify", "true")], timeout: Self.long)
    }

    /// `GET /v1/jobs/{id}/events`: a job's events, oldest first.
    public func events(job id: String, limit: Int? = nil) async throws -> [StateEvent] {
        try await call(.GET, "/jobs/\(Self.segment(id))/events", query: limit.map { [("limit", "\($0)")] } ?? [])
    }

    /// `GET /v1/jobs/{id}/events?after=`: the job's events above id `after`, oldest first, at
    /// most `limit` (the server's cap is 1,000): page with the last id seen.
    public func events(job id: String, after: Int64, limit: Int = 1000) async throws -> [StateEvent] {
        try await call(.GET, "/jobs/\(Self.segment(id))/events", query: [("after", "\(after)"), ("limit", "\(limit)")])
    }

    /// `GET /v1/jobs/{id}/telemetry`: the newest CPU, memory and GPU sample of each node, by
    /// node (`capstan top`).
    public func telemetry(job id: String) async throws -> [NodeTelemetry] {
        let answer: TelemetryResponse = try await call(.GET, "/jobs/\(Self.segment(id))/telemetry")
        return answer.nodes
    }

    /// `GET /v1/events`: events, oldest first, all or one cluster's.
    public func events(cluster: String? = nil, limit: Int? = nil) async throws -> [StateEvent] {
        var query: [(String, String)] = []
        if let cluster { query.append(("cluster", cluster)) }
        if let limit { query.append(("limit", "\(limit)")) }
        return try await call(.GET, "/events", query: query)
    }

    /// `GET /v1/jobs/{id}/logs`: a job's log lines (all nodes, or `node`'s), read as they
    /// arrive (NDJSON, split however the network cuts it). With `events`, the job's events come
    /// between them; the last item is ``LogStreamItem/end``, the job as it was when the stream
    /// ended. Without `follow` the stream ends with what there is; with it, when the job has
    /// finished, and a connection that breaks off before then is opened again (up to
    /// ``resumeAttempts`` times in a row) and resumed where it was, nothing repeated: lines are
    /// counted per node, events known by their ids. Ending the iteration (or cancelling its
    /// task) closes the connection.
    public func logs(_ id: String, node: Int? = nil, follow: Bool = false, events: Bool = false) -> AsyncThrowingStream<LogStreamItem, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: LogStreamItem.self)
        var query = [("follow", "\(follow)"), ("events", "\(events)")]
        if let node { query.insert(("node", "\(node)"), at: 0) }
        let path = "/jobs/\(Self.segment(id))/logs"
        let route = "GET \(CapstanAPI.prefix)\(path)"
        let task = Task {
            var position = LogStreamPosition()
            var failures = 0
            do {
                while true {
                    do {
                        let ended = try await self.streamLogs(path, query: query, route: route, follow: follow, position: &position) { continuation.yield($0) }
                        if ended || !follow { break }
                        throw LogStreamBroke(error: CapstanError(.transient, "The server at \(self.server.absoluteString) ended \(route) before the job did.", hint: "Follow the job again; it goes on on the server."))
                    } catch let broke as LogStreamBroke {
                        // Only a stream that had started is resumed: a server that cannot be
                        // reached at all is said at once.
                        guard follow, position.started, failures < Self.resumeAttempts else { throw broke.error }
                        if position.progressed { failures = 0 }
                        failures += 1
                        position.progressed = false
                        try await Task.sleep(for: .seconds(min(16, 1 << failures)))
                    }
                }
                continuation.finish()
            } catch let e as CapstanError {
                continuation.finish(throwing: self.redact(e))
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// Connections a followed log stream opens again, in a row, before it gives up.
    public static let resumeAttempts = 5

    /// One connection of a log stream: yields what `position` has not seen; true when the
    /// stream's `end` came. Failures to connect or read are ``LogStreamBroke``.
    private func streamLogs(_ path: String, query: [(String, String)], route: String, follow: Bool, position: inout LogStreamPosition, yield: (LogStreamItem) -> Void) async throws -> Bool {
        let request = try makeRequest(.GET, path, query: query)
        let response: HTTPClientResponse
        do {
            response = try await execute(request, route: route, deadline: follow ? .distantFuture : .now() + Self.long)
        } catch let e as CapstanError {
            throw LogStreamBroke(error: e)
        }
        guard response.status == .ok else {
            let body = try await collect(response, route: route)
            throw errorAnswer(response, body, route: route)
        }
        position.started = true
        var counts = LogStreamPosition.Counts()
        var splitter = NDJSONSplitter()
        var ended = false
        func take(_ line: Data) throws {
            let item = try decodeLogItem(line, route: route)
            if item.end != nil { ended = true }
            if position.isNew(item, counts: &counts) { yield(item) }
        }
        do {
            for try await chunk in response.body {
                for line in try splitter.feed(chunk.readableBytesView) { try take(line) }
            }
        } catch let e as NDJSONSplitter.LineTooLong {
            throw CapstanError(.internalError, "The server at \(server.absoluteString) sent a line of \(e.bytes) bytes with no end in \(route); that is not a log stream.", hint: Self.wrongServerHint)
        } catch let e as CapstanError {
            throw e
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw LogStreamBroke(error: transportError(error, route: route, during: "reading the stream"))
        }
        if let last = splitter.finish() {
            // A last line without its newline is whole only if it reads as an item; otherwise
            // the connection ended mid-line.
            if !ended, (try? CapstanAPI.decoder.decode(LogStreamItem.self, from: last)) == nil {
                throw LogStreamBroke(error: CapstanError(.transient, "The connection to the Capstan server at \(server.absoluteString) broke off in the middle of a line of \(route).", hint: "Try again; `capstan logs JOB -f` picks up where the job is."))
            }
            try take(last)
        }
        return ended
    }

    // MARK: Requests and answers

    static let quick = TimeAmount.minutes(5)
    static let long = TimeAmount.hours(2)
    static let maxAnswerBytes = 256 << 20

    static let wrongServerHint = "Check that CAPSTAN_SERVER (or --server) points at `capstan serve`, not a proxy or another service, and that the server runs this Capstan version (`capstan --version`)."

    /// A path segment (a job id, a cluster name), percent-encoded.
    static func segment(_ s: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/;?#%")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    func url(_ path: String, query: [(String, String)]) -> String {
        var base = server.absoluteString
        while base.hasSuffix("/") { base.removeLast() }
        var s = base + CapstanAPI.prefix + path
        if !query.isEmpty {
            var allowed = CharacterSet.urlQueryAllowed
            allowed.remove(charactersIn: "&=+?#")
            s += "?" + query.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0.1)" }.joined(separator: "&")
        }
        return s
    }

    func makeRequest(_ method: HTTPMethod, _ path: String, query: [(String, String)] = []) throws -> HTTPClientRequest {
        var request = HTTPClientRequest(url: url(path, query: query))
        request.method = method
        request.headers.add(name: "Accept", value: path.hasSuffix("/logs") ? "application/x-ndjson" : "application/json")
        request.headers.add(name: "User-Agent", value: "capstan-client")
        if let token { request.headers.add(name: CapstanAPI.authorization, value: "Bearer \(token)") }
        return request
    }

    /// One JSON route: `body` (if any) encoded with ``CapstanAPI/encoder``, the answer decoded
    /// with ``CapstanAPI/decoder``.
    func call<Answer: Decodable>(_ method: HTTPMethod, _ path: String, query: [(String, String)] = [], timeout: TimeAmount = quick) async throws -> Answer {
        try await call(method, path, query: query, body: nil as Data?, timeout: timeout)
    }

    func call<Answer: Decodable, Body: Encodable>(_ method: HTTPMethod, _ path: String, query: [(String, String)] = [], json: Body, timeout: TimeAmount = quick) async throws -> Answer {
        let data: Data
        do { data = try CapstanAPI.encoder.encode(json) } catch {
            throw CapstanError(.internalError, "Cannot encode the body of \(method.rawValue) \(CapstanAPI.prefix)\(path): \(error).")
        }
        return try await call(method, path, query: query, body: data, timeout: timeout)
    }

    private func call<Answer: Decodable>(_ method: HTTPMethod, _ path: String, query: [(String, String)], body: Data?, timeout: TimeAmount) async throws -> Answer {
        let route = "\(method.rawValue) \(CapstanAPI.prefix)\(path)"
        do {
            var request = try makeRequest(method, path, query: query)
            if let body {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(data: body))
            }
            let response = try await execute(request, route: route, deadline: .now() + timeout)
            let answer = try await collect(response, route: route)
            return try decodeAnswer(Answer.self, response, answer, route: route)
        } catch let e as CapstanError {
            throw redact(e)
        }
    }

    /// Sends `request`; a failure to reach the server becomes a ``CapstanError`` naming it.
    func execute(_ request: HTTPClientRequest, route: String, deadline: NIODeadline) async throws -> HTTPClientResponse {
        do {
            return try await http.execute(request, deadline: deadline)
        } catch let e as CapstanError {
            throw e
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw transportError(error, route: route, during: nil)
        }
    }

    func collect(_ response: HTTPClientResponse, route: String) async throws -> ByteBuffer {
        do {
            return try await response.body.collect(upTo: Self.maxAnswerBytes)
        } catch is CancellationError {
            throw CancellationError()
        } catch let e as NIOTooManyBytesError {
            _ = e
            throw CapstanError(.internalError, "The server at \(server.absoluteString) answered \(route) with more than \(Self.maxAnswerBytes >> 20) MiB.", hint: Self.wrongServerHint)
        } catch {
            throw transportError(error, route: route, during: "reading the answer")
        }
    }

    func decodeAnswer<Answer: Decodable>(_ type: Answer.Type, _ response: HTTPClientResponse, _ body: ByteBuffer, route: String) throws -> Answer {
        let status = Int(response.status.code)
        guard (200..<300).contains(status) else { throw errorAnswer(response, body, route: route) }
        do {
            return try CapstanAPI.decoder.decode(Answer.self, from: Data(buffer: body))
        } catch {
            throw unexpected(response, body, route: route, why: "a body that is not \(Self.typeName(Answer.self)) (\(Self.decodingSummary(error)))")
        }
    }

    /// An answer of status ≥ 300: the server's ``CapstanError`` when the body is one, else an
    /// error naming the route and status.
    func errorAnswer(_ response: HTTPClientResponse, _ body: ByteBuffer, route: String) -> CapstanError {
        if let decoded = try? CapstanAPI.decoder.decode(APIErrorBody.self, from: Data(buffer: body)) {
            return redact(decoded.error)
        }
        return unexpected(response, body, route: route, why: nil)
    }

    func unexpected(_ response: HTTPClientResponse, _ body: ByteBuffer, route: String, why: String?) -> CapstanError {
        let status = Int(response.status.code)
        let type = response.headers.first(name: "Content-Type") ?? "no content type"
        let what = why ?? "no Capstan error in its body"
        let snippet = String(String(decoding: body.readableBytesView.prefix(200), as: UTF8.self)
            .map { $0.isNewline || $0 == "\t" ? " " : $0 }
            .filter { c in !(c.asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false) })
            .trimmingCharacters(in: .whitespaces)
        let shown = snippet.isEmpty ? "" : ": \(snippet)\(body.readableBytes > 200 ? "…" : "")"
        let code: CapstanError.Code = [502, 503, 504].contains(status) ? .transient : .internalError
        var message = "The server at \(server.absoluteString) answered \(route) with HTTP \(status) \(response.status.reasonPhrase) and \(what) (\(type), \(body.readableBytes) bytes)\(shown)."
        if (300..<400).contains(status) {
            message += " Redirects are not followed (they would carry the token elsewhere)."
            if let location = response.headers.first(name: "Location") { message += " It points to \(location.prefix(200))." }
        }
        let hint = code == .transient ? "A proxy in front of the server answered for it; try again, and check that `capstan serve` is running behind it." : Self.wrongServerHint
        return redact(CapstanError(code, message, hint: hint))
    }

    /// A failure to reach or read from the server, said with what to check.
    func transportError(_ error: any Error, route: String, during: String?) -> CapstanError {
        let text = String(describing: error)
        let lower = text.lowercased()
        let host = server.host ?? server.absoluteString
        let https = server.scheme == "https"
        var what: String
        var hint: String
        var code = CapstanError.Code.transient
        if lower.contains("ssl") || lower.contains("tls") || lower.contains("certificate") || lower.contains("handshake") {
            what = "the TLS handshake failed"
            hint = "Check that the server's certificate is valid for \(host) and signed by a CA the system trusts, or set \(ServerSettings.caVariable) to a PEM file of its CA. If the server speaks plain http, use an http:// URL."
            code = .config
        } else if lower.contains("refused") {
            what = "the connection was refused"
            hint = "Is `capstan serve` running there, on that port? Check \(ServerSettings.serverVariable) (or --server)."
        } else if lower.contains("dns") || lower.contains("name or service") || lower.contains("resolve") || lower.contains("nodename") || lower.contains("unknownhost") || lower.contains("getaddrinfo") {
            what = "the host name \(host) could not be resolved"
            hint = "Check the host name in \(ServerSettings.serverVariable) (or --server)."
            code = .config
        } else if lower.contains("timeout") || lower.contains("timed out") || lower.contains("deadline") {
            what = during == nil ? "it did not answer in time" : "it stopped answering"
            hint = "Is `capstan serve` running there and reachable from this machine (firewall, VPN)? Check \(ServerSettings.serverVariable) (or --server)."
            code = .timeout
        } else if during != nil || lower.contains("closed") || lower.contains("reset") || lower.contains("eof") {
            what = "the connection broke off"
            hint = "The server may have restarted or a proxy cut the connection; try again. Check `capstan serve`'s log if it persists."
        } else {
            what = "the request failed"
            hint = "Is `capstan serve` running there? Check \(ServerSettings.serverVariable) (or --server)\(https ? " and, for https, \(ServerSettings.caVariable)" : "")."
        }
        // The underlying error's words, where the summary is not all there is to say.
        let detail = what.hasPrefix("the connection was refused") ? "" : " (\(text.prefix(300)))"
        let message = during.map { "The connection to the Capstan server at \(server.absoluteString) broke off while \($0) of \(route): \(what)\(detail)." }
            ?? "Cannot reach the Capstan server at \(server.absoluteString) (\(route)): \(what)\(detail)."
        return redact(CapstanError(code, message, hint: hint))
    }

    func decodeLogItem(_ line: Data, route: String) throws -> LogStreamItem {
        do {
            return try CapstanAPI.decoder.decode(LogStreamItem.self, from: line)
        } catch {
            let text = String(decoding: line.prefix(200), as: UTF8.self)
            throw redact(CapstanError(.internalError, "The server at \(server.absoluteString) sent a line in \(route) that is not a log stream item (\(Self.decodingSummary(error))): \(text)\(line.count > 200 ? "…" : "")", hint: Self.wrongServerHint))
        }
    }

    /// `error` with every copy of the token replaced, whatever its source.
    func redact(_ error: CapstanError) -> CapstanError {
        guard let token, !token.isEmpty else { return error }
        var e = error
        func clean(_ s: String) -> String { s.replacingOccurrences(of: token, with: "<token>") }
        e.message = clean(e.message)
        e.hint = e.hint.map(clean)
        e.cloudCode = e.cloudCode.map(clean)
        e.cloudMessage = e.cloudMessage.map(clean)
        e.provider = e.provider.map(clean)
        return e
    }

    static func typeName<T>(_ t: T.Type) -> String {
        let name = String(describing: t)
        return name.hasPrefix("Array<") ? "a list of \(name.dropFirst(6).dropLast())" : "a \(name)"
    }

    static func decodingSummary(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let ctx): return "no field \(path(ctx.codingPath + [key]))"
        case DecodingError.typeMismatch(let type, let ctx): return "\(path(ctx.codingPath)) is not \(type)"
        case DecodingError.valueNotFound(_, let ctx): return "\(path(ctx.codingPath)) is null"
        case DecodingError.dataCorrupted(let ctx): return ctx.codingPath.isEmpty ? "not JSON" : "\(path(ctx.codingPath)): \(ctx.debugDescription)"
        default: return "\(error)"
        }
    }

    static func path(_ keys: [any CodingKey]) -> String {
        keys.isEmpty ? "the body" : keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(in: CharacterSet(charactersIn: "."))
    }

    // MARK: Connections

    private static let clientsLock = NSLock()
    nonisolated(unsafe) private static var clients: [String: HTTPClient] = [:]

    /// One HTTP client per CA file, for the life of the process (like `HTTPClient.shared`): no
    /// redirects, a connect timeout of 5 s (a refused connection is retried until then), no read
    /// timeout (a followed log stream may be quiet long).
    static func httpClient(caFile: String?) throws -> HTTPClient {
        let key = caFile ?? ""
        if let existing = clientsLock.withLock({ clients[key] }) { return existing }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile {
            do {
                let certificates = try NIOSSLCertificate.fromPEMFile(caFile)
                guard !certificates.isEmpty else { throw CapstanError(.config, "no certificate in it") }
                tls.additionalTrustRoots = [.certificates(certificates)]
            } catch {
                throw CapstanError(.config, "Cannot read CA certificates from \(caFile) (\(ServerSettings.caVariable)): \(error).", hint: "It must be a PEM file of the CA certificate(s) that signed the server's certificate.")
            }
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .disallow, timeout: .init(connect: .seconds(5), read: nil))
        configuration.httpVersion = .http1Only
        let made = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        let kept = clientsLock.withLock { () -> HTTPClient in
            if let raced = clients[key] { return raced }
            clients[key] = made
            return made
        }
        if kept !== made { try? made.syncShutdown() }
        return kept
    }
}

/// A log stream's connection failed (to open, or while reading): a followed stream resumes.
struct LogStreamBroke: Error {
    var error: CapstanError
}

/// What a log stream has delivered, so a resumed one skips it: lines counted per node (they
/// come in file order), events by id.
struct LogStreamPosition {
    struct Counts {
        var lines: [Int: Int] = [:]
        var unnumberedEvents = 0
    }
    var delivered = Counts()
    var lastEventID: Int64?
    /// A connection was answered 200.
    var started = false
    /// Something new came since the last failure.
    var progressed = false

    mutating func isNew(_ item: LogStreamItem, counts: inout Counts) -> Bool {
        var new = true
        if item.line != nil {
            let node = item.node ?? 0
            counts.lines[node, default: 0] += 1
            new = counts.lines[node]! > delivered.lines[node, default: 0]
            if new { delivered.lines[node] = counts.lines[node]! }
        } else if let event = item.event {
            if let id = event.id {
                new = lastEventID.map { id > $0 } ?? true
                if new { lastEventID = id }
            } else {
                counts.unnumberedEvents += 1
                new = counts.unnumberedEvents > delivered.unnumberedEvents
                if new { delivered.unnumberedEvents = counts.unnumberedEvents }
            }
        }
        if new { progressed = true }
        return new
    }
}
