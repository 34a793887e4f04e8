import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanTesting
import Foundation
import Testing

/// Reconcile runs beside other processes' `up`s (a `capstan status`, the server's keeper): what
/// it lists is a snapshot, and work that finishes after the snapshot must not be judged by it.
@Suite("Reconcile beside a concurrent up", .serialized)
struct ReconcileRaceTests {
    /// Runs a task's jobs on a thread of its own, so a hook that blocks it starves nothing else
    /// (the shared pool has as many threads as cores: two here).
    final class OwnThread: TaskExecutor, @unchecked Sendable {
        let queue = DispatchQueue(label: "capstan.test.own-thread")
        func enqueue(_ job: consuming ExecutorJob) {
            let job = UnownedJob(job)
            queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
        }
    }

    /// A provisioner that stops at a fault point until `resume` is signalled.
    final class Gate: @unchecked Sendable {
        let point: String
        init(at point: String) { self.point = point }
        let reached = LockedBox(false)
        let resume = DispatchSemaphore(value: 0)
        var faults: FaultPoints {
            FaultPoints { point, _ in
                guard point == self.point else { return }
                self.reached.withLock { $0 = true }
                self.resume.wait()
            }
        }
        func waitUntilReached() async throws {
            while !reached.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
        }
    }

    @Test("an up that finishes while a reconcile lists is not judged by that listing: its nodes stay running, its intent launched")
    func upDuringListing() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let search = OfferSearch(providers: [cloud])
        _ = try await p.up(name: "before", request: ResourceRequest(gpu: "H100", nodes: 1), search: search)
        let gate = Gate(at: "reconcile.listed")
        let reconciler = Provisioner(providers: p.providers, store: p.store, locks: p.locks, options: p.options, faults: gate.faults)
        let reconcile = Task(executorPreference: OwnThread()) { await reconciler.reconcile() }
        try await gate.waitUntilReached()
        // A whole `up` (cluster, intent, launch, records, lock released) after the listing.
        let fresh = try await p.up(name: "fresh", request: ResourceRequest(gpu: "H100", nodes: 2), search: search)
        #expect(fresh.cluster.status == .running)
        gate.resume.signal()
        let report = await reconcile.value
        #expect(report.terminated.isEmpty && report.abandonedIntents.isEmpty, "\(report)")
        let records = try await p.store.instances(cluster: fresh.cluster.id)
        #expect(records.count == 2 && records.allSatisfy { $0.state == .running }, "\(records.map { "\($0.id) \($0.state)" })")
        #expect(try await p.store.intents(cluster: fresh.cluster.id).map(\.status) == [.launched])
        #expect(try await cloud.describe(InstanceQuery(tags: [CapstanTags.clusterID: fresh.cluster.id])).count == 2)
        // The next reconcile lists them and keeps them.
        let next = await p.reconcile()
        #expect(next.terminated.isEmpty)
        #expect(try await p.store.instances(cluster: fresh.cluster.id).allSatisfy { $0.state == .running })
    }

    @Test("an up that starts after a reconcile probed the locks keeps its pending intent: reconcile never saw its cluster")
    func upStartingDuringListing() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        // Reconcile stops after probing the locks; an `up` then starts and stops after writing
        // its intent, before the launch, until the reconcile ends.
        let gate = Gate(at: "reconcile.locked")
        let upGate = Gate(at: "up.before-launch")
        let upper = Provisioner(providers: p.providers, store: p.store, locks: p.locks, options: p.options, faults: upGate.faults)
        let reconciler = Provisioner(providers: p.providers, store: p.store, locks: p.locks, options: p.options, faults: gate.faults)
        let reconcile = Task(executorPreference: OwnThread()) { await reconciler.reconcile() }
        try await gate.waitUntilReached()
        let up = Task(executorPreference: OwnThread()) { try await upper.up(name: "starting", request: ResourceRequest(gpu: "H100", nodes: 1), search: OfferSearch(providers: [cloud])) }
        try await upGate.waitUntilReached()
        gate.resume.signal()
        let report = await reconcile.value
        #expect(report.abandonedIntents.isEmpty, "\(report)")
        upGate.resume.signal()
        let done = try await up.value
        #expect(done.cluster.status == .running)
        #expect(try await p.store.intents(cluster: done.cluster.id).map(\.status) == [.launched])
    }

    @Test("an up that finishes after a reconcile read its cluster as provisioning is not judged interrupted when its lock comes free: its cluster stays running")
    func upFinishingBeforeTheLock() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        // The up stops with its cluster provisioning and its lock held; the reconcile reads the
        // clusters then; the up finishes (running, lock released) before the reconcile takes locks.
        let upGate = Gate(at: "up.before-launch")
        let gate = Gate(at: "reconcile.read")
        let upper = Provisioner(providers: p.providers, store: p.store, locks: p.locks, options: p.options, faults: upGate.faults)
        let reconciler = Provisioner(providers: p.providers, store: p.store, locks: p.locks, options: p.options, faults: gate.faults)
        let up = Task(executorPreference: OwnThread()) { try await upper.up(name: "racing", request: ResourceRequest(gpu: "H100", nodes: 2), search: OfferSearch(providers: [cloud])) }
        try await upGate.waitUntilReached()
        let reconcile = Task(executorPreference: OwnThread()) { await reconciler.reconcile() }
        try await gate.waitUntilReached()
        upGate.resume.signal()
        let done = try await up.value
        #expect(done.cluster.status == .running)
        gate.resume.signal()
        let report = await reconcile.value
        #expect(report.terminated.isEmpty && report.abandonedIntents.isEmpty, "\(report)")
        let cluster = try await p.store.cluster(id: done.cluster.id)
        #expect(cluster?.status == .running, "\(cluster?.status.rawValue ?? "-"): \(cluster?.lastError ?? "")")
        #expect(try await cloud.describe(InstanceQuery(tags: [CapstanTags.clusterID: done.cluster.id])).count == 2)
    }
}
