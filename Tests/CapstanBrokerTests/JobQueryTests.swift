import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanTestSupport
import Foundation
import Testing

@Suite("Job queries on the state store")
struct JobQueryTests {
    /// One running job, the oldest, behind 150 newer finished ones (and a newer pending one).
    func crowdedStore(_ dir: TempDir) async throws -> SQLiteStateStore {
        let store = try SQLiteStateStore(path: dir.file("capstan.db"))
        let t0 = Date(timeIntervalSince1970: 1_700_000_000)
        var running = JobRecord(id: "old-running", name: "old", spec: "run: x", specFolder: "/", settings: "{}", clusterName: "c0", ownsCluster: true, storage: "file:///b", createdAt: t0)
        running.status = .running
        try await store.insert(running)
        for i in 1...150 {
            var j = JobRecord(id: "done-\(i)", name: "done", spec: "run: x", specFolder: "/", settings: "{}", clusterName: "c\(i)", ownsCluster: true, storage: "file:///b", createdAt: t0.addingTimeInterval(Double(i)))
            j.status = [.succeeded, .failed, .cancelled][i % 3]
            try await store.insert(j)
        }
        try await store.insert(JobRecord(id: "new-pending", name: "new", spec: "run: x", specFolder: "/", settings: "{}", clusterName: "cn", ownsCluster: true, storage: "file:///b", createdAt: t0.addingTimeInterval(1000)))
        return store
    }

    @Test("with more than 100 jobs, the unfinished ones are filtered in the query: an old running job is never paged out")
    func runningNotPagedOut() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try await crowdedStore(dir)
        await #expect(try store.jobs(includeFinished: false).map(\.id) == ["new-pending", "old-running"])
        // The full listing is still the newest page.
        let all = try await store.jobs()
        #expect(all.count == 100 && all.first?.id == "new-pending" && !all.contains { $0.id == "old-running" })
        await #expect(try store.jobs(includeFinished: false, limit: 1).map(\.id) == ["new-pending"])
    }

    @Test("unfinishedJobs lists every live job (what controllers are re-attached to), whatever the paging")
    func unfinished() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try await crowdedStore(dir)
        await #expect(try store.unfinishedJobs().map(\.id) == ["old-running", "new-pending"])
    }
}
