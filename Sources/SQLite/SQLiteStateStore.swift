public import CapstanCore
public import CapstanRuntime
public import Foundation
public import GRDB
#if canImport(Glibc)
import Glibc
#endif

/// Capstan's state: clusters, instances, launch intents, jobs, attempts, checkpoints, events and
/// the offer cache, in one
/// SQLite file (WAL mode) — `$CAPSTAN_HOME/state/capstan.db` by default, or any path a library
/// user chooses. Safe to use from several threads and several processes at once.
public final class SQLiteStateStore: StateStore {
    public let path: String
    public var location: String { path }
    /// Where the owner id is kept apart from the database, so it survives the database's loss
    /// (nil: only in the database).
    public let identityFile: String?
    let db: DatabasePool

    /// Opens (creating and migrating as needed) the database at `path`. With `identityFile`,
    /// the owner id (``ownerID()``) lives in that file too and wins over the database's: a
    /// database lost, emptied or moved aside keeps its owner, so reconcile still finds every
    /// instance this installation ever launched.
    /// `faults`: the test hook `state.owner-written` (the identity file written, the database's
    /// copy not yet committed).
    public convenience init(path: String, identityFile: String? = nil) throws {
        try self.init(path: path, identityFile: identityFile, faults: .none)
    }

    package init(path: String, identityFile: String? = nil, faults: FaultPoints) throws {
        self.path = path
        self.identityFile = identityFile
        do {
            try PrivateFile.createFolder((path as NSString).deletingLastPathComponent)
            var config = Configuration()
            config.busyMode = .timeout(10)
            // Several processes may open a brand-new home at once: one creates the schema while
            // the others wait (SQLite's own locking does not cover "does the table exist yet").
            let guardLock = try FileLock.exclusive(path + ".open-lock")
            defer { guardLock.release() }
            Self.makePrivate(path)
            db = try DatabasePool(path: path, configuration: config)
            try Self.migrator.migrate(db)
            if let identityFile { try Self.syncOwner(db, file: identityFile, faults: faults) }
        } catch let e as CapstanError {
            throw e
        } catch {
            throw CapstanError(.io, "Cannot open the state database \(path): \(error).", hint: "Check the folder's permissions and free space; if the file is corrupt, move it aside (Capstan keeps its owner id in \(identityFile ?? "the database") and the next `capstan reconcile` recovers every cluster from the clouds' tags).")
        }
    }

    /// Makes the database file 0600 before SQLite opens it — SQLite gives its `-wal` and `-shm`
    /// files the database's own mode — creating it empty if missing (SQLite takes an empty file
    /// for a new database), and tightens files an older Capstan left readable by others. The
    /// database holds job specs, their `env:` values included.
    static func makePrivate(_ path: String) {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd >= 0 { Glibc.close(fd) }
        for file in [path, path + "-wal", path + "-shm", path + ".open-lock"] { PrivateFile.restrict(file) }
    }

    /// The store in `home` (`state/capstan.db`), its owner id kept in `home/owner-id`.
    public static func open(home: CapstanHome) throws -> SQLiteStateStore { try open(home: home, faults: .none) }

    /// ``open(home:)`` with the test hooks of ``FaultPoints``.
    package static func open(home: CapstanHome, faults: FaultPoints) throws -> SQLiteStateStore {
        try SQLiteStateStore(path: home.stateFolder + "/capstan.db", identityFile: home.ownerIDFile, faults: faults)
    }

    /// Makes the database's owner id and the identity file agree: the file wins; a database
    /// that had another id keeps it as a former owner (reconcile still lists its instances);
    /// a missing file is written from the database's id (or a new one).
    static func syncOwner(_ db: DatabasePool, file: String, faults: FaultPoints) throws {
        let fromFile = (try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if let fromFile, !fromFile.isEmpty, fromFile.range(of: "^[a-z0-9-]{1,64}$", options: .regularExpression) == nil {
            throw CapstanError(.config, "The owner id file \(file) is damaged (it holds something other than an id).", hint: "Restore it from a backup: it names every instance this home launched. Removing it makes a new id, and instances tagged with the old one are no longer found.")
        }
        // The usual open: file and database agree, nothing to write.
        if let fromFile, !fromFile.isEmpty, try db.read({ try String.fetchOne($0, sql: "SELECT value FROM meta WHERE key = 'owner'") }) == fromFile { return }
        try db.write { db in
            let current = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'owner'")
            if let fromFile, !fromFile.isEmpty {
                guard current != fromFile else { return }
                if let current {
                    try db.execute(sql: "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", arguments: ["owner.former." + current, current])
                }
                try db.execute(sql: "INSERT OR REPLACE INTO meta(key, value) VALUES ('owner', ?)", arguments: [fromFile])
            } else {
                let id = current ?? newOwnerID()
                if current == nil { try db.execute(sql: "INSERT INTO meta(key, value) VALUES ('owner', ?)", arguments: [id]) }
                try writeIdentity(id, to: file)
                faults.hit("state.owner-written")
            }
        }
    }

    static func newOwnerID() -> String { UUID().uuidString.lowercased().prefix(12).description }

    /// Writes `id` to `file` atomically (temp file, fsync, rename), mode 0600.
    static func writeIdentity(_ id: String, to file: String) throws {
        let tmp = file + ".tmp-\(getpid())"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CapstanError(.io, "Cannot write the owner id file \(file): \(String(cString: strerror(errno))).", hint: "Check the home folder's permissions.") }
        let bytes = Array((id + "\n").utf8)
        let ok = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count && fsync(fd) == 0
        Glibc.close(fd)
        guard ok, rename(tmp, file) == 0 else {
            unlink(tmp)
            throw CapstanError(.io, "Cannot write the owner id file \(file).", hint: "Check free space and the home folder's permissions.")
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: "meta") { t in
                t.primaryKey("key", .text)
                t.column("value", .text).notNull()
            }
            try db.create(table: "cluster") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull()
                t.column("status", .text).notNull()
                t.column("request", .text).notNull()
                t.column("offer", .text)
                t.column("spot", .boolean).notNull()
                t.column("nodes", .integer).notNull()
                t.column("pricePerHour", .double)
                t.column("intentKey", .text)
                t.column("createdAt", .datetime).notNull()
                t.column("readyAt", .datetime)
                t.column("terminatedAt", .datetime)
                t.column("lastError", .text)
            }
            // One live cluster per name; finished ones are kept as history.
            try db.execute(sql: "CREATE UNIQUE INDEX cluster_live_name ON cluster(name) WHERE status IN ('provisioning','running','terminating')")
            try db.create(table: "intent") { t in
                t.primaryKey("key", .text)
                t.column("clusterID", .text).notNull().indexed()
                t.column("provider", .text).notNull()
                t.column("offer", .text).notNull()
                t.column("count", .integer).notNull()
                t.column("spot", .boolean).notNull()
                t.column("tags", .text).notNull()
                t.column("status", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("updatedAt", .datetime).notNull()
                t.column("error", .text)
                t.column("pid", .integer).notNull()
            }
            try db.create(table: "instance") { t in
                t.column("provider", .text).notNull()
                t.column("id", .text).notNull()
                t.primaryKey(["provider", "id"])
                t.column("clusterID", .text).notNull().indexed()
                t.column("intentKey", .text).notNull()
                t.column("state", .text).notNull()
                t.column("pricePerHour", .double)
                t.column("launchedAt", .datetime).notNull()
                t.column("terminatedAt", .datetime)
                t.column("instance", .text).notNull()
            }
            try db.create(table: "event") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("time", .datetime).notNull()
                t.column("clusterID", .text).indexed()
                t.column("kind", .text).notNull()
                t.column("message", .text).notNull()
            }
            try db.create(table: "offerCache") { t in
                t.column("provider", .text).notNull()
                t.column("requestKey", .text).notNull()
                t.primaryKey(["provider", "requestKey"])
                t.column("fetchedAt", .datetime).notNull()
                t.column("offers", .text).notNull()
            }
        }
        registerJobMigrations(&m)
        // When this database began (for a database that predates it: when it was upgraded).
        m.registerMigration("v4-created-at") { db in
            try db.execute(sql: "INSERT OR IGNORE INTO meta(key, value) VALUES ('createdAt', ?)", arguments: [Date().timeIntervalSince1970.description])
        }
        registerControlPlaneMigrations(&m)
        // Indexes for the lookups that otherwise read whole tables, each of which grows with
        // every cluster, launch and job ever made: a cluster by name (`up`, `down`, the live-name
        // check), intents by status (every reconcile), jobs newest first, by status and by name
        // (`capstan jobs`, a job by name). Events are found by `clusterID`/`jobID` through v1's
        // and v2's indexes, which SQLite extends with the rowid (`id`), so "newest first" needs
        // no sort.
        m.registerMigration("v5-indexes") { db in
            try db.create(index: "cluster_name", on: "cluster", columns: ["name", "createdAt"])
            try db.create(index: "intent_status", on: "intent", columns: ["status", "createdAt"])
            try db.create(index: "job_created", on: "job", columns: ["createdAt"])
            try db.create(index: "job_status", on: "job", columns: ["status", "createdAt"])
            try db.create(index: "job_name", on: "job", columns: ["name", "createdAt"])
        }
        registerTelemetryMigrations(&m)
        registerOutboxMigrations(&m)
        return m
    }

    /// Writes on GRDB's writer queue: the caller suspends, the cooperative pool is not blocked.
    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do { return try await db.write(body) } catch let e as CapstanError { throw e } catch let e as DatabaseError where e.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE || e.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY {
            throw CapstanError(.invalidRequest, "State conflict: \(e.message ?? "a unique value is already taken").")
        } catch let e as RecordError {
            // An update of a record that is not there (GRDB's recordNotFound): not a disk problem.
            throw CapstanError(.notFound, "Nothing to update in the state database \(path): \(e).", hint: "It was never inserted, or was deleted.")
        } catch {
            throw CapstanError(.io, "Cannot write the state database \(path): \(error).")
        }
    }

    /// Reads on GRDB's reader queues: the caller suspends, the cooperative pool is not blocked.
    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do { return try await db.read(body) } catch let e as CapstanError { throw e } catch {
            throw CapstanError(.io, "Cannot read the state database \(path): \(error).")
        }
    }

    // MARK: - Owner

    /// A random id for this state store, put on every instance as ``CapstanTags/owner``, so that
    /// reconcile only ever touches instances this installation created (two homes may share a
    /// cloud account).
    public func ownerID() async throws -> String {
        try await write { db in
            if let v = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'owner'") { return v }
            let id = Self.newOwnerID()
            try db.execute(sql: "INSERT INTO meta(key, value) VALUES ('owner', ?)", arguments: [id])
            return id
        }
    }

    /// When this database was created (first opened by this version of Capstan). An instance of
    /// this owner launched before it, whose cluster the database does not know, is from a lost
    /// database; one launched after it is an orphan.
    public func createdAt() async throws -> Date {
        let v = try await read { try String.fetchOne($0, sql: "SELECT value FROM meta WHERE key = 'createdAt'") }
        return v.flatMap(Double.init).map { Date(timeIntervalSince1970: $0) } ?? .distantPast
    }

    /// Every owner id this store has answered to: the current one first, then any former ones
    /// (a database that met an identity file with another id). Reconcile lists all of them.
    public func ownerIDs() async throws -> [String] {
        let current = try await ownerID()
        let former = try await read { try String.fetchAll($0, sql: "SELECT value FROM meta WHERE key LIKE 'owner.former.%' ORDER BY key") }
        return [current] + former.filter { $0 != current }
    }

    // MARK: - Clusters

    /// Inserts a new cluster; fails with `.invalidRequest` when a live one has the name.
    public func insert(_ cluster: Cluster) async throws {
        try await write { db in
            if let live = try Cluster.filter(Column("name") == cluster.name).filter([ClusterStatus.provisioning, .running, .terminating].map(\.rawValue).contains(Column("status"))).fetchOne(db) {
                throw CapstanError(.invalidRequest, "A cluster named '\(cluster.name)' already exists (\(live.status.rawValue)).", hint: "Pick another name, or run `capstan down \(cluster.name)` first.")
            }
            try cluster.insert(db)
        }
    }

    public func update(_ cluster: Cluster) async throws { try await write { try cluster.update($0) } }

    /// The live cluster called `name`, else the most recent finished one.
    public func cluster(named name: String) async throws -> Cluster? {
        try await read { db in
            let all = try Cluster.filter(Column("name") == name).order(Column("createdAt").desc).fetchAll(db)
            return all.first { $0.status.isLive } ?? all.first
        }
    }

    public func cluster(id: String) async throws -> Cluster? { try await read { try Cluster.fetchOne($0, key: id) } }

    public func clusters(includeFinished: Bool = false) async throws -> [Cluster] {
        try await read { db in
            // Live ones filtered in the query: finished clusters are history that only grows.
            var query = Cluster.order(Column("createdAt"))
            if !includeFinished { query = query.filter(ClusterStatus.allCases.filter(\.isLive).map(\.rawValue).contains(Column("status"))) }
            return try query.fetchAll(db)
        }
    }

    public func clusters(named names: [String]) async throws -> [Cluster] {
        let unique = Array(Set(names))
        guard !unique.isEmpty else { return [] }
        return try await read { db in try Cluster.filter(unique.contains(Column("name"))).order(Column("createdAt")).fetchAll(db) }
    }

    // MARK: - Intents

    public func insert(_ intent: LaunchIntent) async throws { try await write { try intent.insert($0) } }

    public func setIntent(_ key: String, status: LaunchIntent.Status, error: String? = nil) async throws {
        try await write { db in
            // Only a pending intent is abandoned: one its process has just closed keeps its status.
            let onlyPending = status == .abandoned ? " AND status = 'pending'" : ""
            try db.execute(sql: "UPDATE intent SET status = ?, error = COALESCE(?, error), updatedAt = ? WHERE key = ?" + onlyPending, arguments: [status.rawValue, error, Date(), key])
        }
    }

    public func intent(_ key: String) async throws -> LaunchIntent? { try await read { try LaunchIntent.fetchOne($0, key: key) } }

    public func intents(cluster id: String? = nil, status: LaunchIntent.Status? = nil) async throws -> [LaunchIntent] {
        try await read { db in
            var q = LaunchIntent.order(Column("createdAt"))
            if let id { q = q.filter(Column("clusterID") == id) }
            if let status { q = q.filter(Column("status") == status.rawValue) }
            return try q.fetchAll(db)
        }
    }

    // MARK: - Instances

    /// Records what a provider said about an instance (insert or update) and returns the
    /// instance as recorded. Capstan's own tags (`capstan:*`, ``CapstanTags``) are Capstan's:
    /// once recorded, they stand whatever a provider later echoes (or drops), so a node keeps
    /// its index on every cloud, with or without per-instance tags.
    @discardableResult
    public func record(_ instance: Instance, clusterID: String, intentKey: String) async throws -> Instance {
        try await write { db in
            if var existing = try InstanceRecord.fetchOne(db, key: ["provider": instance.provider, "id": instance.id]) {
                var merged = instance
                for (k, v) in existing.instance.tags where CapstanTags.isCapstan(k) { merged.tags[k] = v }
                existing.state = merged.state
                existing.instance = merged
                if merged.state.isGone, existing.terminatedAt == nil { existing.terminatedAt = Date() }
                try existing.update(db)
                return merged
            } else {
                try InstanceRecord(instance: instance, clusterID: clusterID, intentKey: intentKey).insert(db)
                return instance
            }
        }
    }

    /// The recorded instance with this provider and id, if any.
    public func instance(provider: String, id: String) async throws -> InstanceRecord? {
        try await read { try InstanceRecord.fetchOne($0, key: ["provider": provider, "id": id]) }
    }

    public func instances(cluster id: String) async throws -> [InstanceRecord] {
        try await read { try InstanceRecord.filter(Column("clusterID") == id).order(Column("launchedAt"), Column("id")).fetchAll($0) }
    }

    /// One query for all of them (in chunks of 500 ids), not one per cluster: `capstan status`
    /// with 1,000 clusters reads their instances at once.
    public func instances(clusters ids: [String]) async throws -> [String: [InstanceRecord]] {
        let unique = Array(Set(ids))
        guard !unique.isEmpty else { return [:] }
        return try await read { db in
            var out: [String: [InstanceRecord]] = [:]
            for start in stride(from: 0, to: unique.count, by: 500) {
                let chunk = unique[start..<min(start + 500, unique.count)]
                // Ordered as instances(cluster:) orders one cluster's, so each list matches it.
                for r in try InstanceRecord.filter(chunk.contains(Column("clusterID"))).order(Column("launchedAt"), Column("id")).fetchAll(db) {
                    out[r.clusterID, default: []].append(r)
                }
            }
            return out
        }
    }

    public func allInstances() async throws -> [InstanceRecord] { try await read { try InstanceRecord.fetchAll($0) } }

    public func instances(providers names: [String]) async throws -> [InstanceRecord] {
        guard !names.isEmpty else { return [] }
        // The primary key (provider, id) serves this.
        return try await read { try InstanceRecord.filter(names.contains(Column("provider"))).fetchAll($0) }
    }

    // MARK: - Events

    public func event(_ kind: String, _ message: String, cluster: String? = nil) async {
        let e = StateEvent(clusterID: cluster, kind: kind, message: message)
        _ = try? await write { db in
            var e = e
            try e.insert(db)
        }
    }

    public func events(cluster id: String? = nil, limit: Int = 200) async throws -> [StateEvent] {
        try await read { db in
            var q = StateEvent.order(Column("id").desc).limit(limit)
            if let id { q = q.filter(Column("clusterID") == id) }
            return try q.fetchAll(db).reversed()
        }
    }

    // MARK: - Offer cache

    // A provider's answer is one row holding the JSON array of its offers: one write, one
    // read, however many offers (100,000 from a large catalog). The JSON is written and read by
    // OfferJSON (several times faster than JSONEncoder/JSONDecoder on that many); the database
    // work happens on GRDB's queues, the JSON off them.

    func cachedOffers(provider: String, requestKey: String, maxAge: Duration, now: Date = Date()) async throws -> (offers: [Offer], fetchedAt: Date)? {
        let row = try await read { db in
            try OfferCacheRecord.fetchOne(db, key: ["provider": provider, "requestKey": requestKey])
        }
        guard let r = row, now.timeIntervalSince(r.fetchedAt) <= maxAge.seconds, r.fetchedAt <= now.addingTimeInterval(60) else { return nil }
        let json = Data(r.offers.utf8)
        guard let offers = OfferJSON.decode(json) ?? (try? PluginWire.decoder.decode([Offer].self, from: json)) else { return nil }
        return (offers, r.fetchedAt)
    }

    func cacheOffers(_ offers: [Offer], provider: String, requestKey: String, now: Date = Date()) async throws {
        let record = OfferCacheRecord(provider: provider, requestKey: requestKey, fetchedAt: now, offers: String(decoding: try OfferJSON.encode(offers), as: UTF8.self))
        try await write { try record.save($0) }
    }

    public func cachedOffers(provider: String, requestKey: String, maxAge: Duration) async throws -> (offers: [Offer], fetchedAt: Date)? {
        try await cachedOffers(provider: provider, requestKey: requestKey, maxAge: maxAge, now: Date())
    }

    public func cacheOffers(_ offers: [Offer], provider: String, requestKey: String) async throws {
        try await cacheOffers(offers, provider: provider, requestKey: requestKey, now: Date())
    }
}
