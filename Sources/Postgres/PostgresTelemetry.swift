public import CapstanCore
public import Foundation
import PostgresNIO

// The newest telemetry sample per job and node: SQLiteStateStore's semantics.

extension PostgresStateStore {
    public func saveTelemetry(_ t: NodeTelemetry) async throws {
        let json: String
        do { json = try JSONColumn.encode(t) } catch {
            throw CapstanError(.invalidRequest, "Cannot store the telemetry of job \(t.job) node \(t.node): \(error).", hint: "A sample holds a value that is not a number (NaN or infinity).")
        }
        try await execute("""
            INSERT INTO telemetry (job_id, node, attempt, sampled_at, sample) VALUES (\(t.job), \(t.node), \(t.attempt), \(t.sampledAt), \(json)::jsonb)
            ON CONFLICT (job_id, node) DO UPDATE SET attempt = EXCLUDED.attempt, sampled_at = EXCLUDED.sampled_at, sample = EXCLUDED.sample
            """)
    }

    public func telemetry(job id: String) async throws -> [NodeTelemetry] {
        try await all("SELECT sample::text FROM telemetry WHERE job_id = \(id) ORDER BY node") { row in
            var c = Cells(row)
            return try c.json(NodeTelemetry.self)
        }
    }
}
