import CapstanCore
import CapstanPostgres
import CapstanSQLite
import Foundation
import Testing

/// ``TelemetryRepository`` against both stores: the newest sample per job and node, by node.
@Suite("State store conformance: telemetry (SQLite and PostgreSQL)")
struct TelemetryConformanceTests {
    static let t0 = Date(timeIntervalSince1970: 1_700_000_000)

    static func sample(_ job: String, node: Int, attempt: Int = 1, at offset: Double, gpus: [GPUSample] = []) -> NodeTelemetry {
        NodeTelemetry(job: job, node: node, attempt: attempt, sampledAt: t0.addingTimeInterval(offset), cpuPercent: 12.5 + Double(node), memoryUsedBytes: 3_000_000_000, memoryTotalBytes: 16_000_000_000, gpus: gpus)
    }

    @Test("telemetry: upsert keeps the latest sample per job and node, by node; nil GPU fields round-trip; other jobs apart", arguments: StoreKind.allCases)
    func telemetry(kind: StoreKind) async throws {
        try await kind.withStore { store in
            await #expect(try store.telemetry(job: "j1").isEmpty)

            let h100 = GPUSample(index: 0, name: "NVIDIA H100 80GB HBM3", utilizationPercent: 97, memoryUsedMiB: 71_234.5, memoryTotalMiB: 81_559, temperatureC: 64, powerW: 612.25)
            let partial = GPUSample(index: 1, name: "NVIDIA H100 80GB HBM3", utilizationPercent: nil, memoryUsedMiB: 10, memoryTotalMiB: 81_559, temperatureC: nil, powerW: nil)
            try await store.saveTelemetry(Self.sample("j1", node: 1, at: 0))
            try await store.saveTelemetry(Self.sample("j1", node: 0, at: 0, gpus: [h100, partial]))
            try await store.saveTelemetry(Self.sample("j2", node: 0, at: 0))

            var got = try await store.telemetry(job: "j1")
            #expect(got.map(\.node) == [0, 1])
            #expect(got[0] == Self.sample("j1", node: 0, at: 0, gpus: [h100, partial]))
            #expect(got[0].gpus[1].utilizationPercent == nil && got[0].gpus[1].powerW == nil)

            // A newer sample (a new attempt too) replaces the node's row; the other node stands.
            let newer = Self.sample("j1", node: 0, attempt: 2, at: 5, gpus: [h100])
            try await store.saveTelemetry(newer)
            got = try await store.telemetry(job: "j1")
            #expect(got.count == 2)
            #expect(got[0] == newer)
            #expect(got[1] == Self.sample("j1", node: 1, at: 0))
            await #expect(try store.telemetry(job: "j2").map(\.node) == [0])
            await #expect(try store.telemetry(job: "nobody").isEmpty)
        }
    }

    @Test("telemetry: a sample that is not a number is refused with invalidRequest naming job and node", arguments: StoreKind.allCases)
    func notANumber(kind: StoreKind) async throws {
        try await kind.withStore { store in
            var bad = Self.sample("j1", node: 3, at: 0)
            bad.cpuPercent = .nan
            let e = await #expect(throws: CapstanError.self) { try await store.saveTelemetry(bad) }
            #expect(e?.code == .invalidRequest)
            #expect(e?.message.contains("j1") == true && e?.message.contains("node 3") == true)
            let kept = try await store.telemetry(job: "j1")
            #expect(kept.isEmpty)
        }
    }
}
