public import CapstanAPI
public import CapstanCore
import CapstanRuntime
public import CapstanTrainer
public import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
public import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import UnixSignals

/// How `capstan serve` listens and how often its loops run.
public struct ControlPlaneOptions: Sendable {
    /// The address to bind: 127.0.0.1 unless told otherwise.
    public var host = "127.0.0.1"
    /// 0: any free port (written to `portFile`).
    public var port = 8420
    /// PEM files; both set: HTTPS only.
    public var tlsCertificate: String?
    public var tlsKey: String?
    /// Where the bound port is written once the server listens (for scripts and tests).
    public var portFile: String?
    public var maxUploadBytes: Int64 = CapstanAPI.defaultMaxUploadBytes
    /// Let a launch name folders on the server's machine (an absolute `workdir`, `file://`
    /// storage). Off: a token holder could otherwise copy the server's files to nodes.
    public var allowServerPaths = false
    /// How often unfinished jobs without a controller are looked for.
    public var supervisePeriod: Duration = .seconds(2)
    /// How often clusters are reconciled and autostopped.
    public var clusterPeriod: Duration = .seconds(30)
    /// The time the cluster keeper judges idleness at (tests move it forward).
    public var clock: @Sendable () -> Date = { Date() }
    /// Serve `GET /metrics` without a token (for a Prometheus that cannot send one).
    public var metricsWithoutToken = false
    public init() {}
}

/// `capstan serve`: the HTTP API over one state store, the supervisor that owns every job's
/// controller, and the cluster keeper. Several replicas may serve one PostgreSQL store: job
/// and cluster locks are then leases with fencing tokens, so each job has one controller.
public struct ControlPlane: Sendable {
    public let jobs: JobService
    public let options: ControlPlaneOptions
    /// Offer searches over the server's providers (`refresh`: skip the cache).
    public let offerSearch: @Sendable (_ refresh: Bool) -> OfferSearch
    /// Providers configured but not in use.
    public let problems: [OffersResponse.Problem]
    /// `<host>:<pid>`.
    public let replica: String
    /// `sqlite` or `postgres`.
    public let storeKind: String
    public let logger: Logger
    /// Extra work of the cluster keeper's passes (autostop).
    public let clusterWork: @Sendable (Provisioner, Date) async -> Void
    /// What `GET /metrics` serves; the job controllers report checkpoint durations to it.
    public var metrics: ServerMetrics = .shared

    public init(
        jobs: JobService, options: ControlPlaneOptions, offerSearch: @escaping @Sendable (Bool) -> OfferSearch, problems: [OffersResponse.Problem],
        storeKind: String, logger: Logger, clusterWork: @escaping @Sendable (Provisioner, Date) async -> Void = { _, _ in }
    ) {
        self.jobs = jobs
        self.options = options
        self.offerSearch = offerSearch
        self.problems = problems
        self.replica = jobs.context.holder
        self.storeKind = storeKind
        self.logger = logger
        self.clusterWork = clusterWork
    }

    var store: any StateStore { jobs.context.store }
    var provisioner: Provisioner { jobs.context.provisioner }
    var uploads: Uploads { Uploads(folder: jobs.context.home.path("server/uploads"), maxBytes: options.maxUploadBytes) }

    /// Runs until SIGTERM or SIGINT: then stops taking requests, stops this replica's
    /// controllers (their jobs go on; another replica or the next start adopts them), and returns.
    public func run(onListening: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let supervisor = JobSupervisor(jobs: jobs, period: options.supervisePeriod, logger: logger, onEvent: metrics.observe)
        let keeper = ClusterKeeper(provisioner: provisioner, period: options.clusterPeriod, logger: logger, clock: options.clock, extra: clusterWork)
        let router = Router(context: APIContext.self)
        router.middlewares.add(ErrorMiddleware(logger: logger))
        router.middlewares.add(AuthMiddleware(tokens: Tokens(store: store), logger: logger, open: options.metricsWithoutToken ? ["/metrics"] : []))
        Routes(plane: self, supervisor: supervisor).add(to: router)
        let server: HTTPServerBuilder
        switch (options.tlsCertificate, options.tlsKey) {
        case (nil, nil): server = .http1()
        case (let cert?, let key?):
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(cert).map { NIOSSLCertificateSource.certificate($0) }
                let tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
                server = try .tls(.http1(), tlsConfiguration: tls)
            } catch {
                throw CapstanError(.config, "Cannot load the TLS certificate \(cert) or key \(key): \(error).", hint: "Both must be PEM files readable by this user.")
            }
        default:
            throw CapstanError(.config, "TLS needs both a certificate and a key file.", hint: "Pass --tls-cert and --tls-key together.")
        }
        let portFile = options.portFile
        let scheme = options.tlsCertificate == nil ? "http" : "https"
        let host = options.host, replica = replica, kind = storeKind, log = logger
        let app = Application(
            router: router, server: server,
            configuration: .init(address: .hostname(host, port: options.port), serverName: "capstan"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                if let portFile { try? "\(port)\n".write(toFile: portFile, atomically: true, encoding: .utf8) }
                log.notice("listening", metadata: ["url": "\(scheme)://\(host):\(port)", "replica": "\(replica)", "state": "\(kind)"])
                onListening(port)
            },
            logger: logger)
        let notifications = NotificationService(deliverer: NotificationDeliverer(store: store, settings: jobs.notifyDelivery, logger: logger))
        var config = ServiceGroupConfiguration(services: [app, supervisor, keeper, notifications], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // A client following a job's logs would hold a graceful shutdown open for as long as
        // the job runs: past this, the server cancels what is left (the streams end; the jobs
        // are untouched).
        config.maximumGracefulShutdownDuration = .seconds(10)
        // No cancellation deadline: past one, service-lifecycle traps (the supervisor bounds
        // its own wait instead, so the process still exits 0 soon after SIGTERM).
        config.maximumCancellationDuration = nil
        try await ServiceGroup(configuration: config).run()
    }
}

/// A request's context: the peer's address and the token that authenticated it.
struct APIContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let peer: String
    var token: APIToken?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        peer = source.channel.remoteAddress?.description ?? "?"
    }

    /// JSON bodies (uploads stream on their own and are limited separately).
    var maxUploadSize: Int { 16 * 1024 * 1024 }
}

/// Every route but `/v1/health` needs a live token. A refusal is logged with why, never with
/// the token.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = APIContext
    let tokens: Tokens
    let logger: Logger
    /// Paths served without a token (`/metrics` with --metrics-without-token).
    var open: Set<String> = []
    /// When each token's `lastUsedAt` was last written (at most once a minute).
    let touched = TouchTimes()

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        if request.uri.path == CapstanAPI.prefix + "/health" || open.contains(request.uri.path) { return try await next(request, context) }
        // The dashboard's page and assets hold no data; the page sends a token with each API call.
        if Dashboard.isPublic(request.uri.path) { return try await next(request, context) }
        switch try await tokens.authenticate(header: request.headers[.authorization]) {
        case .success(let token):
            var context = context
            context.token = token
            if touched.due(token.id) { try? await tokens.store.touchToken(token.id, at: Date()) }
            return try await next(request, context)
        case .failure(let why):
            logger.warning("refused a request", metadata: ["method": "\(request.method)", "path": "\(request.uri.path)", "peer": "\(context.peer)", "why": "\(why.rawValue)"])
            return ErrorMiddleware.response(CapstanError(.auth, "The control plane refused the request: \(why.rawValue).", hint: "Set CAPSTAN_TOKEN to a token from `capstan serve token create NAME` on the server."), status: .unauthorized)
        }
    }
}

final class TouchTimes: Sendable {
    let times = Mutex<[String: Date]>([:])
    func due(_ id: String, now: Date = Date()) -> Bool {
        times.withLock { t in
            if let last = t[id], now.timeIntervalSince(last) < 60 { return false }
            t[id] = now
            return true
        }
    }
}

import Synchronization

/// Turns every error into the API's error body, with the HTTP status its code maps to.
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = APIContext
    let logger: Logger

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as CapstanError {
            return Self.response(e)
        } catch let e as DecodingError {
            return Self.response(CapstanError(.invalidRequest, "The request body is not what \(request.method) \(request.uri.path) takes: \(Self.describe(e)).", hint: "See docs/api.md."))
        } catch let e as HTTPError {
            let code: CapstanError.Code = e.status == .notFound ? .notFound : e.status.code == 413 ? .invalidRequest : e.status.code < 500 ? .invalidRequest : .internalError
            let message = e.status == .notFound ? "No route \(request.method) \(request.uri.path)." : "\(e.status.code) \(e.status.reasonPhrase)\(e.body.map { ": \($0)" } ?? "")"
            return Self.response(CapstanError(code, message, hint: e.status == .notFound ? "See docs/api.md for the routes." : nil), status: e.status)
        } catch {
            logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            return Self.response(CapstanError(.internalError, "The server failed: \(error)."))
        }
    }

    static func describe(_ e: DecodingError) -> String {
        switch e {
        case .keyNotFound(let key, _): "field `\(key.stringValue)` is missing"
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c):
            (c.codingPath.isEmpty ? "" : "at `\(c.codingPath.map(\.stringValue).joined(separator: "."))`: ") + c.debugDescription
        @unknown default: "\(e)"
        }
    }

    static func status(for e: CapstanError) -> HTTPResponse.Status {
        switch e.code {
        case .invalidRequest, .config: .badRequest
        // The API's own 401 comes from the token check; an `auth` error from inside a route
        // is a cloud refusing the server's credentials.
        case .auth: .forbidden
        case .notFound: .notFound
        case .rateLimited: .tooManyRequests
        case .unsupported: .notImplemented
        case .capacity, .quota: .serviceUnavailable
        case .timeout: .gatewayTimeout
        default: .internalServerError
        }
    }

    static func response(_ e: CapstanError, status: HTTPResponse.Status? = nil) -> Response {
        let data = (try? CapstanAPI.encoder.encode(APIErrorBody(error: e))) ?? Data()
        return Response(status: status ?? Self.status(for: e), headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
