public import Foundation

/// What ``Provisioner/reconcile()`` decides, without doing any of it: every rule of reconcile,
/// as pure functions of the facts the executor gathered (the store's clusters, intents and
/// records, each provider's listing or its error, which clusters are busy, the store's
/// `createdAt`, now). No store, cloud, lock or file is touched here.
///
/// Reconcile decides in phases, with state read (and locks taken) in between, so the plan is
/// asked once per phase, in this order, by the executor:
///
/// 1. ``queries(owners:)``: what to list at each provider (only this store's owner ids).
/// 2. ``rebuilds(known:)``: clusters the store does not know: rebuild, or terminate (not whole).
/// 3. ``locking(_:)``: which cluster locks to probe or take; the executor reports back
///    ``Event/busy(clusterID:)`` for those held elsewhere.
/// 4. ``recoveries(_:)``: interrupted `down`s, `up`s and moves, in that order; each is then
///    decided by ``interruptedUp(_:intents:)`` and ``pendingMove(_:launched:)`` /
///    ``moveOutcome(_:move:)``; the executor reports ``Event/handled(clusterID:)``.
/// 5. ``instances(clusters:launched:recorded:)``: adopt, note or terminate each listed instance.
/// 6. ``gone(_:intents:)``: records the clouds no longer list (and were launched before the listing).
/// 7. ``abandoned(_:known:)``: intents of dead processes.
public struct ReconcilePlan: Sendable {

    /// What reconcile found before deciding anything.
    public struct Facts: Sendable {
        /// Every owner id this store has had.
        public var owners: [String]
        /// The providers enabled here (by name).
        public var providers: Set<String>
        /// Each provider's Capstan instances; a provider that could not be listed is absent.
        public var listed: [String: [Instance]]
        /// Providers whose listing failed (their instances are left alone).
        public var listingErrors: [String: CapstanError]
        /// When the store was created (``ClusterRepository/createdAt()``).
        public var createdAt: Date
        /// When the listing began. Whatever was launched (or written) after it may be missing
        /// from `listed` without being gone: another process's `up` or node replacement that
        /// finished while this reconcile listed. Nil: every launch is judged by the listing.
        public var listedFrom: Date?
        public var now: Date

        public init(owners: [String] = [], providers: Set<String>, listed: [String: [Instance]], listingErrors: [String: CapstanError] = [:], createdAt: Date, listedFrom: Date? = nil, now: Date = Date()) {
            self.owners = owners
            self.providers = providers
            self.listed = listed
            self.listingErrors = listingErrors
            self.createdAt = createdAt
            self.listedFrom = listedFrom
            self.now = now
        }
    }

    public var facts: Facts
    /// Clusters another process works on: hands off.
    public private(set) var busy: Set<String> = []
    /// Clusters finished or recovered in this reconcile: their listing is stale.
    public private(set) var handled: Set<String> = []

    public init(_ facts: Facts) { self.facts = facts }

    /// What the executor learnt while acting.
    public enum Event: Sendable, Hashable {
        /// Its lock is held elsewhere.
        case busy(clusterID: String)
        /// Finished or recovered (or tried) here.
        case handled(clusterID: String)
    }

    public mutating func receive(_ event: Event) {
        switch event {
        case .busy(let id): busy.insert(id)
        case .handled(let id): handled.insert(id)
        }
    }

    /// Neither busy nor handled: its listing may be acted on.
    func untouched(_ clusterID: String) -> Bool { !busy.contains(clusterID) && !handled.contains(clusterID) }

    // MARK: 1. Listing

    /// Rule: only instances tagged with one of this store's owner ids are listed (another
    /// owner's instances are never seen, so never touched).
    public static func queries(owners: [String]) -> [InstanceQuery] {
        // Dead ones too: a preempted instance the cloud still lists (a stopped spot VM, an
        // EXITED RunPod pod) bills its disk until it is deleted (``instances(clusters:launched:recorded:)``).
        owners.map { InstanceQuery(tags: [CapstanTags.managed: "true", CapstanTags.owner: $0], includeTerminated: true) }
    }

    /// Every listed instance, of every listed provider.
    var all: [Instance] { facts.listed.keys.sorted().flatMap { facts.listed[$0]! } }

    // MARK: 2. Clusters the store lost

    /// An unknown cluster's gang, as the cloud's tags describe it (node indices assigned).
    public struct Rebuild: Sendable, Hashable {
        public var clusterID: String
        /// In launch order, each with its node index (``CapstanTags/node``).
        public var group: [Instance]
        public var nodes: Int
        public var provider: String { group[0].provider }
        /// The name the cloud's tags give it (if any).
        public var tagName: String? { group[0].tags[CapstanTags.cluster] }
        /// The launch intents of the gang, by key (sorted), each with its members.
        public var intents: [(key: String, members: [Instance])] {
            Dictionary(grouping: group, by: { $0.tags[CapstanTags.intent] ?? "" }).sorted { $0.key < $1.key }.map { (key: $0.key, members: $0.value) }
        }
    }

    public enum RebuildStep: Sendable, Hashable {
        /// Whole: write the cluster, its intents and instances back.
        case rebuild(Rebuild)
        /// Not whole (a node missing, failed or stopped, indices that clash, mixed offers, a
        /// provider not enabled): terminate the group.
        case terminate(clusterID: String, instances: [Instance])
    }

    /// Rule: a live instance (not already shutting down) tagged with a cluster id the store does
    /// not know, launched *before* the store was created, is from a lost database: its cluster
    /// is rebuilt when the group is whole, else terminated. One launched since is an orphan
    /// (left to ``instances(clusters:launched:recorded:)``, which terminates it). Node indices:
    /// a kept index stands when valid and unique; the rest are numbered in launch order; two
    /// instances claiming one index make the group not whole.
    public func rebuilds(known: Set<String>) -> [RebuildStep] {
        let since = facts.createdAt
        let unknown = Dictionary(grouping: all.filter { i in
            i.state.isLive && i.state != .terminating && !(i.tags[CapstanTags.clusterID] ?? "").isEmpty
                && !known.contains(i.tags[CapstanTags.clusterID]!) && (i.launchedAt ?? .distantPast) < since
        }, by: { $0.tags[CapstanTags.clusterID]! })
        return unknown.sorted(by: { $0.key < $1.key }).map { clusterID, members in
            var group = members.sorted { ($0.launchedAt ?? .distantPast, $0.id) < ($1.launchedAt ?? .distantPast, $1.id) }
            let first = group[0]
            let nodes = first.tags[CapstanTags.nodes].flatMap(Int.init) ?? group.count
            // The cloud's tags are all there is: a node index it kept stands when it is valid and
            // unique; instances without one (a cloud that keeps no per-instance tags, or a gang
            // Capstan numbered in its own records) are numbered in launch order.
            let kept = group.map { $0.tags[CapstanTags.node].flatMap(Int.init) }
            let indices = Set(kept.compactMap { $0 }).count == kept.compactMap({ $0 }).count ? NodeIndices.assign(kept, nodes: nodes) : nil
            for k in group.indices { group[k].tags[CapstanTags.node] = indices.map { "\($0[k])" } }
            let sameOffer = Set(group.map { "\($0.provider)/\($0.region)/\($0.instanceType)" }).count == 1
            guard group.count == nodes, indices != nil, sameOffer, !group.contains(where: { $0.state == .failed || $0.state == .stopped }),
                  facts.providers.contains(first.provider) else {
                return .terminate(clusterID: clusterID, instances: group)
            }
            return .rebuild(Rebuild(clusterID: clusterID, group: group, nodes: nodes))
        }
    }

    /// Rule: a rebuilt cluster keeps its tagged name when valid and no live cluster has it;
    /// else it is `recovered-<first 8 of its id>`.
    public static func rebuiltName(tagName: String?, clusterID: String, valid: (String) -> Bool, liveNameTaken: Bool) -> String {
        let fallback = "recovered-\(clusterID.prefix(8))"
        guard let name = tagName else { return fallback }
        return valid(name) && !liveNameTaken ? name : fallback
    }

    /// Rule: a rebuilt cluster's offer is its provider catalog's entry for the instance's type,
    /// region and zone, else as much as the instance itself says.
    public static func recoveredOffer(for i: Instance, catalog: [Offer]) -> Offer {
        if let o = catalog.first(where: { $0.instanceType == i.instanceType && $0.region == i.region && ($0.zone == nil || $0.zone == i.zone) }) {
            var o = o
            o.zone = i.zone ?? o.zone
            return o
        }
        return Offer(provider: i.provider, instanceType: i.instanceType, region: i.region, zone: i.zone, gpusPerNode: 0,
                     onDemandPricePerHour: i.spot ? nil : i.pricePerHour, spotPricePerHour: i.spot ? i.pricePerHour : nil)
    }

    /// The cluster written back for `r`: running on `offer`, priced from its instances.
    /// `now`: when it is written (default: ``Facts/now``).
    public func rebuiltCluster(_ r: Rebuild, name: String, offer: Offer, now: Date? = nil) -> Cluster {
        let now = now ?? facts.now
        let first = r.group[0]
        var request = ResourceRequest(gpu: offer.gpu, gpusPerNode: offer.gpusPerNode, nodes: r.nodes, providers: [first.provider])
        request.spot = first.spot ? .only : .never
        var cluster = Cluster(id: r.clusterID, name: name, request: request, createdAt: r.group.compactMap(\.launchedAt).min() ?? now)
        cluster.status = .running
        cluster.offer = offer
        cluster.spot = first.spot
        cluster.nodes = r.nodes
        cluster.pricePerHour = r.group.reduce(0) { $0 + ($1.pricePerHour ?? 0) }
        cluster.intentKey = r.group.min { $0.nodeIndex < $1.nodeIndex }?.tags[CapstanTags.intent]
        cluster.readyAt = now
        return cluster
    }

    // MARK: 3. Locks

    public enum LockStep: Sendable, Hashable {
        /// A running cluster: busy when someone holds its lock (not taken: nothing to repair yet).
        case probe(Cluster)
        /// Half-done (`provisioning`, `terminating`): take its lock; busy when that fails.
        case take(Cluster)
    }

    /// Rule: every live cluster's lock is probed (running) or taken (half-done); a lock held
    /// elsewhere means live work: that cluster is busy, left alone.
    public func locking(_ clusters: [Cluster]) -> [LockStep] {
        clusters.filter(\.status.isLive).map { $0.status == .running ? .probe($0) : .take($0) }
    }

    // MARK: 4. Interrupted work

    public enum Recovery: Sendable, Hashable {
        /// `down` died: finish it.
        case finishTermination(Cluster)
        /// `up` died: ``interruptedUp(_:intents:)`` decides.
        case recoverUp(Cluster)
        /// A running cluster: a move of it may have died (``pendingMove(_:launched:)``).
        case checkMove(Cluster)
    }

    /// Rule: of the clusters not busy, every `terminating` one is finished, then every
    /// `provisioning` one recovered, then every running one checked for a dead move.
    public func recoveries(_ clusters: [Cluster]) -> [Recovery] {
        let free = clusters.filter { !busy.contains($0.id) }
        return free.filter { $0.status == .terminating }.map(Recovery.finishTermination)
            + free.filter { $0.status == .provisioning }.map(Recovery.recoverUp)
            + free.filter { $0.status == .running }.map(Recovery.checkMove)
    }

    public enum UpRecovery: Sendable, Hashable {
        /// A provider it launched on could not be listed: left for a later reconcile.
        case leave(unlisted: String)
        /// The last launch's gang is whole: wait for it to run as `up` would; when it does, adopt
        /// it and terminate `others` (an earlier offer's leftovers); else fail.
        case tryAdopt(intent: LaunchIntent, gang: [Instance], others: [Instance], mine: [Instance])
        /// Not whole: terminate everything of it (`mine` plus what its providers tag with its id).
        case fail(mine: [Instance])
    }

    /// Rule: an interrupted `up` (its cluster `provisioning`) is left alone while a provider it
    /// used is unlisted; it is adopted when its last launch (pending or launched) has exactly
    /// `nodes` live instances, all running or pending, on an enabled provider; else it fails.
    public func interruptedUp(_ c: Cluster, intents: [LaunchIntent]) -> UpRecovery {
        if let unlisted = Set(intents.map(\.provider)).sorted().first(where: { facts.listed[$0] == nil }) {
            return .leave(unlisted: unlisted)
        }
        let mine = all.filter { $0.tags[CapstanTags.clusterID] == c.id && $0.state.isLive }
        if let last = intents.last(where: { $0.status == .pending || $0.status == .launched }), facts.providers.contains(last.provider) {
            let gang = mine.filter { $0.tags[CapstanTags.intent] == last.key }.sorted { $0.id < $1.id }
            if gang.count == c.nodes, gang.allSatisfy({ $0.state == .running || $0.state == .pending }) {
                return .tryAdopt(intent: last, gang: gang, others: mine.filter { $0.tags[CapstanTags.intent] != last.key }, mine: mine)
            }
        }
        return .fail(mine: mine)
    }

    /// What a failed `up` leaves to terminate: what was listed plus what its providers tag with
    /// its id (each once).
    public static func leftovers(_ mine: [Instance], tagged: [Instance]) -> [Instance] {
        var out = mine
        var seen = Set(mine.map(\.id))
        for t in tagged where seen.insert(t.id).inserted { out.append(t) }
        return out
    }

    /// The cluster of an `up` adopted on `intent`.
    /// `now`: when its nodes ran (default: ``Facts/now``).
    public func recoveredCluster(_ c: Cluster, on intent: LaunchIntent, price: Double, now: Date? = nil) -> Cluster {
        var cluster = c
        cluster.status = .running
        cluster.offer = intent.offer
        cluster.spot = intent.spot
        cluster.pricePerHour = price
        cluster.intentKey = intent.key
        cluster.readyAt = now ?? facts.now
        return cluster
    }

    /// Rule: a failed interrupted `up` abandons its pending intents and marks its cluster failed.
    public func failedUp(_ c: Cluster, intents: [LaunchIntent], now: Date? = nil) -> (cluster: Cluster, abandon: [String]) {
        var cluster = c
        cluster.status = .failed
        cluster.terminatedAt = now ?? facts.now
        cluster.lastError = "Provisioning was interrupted (the capstan process died) before every node ran; whatever it had launched was terminated."
        return (cluster, intents.filter { $0.status == .pending }.map(\.key))
    }

    /// Rule: a running cluster has a dead move when one of its launched intents (not its own)
    /// is tagged to move from its intent; the last one counts, and only when its provider was
    /// listed.
    public func pendingMove(_ c: Cluster, launched: [LaunchIntent]) -> LaunchIntent? {
        let moves = launched.filter { $0.tags[CapstanTags.moveFrom] == c.intentKey && $0.key != c.intentKey }
        guard let move = moves.last, facts.listed[move.provider] != nil else { return nil }
        return move
    }

    public enum MoveOutcome: Sendable, Hashable {
        /// The new gang runs whole: finish the move.
        case finish(gang: [Instance])
        /// It does not: terminate the new gang, fail the intent; the cluster stays.
        case undo(gang: [Instance])
    }

    /// Rule: a dead move is finished when its gang has exactly `nodes` live instances, all
    /// running; else it is undone.
    public func moveOutcome(_ c: Cluster, move: LaunchIntent) -> MoveOutcome {
        let gang = (facts.listed[move.provider] ?? []).filter { $0.tags[CapstanTags.intent] == move.key && $0.state.isLive }.sorted { $0.id < $1.id }
        return gang.count == c.nodes && gang.allSatisfy({ $0.state == .running }) ? .finish(gang: gang) : .undo(gang: gang)
    }

    // MARK: 5. Listed instances

    /// Why an instance is terminated.
    public enum Orphan: Sendable, Hashable {
        /// Its cluster id is unknown here (launched after the store was created, or never a
        /// cluster's).
        case unknownCluster
        /// Its cluster is no longer running.
        case clusterNotRunning(ClusterStatus)
        /// Its cluster runs, but on another launch (e.g. a failed offer's leftovers).
        case notTheClustersLaunch
    }

    public enum InstanceStep: Sendable, Hashable {
        /// Belongs to a running cluster's launch: (re-)record it (when `recorded`), report adopted.
        case adopt(Instance, clusterID: String, intent: String, recorded: Bool)
        /// Already shutting down and no one's: record it, nothing more.
        case noteLeaving(Instance, clusterID: String, intent: String)
        /// Adopted but never recorded (a crash between writing the cluster and its instances):
        /// number them (``Provisioner``'s stamp), in launch order, around the indices taken.
        /// `cloudTags`: the Capstan tags the cloud kept on the first listed, for a launch not
        /// written down (``adoptionTags(intent:cloudTags:)``).
        case number(gang: [Instance], cluster: Cluster, intent: String, cloudTags: [String: String])
        /// No live cluster owns them: terminate, per provider.
        case terminate(provider: String, instances: [Instance], reasons: [String: Orphan])
    }

    /// Rule: a live listed instance of a cluster neither busy nor handled is adopted when its
    /// cluster runs and it is of the cluster's launch (or of a later launch of it that
    /// completed: a node replacement); else, when already shutting down, only noted; else
    /// terminated. `launched`: every launched intent's cluster id, by key; `recorded`:
    /// `provider/id` of every instance the store has.
    public func instances(clusters: [Cluster], launched: [String: String], recorded: Set<String>) -> [InstanceStep] {
        let byID = Dictionary(clusters.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        var steps: [InstanceStep] = []
        var unrecorded: [String: [Instance]] = [:]
        var doomed: [String: [Instance]] = [:]
        var reasons: [String: [String: Orphan]] = [:]
        for providerName in facts.listed.keys.sorted() {
            for i in facts.listed[providerName]! where i.state.isLive || i.state == .preempted {
                let clusterID = i.tags[CapstanTags.clusterID] ?? ""
                let intent = i.tags[CapstanTags.intent] ?? ""
                guard untouched(clusterID) else { continue }
                let c = byID[clusterID]
                if i.state == .preempted {
                    // Still listed, so still billed: deleted unless its cluster runs (a running
                    // cluster's job recovers from the preemption and `down` deletes it).
                    if c?.status != .running {
                        doomed[providerName, default: []].append(i)
                        reasons[providerName, default: [:]][i.id] = c.map { .clusterNotRunning($0.status) } ?? .unknownCluster
                    }
                    continue
                }
                if let c, c.status == .running, c.intentKey == intent || launched[intent] == c.id {
                    let isRecorded = recorded.contains(i.provider + "/" + i.id)
                    if !isRecorded { unrecorded[intent, default: []].append(i) }
                    steps.append(.adopt(i, clusterID: c.id, intent: intent, recorded: isRecorded))
                } else if i.state == .terminating {
                    steps.append(.noteLeaving(i, clusterID: clusterID, intent: intent))
                } else {
                    doomed[providerName, default: []].append(i)
                    reasons[providerName, default: [:]][i.id] = c.map { $0.status == .running ? .notTheClustersLaunch : .clusterNotRunning($0.status) } ?? .unknownCluster
                }
            }
        }
        for (intent, group) in unrecorded.sorted(by: { $0.key < $1.key }) {
            guard let c = byID[group[0].tags[CapstanTags.clusterID] ?? ""] else { continue }
            let gang = group.sorted { ($0.launchedAt ?? .distantPast, $0.id) < ($1.launchedAt ?? .distantPast, $1.id) }
            steps.append(.number(gang: gang, cluster: c, intent: intent, cloudTags: group[0].tags.filter { CapstanTags.isCapstan($0.key) }))
        }
        for (providerName, instances) in doomed.sorted(by: { $0.key < $1.key }) where !instances.isEmpty {
            steps.append(.terminate(provider: providerName, instances: instances, reasons: reasons[providerName] ?? [:]))
        }
        return steps
    }

    /// Whether recording `listed` over `record` (``ClusterRepository/record(_:clusterID:intentKey:)``:
    /// Capstan's own tags kept from the record) would change what the store holds. Reconcile
    /// re-records an adopted instance only then, so a reconcile that finds everything as it was
    /// writes nothing, however many clusters there are. A launch time that differs by less than
    /// a second is the same (the store keeps milliseconds, a plugin's JSON whole seconds).
    public static func recordChanges(_ record: InstanceRecord, listed: Instance) -> Bool {
        var merged = listed
        for (k, v) in record.instance.tags where CapstanTags.isCapstan(k) { merged.tags[k] = v }
        if let a = merged.launchedAt, let b = record.instance.launchedAt, abs(a.timeIntervalSince(b)) < 1 { merged.launchedAt = b }
        return merged != record.instance || merged.state != record.state
    }

    /// Rule: an adopted, unrecorded gang is numbered with its launch's tags as written down,
    /// else the cloud's own Capstan tags (a node index it kept).
    public static func adoptionTags(intent: LaunchIntent?, cloudTags: [String: String]) -> [String: String] {
        intent?.tags ?? cloudTags
    }

    /// The node indices the cluster's other live nodes hold.
    public static func takenIndices(_ records: [InstanceRecord]) -> Set<Int> {
        Set(records.filter { !$0.state.isGone }.map(\.instance.nodeIndex))
    }

    // MARK: 6. Gone

    /// How long before the listing began a launch still counts as too recent for the listing to
    /// be sure of: a cloud's listing lags its launches (EC2 is eventually consistent) and
    /// another replica's clock may differ a little. Such records are judged by the next pass.
    public static let listingSettle: TimeInterval = 60

    /// Whether `intent` is too recent for this listing: still pending (its process is launching;
    /// a dead one's is closed by ``abandoned(_:known:)`` first, and then not passed here), or
    /// written within ``listingSettle`` of the listing's start or after it (less than an hour).
    func recent(_ intent: LaunchIntent) -> Bool {
        guard intent.status != .pending else { return true }
        guard let from = facts.listedFrom else { return false }
        // (A writer's clock an hour or more ahead is not believed: its records are judged.)
        return intent.updatedAt >= from.addingTimeInterval(-Self.listingSettle) && intent.updatedAt < from.addingTimeInterval(3600)
    }

    /// Rule: a record the store thinks alive, of a listed provider and a cluster neither busy nor
    /// handled, that the provider lists as dead (terminated, preempted) is gone; one it does not
    /// list at all is gone too, unless its launch (`intents`, by key) is pending or too recent
    /// for the listing to show it: an `up` that finished between this listing and the lock
    /// probes is not listed yet, and its nodes are not gone.
    public func gone(_ records: [InstanceRecord], intents: [LaunchIntent] = []) -> [InstanceRecord] {
        let fresh = Set(intents.lazy.filter(recent).map(\.key))
        // The live ids of each listed provider, once: a lookup per record, not a scan of the
        // listing per record (1,000 clusters are 2,000 records against 2,000 listed).
        var live: [String: Set<String>] = [:]
        var dead: [String: Set<String>] = [:]
        for (provider, listed) in facts.listed {
            live[provider] = Set(listed.lazy.filter(\.state.isLive).map(\.id))
            dead[provider] = Set(listed.lazy.filter { !$0.state.isLive }.map(\.id))
        }
        return records.filter { rec in
            guard !rec.state.isGone, let seen = live[rec.provider], untouched(rec.clusterID), !seen.contains(rec.id) else { return false }
            return dead[rec.provider]?.contains(rec.id) == true || !fresh.contains(rec.intentKey)
        }
    }

    // MARK: 7. Dead processes' intents

    /// Rule: a still-pending intent whose cluster is not busy belongs to a dead process: it is
    /// abandoned, with this message. `known` is the clusters read before the lock probes: an
    /// intent of a cluster created since (its `up` at work, never probed) is left for the next
    /// pass; nil judges every intent.
    public func abandoned(_ pending: [LaunchIntent], known: Set<String>? = nil) -> [(key: String, error: String)] {
        pending.filter { $0.status == .pending && !busy.contains($0.clusterID) && known?.contains($0.clusterID) != false }.map {
            (key: $0.key, error: "the process that wrote it (pid \($0.pid)) died before the launch was recorded")
        }
    }
}
