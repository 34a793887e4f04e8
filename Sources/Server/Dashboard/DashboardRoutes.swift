import CapstanAPI
import CapstanCore
import CapstanTrainer
import Crypto
import Foundation
import Hummingbird
import NIOCore
import Synchronization

/// The web dashboard (docs/dashboard.md): its page and assets at `/` (no token: they hold no
/// data; the page asks for a token and sends it on every API call), and the API routes only it
/// needs (`/v1/overview`, `/v1/jobs/{id}/summary`).
struct Dashboard: Sendable {
    let plane: ControlPlane
    /// Nodes per job, from its spec (a spec never changes, and parsing 1,000 of them on every
    /// overview would be most of its cost).
    let nodeCounts = NodeCounts()

    var store: any StateStore { plane.store }

    /// Paths served without a token: the page and its assets.
    static func isPublic(_ path: String) -> Bool {
        path == "/" || path == "/index.html" || DashboardAsset.all[path] != nil
    }

    func add(to router: Router<APIContext>) {
        router.get("/") { request, _ in DashboardAsset.page.response(request) }
        router.get("index.html") { request, _ in DashboardAsset.page.response(request) }
        for (path, asset) in DashboardAsset.all where path != "/" {
            router.get(RouterPath(path)) { request, _ in asset.response(request) }
        }
        let v1 = router.group(RouterPath(CapstanAPI.prefix))
        v1.get("overview") { request, _ in
            let limit = try limitParameter(request, default: 1000)
            return try json(try await overview(limit: limit, now: Date()))
        }
        v1.get("jobs/:id/summary") { _, context in
            let id = try context.parameters.require("id")
            guard let job = try await store.job(id) else { throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs` for job ids.") }
            let costs = try await jobCosts([job], now: Date())
            return try json(OverviewJob(job, nodes: nodeCounts.nodes(job), cost: costs[job.id]))
        }
    }

    /// The overview in one pass: live clusters with their instances (one query), the newest
    /// `limit` jobs, their costs.
    func overview(limit: Int, now: Date) async throws -> OverviewResponse {
        let clusters = try await store.clusters(includeFinished: false)
        let instances = try await store.instances(clusters: clusters.map(\.id))
        let rows = clusters.map { c in OverviewCluster(ClusterStatusRow(cluster: c, instances: instances[c.id] ?? [], now: now)) }
            .sorted { $0.createdAt > $1.createdAt }
        let jobs = try await store.jobs(includeFinished: true, limit: limit)
        let costs = try await jobCosts(jobs, now: now)
        return OverviewResponse(generatedAt: now, clusters: rows, jobs: jobs.map { OverviewJob($0, nodes: nodeCounts.nodes($0), cost: costs[$0.id]) })
    }

    /// What each job has cost so far (two reads however many jobs: ``StateStore/jobCosts(_:now:)``).
    func jobCosts(_ jobs: [JobRecord], now: Date) async throws -> [String: Double] {
        try await store.jobCosts(jobs, now: now)
    }
}

/// A cache of each job's node count (its spec's `resources.nodes`).
final class NodeCounts: Sendable {
    private let counts = Mutex<[String: Int?]>([:])

    func nodes(_ job: JobRecord) -> Int? {
        if let known = counts.withLock({ $0[job.id] }) { return known }
        let n = (try? JobSpec.parse(job.spec))?.resources.nodes
        counts.withLock { c in
            // Bounded: a server up for months forgets and re-parses (cheap, rare).
            if c.count > 50_000 { c.removeAll(keepingCapacity: true) }
            c[job.id] = .some(n)
        }
        return n
    }
}

/// One of the dashboard's files, embedded in the binary: served with its content type, a
/// strong ETag (its SHA-256) and `Cache-Control: no-cache` (the browser revalidates, a 304 when
/// unchanged), and headers that keep the page from being framed or sniffed and let it talk only
/// to this server.
struct DashboardAsset: Sendable {
    let body: String
    let contentType: String
    let etag: String

    init(_ body: String, contentType: String) {
        self.body = body
        self.contentType = contentType
        etag = "\"" + SHA256.hash(data: Data(body.utf8)).prefix(12).map { String(format: "%02x", $0) }.joined() + "\""
    }

    static let page = DashboardAsset(DashboardPage.html, contentType: "text/html; charset=utf-8")
    static let all: [String: DashboardAsset] = [
        "/": page,
        "/dashboard/app.css": DashboardAsset(DashboardStyle.css, contentType: "text/css; charset=utf-8"),
        "/dashboard/app.js": DashboardAsset(DashboardScript.js, contentType: "text/javascript; charset=utf-8"),
    ]

    /// Everything the page loads comes from this server; nothing from elsewhere, no inline script.
    static let contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    func response(_ request: Request) -> Response {
        var headers: HTTPFields = [
            .eTag: etag,
            .cacheControl: "no-cache",
            .xContentTypeOptions: "nosniff",
            .contentSecurityPolicy: Self.contentSecurityPolicy,
            HTTPFields.Element.Name("Referrer-Policy")!: "no-referrer",
            HTTPFields.Element.Name("X-Frame-Options")!: "DENY",
        ]
        let match = request.headers[values: .ifNoneMatch].flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
        if match.contains(etag) || match.contains("*") {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentType] = contentType
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}
