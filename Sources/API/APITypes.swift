public import CapstanCore
public import CapstanTrainer
public import Foundation

// The control plane's HTTP API (`/v1`, docs/api.md): the bodies that cross it, shared by the
// server (CapstanServer) and its clients (the CLI with CAPSTAN_SERVER, the Swift SDK). Each
// answer is what the matching CLI verb prints with `--json`, so a script reads the same
// fields from either.

/// The API's version prefix.
public enum CapstanAPI {
    public static let prefix = "/v1"
    /// The header a client authenticates with: `Authorization: Bearer <token>`.
    public static let authorization = "Authorization"
    /// The largest workdir upload a server takes unless configured otherwise.
    public static let defaultMaxUploadBytes: Int64 = 512 * 1024 * 1024
    /// JSON as the API writes it: ISO 8601 dates (with milliseconds), sorted keys.
    public static var encoder: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .custom { date, encoder in
            var c = encoder.singleValueContainer()
            try c.encode(APIDate.format(date))
        }
        return e
    }
    public static var decoder: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .custom { decoder in
            let c = try decoder.singleValueContainer()
            let s = try c.decode(String.self)
            guard let date = APIDate.parse(s) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "Not an ISO 8601 date: \(s)")
            }
            return date
        }
        return d
    }
}

/// ISO 8601 with milliseconds (`2026-11-30T07:40:12.345Z`); parses without them too.
enum APIDate {
    static func format(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
    static func parse(_ s: String) -> Date? {
        (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(s)) ?? (try? Date.ISO8601FormatStyle().parse(s))
    }
}

/// An error answer (every status ≥ 400): the same ``CapstanError`` the embedded CLI prints.
public struct APIErrorBody: Sendable, Codable {
    public var error: CapstanError
    public init(error: CapstanError) { self.error = error }
}

/// `GET /v1/health` (no token needed).
public struct HealthResponse: Sendable, Codable, Hashable {
    public var status: String
    public var version: String
    /// This replica's name (`<host>:<pid>`).
    public var replica: String
    /// `sqlite` or `postgres`.
    public var store: String
    public init(status: String, version: String, replica: String, store: String) {
        self.status = status
        self.version = version
        self.replica = replica
        self.store = store
    }
}

/// `POST /v1/offers` — `capstan offers`.
public struct OffersRequest: Sendable, Codable, Hashable {
    public var request: ResourceRequest
    /// Ask every provider now instead of using cached offers.
    public var refresh: Bool
    public init(request: ResourceRequest, refresh: Bool = false) {
        self.request = request
        self.refresh = refresh
    }

    enum CodingKeys: String, CodingKey { case request, refresh }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        request = try c.decode(ResourceRequest.self, forKey: .request)
        refresh = try c.decodeIfPresent(Bool.self, forKey: .refresh) ?? false
    }
}

/// The answer of `POST /v1/offers`, and what `capstan offers --json` prints.
public struct OffersResponse: Sendable, Codable, Hashable {
    public struct Problem: Sendable, Codable, Hashable {
        public var provider: String
        public var error: CapstanError
        public init(provider: String, error: CapstanError) {
            self.provider = provider
            self.error = error
        }
    }
    public var request: ResourceRequest
    /// Ranked, cheapest first.
    public var offers: [RankedOffer]
    public var rejected: [OfferRejection]
    public var providers: [ProviderReport]
    /// Providers configured but not in use (plugin missing, settings refused).
    public var problems: [Problem]

    public init(result: OfferSearchResult, problems: [Problem]) {
        self.request = result.request
        self.offers = result.ranked
        self.rejected = result.rejected
        self.providers = result.providers
        self.problems = problems
    }
}

/// `POST /v1/clusters` — `capstan up`. Answers a ``ProvisionReport`` (status 200 whether or not
/// the cluster came up: the report says; the CLI exits 1 when it is not running).
public struct UpRequest: Sendable, Codable, Hashable {
    public var name: String
    public var request: ResourceRequest
    public var refresh: Bool
    /// Autostop after this many minutes without a job (``Cluster/idleMinutes``).
    public var idleMinutes: Int?
    public init(name: String, request: ResourceRequest, refresh: Bool = false, idleMinutes: Int? = nil) {
        self.name = name
        self.request = request
        self.refresh = refresh
        self.idleMinutes = idleMinutes
    }

    enum CodingKeys: String, CodingKey { case name, request, refresh, idleMinutes }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        request = try c.decode(ResourceRequest.self, forKey: .request)
        refresh = try c.decodeIfPresent(Bool.self, forKey: .refresh) ?? false
        idleMinutes = try c.decodeIfPresent(Int.self, forKey: .idleMinutes)
    }
}

/// `POST /v1/clusters/{name}/move`.
public struct MoveRequest: Sendable, Codable, Hashable {
    public var refresh: Bool
    public init(refresh: Bool = false) { self.refresh = refresh }

    enum CodingKeys: String, CodingKey { case refresh }
    public init(from decoder: any Decoder) throws {
        refresh = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(Bool.self, forKey: .refresh) ?? false
    }
}

/// One cluster as `capstan status --json` prints it.
public struct ClusterStatusRow: Sendable, Codable, Hashable {
    public var cluster: Cluster
    public var instances: [InstanceRecord]
    public var uptimeSeconds: Double
    public var costSoFar: Double
    public init(cluster: Cluster, instances: [InstanceRecord], uptimeSeconds: Double, costSoFar: Double) {
        self.cluster = cluster
        self.instances = instances
        self.uptimeSeconds = uptimeSeconds
        self.costSoFar = costSoFar
    }

    /// A cluster's row at `now`.
    public init(cluster c: Cluster, instances: [InstanceRecord], now: Date) {
        let end = c.terminatedAt ?? now
        self.init(cluster: c, instances: instances, uptimeSeconds: c.readyAt.map { end.timeIntervalSince($0) } ?? 0, costSoFar: instances.reduce(0) { $0 + $1.cost(now: now) })
    }
}

/// `GET /v1/costs/jobs` — what each job of a `GET /v1/jobs` page has cost so far, in dollars
/// (``JobCost``), by job id.
public struct JobCostsResponse: Sendable, Codable, Hashable {
    public var costs: [String: Double]
    public init(costs: [String: Double]) { self.costs = costs }
}

/// `GET /v1/clusters` — `capstan status`.
public struct StatusResponse: Sendable, Codable, Hashable {
    public var clusters: [ClusterStatusRow]
    public var reconcile: ReconcileReport
    public init(clusters: [ClusterStatusRow], reconcile: ReconcileReport) {
        self.clusters = clusters
        self.reconcile = reconcile
    }
}

/// `POST /v1/uploads` answer: a workdir (a tar stream) the server has unpacked, for a launch.
public struct UploadResponse: Sendable, Codable, Hashable {
    public var id: String
    public var bytes: Int64
    public init(id: String, bytes: Int64) {
        self.id = id
        self.bytes = bytes
    }
}

/// `POST /v1/jobs` — `capstan launch`. Answers the new ``JobRecord`` (201); the server's own
/// controller runs it from then on.
public struct LaunchJobRequest: Sendable, Codable, Hashable {
    /// The job spec (YAML) as the user wrote it.
    public var spec: String
    /// The upload holding the spec's workdir (its relative `workdir`, unpacked), if it has one.
    public var upload: String?
    /// Run on this running cluster instead of provisioning one.
    public var cluster: String?
    /// Run settings; in a request, any subset of ``JobSettings``'s fields (the rest default).
    public var settings: JobSettings?
    public init(spec: String, upload: String? = nil, cluster: String? = nil, settings: JobSettings? = nil) {
        self.spec = spec
        self.upload = upload
        self.cluster = cluster
        self.settings = settings
    }

    enum CodingKeys: String, CodingKey { case spec, upload, cluster, settings }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        spec = try c.decode(String.self, forKey: .spec)
        upload = try c.decodeIfPresent(String.self, forKey: .upload)
        cluster = try c.decodeIfPresent(String.self, forKey: .cluster)
        settings = try c.decodeIfPresent([String: JSONValue].self, forKey: .settings).map { try Self.settings(from: $0, path: c.codingPath + [CodingKeys.settings]) }
    }

    /// A partial settings object laid over the defaults; an unknown field is an error.
    static func settings(from partial: [String: JSONValue], path: [any CodingKey]) throws -> JobSettings {
        let defaults = try JSONDecoder().decode([String: JSONValue].self, from: JSONEncoder().encode(JobSettings()))
        var merged = defaults
        for (key, value) in partial {
            // `env` (launch --env) has no default to list; `notify` is the server's own to set.
            guard defaults[key] != nil || key == "env" else {
                throw DecodingError.dataCorrupted(.init(codingPath: path, debugDescription: "Unknown setting `\(key)`; the settings are \((defaults.keys + ["env"]).sorted().joined(separator: ", "))."))
            }
            merged[key] = value
        }
        return try JSONDecoder().decode(JobSettings.self, from: JSONEncoder().encode(merged))
    }
}

/// One line of `GET /v1/jobs/{id}/logs` (NDJSON, one object per line). Exactly one field is set.
public struct LogStreamItem: Sendable, Codable, Hashable {
    /// A line of node `node`'s log.
    public var node: Int?
    public var line: String?
    /// A job event (with `events=true`): status changes, checkpoints, replacements.
    public var event: StateEvent?
    /// The last item: the job as it is when the stream ends (finished, when following).
    public var end: JobRecord?

    public init(node: Int, line: String) {
        self.node = node
        self.line = line
    }
    public init(event: StateEvent) { self.event = event }
    public init(end: JobRecord) { self.end = end }
}

/// `GET /v1/jobs/{id}/telemetry`: the newest CPU, memory and GPU sample of each node of a
/// job, by node (docs/telemetry.md).
public struct TelemetryResponse: Sendable, Codable, Hashable {
    public var nodes: [NodeTelemetry]
    public init(nodes: [NodeTelemetry]) { self.nodes = nodes }
}
