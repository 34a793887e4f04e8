public import CapstanCore
public import Foundation
import PostgresNIO

// Clusters, intents, instances, events and the offer cache: SQLiteStateStore's semantics,
// statement for statement.

extension PostgresStateStore {
    static let liveStatuses = "('provisioning', 'running', 'terminating')"

    // MARK: - Clusters

    /// Inserts a new cluster; fails with `.invalidRequest` when a live one has the name (the
    /// partial unique index `cluster_live_name` settles a race between two inserts).
    public func insert(_ cluster: Cluster) async throws {
        let logger = self.logger
        let request = try JSONColumn.encode(cluster.request), offer = try cluster.offer.map { try JSONColumn.encode($0) }
        do {
            try await transaction { conn in
                let live = try await Self.rows(try await conn.query("SELECT status FROM cluster WHERE name = \(cluster.name) AND status IN \(unescaped: Self.liveStatuses) LIMIT 1", logger: logger)) { try $0.decode(String.self) }
                if let status = live.first { throw Self.nameTaken(cluster.name, status) }
                try await conn.query("""
                    INSERT INTO cluster (\(unescaped: Cluster.columns.replacingOccurrences(of: "::text", with: "")))
                    VALUES (\(cluster.id), \(cluster.name), \(cluster.status.rawValue), \(request)::jsonb, \(offer)::jsonb, \(cluster.spot), \(cluster.nodes),
                            \(cluster.pricePerHour), \(cluster.intentKey), \(cluster.createdAt), \(cluster.readyAt), \(cluster.terminatedAt), \(cluster.lastError.pg), \(cluster.idleMinutes))
                    """, logger: logger)
            }
        } catch let e as CapstanError where e.code == .invalidRequest && e.message.contains("cluster_live_name") {
            throw Self.nameTaken(cluster.name, "live")
        }
    }

    static func nameTaken(_ name: String, _ status: String) -> CapstanError {
        CapstanError(.invalidRequest, "A cluster named '\(name)' already exists (\(status)).", hint: "Pick another name, or run `capstan down \(name)` first.")
    }

    public func update(_ cluster: Cluster) async throws {
        let request = try JSONColumn.encode(cluster.request), offer = try cluster.offer.map { try JSONColumn.encode($0) }
        let n = try await execute("""
            UPDATE cluster SET name = \(cluster.name), status = \(cluster.status.rawValue), request = \(request)::jsonb, offer = \(offer)::jsonb,
                spot = \(cluster.spot), nodes = \(cluster.nodes), price_per_hour = \(cluster.pricePerHour), intent_key = \(cluster.intentKey),
                created_at = \(cluster.createdAt), ready_at = \(cluster.readyAt), terminated_at = \(cluster.terminatedAt),
                last_error = \(cluster.lastError.pg), idle_minutes = \(cluster.idleMinutes)
            WHERE id = \(cluster.id) RETURNING 1
            """)
        if n == 0 { throw Self.missing("cluster", cluster.id) }
    }

    /// What an update of a row that is not there throws (as SQLiteStateStore does).
    static func missing(_ table: String, _ key: String) -> CapstanError {
        CapstanError(.notFound, "No \(table) '\(key)' in the state database to update.", hint: "It was never inserted, or was deleted.")
    }

    /// The live cluster called `name`, else the most recent finished one.
    public func cluster(named name: String) async throws -> Cluster? {
        try await one("""
            SELECT \(unescaped: Cluster.columns) FROM cluster WHERE name = \(name)
            ORDER BY (status IN \(unescaped: Self.liveStatuses)) DESC, created_at DESC LIMIT 1
            """, Cluster.init(row:))
    }

    public func cluster(id: String) async throws -> Cluster? {
        try await one("SELECT \(unescaped: Cluster.columns) FROM cluster WHERE id = \(id)", Cluster.init(row:))
    }

    public func clusters(includeFinished: Bool = false) async throws -> [Cluster] {
        try await all("""
            SELECT \(unescaped: Cluster.columns) FROM cluster
            \(unescaped: includeFinished ? "" : "WHERE status IN \(Self.liveStatuses)") ORDER BY created_at, id
            """, Cluster.init(row:))
    }

    public func clusters(named names: [String]) async throws -> [Cluster] {
        let unique = Array(Set(names))
        guard !unique.isEmpty else { return [] }
        return try await all("SELECT \(unescaped: Cluster.columns) FROM cluster WHERE name = ANY(\(unique)) ORDER BY created_at, id", Cluster.init(row:))
    }

    // MARK: - Intents

    public func insert(_ intent: LaunchIntent) async throws {
        let offer = try JSONColumn.encode(intent.offer), tags = try JSONColumn.encode(intent.tags)
        try await execute("""
            INSERT INTO intent (key, cluster_id, provider, offer, count, spot, tags, status, created_at, updated_at, error, pid)
            VALUES (\(intent.key), \(intent.clusterID), \(intent.provider), \(offer)::jsonb, \(intent.count), \(intent.spot), \(tags)::jsonb,
                    \(intent.status.rawValue), \(intent.createdAt), \(intent.updatedAt), \(intent.error.pg), \(Int(intent.pid)))
            """)
    }

    public func setIntent(_ key: String, status: LaunchIntent.Status, error: String? = nil) async throws {
        // Only a pending intent is abandoned: one its process has just closed keeps its status.
        if status == .abandoned {
            try await execute("UPDATE intent SET status = \(status.rawValue), error = COALESCE(\(error.pg), error), updated_at = \(Date()) WHERE key = \(key) AND status = 'pending'")
        } else {
            try await execute("UPDATE intent SET status = \(status.rawValue), error = COALESCE(\(error.pg), error), updated_at = \(Date()) WHERE key = \(key)")
        }
    }

    public func intent(_ key: String) async throws -> LaunchIntent? {
        try await one("SELECT \(unescaped: LaunchIntent.columns) FROM intent WHERE key = \(key)", LaunchIntent.init(row:))
    }

    public func intents(cluster id: String? = nil, status: LaunchIntent.Status? = nil) async throws -> [LaunchIntent] {
        try await all("""
            SELECT \(unescaped: LaunchIntent.columns) FROM intent
            WHERE (\(id)::text IS NULL OR cluster_id = \(id)) AND (\(status?.rawValue)::text IS NULL OR status = \(status?.rawValue))
            ORDER BY created_at, key
            """, LaunchIntent.init(row:))
    }

    // MARK: - Instances

    /// Records what a provider said about an instance (insert or update) and returns it as
    /// recorded: Capstan's own tags (`capstan:*`), once recorded, stand whatever a provider
    /// later echoes or drops. The row is read `FOR UPDATE`, so two recorders of one instance
    /// merge one after the other.
    @discardableResult
    public func record(_ instance: Instance, clusterID: String, intentKey: String) async throws -> Instance {
        let logger = self.logger
        // A concurrent first record of the same instance makes the INSERT find a row: go round
        // again, and merge into it.
        for _ in 0..<3 {
            let recorded: Instance? = try await transaction { conn in
                let existing = try await Self.rows(try await conn.query("""
                    SELECT instance::text, terminated_at FROM instance WHERE provider = \(instance.provider) AND id = \(instance.id) FOR UPDATE
                    """, logger: logger)) { row -> (Instance, Date?) in
                    var c = Cells(row)
                    return (try c.json(Instance.self), try c.next(Date?.self))
                }.first
                if case let (old, terminatedAt)? = existing {
                    var merged = instance
                    for (k, v) in old.tags where CapstanTags.isCapstan(k) { merged.tags[k] = v }
                    let json = try JSONColumn.encode(merged)
                    let ended = merged.state.isGone && terminatedAt == nil ? Date() : terminatedAt
                    try await conn.query("""
                        UPDATE instance SET state = \(merged.state.rawValue), instance = \(json)::jsonb, terminated_at = \(ended)
                        WHERE provider = \(instance.provider) AND id = \(instance.id)
                        """, logger: logger)
                    return merged
                }
                let r = InstanceRecord(instance: instance, clusterID: clusterID, intentKey: intentKey)
                let json = try JSONColumn.encode(instance)
                let inserted: [Void] = try await Self.rows(try await conn.query("""
                    INSERT INTO instance (provider, id, cluster_id, intent_key, state, price_per_hour, launched_at, terminated_at, instance)
                    VALUES (\(r.provider), \(r.id), \(r.clusterID), \(r.intentKey), \(r.state.rawValue), \(r.pricePerHour), \(r.launchedAt), \(r.terminatedAt), \(json)::jsonb)
                    ON CONFLICT (provider, id) DO NOTHING RETURNING 1
                    """, logger: logger)) { _ in () }
                return inserted.isEmpty ? nil : instance
            }
            if let recorded { return recorded }
        }
        throw CapstanError(.io, "Cannot record instance \(instance.provider)/\(instance.id) in the state database \(location): it kept changing under us.")
    }

    /// The recorded instance with this provider and id, if any.
    public func instance(provider: String, id: String) async throws -> InstanceRecord? {
        try await one("SELECT \(unescaped: InstanceRecord.columns) FROM instance WHERE provider = \(provider) AND id = \(id)", InstanceRecord.init(row:))
    }

    public func instances(cluster id: String) async throws -> [InstanceRecord] {
        try await all("SELECT \(unescaped: InstanceRecord.columns) FROM instance WHERE cluster_id = \(id) ORDER BY launched_at, id", InstanceRecord.init(row:))
    }

    /// One set query for every cluster's instances (`capstan status`), each list in
    /// ``instances(cluster:)``'s order.
    public func instances(clusters ids: [String]) async throws -> [String: [InstanceRecord]] {
        let unique = Array(Set(ids))
        guard !unique.isEmpty else { return [:] }
        var out: [String: [InstanceRecord]] = [:]
        for r in try await all("SELECT \(unescaped: InstanceRecord.columns) FROM instance WHERE cluster_id = ANY(\(unique)) ORDER BY launched_at, id", InstanceRecord.init(row:)) {
            out[r.clusterID, default: []].append(r)
        }
        return out
    }

    public func instances(providers names: [String]) async throws -> [InstanceRecord] {
        guard !names.isEmpty else { return [] }
        return try await all("SELECT \(unescaped: InstanceRecord.columns) FROM instance WHERE provider = ANY(\(names)) ORDER BY provider, id", InstanceRecord.init(row:))
    }

    public func allInstances() async throws -> [InstanceRecord] {
        try await all("SELECT \(unescaped: InstanceRecord.columns) FROM instance ORDER BY provider, id", InstanceRecord.init(row:))
    }

    // MARK: - Events

    /// Records an event; never fails its caller (an event that cannot be written is logged and dropped).
    public func event(_ kind: String, _ message: String, cluster: String? = nil) async {
        await writeEvent(kind, message, cluster: cluster, job: nil)
    }

    func writeEvent(_ kind: String, _ message: String, cluster: String?, job: String?) async {
        let logger = self.logger
        do {
            try await transaction { conn in
                try await Self.lockEventOrder(conn, logger: logger)
                try await conn.query("INSERT INTO event (time, cluster_id, job_id, kind, message) VALUES (\(Date()), \(cluster), \(job), \(kind.pg), \(message.pg))", logger: logger)
            }
        } catch {
            logger.warning("event not written", metadata: ["kind": "\(kind)", "error": "\(error)"])
        }
    }

    /// Event ids come from a sequence when a row is inserted, so two writers could commit them
    /// out of order, and a follower paging with `id > after` would skip the one committed late.
    /// Every event insert takes this transaction lock first: ids commit in the order they are
    /// given (events are few; the lock is held for one insert).
    static func lockEventOrder(_ conn: PostgresConnection, logger: Logger) async throws {
        try await conn.query("SELECT pg_advisory_xact_lock(\(Self.eventOrderLock))", logger: logger)
    }

    /// The advisory lock key of event inserts ("capstan" "event" in ASCII, as one bigint).
    static let eventOrderLock: Int64 = 0x6361_7073_6576_6E74

    /// The newest `limit` events (of one cluster, or all), oldest first.
    public func events(cluster id: String? = nil, limit: Int = 200) async throws -> [StateEvent] {
        try await all("""
            SELECT \(unescaped: StateEvent.columns) FROM event WHERE (\(id)::text IS NULL OR cluster_id = \(id)) ORDER BY id DESC LIMIT \(max(0, limit))
            """, StateEvent.init(row:)).reversed()
    }

    // MARK: - Offer cache

    func cachedOffers(provider: String, requestKey: String, maxAge: Duration, now: Date) async throws -> (offers: [Offer], fetchedAt: Date)? {
        let found = try await one("SELECT fetched_at, offers::text FROM offer_cache WHERE provider = \(provider) AND request_key = \(requestKey)") { row -> CachedOffers in
            var c = Cells(row)
            return CachedOffers(fetchedAt: try c.next(), offers: try c.json())
        }
        guard let r = found else { return nil }
        guard now.timeIntervalSince(r.fetchedAt) <= maxAge.seconds, r.fetchedAt <= now.addingTimeInterval(60) else { return nil }
        return (r.offers, r.fetchedAt)
    }

    func cacheOffers(_ offers: [Offer], provider: String, requestKey: String, now: Date) async throws {
        let json = try JSONColumn.encode(offers)
        try await execute("""
            INSERT INTO offer_cache (provider, request_key, fetched_at, offers) VALUES (\(provider), \(requestKey), \(now), \(json)::jsonb)
            ON CONFLICT (provider, request_key) DO UPDATE SET fetched_at = EXCLUDED.fetched_at, offers = EXCLUDED.offers
            """)
    }

    public func cachedOffers(provider: String, requestKey: String, maxAge: Duration) async throws -> (offers: [Offer], fetchedAt: Date)? {
        try await cachedOffers(provider: provider, requestKey: requestKey, maxAge: maxAge, now: Date())
    }

    public func cacheOffers(_ offers: [Offer], provider: String, requestKey: String) async throws {
        try await cacheOffers(offers, provider: provider, requestKey: requestKey, now: Date())
    }
}

struct CachedOffers: Sendable {
    var fetchedAt: Date
    var offers: [Offer]
}
