import CapstanCore
import CapstanPostgres
import Foundation
import Testing

/// Rough figures for both stores (printed, never asserted): `CAPSTAN_STORE_FIGURES=1 swift test --filter StoreFigures`.
@Suite("State store figures", .enabled(if: ProcessInfo.processInfo.environment["CAPSTAN_STORE_FIGURES"] != nil))
struct StoreFiguresTests {
    @Test("insert 10,000 jobs one by one; list the newest 100; 200 updateJob; 1,000 events; read 500", arguments: StoreKind.allCases)
    func figures(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let clock = ContinuousClock()
            let n = 10_000
            let insert = try await clock.measure {
                for i in 0..<n {
                    var j = StoreConformanceTests.job(String(format: "job-%05d", i), at: Double(i))
                    j.status = i % 10 == 0 ? .running : .succeeded
                    try await store.insert(j)
                }
            }
            var page: [JobRecord] = []
            let list = try await clock.measure { page = try await store.jobs(includeFinished: true, limit: 100) }
            var live: [JobRecord] = []
            let listLive = try await clock.measure { live = try await store.jobs(includeFinished: false, limit: 100) }
            let unfinished = try await clock.measure { _ = try await store.unfinishedJobs() }
            let updates = try await clock.measure {
                for i in 0..<200 { try await store.updateJob(String(format: "job-%05d", i * 10)) { $0.restarts += 1 } }
            }
            let events = await clock.measure {
                for i in 0..<1000 { await store.jobEvent("step", "event \(i)", job: "job-00000") }
            }
            let readEvents = try await clock.measure { _ = try await store.events(job: "job-00000") }
            #expect(page.count == 100 && live.count == 100)
            print("""
                [\(kind.rawValue)] insert \(n) jobs: \(insert) (\(Int(Double(n) / insert.seconds))/s); list 100 of \(n): \(list); \
                list 100 unfinished: \(listLive); all \(n / 10) unfinished: \(unfinished); 200 updateJob: \(updates); \
                1000 job events: \(events); read 500 events: \(readEvents)
                """)
        }
    }
}
