import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
import Testing

@Suite("Provisioning with failover")
struct ProvisionerTests {
    let h100x2 = ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2)

    @Test("the first two offers fail with capacity errors, the third succeeds; the report lists all three")
    func failover() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions, noCapacityRegions: ["r-east", "r-west"]))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "train", request: h100x2, search: OfferSearch(providers: [cloud]))
        #expect(report.attempts.map(\.offer.region) == ["r-east", "r-west", "r-eu"])
        #expect(report.attempts.map(\.outcome) == ["capacity", "capacity", "ready"])
        #expect(report.attempts[0].error?.cloudCode == "InsufficientInstanceCapacity")
        #expect(report.cluster.status == .running)
        #expect(report.cluster.offer?.region == "r-eu")
        #expect(report.cluster.pricePerHour == 44)
        #expect(report.instances.count == 2)
        // Every node in the one region, tagged with owner, cluster and intent.
        let owner = try await p.store.ownerID()
        #expect(report.instances.allSatisfy { $0.region == "r-eu" && $0.tags[CapstanTags.owner] == owner && $0.tags[CapstanTags.clusterID] == report.cluster.id && $0.tags[CapstanTags.intent] == report.cluster.intentKey })
        // Intents: written before each call, closed after.
        let intents = try await p.store.intents(cluster: report.cluster.id)
        #expect(intents.map(\.status) == [.failed, .failed, .launched])
        await #expect(try p.store.instances(cluster: report.cluster.id).count == 2)
        let stored = try await #require(try p.store.cluster(named: "train"))
        #expect(stored.status == .running)
    }

    @Test("an invalid request is refused before any cluster row is written", arguments: [
        ResourceRequest(gpu: "H100", gpusPerNode: 0, nodes: 1),
        ResourceRequest(gpusPerNode: 0, nodes: 1),
        ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 0),
        ResourceRequest(gpu: "H100", gpusPerNode: -8, nodes: 1),
    ])
    func invalidRequestWritesNothing(request: ResourceRequest) async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let e = await #expect(throws: CapstanError.self) { try await p.up(name: "train", request: request, search: OfferSearch(providers: [cloud])) }
        #expect(e?.code == .invalidRequest)
        await #expect(try p.store.cluster(named: "train") == nil)
        await #expect(try p.store.clusters(includeFinished: true).isEmpty)
    }

    @Test("spot is used where allowed and cheaper")
    func spot() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        var request = h100x2
        request.spot = .allowed
        let report = try await p.up(name: "s", request: request, search: OfferSearch(providers: [cloud]))
        #expect(report.cluster.spot && report.cluster.pricePerHour == 20)
        #expect(report.instances.allSatisfy { $0.spot })
    }

    @Test("a throttled launch is retried on the same offer with the same idempotency key")
    func rateLimited() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions, rateLimitedLaunches: 2))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "rl", request: h100x2, search: OfferSearch(providers: [cloud]))
        #expect(report.attempts.count == 1)
        #expect(report.cluster.offer?.region == "r-east")
        #expect(try await cloud.describe(InstanceQuery()).count == 2)
    }

    @Test("instances that fail while booting are terminated and the next offer is tried")
    func bootFailure() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions, failBootRegions: ["r-east"]))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "b", request: h100x2, search: OfferSearch(providers: [cloud]))
        #expect(report.attempts.map(\.outcome) == ["capacity", "ready"])
        #expect(report.attempts[0].error?.message.contains("went failed while booting") == true)
        let live = try await cloud.describe(InstanceQuery())
        #expect(live.count == 2 && live.allSatisfy { $0.region == "r-west" })
    }

    @Test("an auth error skips that provider's other offers and moves to the next provider")
    func authSkipsProvider() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        // "bad" is cheapest but rejects credentials on launch only (offers come from a cache).
        let bad = SimulatedCloud(name: "bad", configuration: .init(offers: threeRegions.map { var o = $0; o.onDemandPricePerHour! -= 10; return o }))
        let good = SimulatedCloud(name: "good", configuration: .init(offers: threeRegions))
        let badLaunch = AuthFailingLaunch(inner: bad)
        let p = try makeProvisioner([badLaunch, good], dir: dir)
        let report = try await p.up(name: "a", request: h100x2, search: OfferSearch(providers: [badLaunch, good]))
        #expect(report.attempts.map(\.offer.provider) == ["bad", "good"])
        #expect(report.attempts[0].outcome == "auth")
        #expect(report.cluster.offer?.provider == "good")
    }

    @Test("no matching offer fails the cluster with the reasons and creates nothing")
    func noOffer() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "n", request: ResourceRequest(gpu: "A100"), search: OfferSearch(providers: [cloud]))
        #expect(report.cluster.status == .failed)
        #expect(report.noOfferReason?.contains("3× GPU H100-SXM is not A100") == true)
        #expect(try await cloud.describe(InstanceQuery()).isEmpty)
    }

    @Test("every offer failing fails the cluster and leaks nothing")
    func allFail() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions, failBootRegions: ["r-east", "r-west", "r-eu"]))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "f", request: h100x2, search: OfferSearch(providers: [cloud]))
        #expect(report.cluster.status == .failed)
        #expect(report.attempts.count == 3)
        #expect(try await cloud.describe(InstanceQuery()).isEmpty)
        // The name is free again.
        _ = try await p.up(name: "f", request: ResourceRequest(gpu: "L4"), search: OfferSearch(providers: [cloud]))
    }

    @Test("names are checked; a live name cannot be reused; down is idempotent")
    func lifecycle() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        await #expect(throws: CapstanError.self) { try await p.up(name: "Bad Name", request: h100x2, search: OfferSearch(providers: [cloud])) }
        _ = try await p.up(name: "x", request: h100x2, search: OfferSearch(providers: [cloud]))
        let dup = await #expect(throws: CapstanError.self) { try await p.up(name: "x", request: h100x2, search: OfferSearch(providers: [cloud])) }
        #expect(dup?.message.contains("already exists (running)") == true)
        let down = try await p.down(name: "x")
        #expect(down.status == .terminated)
        #expect(try await cloud.describe(InstanceQuery()).isEmpty)
        #expect(try await p.down(name: "x").status == .terminated)
        await #expect(throws: CapstanError.self) { try await p.down(name: "never") }
        // A search that cannot run leaves no cluster stuck in provisioning.
        var bad = h100x2
        bad.providers = ["nope"]
        await #expect(throws: CapstanError.self) { try await p.up(name: "y", request: bad, search: OfferSearch(providers: [cloud])) }
        await #expect(try p.store.cluster(named: "y")?.status == .failed)
        _ = try await p.up(name: "y", request: h100x2, search: OfferSearch(providers: [cloud]))
    }
}

/// Wraps a provider so that launch fails with an auth error (a key that can list but not launch).
struct AuthFailingLaunch: ComputeProvider {
    let inner: SimulatedCloud
    var name: String { inner.name }
    func offers(for request: ResourceRequest) async throws -> [Offer] { try await inner.offers(for: request) }
    func launch(_ request: LaunchRequest) async throws -> [Instance] {
        throw CapstanError(.auth, "The key may not launch instances.", cloudCode: "UnauthorizedOperation")
    }
    func describe(_ query: InstanceQuery) async throws -> [Instance] { try await inner.describe(query) }
    func terminate(ids: [String]) async throws -> [Instance] { try await inner.terminate(ids: ids) }
}

@Suite("Reconcile")
struct ReconcileTests {
    @Test("adopts a live cluster's nodes, terminates orphans, leaves other owners alone")
    func reconcile() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "keep", request: ResourceRequest(gpu: "H100", nodes: 2), search: OfferSearch(providers: [cloud]))
        let owner = try await p.store.ownerID()
        // An orphan of ours (its cluster is unknown) and an instance of another installation.
        let orphan = try await cloud.launch(LaunchRequest(offer: threeRegions[0], count: 1, idempotencyKey: "orphan", tags: [CapstanTags.managed: "true", CapstanTags.owner: owner, CapstanTags.clusterID: "gone"]))
        let foreign = try await cloud.launch(LaunchRequest(offer: threeRegions[0], count: 1, idempotencyKey: "foreign", tags: [CapstanTags.managed: "true", CapstanTags.owner: "someone-else", CapstanTags.clusterID: "theirs"]))
        let r = await p.reconcile()
        #expect(Set(r.adopted) == Set(report.instances.map(\.id)))
        #expect(r.terminated == orphan.map(\.id))
        let live = try await cloud.describe(InstanceQuery())
        #expect(Set(live.map(\.id)) == Set(report.instances.map(\.id) + foreign.map(\.id)))
        // Idempotent: a second pass changes nothing.
        let again = await p.reconcile()
        #expect(again.terminated.isEmpty && !again.didSomething)
    }

    @Test("a cluster whose provisioning process died is completed or cleaned up")
    func interrupted() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let owner = try await p.store.ownerID()
        // Simulate a dead `up`: a provisioning cluster, a pending intent, and launched instances.
        func deadUp(_ name: String, launched: Int) async throws -> Cluster {
            let cluster = Cluster(name: name, request: ResourceRequest(gpu: "H100", nodes: 2))
            try await p.store.insert(cluster)
            let key = "intent-\(name)"
            let tags = [CapstanTags.managed: "true", CapstanTags.owner: owner, CapstanTags.clusterID: cluster.id, CapstanTags.intent: key]
            try await p.store.insert(LaunchIntent(key: key, clusterID: cluster.id, provider: "sim", offer: threeRegions[1], count: 2, spot: false, tags: tags, status: .pending, createdAt: Date(), updatedAt: Date(), pid: 999_999))
            if launched > 0 { _ = try await cloud.launch(LaunchRequest(offer: threeRegions[1], count: launched, idempotencyKey: key, tags: tags)) }
            return cluster
        }
        _ = try await deadUp("complete", launched: 2)
        _ = try await deadUp("partial", launched: 1)
        _ = try await deadUp("nothing", launched: 0)
        let r = await p.reconcile()
        #expect(r.recoveredClusters == ["complete"])
        #expect(Set(r.failedClusters) == ["partial", "nothing"])
        #expect(r.terminated.count == 1)
        await #expect(try p.store.cluster(named: "complete")?.status == .running)
        await #expect(try p.store.cluster(named: "complete")?.pricePerHour == 42)
        await #expect(try p.store.cluster(named: "partial")?.status == .failed)
        let live = try await cloud.describe(InstanceQuery())
        #expect(live.count == 2)
        await #expect(try p.store.intents(status: .pending).isEmpty)
    }

    @Test("a cluster another process is provisioning is left alone")
    func busy() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let owner = try await p.store.ownerID()
        let cluster = Cluster(name: "busy", request: ResourceRequest(nodes: 1))
        try await p.store.insert(cluster)
        let held = try await #require(try p.locks.acquire("busy"))
        defer { held.release() }
        _ = try await cloud.launch(LaunchRequest(offer: threeRegions[0], count: 1, idempotencyKey: "k", tags: [CapstanTags.managed: "true", CapstanTags.owner: owner, CapstanTags.clusterID: cluster.id, CapstanTags.intent: "k"]))
        let r = await p.reconcile()
        #expect(r.busyClusters == ["busy"])
        #expect(r.terminated.isEmpty)
        #expect(try await cloud.describe(InstanceQuery()).count == 1)
    }
}

@Suite("State store")
struct StateStoreTests {
    @Test("cost so far is price × time; the owner id is stable")
    func costAndOwner() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("s.db"))
        let owner = try await store.ownerID()
        await #expect(try SQLiteStateStore(path: dir.file("s.db")).ownerID() == owner)
        let launched = Date().addingTimeInterval(-1800)
        let i = Instance(id: "i", provider: "p", instanceType: "t", region: "r", state: .running, pricePerHour: 10, launchedAt: launched)
        try await store.record(i, clusterID: "c", intentKey: "k")
        let rec = try await #require(try store.instances(cluster: "c").first)
        // Half an hour at $10/h, measured at a fixed moment (not the wall clock: a loaded
        // machine took 10 s between the record and the check once).
        #expect(abs(rec.cost(now: launched.addingTimeInterval(1800)) - 5) < 0.001)  // the store keeps dates to the millisecond
        #expect(rec.cost() >= 5)
        var gone = i
        gone.state = .terminated
        try await store.record(gone, clusterID: "c", intentKey: "k")
        let after = try await #require(try store.instances(cluster: "c").first)
        #expect(after.terminatedAt != nil && after.state == .terminated)
    }

    @Test("offers are cached per provider and request, and expire")
    func offerCache() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("s.db"))
        let counting = CountingProvider(inner: SimulatedCloud(configuration: .init(offers: threeRegions)))
        let search = OfferSearch(providers: [counting], cache: store)
        let first = try await search.run(ResourceRequest(gpu: "H100", nodes: 1))
        let second = try await search.run(ResourceRequest(gpu: "H100", nodes: 2, maxPricePerHour: 500))
        #expect(counting.calls == 1)
        #expect(second.providers[0].cachedAt != nil)
        #expect(first.ranked.map(\.offer.id) == second.ranked.map(\.offer.id))
        _ = try await search.run(ResourceRequest(gpu: "A100"))
        #expect(counting.calls == 2)
        var refreshing = search
        refreshing.refresh = true
        _ = try await refreshing.run(ResourceRequest(gpu: "H100"))
        #expect(counting.calls == 3)
    }
}

final class CountingProvider: ComputeProvider, @unchecked Sendable {
    let inner: SimulatedCloud
    private let lock = NSLock()
    private var n = 0
    init(inner: SimulatedCloud) { self.inner = inner }
    var name: String { inner.name }
    var calls: Int { lock.withLock { n } }
    func offers(for request: ResourceRequest) async throws -> [Offer] {
        lock.withLock { n += 1 }
        return try await inner.offers(for: request)
    }
    func launch(_ request: LaunchRequest) async throws -> [Instance] { try await inner.launch(request) }
    func describe(_ query: InstanceQuery) async throws -> [Instance] { try await inner.describe(query) }
    func terminate(ids: [String]) async throws -> [Instance] { try await inner.terminate(ids: ids) }
}
