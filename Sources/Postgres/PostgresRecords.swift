import CapstanCore
import Foundation
import PostgresNIO

// The records' PostgreSQL mapping: which columns a SELECT reads, in what order, and how a row
// becomes a record. JSON columns are read as text (`col::text`) and decoded with the same
// encoding as the SQLite store's JSON columns.

enum JSONColumn {
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dataEncodingStrategy = .base64
        e.dateEncodingStrategy = .millisecondsSince1970
        e.nonConformingFloatEncodingStrategy = .throw
        e.outputFormatting = .sortedKeys
        return e
    }()
    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dataDecodingStrategy = .base64
        d.dateDecodingStrategy = .millisecondsSince1970
        return d
    }()

    /// `value` as JSON text for a jsonb column (jsonb cannot hold `\u0000`: see ``PGText``).
    static func encode<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encoder.encode(value), as: UTF8.self).replacingOccurrences(of: "\\u0000", with: "\\ufffd")
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try decoder.decode(type, from: Data(text.utf8))
    }
}

extension String {
    /// PostgreSQL's text cannot hold NUL: it is stored as U+FFFD (SQLite keeps it).
    var pg: String { contains("\u{0}") ? replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") : self }
}

extension Optional where Wrapped == String {
    var pg: String? { map(\.pg) }
}

/// Reads a row's cells in order.
struct Cells {
    private var iterator: PostgresRow.Iterator
    init(_ row: PostgresRow) { iterator = row.makeIterator() }

    mutating func next<T: PostgresDecodable>(_: T.Type = T.self) throws -> T {
        guard let cell = iterator.next() else { throw CapstanError(.internalError, "A state database row has fewer columns than expected.") }
        return try cell.decode(T.self)
    }

    mutating func json<T: Decodable>(_: T.Type = T.self) throws -> T {
        try JSONColumn.decode(T.self, try next(String.self))
    }

    mutating func optionalJSON<T: Decodable>(_: T.Type = T.self) throws -> T? {
        try next(String?.self).map { try JSONColumn.decode(T.self, $0) }
    }

    mutating func int() throws -> Int { try next(Int.self) }
    mutating func optionalInt() throws -> Int? { try next(Int?.self) }
}

extension Cluster {
    static let columns = "id, name, status, request::text, offer::text, spot, nodes, price_per_hour, intent_key, created_at, ready_at, terminated_at, last_error, idle_minutes"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        let id: String = try c.next(), name: String = try c.next(), status: String = try c.next()
        self.init(id: id, name: name, request: try c.json(ResourceRequest.self))
        self.status = try ClusterStatus.decode(status)
        offer = try c.optionalJSON(Offer.self)
        spot = try c.next()
        nodes = try c.int()
        pricePerHour = try c.next()
        intentKey = try c.next()
        createdAt = try c.next()
        readyAt = try c.next()
        terminatedAt = try c.next()
        lastError = try c.next()
        idleMinutes = try c.optionalInt()
    }
}

extension LaunchIntent {
    static let columns = "key, cluster_id, provider, offer::text, count, spot, tags::text, status, created_at, updated_at, error, pid"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        let key: String = try c.next(), clusterID: String = try c.next(), provider: String = try c.next()
        let offer = try c.json(Offer.self)
        let count = try c.int()
        let spot: Bool = try c.next()
        let tags = try c.json([String: String].self)
        let status = try Status.decode(try c.next(String.self))
        self.init(key: key, clusterID: clusterID, provider: provider, offer: offer, count: count, spot: spot, tags: tags, status: status,
                  createdAt: try c.next(), updatedAt: try c.next(), error: try c.next(), pid: Int32(clamping: try c.int()))
    }
}

extension InstanceRecord {
    static let columns = "provider, id, cluster_id, intent_key, state, price_per_hour, launched_at, terminated_at, instance::text"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        let provider: String = try c.next(), id: String = try c.next(), clusterID: String = try c.next(), intentKey: String = try c.next()
        let state = try Instance.State.decode(try c.next(String.self))
        let price: Double? = try c.next(), launchedAt: Date = try c.next(), terminatedAt: Date? = try c.next()
        let instance = try c.json(Instance.self)
        self.init(instance: instance, clusterID: clusterID, intentKey: intentKey)
        self.provider = provider
        self.id = id
        self.state = state
        self.pricePerHour = price
        self.launchedAt = launchedAt
        self.terminatedAt = terminatedAt
    }
}

extension StateEvent {
    static let columns = "id, time, cluster_id, kind, message"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        let id: Int64 = try c.next(), time: Date = try c.next(), clusterID: String? = try c.next()
        self.init(clusterID: clusterID, kind: try c.next(), message: try c.next(), time: time)
        self.id = id
    }
}

extension JobRecord {
    static let columns = "id, name, status, spec, spec_folder, settings, cluster_name, owns_cluster, storage, attempt, restarts, latest_checkpoint, created_at, started_at, finished_at, last_error, controller_pid, metrics, controller_fence, controller_holder"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        let id: String = try c.next(), name: String = try c.next(), status = try JobStatus.decode(try c.next(String.self))
        let spec: String = try c.next(), specFolder: String = try c.next(), settings: String = try c.next()
        let clusterName: String = try c.next(), ownsCluster: Bool = try c.next(), storage: String = try c.next()
        self.init(id: id, name: name, spec: spec, specFolder: specFolder, settings: settings, clusterName: clusterName, ownsCluster: ownsCluster, storage: storage)
        self.status = status
        attempt = try c.int()
        restarts = try c.int()
        latestCheckpoint = try c.optionalInt()
        createdAt = try c.next()
        startedAt = try c.next()
        finishedAt = try c.next()
        lastError = try c.next()
        controllerPID = try c.optionalInt().map { Int32(clamping: $0) }
        metrics = try c.next()
        controllerFence = try c.next()
        controllerHolder = try c.next()
    }
}

extension JobAttemptRecord {
    static let columns = "job_id, attempt, outcome, nodes::text, master_address, master_port, resume_step, started_at, ended_at, failure_kind, failed_node, exit_code, message"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        let jobID: String = try c.next(), attempt = try c.int(), outcome = try Outcome.decode(try c.next(String.self))
        let nodes = try c.json([String].self), masterAddress: String = try c.next(), masterPort = try c.int()
        let resumeStep = try c.optionalInt(), startedAt: Date = try c.next()
        self.init(jobID: jobID, attempt: attempt, nodes: nodes, masterAddress: masterAddress, masterPort: masterPort, resumeStep: resumeStep, startedAt: startedAt)
        self.outcome = outcome
        endedAt = try c.next()
        failureKind = try c.next()
        failedNode = try c.optionalInt()
        exitCode = try c.optionalInt()
        message = try c.next()
    }
}

extension CheckpointRecord {
    static let columns = "job_id, step, attempt, bytes, committed_at, deleted"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        self.init(jobID: try c.next(), step: try c.int(), attempt: try c.int(), bytes: try c.next(), committedAt: try c.next(), deleted: try c.next())
    }
}

extension APIToken {
    static let columns = "id, name, hash, created_at, revoked_at, last_used_at"

    init(row: PostgresRow) throws {
        var c = Cells(row)
        self.init(id: try c.next(), name: try c.next(), hash: try c.next(), createdAt: try c.next())
        revokedAt = try c.next()
        lastUsedAt = try c.next()
    }
}

extension RawRepresentable where RawValue == String {
    /// The enum case stored as text, or a clear error for a value this Capstan does not know.
    static func decode(_ raw: String) throws -> Self {
        guard let v = Self(rawValue: raw) else {
            throw CapstanError(.internalError, "The state database holds '\(raw)', which this Capstan does not know as a \(Self.self).", hint: "A newer Capstan may have written it: upgrade.")
        }
        return v
    }
}
