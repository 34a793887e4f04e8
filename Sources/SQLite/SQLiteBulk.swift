public import CapstanCore
public import Foundation
import GRDB

extension SQLiteStateStore {
    /// Rows written together in one transaction by ``bulkLoad(_:)``: for benchmarks and tests
    /// that need thousands of clusters, jobs or events (one transaction per row would make the
    /// setup, not the code measured, the slow part). Not public API.
    package struct BulkLoad: Sendable {
        package var clusters: [Cluster] = []
        package var intents: [LaunchIntent] = []
        package var instances: [InstanceRecord] = []
        package var events: [StateEvent] = []
        /// Events of a job (the `jobID` column ``StateEvent`` does not carry).
        package var jobEvents: [(job: String, event: StateEvent)] = []
        package var jobs: [JobRecord] = []
        package init() {}
    }

    /// Inserts everything in `batch` in one transaction.
    package func bulkLoad(_ batch: BulkLoad) async throws {
        try await write { db in
            for c in batch.clusters { try c.insert(db) }
            for i in batch.intents { try i.insert(db) }
            for r in batch.instances { try r.insert(db) }
            for j in batch.jobs { try j.insert(db) }
            for e in batch.events {
                var e = e
                try e.insert(db)
            }
            for (job, e) in batch.jobEvents {
                try db.execute(sql: "INSERT INTO event(time, clusterID, kind, message, jobID) VALUES (?, ?, ?, ?, ?)", arguments: [e.time, e.clusterID, e.kind, e.message, job])
            }
        }
    }

    /// Drops the indexes `names` (that exist), to measure a query without them. Benchmarks only:
    /// the next migration does not bring them back.
    package func dropIndexesForBenchmark(_ names: [String]) async throws {
        try await write { db in
            for name in names { try db.execute(sql: "DROP INDEX IF EXISTS \(name)") }
        }
    }

    /// SQLite's plan for each listing query `capstan status` and `capstan jobs` make (`EXPLAIN
    /// QUERY PLAN`), one line per query: shows which index each one uses. For benchmarks.
    package func queryPlans() async throws -> [String] {
        let finished = Self.finishedStatuses.map { "'\($0)'" }.joined(separator: ",")
        let queries: [(String, String)] = [
            ("jobs (newest 100)", "SELECT * FROM job ORDER BY createdAt DESC LIMIT 100"),
            ("jobs --running", "SELECT * FROM job WHERE status NOT IN (\(finished)) ORDER BY createdAt DESC LIMIT 100"),
            ("unfinished jobs", "SELECT * FROM job WHERE status NOT IN (\(finished)) ORDER BY createdAt"),
            ("job by name", "SELECT * FROM job WHERE name = 'x' ORDER BY createdAt DESC LIMIT 1"),
            ("a job's events", "SELECT id FROM event WHERE jobID = 'x' ORDER BY id DESC LIMIT 500"),
            ("a cluster's events", "SELECT id FROM event WHERE clusterID = 'x' ORDER BY id DESC LIMIT 200"),
            ("cluster by name", "SELECT * FROM cluster WHERE name = 'x' ORDER BY createdAt DESC"),
            ("intents by status", "SELECT * FROM intent WHERE status = 'launched' ORDER BY createdAt"),
        ]
        return try await read { db in
            try queries.map { label, sql in
                let rows = try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + sql)
                return label + ": " + rows.map { ($0["detail"] as String?) ?? "?" }.joined(separator: "; ")
            }
        }
    }
}
