import CapstanCore
import Foundation
import Testing

// Every decision rule of reconcile, on hand-built facts: no store, no cloud, no lock.

private let t0 = Date(timeIntervalSince1970: 1_700_000_000)
/// The store was created here: instances launched before it are from a lost database.
private let created = t0.addingTimeInterval(1000)

private func inst(
    _ id: String, cluster: String, intent: String, state: Instance.State = .running, provider: String = "sim", node: Int? = nil,
    nodes: Int? = nil, name: String? = nil, launched: Date = created.addingTimeInterval(60), type: String = "sim.8xh100", price: Double = 20
) -> Instance {
    var tags = [CapstanTags.managed: "true", CapstanTags.owner: "me", CapstanTags.clusterID: cluster, CapstanTags.intent: intent]
    tags[CapstanTags.node] = node.map(String.init)
    tags[CapstanTags.nodes] = nodes.map(String.init)
    tags[CapstanTags.cluster] = name
    return Instance(id: id, provider: provider, instanceType: type, region: "r-east", state: state, pricePerHour: price, tags: tags, launchedAt: launched)
}

private func cluster(_ id: String, _ status: ClusterStatus, intent: String? = nil, nodes: Int = 2) -> Cluster {
    var c = Cluster(id: id, name: "name-\(id)", request: ResourceRequest(nodes: nodes), createdAt: t0)
    c.status = status
    c.intentKey = intent
    c.nodes = nodes
    return c
}

private let offer = Offer(provider: "sim", instanceType: "sim.8xh100", region: "r-east", gpusPerNode: 8, onDemandPricePerHour: 20, spotPricePerHour: 10)

private func intent(_ key: String, cluster: String, _ status: LaunchIntent.Status = .launched, provider: String = "sim", tags: [String: String] = [:], pid: Int32 = 4242) -> LaunchIntent {
    LaunchIntent(key: key, clusterID: cluster, provider: provider, offer: offer, count: 2, spot: false, tags: tags, status: status, createdAt: t0, updatedAt: t0, pid: pid)
}

private func plan(_ listed: [String: [Instance]], providers: Set<String> = ["sim", "aws"]) -> ReconcilePlan {
    ReconcilePlan(.init(owners: ["me"], providers: providers, listed: listed, createdAt: created, now: created.addingTimeInterval(3600)))
}

private func terminated(_ steps: [ReconcilePlan.InstanceStep]) -> [String: ReconcilePlan.Orphan] {
    var out: [String: ReconcilePlan.Orphan] = [:]
    for case .terminate(_, let instances, let reasons) in steps { for i in instances { out[i.id] = reasons[i.id] } }
    return out
}

private func adopted(_ steps: [ReconcilePlan.InstanceStep]) -> [String] {
    steps.compactMap { if case .adopt(let i, _, _, _) = $0 { i.id } else { nil } }
}

@Suite struct ReconcilePlanTests {

    // MARK: Listing

    @Test func listsOnlyThisStoresOwnersSoAnotherOwnersInstancesAreNeverTouched() {
        let queries = ReconcilePlan.queries(owners: ["me", "me-before"])
        #expect(queries.map { $0.tags[CapstanTags.owner] } == ["me", "me-before"])
        #expect(queries.allSatisfy { $0.tags[CapstanTags.managed] == "true" && $0.tags.count == 2 })
    }

    // MARK: Orphans

    @Test func orphanOfThisOwnerLaunchedAfterCreatedAtIsTerminatedNotRebuilt() {
        let o = inst("i-1", cluster: "gone", intent: "k", launched: created.addingTimeInterval(5))
        let p = plan(["sim": [o]])
        #expect(p.rebuilds(known: []).isEmpty)
        #expect(terminated(p.instances(clusters: [], launched: [:], recorded: [])) == ["i-1": .unknownCluster])
    }

    @Test func instanceOfAFinishedClusterIsTerminated() {
        let p = plan(["sim": [inst("i-1", cluster: "c", intent: "k")]])
        let steps = p.instances(clusters: [cluster("c", .failed, intent: "k")], launched: [:], recorded: [])
        #expect(terminated(steps) == ["i-1": .clusterNotRunning(.failed)])
    }

    @Test func instanceOfAnotherLaunchOfARunningClusterIsTerminated() {
        let p = plan(["sim": [inst("i-1", cluster: "c", intent: "old"), inst("i-2", cluster: "c", intent: "k")]])
        let steps = p.instances(clusters: [cluster("c", .running, intent: "k")], launched: [:], recorded: ["sim/i-2"])
        #expect(terminated(steps) == ["i-1": .notTheClustersLaunch])
        #expect(adopted(steps) == ["i-2"])
    }

    @Test func terminationsAreGroupedPerProviderAfterEveryAdoption() {
        let p = plan(["sim": [inst("i-1", cluster: "x", intent: "k")], "aws": [inst("i-2", cluster: "x", intent: "k", provider: "aws"), inst("i-3", cluster: "c", intent: "k", provider: "aws")]])
        let steps = p.instances(clusters: [cluster("c", .running, intent: "k")], launched: [:], recorded: [])
        let providers = steps.compactMap { if case .terminate(let p, let ids, _) = $0 { "\(p):\(ids.map(\.id))" } else { nil } }
        #expect(providers == ["aws:[\"i-2\"]", "sim:[\"i-1\"]"])
        guard case .terminate = steps.last, case .adopt = steps.first else { Issue.record("order: \(steps)"); return }
    }

    // MARK: Adoption

    @Test func recordedInstanceOfARunningClustersLaunchIsAdoptedAndReRecorded() {
        let p = plan(["sim": [inst("i-1", cluster: "c", intent: "k")]])
        let steps = p.instances(clusters: [cluster("c", .running, intent: "k")], launched: [:], recorded: ["sim/i-1"])
        #expect(steps.count == 1)
        guard case .adopt(let i, "c", "k", true) = steps.first else { Issue.record("\(steps)"); return }
        #expect(i.id == "i-1")
    }

    @Test func instanceOfALaterCompletedLaunchOfTheClusterIsAdopted() {
        // A node replacement: its intent launched for this cluster.
        let p = plan(["sim": [inst("i-9", cluster: "c", intent: "repl")]])
        let steps = p.instances(clusters: [cluster("c", .running, intent: "k")], launched: ["repl": "c"], recorded: ["sim/i-9"])
        #expect(adopted(steps) == ["i-9"])
        #expect(terminated(steps).isEmpty)
        // A launch of another cluster does not count.
        #expect(terminated(p.instances(clusters: [cluster("c", .running, intent: "k")], launched: ["repl": "other"], recorded: [])) == ["i-9": .notTheClustersLaunch])
    }

    @Test func unrecordedAdoptedInstancesAreNumberedInLaunchOrderOncePerLaunch() {
        let a = inst("i-b", cluster: "c", intent: "k", node: 1, launched: t0.addingTimeInterval(2))
        let b = inst("i-a", cluster: "c", intent: "k", launched: t0.addingTimeInterval(9))
        let p = plan(["sim": [b, a].sorted { $0.id < $1.id }])
        let steps = p.instances(clusters: [cluster("c", .running, intent: "k")], launched: [:], recorded: [])
        #expect(steps.count == 3)
        guard case .number(let gang, let c, "k", let cloudTags) = steps.last else { Issue.record("\(steps)"); return }
        #expect(gang.map(\.id) == ["i-b", "i-a"])
        #expect(c.id == "c")
        #expect(cloudTags[CapstanTags.intent] == "k")
        #expect(steps.dropLast().allSatisfy { if case .adopt(_, _, _, false) = $0 { true } else { false } })
    }

    @Test func unrecordedNodesTakeTheLaunchsTagsAsWrittenElseTheClouds() {
        let written = intent("k", cluster: "c", tags: ["capstan:cluster": "a"])
        #expect(ReconcilePlan.adoptionTags(intent: written, cloudTags: ["capstan:node": "1"]) == ["capstan:cluster": "a"])
        #expect(ReconcilePlan.adoptionTags(intent: nil, cloudTags: ["capstan:node": "1"]) == ["capstan:node": "1"])
        let live = InstanceRecord(instance: inst("i-1", cluster: "c", intent: "k", node: 0), clusterID: "c", intentKey: "k")
        let dead = InstanceRecord(instance: inst("i-2", cluster: "c", intent: "k", state: .terminated, node: 1), clusterID: "c", intentKey: "k")
        #expect(ReconcilePlan.takenIndices([live, dead]) == [0])
    }

    @Test func instanceAlreadyShuttingDownIsOnlyNoted() {
        let p = plan(["sim": [inst("i-1", cluster: "x", intent: "k", state: .terminating)]])
        let steps = p.instances(clusters: [], launched: [:], recorded: [])
        guard steps.count == 1, case .noteLeaving(let i, "x", "k") = steps[0] else { Issue.record("\(steps)"); return }
        #expect(i.id == "i-1")
    }

    @Test func terminatedInstancesInTheListingAreIgnored() {
        let p = plan(["sim": [inst("i-1", cluster: "x", intent: "k", state: .terminated)]])
        #expect(p.instances(clusters: [], launched: [:], recorded: []).isEmpty)
    }

    /// A preempted instance the cloud still lists (a stopped spot VM) bills its disk: deleted
    /// unless its cluster runs (its job recovers; `down` deletes it).
    @Test func preemptedInstancesStillListedOfAnUnknownClusterAreDeleted() {
        let p = plan(["sim": [inst("i-2", cluster: "x", intent: "k", state: .preempted)]])
        let steps = p.instances(clusters: [], launched: [:], recorded: [])
        guard steps.count == 1, case .terminate("sim", let doomed, let reasons) = steps[0] else { Issue.record("\(steps)"); return }
        #expect(doomed.map(\.id) == ["i-2"] && reasons["i-2"] == .unknownCluster)
    }

    // MARK: Lost database

    @Test func clusterFromALostDatabaseIsRebuiltKeepingValidUniqueIndicesAndNumberingTheRest() {
        let a = inst("i-a", cluster: "lost", intent: "k", nodes: 3, name: "train", launched: t0.addingTimeInterval(1))
        let b = inst("i-b", cluster: "lost", intent: "k", node: 0, nodes: 3, name: "train", launched: t0.addingTimeInterval(2))
        let c = inst("i-c", cluster: "lost", intent: "k", node: 7, nodes: 3, name: "train", launched: t0.addingTimeInterval(3))
        let p = plan(["sim": [c, b, a]])
        let steps = p.rebuilds(known: [])
        guard steps.count == 1, case .rebuild(let r) = steps[0] else { Issue.record("\(steps)"); return }
        #expect(r.clusterID == "lost")
        #expect(r.nodes == 3)
        #expect(r.group.map(\.id) == ["i-a", "i-b", "i-c"])
        #expect(r.group.map(\.nodeIndex) == [1, 0, 2])
        #expect(r.tagName == "train")
        #expect(r.intents.map(\.key) == ["k"])
        let cl = p.rebuiltCluster(r, name: "train", offer: offer)
        #expect(cl.status == .running && cl.nodes == 3 && cl.intentKey == "k" && cl.pricePerHour == 60 && cl.createdAt == a.launchedAt)
        #expect(cl.readyAt == created.addingTimeInterval(3600))
    }

    @Test func lostClusterWithTwoNodesClaimingOneIndexIsNotWholeAndTerminated() {
        let a = inst("i-a", cluster: "lost", intent: "k", node: 1, nodes: 2, launched: t0)
        let b = inst("i-b", cluster: "lost", intent: "k", node: 1, nodes: 2, launched: t0)
        guard case .terminate("lost", let group) = plan(["sim": [a, b]]).rebuilds(known: []).first else { Issue.record("rebuilt"); return }
        #expect(group.map(\.id) == ["i-a", "i-b"])
    }

    @Test func lostClusterMissingANodeFailedOrMixedIsTerminated() {
        let short = [inst("i-a", cluster: "lost", intent: "k", nodes: 3, launched: t0)]
        let failed = [inst("i-a", cluster: "lost", intent: "k", nodes: 2, launched: t0), inst("i-b", cluster: "lost", intent: "k", state: .stopped, nodes: 2, launched: t0)]
        let mixed = [inst("i-a", cluster: "lost", intent: "k", nodes: 2, launched: t0), inst("i-b", cluster: "lost", intent: "k", nodes: 2, launched: t0, type: "other")]
        for group in [short, failed, mixed] {
            guard case .terminate = plan(["sim": group]).rebuilds(known: []).first else { Issue.record("rebuilt \(group.map(\.id))"); continue }
        }
        // Its provider not enabled here.
        let whole = [inst("i-a", cluster: "lost", intent: "k", provider: "gcp", nodes: 1, launched: t0)]
        guard case .terminate = plan(["gcp": whole], providers: ["sim"]).rebuilds(known: []).first else { Issue.record("rebuilt"); return }
    }

    @Test func rebuildSkipsKnownClustersShuttingDownAndUntaggedInstances() {
        let p = plan(["sim": [
            inst("i-a", cluster: "known", intent: "k", nodes: 1, launched: t0),
            inst("i-b", cluster: "lost", intent: "k", state: .terminating, nodes: 1, launched: t0),
            inst("i-c", cluster: "", intent: "k", nodes: 1, launched: t0),
        ]])
        #expect(p.rebuilds(known: ["known"]).isEmpty)
    }

    @Test func rebuiltClusterKeepsItsTaggedNameUnlessInvalidOrTaken() {
        let valid: (String) -> Bool = { (try? Provisioner.validate(name: $0)) != nil }
        #expect(ReconcilePlan.rebuiltName(tagName: "train", clusterID: "0123456789", valid: valid, liveNameTaken: false) == "train")
        #expect(ReconcilePlan.rebuiltName(tagName: "train", clusterID: "0123456789", valid: valid, liveNameTaken: true) == "recovered-01234567")
        #expect(ReconcilePlan.rebuiltName(tagName: "Bad Name", clusterID: "0123456789", valid: valid, liveNameTaken: false) == "recovered-01234567")
        #expect(ReconcilePlan.rebuiltName(tagName: nil, clusterID: "0123456789", valid: valid, liveNameTaken: false) == "recovered-01234567")
    }

    @Test func rebuiltOfferComesFromTheCatalogElseTheInstance() {
        var i = inst("i-a", cluster: "lost", intent: "k", price: 7)
        i.zone = "r-east-1a"
        let fromCatalog = ReconcilePlan.recoveredOffer(for: i, catalog: [offer])
        #expect(fromCatalog.gpusPerNode == 8 && fromCatalog.zone == "r-east-1a")
        let guessed = ReconcilePlan.recoveredOffer(for: i, catalog: [])
        #expect(guessed.gpusPerNode == 0 && guessed.onDemandPricePerHour == 7 && guessed.spotPricePerHour == nil)
    }

    // MARK: Locks and busy clusters

    @Test func runningClustersLocksAreProbedHalfDoneOnesTakenFinishedOnesIgnored() {
        let steps = plan([:]).locking([cluster("r", .running), cluster("p", .provisioning), cluster("t", .terminating), cluster("f", .failed), cluster("x", .terminated)])
        #expect(steps == [.probe(cluster("r", .running)), .take(cluster("p", .provisioning)), .take(cluster("t", .terminating))])
    }

    @Test func busyClusterIsUntouched() {
        let rec = InstanceRecord(instance: inst("i-old", cluster: "b", intent: "k"), clusterID: "b", intentKey: "k")
        var p = plan(["sim": [inst("i-1", cluster: "b", intent: "other")]])
        p.receive(.busy(clusterID: "b"))
        let c = cluster("b", .provisioning, intent: "k")
        #expect(p.recoveries([c]).isEmpty)
        #expect(p.instances(clusters: [c], launched: [:], recorded: []).isEmpty)
        #expect(p.gone([rec]).isEmpty)
        #expect(p.abandoned([intent("k", cluster: "b", .pending)]).isEmpty)
    }

    @Test func handledClustersListingIsStale() {
        let rec = InstanceRecord(instance: inst("i-old", cluster: "h", intent: "k"), clusterID: "h", intentKey: "k")
        var p = plan(["sim": [inst("i-1", cluster: "h", intent: "other")]])
        p.receive(.handled(clusterID: "h"))
        #expect(p.instances(clusters: [cluster("h", .failed)], launched: [:], recorded: []).isEmpty)
        #expect(p.gone([rec]).isEmpty)
        // Its pending intents are still closed (only busy ones are spared).
        #expect(p.abandoned([intent("k", cluster: "h", .pending)]).map(\.key) == ["k"])
    }

    // MARK: Interrupted work

    @Test func interruptedDownsThenUpsThenMovesAreRecoveredInThatOrder() {
        let cs = [cluster("r", .running), cluster("p", .provisioning), cluster("t", .terminating), cluster("f", .failed)]
        #expect(plan([:]).recoveries(cs) == [.finishTermination(cs[2]), .recoverUp(cs[1]), .checkMove(cs[0])])
    }

    @Test func interruptedUpIsLeftWhileAProviderItUsedIsUnlisted() {
        let p = plan(["sim": []])
        #expect(p.interruptedUp(cluster("c", .provisioning), intents: [intent("k1", cluster: "c", .failed), intent("k2", cluster: "c", .pending, provider: "aws")]) == .leave(unlisted: "aws"))
    }

    @Test func interruptedUpWhoseLastLaunchIsWholeIsAdoptedAndEarlierLeftoversGo() {
        let left = inst("i-0", cluster: "c", intent: "k1")
        let gang = [inst("i-2", cluster: "c", intent: "k2", state: .pending), inst("i-1", cluster: "c", intent: "k2")]
        let p = plan(["sim": [left] + gang])
        let intents = [intent("k1", cluster: "c", .failed), intent("k2", cluster: "c", .pending)]
        guard case .tryAdopt(let last, let g, let others, let mine) = p.interruptedUp(cluster("c", .provisioning), intents: intents) else { Issue.record("not adopted"); return }
        #expect(last.key == "k2")
        #expect(g.map(\.id) == ["i-1", "i-2"])
        #expect(others.map(\.id) == ["i-0"])
        #expect(mine.count == 3)
        let ran = p.recoveredCluster(cluster("c", .provisioning), on: last, price: 40)
        #expect(ran.status == .running && ran.intentKey == "k2" && ran.offer == offer && ran.pricePerHour == 40 && ran.readyAt != nil)
    }

    @Test func interruptedUpNotWholeOrWithAFailedNodeFails() {
        let c = cluster("c", .provisioning)
        let intents = [intent("k", cluster: "c", .pending)]
        let short = plan(["sim": [inst("i-1", cluster: "c", intent: "k")]])
        #expect(short.interruptedUp(c, intents: intents) == .fail(mine: [inst("i-1", cluster: "c", intent: "k")]))
        let broken = [inst("i-1", cluster: "c", intent: "k"), inst("i-2", cluster: "c", intent: "k", state: .failed)]
        #expect(plan(["sim": broken]).interruptedUp(c, intents: intents) == .fail(mine: broken))
        // Never launched at all: nothing pending or launched.
        #expect(plan(["sim": []]).interruptedUp(c, intents: [intent("k", cluster: "c", .failed)]) == .fail(mine: []))
        // Its provider is not enabled here (but was listed: nothing to adopt it with).
        #expect(plan(["sim": broken], providers: []).interruptedUp(c, intents: intents) == .fail(mine: broken))
    }

    @Test func failedUpTerminatesTaggedLeftoversOnceAbandonsPendingIntentsAndFailsTheCluster() {
        let a = inst("i-1", cluster: "c", intent: "k"), b = inst("i-2", cluster: "c", intent: "k")
        #expect(ReconcilePlan.leftovers([a], tagged: [a, b]).map(\.id) == ["i-1", "i-2"])
        let (failed, abandon) = plan([:]).failedUp(cluster("c", .provisioning), intents: [intent("k1", cluster: "c", .failed), intent("k2", cluster: "c", .pending), intent("k3", cluster: "c", .launched)])
        #expect(abandon == ["k2"])
        #expect(failed.status == .failed && failed.terminatedAt != nil && failed.lastError?.contains("interrupted") == true)
    }

    @Test func deadMoveIsTheLastLaunchedIntentMovingFromTheClustersOwnAndItsProviderListed() {
        let c = cluster("c", .running, intent: "k")
        let own = intent("k", cluster: "c", tags: [CapstanTags.moveFrom: "k"])
        let m1 = intent("m1", cluster: "c", tags: [CapstanTags.moveFrom: "k"])
        let m2 = intent("m2", cluster: "c", provider: "aws", tags: [CapstanTags.moveFrom: "k"])
        let other = intent("x", cluster: "c", tags: [CapstanTags.moveFrom: "older"])
        #expect(plan(["sim": [], "aws": []]).pendingMove(c, launched: [own, m1, m2, other])?.key == "m2")
        #expect(plan(["sim": []]).pendingMove(c, launched: [own, m1, m2]) == nil)
        #expect(plan(["sim": []]).pendingMove(c, launched: [own, other]) == nil)
    }

    @Test func deadMoveIsFinishedWhenItsGangRunsWholeElseUndone() {
        let c = cluster("c", .running, intent: "k")
        let move = intent("m", cluster: "c", tags: [CapstanTags.moveFrom: "k"])
        let whole = [inst("i-1", cluster: "c", intent: "m"), inst("i-2", cluster: "c", intent: "m"), inst("i-0", cluster: "c", intent: "k")]
        #expect(plan(["sim": whole]).moveOutcome(c, move: move) == .finish(gang: Array(whole.prefix(2))))
        let booting = [inst("i-1", cluster: "c", intent: "m"), inst("i-2", cluster: "c", intent: "m", state: .pending)]
        #expect(plan(["sim": booting]).moveOutcome(c, move: move) == .undo(gang: booting))
        let short = [inst("i-1", cluster: "c", intent: "m"), inst("i-2", cluster: "c", intent: "m", state: .terminated)]
        #expect(plan(["sim": short]).moveOutcome(c, move: move) == .undo(gang: [short[0]]))
    }

    // MARK: Listing errors, gone instances, dead intents

    @Test func providerWithAListingErrorHasItsInstancesLeftAlone() {
        // `aws` could not be listed: absent from the listing.
        let p = ReconcilePlan(.init(owners: ["me"], providers: ["sim", "aws"], listed: ["sim": []], listingErrors: ["aws": CapstanError(.transient, "down")], createdAt: created))
        let rec = InstanceRecord(instance: inst("i-1", cluster: "c", intent: "k", provider: "aws"), clusterID: "c", intentKey: "k")
        #expect(p.gone([rec]).isEmpty)
        #expect(p.instances(clusters: [], launched: [:], recorded: []).isEmpty)
        #expect(p.rebuilds(known: []).isEmpty)
        #expect(p.interruptedUp(cluster("c", .provisioning), intents: [intent("k", cluster: "c", .pending, provider: "aws")]) == .leave(unlisted: "aws"))
    }

    @Test func recordTheCloudNoLongerListsAsLiveIsMarkedGone() {
        let vanished = InstanceRecord(instance: inst("i-1", cluster: "c", intent: "k"), clusterID: "c", intentKey: "k")
        let listedDead = InstanceRecord(instance: inst("i-2", cluster: "c", intent: "k"), clusterID: "c", intentKey: "k")
        let alive = InstanceRecord(instance: inst("i-3", cluster: "c", intent: "k"), clusterID: "c", intentKey: "k")
        let already = InstanceRecord(instance: inst("i-4", cluster: "c", intent: "k", state: .terminated), clusterID: "c", intentKey: "k")
        let p = plan(["sim": [inst("i-2", cluster: "c", intent: "k", state: .preempted), inst("i-3", cluster: "c", intent: "k")]])
        #expect(p.gone([vanished, listedDead, alive, already]).map(\.id) == ["i-1", "i-2"])
    }

    @Test func aLaunchThatFinishedWhileTheListingRanIsNotGone() {
        // Listing began at `from`; another process's `up` launched and recorded "i-new" after it
        // (its intent turned launched then), and released its lock before the probes.
        let from = created.addingTimeInterval(600)
        func intentAt(_ key: String, _ status: LaunchIntent.Status, _ at: Date) -> LaunchIntent {
            var i = intent(key, cluster: "c", status)
            i.createdAt = at.addingTimeInterval(-5)
            i.updatedAt = at
            return i
        }
        let p = ReconcilePlan(.init(owners: ["me"], providers: ["sim"], listed: ["sim": [inst("i-dead", cluster: "c", intent: "new", state: .terminated)]], createdAt: created, listedFrom: from))
        let new = InstanceRecord(instance: inst("i-new", cluster: "c", intent: "new"), clusterID: "c", intentKey: "new")
        let settling = InstanceRecord(instance: inst("i-settling", cluster: "c", intent: "settling"), clusterID: "c", intentKey: "settling")
        let old = InstanceRecord(instance: inst("i-old", cluster: "c", intent: "old"), clusterID: "c", intentKey: "old")
        let launching = InstanceRecord(instance: inst("i-launching", cluster: "c", intent: "launching"), clusterID: "c", intentKey: "launching")
        let listedDead = InstanceRecord(instance: inst("i-dead", cluster: "c", intent: "new"), clusterID: "c", intentKey: "new")
        let intents = [
            intentAt("new", .launched, from.addingTimeInterval(2)),
            intentAt("settling", .launched, from.addingTimeInterval(-ReconcilePlan.listingSettle / 2)),
            intentAt("old", .launched, from.addingTimeInterval(-ReconcilePlan.listingSettle - 1)),
            intentAt("launching", .pending, from.addingTimeInterval(-3600)),
        ]
        // Absent and launched long before the listing: gone. Listed dead: gone whenever it was
        // launched. Absent but launched after (or just before) the listing began, or still
        // launching: not judged by this listing.
        #expect(p.gone([new, settling, old, launching, listedDead], intents: intents).map(\.id) == ["i-old", "i-dead"])
        // Without a listing start every absent record is judged, as before.
        #expect(plan(["sim": []]).gone([new, old], intents: Array(intents.prefix(3))).map(\.id) == ["i-new", "i-old"])
    }

    @Test func aPendingIntentOfAClusterCreatedAfterTheProbesIsNotAbandoned() {
        let p = plan([:])
        let pending = [intent("seen", cluster: "c", .pending), intent("newer", cluster: "n", .pending)]
        #expect(p.abandoned(pending, known: ["c"]).map(\.key) == ["seen"])
        #expect(p.abandoned(pending).map(\.key) == ["seen", "newer"])
    }

    @Test func pendingIntentOfADeadProcessIsAbandonedWithItsPid() {
        let out = plan([:]).abandoned([intent("k", cluster: "c", .pending, pid: 777)])
        #expect(out.map(\.key) == ["k"])
        #expect(out[0].error == "the process that wrote it (pid 777) died before the launch was recorded")
    }
}
