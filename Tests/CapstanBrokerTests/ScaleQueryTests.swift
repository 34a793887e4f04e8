import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanTesting
import Foundation
import Testing

/// The set queries and write-skipping that keep `status`, `up` and `offers` flat as the state
/// grows (capstan-bench scale/offers measure them): each must answer exactly what the slow path
/// it replaces answered.
@Suite("Set queries on the state store")
struct ScaleQueryTests {
    /// A provisioner with `clusters` running 2-node clusters `up`'d on an in-memory sim cloud, plus
    /// one failed and one terminated cluster.
    func populated(_ dir: TempDir, clusters: Int) async throws -> (Provisioner, SimulatedCloud) {
        let cloud = SimulatedCloud(configuration: .init(offers: threeRegions))
        let p = try makeProvisioner([cloud], dir: dir)
        let search = OfferSearch(providers: [cloud])
        for k in 0..<clusters {
            let r = try await p.up(name: "c\(k)", request: ResourceRequest(gpu: "H100", nodes: 2), search: search)
            #expect(r.cluster.status == .running)
        }
        _ = try await p.up(name: "nothing-fits", request: ResourceRequest(gpu: "A100", nodes: 1), search: search)
        _ = try await p.down(name: "c0")
        return (p, cloud)
    }

    @Test("instances(clusters:) answers what one instances(cluster:) per cluster answers")
    func batchedStatus() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let (p, _) = try await populated(dir, clusters: 6)
        let store = try #require(p.store as? SQLiteStateStore)
        for includeFinished in [false, true] {
            let clusters = try await store.clusters(includeFinished: includeFinished)
            var perCluster: [String: [InstanceRecord]] = [:]
            for c in clusters {
                let records = try await store.instances(cluster: c.id)
                if !records.isEmpty { perCluster[c.id] = records }
            }
            let batched = try await store.instances(clusters: clusters.map(\.id) + clusters.map(\.id))  // repeats are harmless
            #expect(batched == perCluster)
            #expect(batched.values.map(\.count).reduce(0, +) == (includeFinished ? 12 : 10))
        }
        #expect(try await store.instances(clusters: []).isEmpty)
        #expect(try await store.instances(clusters: ["no-such-cluster"]).isEmpty)
        // Beyond one chunk of ids (500), with ids that have no instances among them.
        let many = (0..<1_200).map { "missing-\($0)" } + (try await store.clusters(includeFinished: true)).map(\.id)
        #expect(try await store.instances(clusters: many).values.map(\.count).reduce(0, +) == 12)
        // The protocol's default (one query per cluster) agrees.
        let viaDefault = try await PerClusterStore(store).instances(clusters: many)
        #expect(viaDefault == (try await store.instances(clusters: many)))
    }

    @Test("instances(providers:) and clusters(includeFinished:) filter in the query as the defaults do")
    func providerAndLiveFilters() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let (p, _) = try await populated(dir, clusters: 3)
        let store = try #require(p.store as? SQLiteStateStore)
        let all = try await store.allInstances()
        #expect(Set(try await store.instances(providers: ["sim"]).map(\.id)) == Set(all.map(\.id)))
        #expect(try await store.instances(providers: ["other"]).isEmpty)
        #expect(try await store.instances(providers: []).isEmpty)
        #expect(Set(try await PerClusterStore(store).instances(providers: ["sim"]).map(\.id)) == Set(all.map(\.id)))
        let live = try await store.clusters(includeFinished: false)
        let every = try await store.clusters(includeFinished: true)
        #expect(live == every.filter(\.status.isLive))
        #expect(live.map(\.name) == ["c1", "c2"])
    }

    @Test("a reconcile that finds everything as recorded writes nothing; a changed instance is recorded")
    func reconcileWritesOnlyChanges() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        var (p, cloud) = try await populated(dir, clusters: 3)
        // Reconcile as if the launches were minutes old: one too recent for the listing would
        // not be judged gone yet (ReconcilePlan.listingSettle).
        p.options.clock = { Date().addingTimeInterval(ReconcilePlan.listingSettle + 60) }
        _ = await p.reconcile()
        let before = try await p.store.allInstances()
        let r = await p.reconcile()
        #expect(r.adopted.count == 4 && !r.didSomething)
        #expect(try await p.store.allInstances() == before)
        // The cloud takes one node back: the record follows, Capstan's tags stay.
        let node = try #require(before.first { $0.state == .running })
        try cloud.preempt(node.id)
        _ = await p.reconcile()
        let after = try #require(try await p.store.instance(provider: node.provider, id: node.id))
        #expect(after.state.isGone)
        #expect(after.instance.tags[CapstanTags.node] == node.instance.tags[CapstanTags.node])
    }

    @Test("recordChanges: Capstan's tags and sub-second launch times are not changes; state and the cloud's tags are")
    func recordChanges() {
        let launched = Date(timeIntervalSince1970: 1_800_000_000.123)
        let i = Instance(id: "i-1", provider: "sim", instanceType: "t", region: "r", state: .running, tags: ["capstan:node": "1", "team": "a"], launchedAt: launched)
        let rec = InstanceRecord(instance: i, clusterID: "c", intentKey: "k")
        var echoed = i
        echoed.tags["capstan:node"] = nil  // a cloud that keeps no per-instance tags
        echoed.launchedAt = Date(timeIntervalSince1970: 1_800_000_000)  // whole seconds in JSON
        #expect(!ReconcilePlan.recordChanges(rec, listed: echoed))
        var stopped = echoed
        stopped.state = .stopped
        #expect(ReconcilePlan.recordChanges(rec, listed: stopped))
        var retagged = echoed
        retagged.tags["team"] = "b"
        #expect(ReconcilePlan.recordChanges(rec, listed: retagged))
    }

    @Test("gone: a record whose instance the listing lacks, or lists as gone, is gone; others are not")
    func gone() {
        func inst(_ id: String, _ state: Instance.State) -> Instance { Instance(id: id, provider: "sim", instanceType: "t", region: "r", state: state) }
        let plan = ReconcilePlan(.init(providers: ["sim"], listed: ["sim": [inst("a", .running), inst("b", .terminated)]], createdAt: .distantPast))
        let records = ["a", "b", "c"].map { InstanceRecord(instance: inst($0, .running), clusterID: "x", intentKey: "k") }
            + [InstanceRecord(instance: Instance(id: "d", provider: "unlisted", instanceType: "t", region: "r", state: .running), clusterID: "x", intentKey: "k")]
        #expect(plan.gone(records).map(\.id) == ["b", "c"])
    }

    @Test("the offer cache keeps 100,000 offers in one row and gives them back as they were")
    func offerCacheRoundTrip() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try SQLiteStateStore(path: dir.file("s.db"))
        let offers = SimulatedCloud.generatedCatalog(count: 100_000).map { $0.normalized() }
        try await store.cacheOffers(offers, provider: "sim", requestKey: "k")
        let hit = try #require(try await store.cachedOffers(provider: "sim", requestKey: "k", maxAge: .seconds(600)))
        #expect(hit.offers == offers)
        #expect(try await store.cachedOffers(provider: "sim", requestKey: "other", maxAge: .seconds(600)) == nil)
    }
}

/// A store that takes the protocols' defaults for the set queries (as a store that does not
/// implement them would), delegating everything else.
struct PerClusterStore: ClusterRepository {
    let inner: SQLiteStateStore
    init(_ inner: SQLiteStateStore) { self.inner = inner }
    func ownerID() async throws -> String { try await inner.ownerID() }
    func ownerIDs() async throws -> [String] { try await inner.ownerIDs() }
    func createdAt() async throws -> Date { try await inner.createdAt() }
    func insert(_ cluster: Cluster) async throws { try await inner.insert(cluster) }
    func update(_ cluster: Cluster) async throws { try await inner.update(cluster) }
    func cluster(named name: String) async throws -> Cluster? { try await inner.cluster(named: name) }
    func cluster(id: String) async throws -> Cluster? { try await inner.cluster(id: id) }
    func clusters(includeFinished: Bool) async throws -> [Cluster] { try await inner.clusters(includeFinished: includeFinished) }
    func insert(_ intent: LaunchIntent) async throws { try await inner.insert(intent) }
    func setIntent(_ key: String, status: LaunchIntent.Status, error: String?) async throws { try await inner.setIntent(key, status: status, error: error) }
    func intent(_ key: String) async throws -> LaunchIntent? { try await inner.intent(key) }
    func intents(cluster id: String?, status: LaunchIntent.Status?) async throws -> [LaunchIntent] { try await inner.intents(cluster: id, status: status) }
    func record(_ instance: Instance, clusterID: String, intentKey: String) async throws -> Instance { try await inner.record(instance, clusterID: clusterID, intentKey: intentKey) }
    func instance(provider: String, id: String) async throws -> InstanceRecord? { try await inner.instance(provider: provider, id: id) }
    func instances(cluster id: String) async throws -> [InstanceRecord] { try await inner.instances(cluster: id) }
    func allInstances() async throws -> [InstanceRecord] { try await inner.allInstances() }
}
