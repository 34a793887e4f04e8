public import CapstanCore
public import Foundation
public import GRDB

// The newest telemetry sample per job and node (``TelemetryRepository``): one row each,
// replaced by every newer sample, the sample itself kept as JSON.

extension SQLiteStateStore {
    static func registerTelemetryMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v6-telemetry") { db in
            try db.create(table: "telemetry") { t in
                t.column("jobID", .text).notNull()
                t.column("node", .integer).notNull()
                t.primaryKey(["jobID", "node"])
                t.column("attempt", .integer).notNull()
                t.column("sampledAt", .datetime).notNull()
                t.column("sample", .text).notNull()
            }
        }
    }

    static let telemetryEncoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .millisecondsSince1970
        e.nonConformingFloatEncodingStrategy = .throw
        e.outputFormatting = .sortedKeys
        return e
    }()

    public func saveTelemetry(_ t: NodeTelemetry) async throws {
        let json: String
        do { json = String(decoding: try Self.telemetryEncoder.encode(t), as: UTF8.self) } catch {
            throw CapstanError(.invalidRequest, "Cannot store the telemetry of job \(t.job) node \(t.node): \(error).", hint: "A sample holds a value that is not a number (NaN or infinity).")
        }
        try await write { db in
            try db.execute(sql: """
                INSERT INTO telemetry(jobID, node, attempt, sampledAt, sample) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT(jobID, node) DO UPDATE SET attempt = excluded.attempt, sampledAt = excluded.sampledAt, sample = excluded.sample
                """, arguments: [t.job, t.node, t.attempt, t.sampledAt, json])
        }
    }

    public func telemetry(job id: String) async throws -> [NodeTelemetry] {
        let texts = try await read { db in
            try String.fetchAll(db, sql: "SELECT sample FROM telemetry WHERE jobID = ? ORDER BY node", arguments: [id])
        }
        return try texts.map { text in
            do { return try RecordJSON.decoder.decode(NodeTelemetry.self, from: Data(text.utf8)) } catch {
                throw CapstanError(.io, "The state database \(path) holds an unreadable telemetry sample of job \(id): \(error).")
            }
        }
    }
}
