public import Foundation
public import Logging

/// Settings for provisioning: how hard to try, how to back off, how long to wait for boot.
public struct ProvisionOptions: Sendable {
    /// Offers tried at most (in rank order) before giving up.
    public var maxAttempts: Int = 12
    /// Retries of the same offer after a rate-limit or transient error (same idempotency key).
    public var launchRetries: Int = 3
    /// Backoff before retrying an offer, and between consecutive offers of one provider.
    public var backoff = Backoff()
    /// Readiness waiter: poll `describe` between these delays (doubling), up to `readyTimeout`.
    public var waitMinDelay: Duration = .milliseconds(500)
    /// 5 s: the doubling overshoots a boot by up to the last delay, and a replacement node's
    /// boot is time a whole gang waits (measured: an 8 s boot was seen at 15.5 s with 15 s).
    public var waitMaxDelay: Duration = .seconds(5)
    public var readyTimeout: Duration = .seconds(900)
    /// Per-cluster SSH key pairs: the public key goes with every launch. Nil: none.
    public var clusterKeys: (any ClusterKeySource)?
    /// What time it is for reconcile: when its listing began decides which launches are too
    /// recent for the listing to show (``ReconcilePlan/listingSettle``). Tests move it.
    public var clock: @Sendable () -> Date = { Date() }

    public init() {}
}

/// Jittered exponential backoff: `initial × 2^n`, capped at `max`, with ±`jitter` of it random.
public struct Backoff: Sendable, Hashable {
    public var initial: Duration = .milliseconds(500)
    public var max: Duration = .seconds(30)
    public var jitter: Double = 0.25

    public init(initial: Duration = .milliseconds(500), max: Duration = .seconds(30), jitter: Double = 0.25) {
        self.initial = initial
        self.max = max
        self.jitter = jitter
    }

    /// The delay before retry number `n` (0-based).
    public func delay(_ n: Int) -> Duration {
        let base = min(initial.seconds * pow(2, Double(min(n, 30))), max.seconds)
        let factor = 1 + Double.random(in: -jitter...jitter)
        return .milliseconds(Int64(base * factor * 1000))
    }
}

/// One offer tried by `capstan up`, and what came of it.
public struct ProvisionAttempt: Sendable, Hashable, Codable {
    public var offer: Offer
    public var spot: Bool
    public var clusterPricePerHour: Double
    public var intentKey: String
    /// `ready`, or the error code that ended the attempt (`capacity`, `quota`, `auth`, `timeout`, …).
    public var outcome: String
    public var error: CapstanError?
    public var seconds: Double
}

/// What `up` did: the cluster as it ended, every attempt, and the instances.
public struct ProvisionReport: Sendable, Hashable, Codable {
    public var cluster: Cluster
    public var attempts: [ProvisionAttempt]
    public var instances: [Instance]
    /// Why no offer was tried, when none was.
    public var noOfferReason: String?
}

/// What reconcile found and did.
public struct ReconcileReport: Sendable, Hashable, Codable {
    /// Instances that belong to a live cluster and were (re-)recorded.
    public var adopted: [String] = []
    /// Instances that belonged to no live cluster and were terminated.
    public var terminated: [String] = []
    /// Clusters whose `up` died mid-way and that were completed from what it had launched.
    public var recoveredClusters: [String] = []
    /// Clusters whose `up` died mid-way and that were cleaned up.
    public var failedClusters: [String] = []
    /// Launch intents whose process died, now closed.
    public var abandonedIntents: [String] = []
    /// Providers that could not be listed (their instances were left alone).
    public var providerErrors: [String: CapstanError] = [:]
    /// Clusters skipped because another process is working on them.
    public var busyClusters: [String] = []
    /// Clusters whose `down` died mid-way, now terminated.
    public var finishedTerminations: [String] = []
    /// Clusters the state store did not know (its database was lost or replaced), rebuilt from
    /// their instances' tags so they can be used and taken down as before.
    public var rebuiltClusters: [String] = []
    /// Clusters taken down for being idle past their limit (``Provisioner/stopIdleClusters(now:)``,
    /// which `capstan reconcile` runs after reconciling); nil when it was not run.
    public var autostopped: [String]?

    public init() {}

    public var didSomething: Bool {
        !terminated.isEmpty || !recoveredClusters.isEmpty || !failedClusters.isEmpty || !abandonedIntents.isEmpty
            || !finishedTerminations.isEmpty || !rebuiltClusters.isEmpty
    }
}

/// Provisions clusters with failover, tears them down, and reconciles state with the clouds so
/// that no instance is ever leaked.
///
/// Crash safety: every launch is written to the state store as a ``LaunchIntent`` *before* the
/// cloud call, carries an idempotency key, and tags every instance with the owner, cluster and
/// intent (``CapstanTags``). ``reconcile()`` lists every provider's instances by those tags and
/// re-adopts what belongs to a live cluster, terminates everything else, and closes the intents
/// of processes that died. A cluster being provisioned is protected by a file lock, so a
/// reconcile in another process never touches work in progress.
public struct Provisioner: Sendable {
    public var providers: [any ComputeProvider]
    public var store: any StateStore
    public var locks: any LockService
    public var options: ProvisionOptions
    package var faults: FaultPoints
    public var logger: Logger
    /// Called with one line per step (offer tried, failed, launched, ready).
    public var progress: (@Sendable (String) -> Void)?
    /// Asked between polls while a launch waits to run (an allocation can wait in a batch
    /// queue for hours), and before each further offer: a reason to give up (the job was
    /// cancelled) ends the wait; the launch is cleaned up like any failed one. Nil: never.
    public var stopWaiting: (@Sendable () async -> String?)?

    public init(
        providers: [any ComputeProvider], store: any StateStore, locks: any LockService, options: ProvisionOptions = .init(),
        logger: Logger = Logger(label: "capstan", factory: { _ in SwiftLogNoOpLogHandler() }),
        progress: (@Sendable (String) -> Void)? = nil
    ) {
        self.providers = providers
        self.store = store
        self.locks = locks
        self.options = options
        self.faults = .none
        self.logger = logger
        self.progress = progress
    }

    /// With a test hook at each crash point (``FaultPoints``).
    package init(
        providers: [any ComputeProvider], store: any StateStore, locks: any LockService, options: ProvisionOptions = .init(),
        faults: FaultPoints, logger: Logger = Logger(label: "capstan", factory: { _ in SwiftLogNoOpLogHandler() }),
        progress: (@Sendable (String) -> Void)? = nil
    ) {
        self.providers = providers
        self.store = store
        self.locks = locks
        self.options = options
        self.faults = faults
        self.logger = logger
        self.progress = progress
    }

    func say(_ line: String) {
        logger.info("\(line)")
        progress?(line)
    }

    func provider(_ name: String) -> (any ComputeProvider)? { providers.first { $0.name == name } }

    /// Whether running cluster `name`'s capacity comes in all-or-nothing gangs
    /// (``ComputeProvider/allocatesGangs``: a Slurm allocation), so a lost node is never
    /// replaced alone: the whole gang is relaunched (``move(cluster:search:sameOfferFirst:)``).
    public func allocatesGangs(cluster name: String) async throws -> Bool {
        guard let offer = try await store.cluster(named: name)?.offer else { return false }
        return provider(offer.provider)?.allocatesGangs ?? false
    }

    /// A state write on a path that is already failing: its own failure must not hide the
    /// error being reported, and is logged instead (never silently dropped). What it leaves
    /// unwritten, reconcile finishes (an intent still pending, a cluster still provisioning).
    func bestEffort(_ what: String, _ write: () async throws -> Void) async {
        await logger.bestEffort(what, write)
    }

    /// Checks a cluster name: lower-case letters, digits and dashes, at most 63 characters.
    public static func validate(name: String) throws {
        guard name.range(of: "^[a-z0-9][a-z0-9-]{0,62}$", options: .regularExpression) != nil else {
            throw CapstanError(.invalidRequest, "Invalid cluster name '\(name)'.", hint: "Use lower-case letters, digits and dashes, starting with a letter or digit (at most 63).")
        }
    }

    /// Checks an autostop limit: a whole number of minutes from 1 to 525600 (a year).
    public static func validate(idleMinutes: Int?) throws {
        guard let m = idleMinutes else { return }
        guard m >= 1 && m <= 525_600 else {
            throw CapstanError(.invalidRequest, "--idle-minutes must be a whole number of minutes from 1 to 525600, got \(m).", hint: "Pass how long the cluster may sit without a running job before it is terminated, e.g. --idle-minutes 30; leave it out for no autostop.")
        }
    }

    // MARK: - Up

    /// Provisions cluster `name` for `request` on the cheapest offer that has capacity.
    /// Throws before anything is created (bad name, name taken, no offer search possible);
    /// otherwise returns a report whose cluster is `running` or `failed`.
    /// A cluster of that name whose `down` was interrupted is first taken down for good.
    public func up(name: String, request: ResourceRequest, search: OfferSearch, idleMinutes: Int? = nil) async throws -> ProvisionReport {
        try Self.validate(name: name)
        try request.validate()
        try Self.validate(idleMinutes: idleMinutes)
        guard let lock = try await locks.acquire(name) else {
            throw CapstanError(.invalidRequest, "Another capstan process is working on cluster '\(name)'.", hint: "Wait for it to finish, or check `capstan status`.")
        }
        defer { lock.release() }
        if var old = try await store.cluster(named: name), old.status == .terminating {
            try await finishTermination(&old)
        }

        var cluster = Cluster(name: name, request: request)
        cluster.idleMinutes = idleMinutes
        try await store.insert(cluster)
        await store.event("created", "Cluster \(name) requested: \(request.nodes) node(s)\(request.gpuDescription.map { " of \($0)" } ?? "").", cluster: cluster.id)
        faults.hit("up.created")

        let owner = try await store.ownerID()
        let result: OfferSearchResult
        do {
            result = try await search.run(request)
        } catch {
            cluster.status = .failed
            cluster.terminatedAt = Date()
            cluster.lastError = "\(error)"
            await bestEffort("cluster \(cluster.name) failed") { try await store.update(cluster) }
            throw error
        }
        faults.hit("up.searched")
        var attempts: [ProvisionAttempt] = []
        guard !result.ranked.isEmpty else {
            let why = Self.noOfferReason(result)
            cluster.status = .failed
            cluster.lastError = why
            cluster.terminatedAt = Date()
            try await store.update(cluster)
            await store.event("failed", why, cluster: cluster.id)
            return ProvisionReport(cluster: cluster, attempts: [], instances: [], noOfferReason: why)
        }

        let (ready, tried) = await launchGang(cluster: cluster, owner: owner, offers: result.ranked)
        attempts = tried
        if let (ranked, instances, intent) = ready {
            faults.hit("up.ready")
            let offer = ranked.offer
            cluster.status = .running
            cluster.offer = offer
            cluster.spot = ranked.spot
            cluster.pricePerHour = ranked.clusterPricePerHour
            cluster.intentKey = intent
            cluster.readyAt = Date()
            try await store.update(cluster)
            await store.event("ready", "Running on \(offer.provider) \(offer.instanceType) in \(offer.zone ?? offer.region), " + String(format: "$%.2f/h", ranked.clusterPricePerHour) + (ranked.spot ? " (spot)" : "") + Self.pick(ranked, of: request) + ".", cluster: cluster.id)
            say("ready: \(instances.count) node(s) on \(offer.provider) \(offer.instanceType) in \(offer.zone ?? offer.region)\(Self.pick(ranked, of: request))")
            return ProvisionReport(cluster: cluster, attempts: attempts, instances: instances)
        }
        cluster.status = .failed
        cluster.terminatedAt = Date()
        cluster.lastError = "All \(attempts.count) attempt(s) failed: " + attempts.map { "\($0.offer.id) \($0.outcome)" }.joined(separator: ", ")
        try await store.update(cluster)
        await store.event("failed", cluster.lastError ?? "", cluster: cluster.id)
        return ProvisionReport(cluster: cluster, attempts: attempts, instances: [])
    }

    /// `, anyOf[1]: A100-80GB×8` for an offer picked by an `anyOf` entry; empty otherwise.
    static func pick(_ ranked: RankedOffer, of request: ResourceRequest) -> String {
        guard let i = ranked.alternative, let alt = request.anyOf?[i] else { return "" }
        return ", anyOf[\(i)]: \(alt.description)"
    }

    /// Why an offer search found nothing to try, in one line.
    static func noOfferReason(_ result: OfferSearchResult) -> String {
        let reasons = Dictionary(grouping: result.rejected, by: \.reason).sorted { $0.value.count > $1.value.count }.prefix(3)
            .map { "\($0.value.count)× \($0.key)" }.joined(separator: "; ")
        let providerErrors = result.providers.compactMap { r in r.error.map { "\(r.provider): \($0.message)" } }
        return (["no offer matches the request"] + (reasons.isEmpty ? [] : ["filtered out: \(reasons)"]) + providerErrors).joined(separator: ". ")
    }

    /// Tries `offers` in order for a whole gang of `cluster.nodes` nodes, failing over on
    /// capacity errors, until one is running. Returns it (offer, instances, intent) and every
    /// attempt made.
    /// `stage` names the fault points (`up`, `move`); `tags` go on every instance besides the
    /// ownership tags.
    func launchGang(cluster: Cluster, owner: String, offers: [RankedOffer], stage: String = "up", tags extra: [String: String] = [:]) async -> (ready: (RankedOffer, [Instance], String)?, attempts: [ProvisionAttempt]) {
        var attempts: [ProvisionAttempt] = []
        var skippedProviders: [String: CapstanError] = [:]
        var launchesPerProvider: [String: Int] = [:]
        for ranked in offers {
            if attempts.count >= options.maxAttempts { break }
            if let why = await stopWaiting?() {
                say("not trying further offers: \(why)")
                break
            }
            let offer = ranked.offer
            if skippedProviders[offer.provider] != nil { continue }
            guard let provider = provider(offer.provider) else { continue }
            // Pace consecutive launches on one provider (backoff per offer).
            if let n = launchesPerProvider[offer.provider], n > 0 {
                do { try await Task.sleep(for: options.backoff.delay(n - 1)) } catch { break }
            }
            launchesPerProvider[offer.provider, default: 0] += 1
            let start = ContinuousClock.now
            let outcome = await attempt(cluster: cluster, owner: owner, ranked: ranked, provider: provider, stage: stage, tags: extra)
            let seconds = (ContinuousClock.now - start).seconds
            switch outcome {
            case .ready(let instances, let intent):
                attempts.append(ProvisionAttempt(offer: offer, spot: ranked.spot, clusterPricePerHour: ranked.clusterPricePerHour, intentKey: intent, outcome: "ready", error: nil, seconds: seconds))
                return ((ranked, instances, intent), attempts)
            case .failed(let error, let intent):
                attempts.append(ProvisionAttempt(offer: offer, spot: ranked.spot, clusterPricePerHour: ranked.clusterPricePerHour, intentKey: intent, outcome: error.code.name, error: error, seconds: seconds))
                say("failed: \(offer.id): \(error.code.name): \(error.message)")
                if [.auth, .config, .pluginFailure].contains(error.code) {
                    skippedProviders[offer.provider] = error
                    say("skipping the rest of \(offer.provider)'s offers (\(error.code.name))")
                }
            }
        }
        return (nil, attempts)
    }

    enum AttemptOutcome {
        case ready([Instance], String)
        case failed(CapstanError, String)
    }

    /// One offer: intent → launch (with retries) → wait for running. Cleans up after itself on
    /// every failure path.
    /// `node` set: a replacement for that one node index (count 1) instead of the whole cluster.
    /// `stage` names its fault points (`up`, `move`, `replace`).
    func attempt(cluster: Cluster, owner: String, ranked: RankedOffer, provider: any ComputeProvider, node: Int? = nil, stage: String = "up", tags extra: [String: String] = [:]) async -> AttemptOutcome {
        let offer = ranked.offer
        let key = "cap-" + UUID().uuidString.lowercased()
        let count = node == nil ? cluster.nodes : 1
        var tags = extra.merging([
            CapstanTags.managed: "true", CapstanTags.owner: owner, CapstanTags.cluster: cluster.name,
            CapstanTags.clusterID: cluster.id, CapstanTags.intent: key, CapstanTags.nodes: "\(cluster.nodes)",
        ]) { $1 }
        if let node { tags[CapstanTags.node] = "\(node)" }
        let intent = LaunchIntent(
            key: key, clusterID: cluster.id, provider: offer.provider, offer: offer, count: count, spot: ranked.spot,
            tags: tags, status: .pending, createdAt: Date(), updatedAt: Date(), error: nil, pid: ProcessInfo.processInfo.processIdentifier)
        do {
            try await store.insert(intent)
        } catch {
            return .failed(error as? CapstanError ?? CapstanError(.io, "\(error)"), key)
        }
        say("trying \(offer.id): \(count) node(s), " + String(format: "$%.2f/h", ranked.clusterPricePerHour) + (ranked.spot ? " spot" : ""))
        faults.hit("\(stage).before-launch")

        // The indices ``stamp`` gives the instances, in the order the plugin returns them.
        let indices = node.map { [$0] } ?? Array(0..<count)
        var request = LaunchRequest(offer: offer, count: count, idempotencyKey: key, tags: tags, name: "capstan-\(cluster.name)", spot: ranked.spot, nodeIndices: indices)
        if let keys = options.clusterKeys {
            do { request.sshPublicKey = try await keys.publicKey(for: cluster) } catch {
                say("no SSH key of its own for cluster \(cluster.name): \((error as? CapstanError)?.message ?? "\(error)")")
            }
        }
        var instances: [Instance] = []
        var retry = 0
        while true {
            do {
                instances = try await provider.launch(request)
                break
            } catch {
                let e = (error as? CapstanError ?? CapstanError(.transient, "\(error)")).attributed(to: offer.provider)
                if (e.code == .rateLimited || e.code == .transient), retry < options.launchRetries {
                    let wait = e.retryAfter ?? options.backoff.delay(retry)
                    say("retrying \(offer.id) in \(String(format: "%.1f", wait.seconds)) s (\(e.code.name))")
                    retry += 1
                    do { try await Task.sleep(for: wait) } catch { break }
                    continue
                }
                // A failed call may still have created instances (a timeout after the cloud
                // accepted it): find them by the intent tag and terminate them.
                await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: [], stage: stage)
                await bestEffort("intent \(key) failed") { try await store.setIntent(key, status: .failed, error: e.description) }
                return .failed(e, key)
            }
        }
        faults.hit("\(stage).after-launch")
        // Clouds do not always say what an instance costs (EC2 spot): use the offer's price.
        instances = instances.map { i in
            var i = i
            if i.pricePerHour == nil { i.pricePerHour = ranked.pricePerNode }
            return i
        }
        do {
            instances = try await stampRecording(instances, tags: tags, clusterID: cluster.id, intent: key, nodes: cluster.nodes)
            try await store.setIntent(key, status: .launched)
        } catch {
            // Launched but not written down: nothing could keep track of them, so they go now
            // (the intent stays pending if even that cannot be written: reconcile finishes it).
            let e = CapstanError(.io, "\(offer.provider) launched \(instances.map(\.id).joined(separator: ", ")), but the state store could not record them: \(error). They were terminated.", hint: "Check the state store (\(store.location)): disk space, permissions.", provider: offer.provider)
            await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: instances.map(\.id), stage: stage)
            await bestEffort("intent \(key) failed") { try await store.setIntent(key, status: .failed, error: e.description) }
            return .failed(e, key)
        }
        faults.hit("\(stage).recorded")
        if instances.count != count {
            await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: instances.map(\.id), stage: stage)
            let e = CapstanError(.internalError, "\(offer.provider) launched \(instances.count) instance(s) for \(count) node(s).", provider: offer.provider)
            await bestEffort("intent \(key) failed") { try await store.setIntent(key, status: .failed, error: e.description) }
            return .failed(e, key)
        }
        say("launched \(instances.map(\.id).joined(separator: ", ")); waiting until running")

        let ids = instances.map(\.id)
        switch await waitUntilRunning(provider: provider, ids: ids, clusterID: cluster.id, intent: key, stage: stage) {
        case .running(let seen):
            return .ready(seen, key)
        case .failed(let e):
            await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: ids, stage: stage)
            await bestEffort("intent \(key) failed") { try await store.setIntent(key, status: .failed, error: e.description) }
            return .failed(e, key)
        }
    }

    enum WaitOutcome {
        case running([Instance])
        case failed(CapstanError)
    }

    /// How long a provider's ``ComputeProvider/bootPollInterval`` holds in a launch's wait;
    /// after it (a job waiting in a batch queue) the wait doubles up to `waitMaxDelay`.
    static let fastPollPeriod: Duration = .seconds(20)

    /// Polls `describe` for `ids` (from `waitMinDelay`, doubling to `waitMaxDelay`; at the
    /// provider's `bootPollInterval` for the first ``fastPollPeriod``) until every one runs
    /// (→ `.running`, in node order), one fails, stops or disappears, or the provider's
    /// `readyTimeout` (else the options') passes. Records what it sees.
    /// `timeout`: instead of the provider's.
    func waitUntilRunning(provider: any ComputeProvider, ids: [String], clusterID: String, intent: String, stage: String, timeout given: Duration? = nil) async -> WaitOutcome {
        let started = ContinuousClock.now
        let timeout = given ?? provider.readyTimeout ?? options.readyTimeout
        let deadline = started + timeout
        let fast = provider.bootPollInterval.map { min($0, options.waitMaxDelay) }
        var delay = min(options.waitMinDelay, fast ?? options.waitMaxDelay)
        var polls = 0
        while true {
            do {
                let described = try await provider.describe(InstanceQuery(ids: ids, includeTerminated: true))
                polls += 1
                // As recorded: with the tags and node index Capstan gave each (``stamp``).
                var seen: [Instance] = []
                for i in described {
                    do { seen.append(try await store.record(i, clusterID: clusterID, intentKey: intent)) } catch {
                        logger.warning("could not record an instance while waiting", metadata: ["capstan.instance": "\(i.id)", "error": "\(error)"])
                        seen.append(i)
                    }
                }
                if polls == 1 { faults.hit("\(stage).waiting") }
                if let dead = seen.first(where: { $0.state.isGone || $0.state == .failed || $0.state == .stopped }) {
                    return .failed(CapstanError(.capacity, "Instance \(dead.id) went \(dead.state.rawValue) while booting\(dead.stateReason.map { " (\($0))" } ?? "").", provider: provider.name))
                }
                if Set(seen.map(\.id)) == Set(ids), seen.allSatisfy({ $0.state == .running }) {
                    return .running(seen.sorted { $0.nodeIndex < $1.nodeIndex })
                }
            } catch {
                logger.warning("describe failed while waiting", metadata: ["capstan.provider": "\(provider.name)", "error": "\(error)"])
            }
            if ContinuousClock.now + delay > deadline {
                return .failed(CapstanError(.timeout, "Instances \(ids.joined(separator: ", ")) on \(provider.name) were not running after \(timeout).", provider: provider.name))
            }
            if let why = await stopWaiting?() {
                return .failed(CapstanError(.invalidRequest, "Stopped waiting for \(ids.joined(separator: ", ")) on \(provider.name) to run: \(why).", provider: provider.name))
            }
            do { try await Task.sleep(for: delay) } catch {
                return .failed(CapstanError(.timeout, "Cancelled while waiting for \(ids.joined(separator: ", ")) on \(provider.name)."))
            }
            if let fast, ContinuousClock.now - started < Self.fastPollPeriod {
                delay = fast
            } else {
                delay = min(max(delay * 2, options.waitMinDelay), options.waitMaxDelay)
            }
        }
    }

    /// `instances` of launch `intent` as Capstan records them, in the order given: each carries
    /// every tag of the launch (ownership, cluster, intent) and a node index of Capstan's
    /// choosing (``NodeIndices``) — the launch's own `capstan:node` for a one-node replacement,
    /// else the lowest free index, in order. An instance already recorded keeps what it was
    /// given then. Nothing a plugin echoes back (or fails to) decides a node's rank. `taken`: the
    /// indices other live nodes of the cluster hold.
    @discardableResult
    func stamp(_ instances: [Instance], tags: [String: String], clusterID: String, intent: String, nodes: Int, taken: Set<Int> = []) async -> [Instance] {
        do {
            return try await stampRecording(instances, tags: tags, clusterID: clusterID, intent: intent, nodes: nodes, taken: taken)
        } catch {
            logger.error("could not record instances", metadata: ["capstan.cluster": "\(clusterID)", "intent": "\(intent)", "error": "\(error)"])
            return instances
        }
    }

    /// ``stamp(_:tags:clusterID:intent:nodes:taken:)``, throwing when the state store cannot
    /// record them (the launch path then terminates what it cannot keep track of).
    func stampRecording(_ instances: [Instance], tags: [String: String], clusterID: String, intent: String, nodes: Int, taken: Set<Int> = []) async throws -> [Instance] {
        var recorded: [String: InstanceRecord] = [:]
        for i in instances { recorded[i.provider + "/" + i.id] = try await store.instance(provider: i.provider, id: i.id) }
        var out = instances.map { i -> Instance in
            if let rec = recorded[i.provider + "/" + i.id] {
                var i = i
                for (k, v) in rec.instance.tags where CapstanTags.isCapstan(k) { i.tags[k] = v }
                return i
            }
            var i = i
            i.tags[CapstanTags.node] = nil
            i.tags.merge(tags) { $1 }
            return i
        }
        let fixed = out.map { $0.tags[CapstanTags.node].flatMap(Int.init) }
        if let indices = NodeIndices.assign(fixed, nodes: nodes, taken: taken) {
            for k in out.indices { out[k].tags[CapstanTags.node] = "\(indices[k])" }
        }
        var stamped: [Instance] = []
        for i in out { stamped.append(try await store.record(i, clusterID: clusterID, intentKey: intent)) }
        return stamped
    }

    /// Terminates what an intent created: the known ids plus anything carrying its tag, and
    /// records their end.
    func cleanUp(provider: any ComputeProvider, clusterID: String, intent: String, known: [String], stage: String) async {
        var ids = Set(known)
        if let tagged = try? await provider.describe(InstanceQuery(tags: [CapstanTags.intent: intent])) {
            ids.formUnion(tagged.map(\.id))
        }
        guard !ids.isEmpty else { return }
        faults.hit("\(stage).cleanup")
        // Every id here is a real instance of this intent (known, or found by its tag).
        // A failure leaves the intent's instances to reconcile, which finds them by its tag.
        let gone: [Instance]
        do { gone = try await provider.terminate(ids: ids.sorted()) } catch {
            logger.error("could not terminate a failed launch's instances; reconcile will", metadata: ["capstan.provider": "\(provider.name)", "ids": "\(ids.sorted())", "error": "\(error)"])
            return
        }
        for i in gone {
            await bestEffort("record \(i.id) terminated") { try await store.record(i, clusterID: clusterID, intentKey: intent) }
        }
    }

    // MARK: - Replace one node

    /// Replaces node `node` of running cluster `name`: terminates the instance serving it (if
    /// any is left) and launches one instance on the cluster's offer — same provider, instance
    /// type and zone, so the gang stays on one network — tagged with the same node index.
    /// The launch is an intent like any other, so a crash here is reconciled. Capacity errors
    /// are retried with backoff up to `options.launchRetries` times; then the error is thrown
    /// (``move(cluster:search:)`` takes the whole gang elsewhere).
    /// Returns the new instance once it is running.
    public func replaceNode(cluster name: String, node: Int) async throws -> Instance {
        guard var cluster = try await store.cluster(named: name), cluster.status == .running, let offer = cluster.offer else {
            throw CapstanError(.notFound, "Cluster '\(name)' is not running, so node \(node) cannot be replaced.", hint: "See `capstan status`.")
        }
        guard let provider = provider(offer.provider) else {
            throw CapstanError(.config, "Provider \(offer.provider) of cluster '\(name)' is not enabled.", hint: "Enable it in config.yaml.")
        }
        guard let lock = try await locks.acquire(name) else {
            throw CapstanError(.invalidRequest, "Another capstan process is working on cluster '\(name)'.", hint: "Wait for it to finish.")
        }
        defer { lock.release() }
        // Retire whatever serves the node now.
        let current = try await store.instances(cluster: cluster.id).filter { !$0.state.isGone && $0.instance.nodeIndex == node }
        if !current.isEmpty {
            try await retire(Dictionary(current.map { ($0.id, Owner(cluster: cluster.id, intent: $0.intentKey)) }) { a, _ in a }, at: provider)
        }
        faults.hit("replace.retired")
        let owner = try await store.ownerID()
        let ranked = Self.own(offer, of: cluster, nodes: 1)
        var last: CapstanError?
        tries: for n in 0...options.launchRetries {
            if n > 0 {
                if let why = await stopWaiting?() { throw CapstanError(.invalidRequest, "Node \(node) of cluster '\(name)' was not replaced: \(why).") }
                try await Task.sleep(for: options.backoff.delay(n - 1))
            }
            switch await attempt(cluster: cluster, owner: owner, ranked: ranked, provider: provider, node: node, stage: "replace") {
            case .ready(let instances, _):
                faults.hit("replace.ready")
                await store.event("replaced", "Node \(node) replaced by \(instances[0].id) on \(offer.provider) \(offer.instanceType).", cluster: cluster.id)
                return instances[0]
            case .failed(let e, _):
                last = e
                guard [.capacity, .quota, .rateLimited, .transient, .timeout].contains(e.code) else { break tries }
            }
        }
        let e = last ?? CapstanError(.capacity, "No capacity to replace node \(node).")
        cluster.lastError = "Replacing node \(node) failed: \(e.message)"
        await bestEffort("cluster \(cluster.name)'s last error") { try await store.update(cluster) }
        throw CapstanError(e.code, "Could not replace node \(node) of cluster '\(name)' on \(offer.id): \(e.message)", hint: e.hint, provider: offer.provider)
    }

    // MARK: - Move the gang

    /// Moves running cluster `name` to the cheapest other offer that fits its request, on any
    /// provider: a whole new gang is launched (an intent like any other) and, once it runs,
    /// the old instances are terminated and the cluster points at the new ones. For when a lost
    /// node cannot be replaced in the cluster's own offer (no capacity left, region gone). The
    /// job resumes on the new gang from the bucket. Throws when no other offer has capacity
    /// (the cluster is left as it was).
    ///
    /// `sameOfferFirst`: every node of the cluster is gone (a Slurm allocation cancelled or out
    /// of time, a zone lost), so nothing speaks against its own offer: a whole new gang is
    /// launched there first, in one launch, and on the others only if that fails; what is left
    /// of the old gang is retired before, not after, the launch (so when every offer fails, the
    /// cluster is left with no live instance, not as it was).
    public func move(cluster name: String, search: OfferSearch, sameOfferFirst: Bool = false) async throws -> ProvisionReport {
        guard var cluster = try await store.cluster(named: name), cluster.status == .running else {
            throw CapstanError(.notFound, "Cluster '\(name)' is not running, so it cannot be moved.", hint: "See `capstan status`.")
        }
        guard let lock = try await locks.acquire(name) else {
            throw CapstanError(.invalidRequest, "Another capstan process is working on cluster '\(name)'.", hint: "Wait for it to finish.")
        }
        defer { lock.release() }
        let result = try await search.run(cluster.request)
        let from = cluster.offer
        // Every other offer; the one it is on failed to give capacity (unless the whole gang
        // is gone: then that one first).
        var candidates = result.ranked.filter { $0.offer.id != from?.id }
        if sameOfferFirst, let from {
            candidates.insert(result.ranked.first { $0.offer.id == from.id && $0.spot == cluster.spot } ?? Self.own(from, of: cluster, nodes: cluster.nodes), at: 0)
        }
        guard !candidates.isEmpty else {
            throw CapstanError(.capacity, "Cluster '\(name)' cannot move: \(Self.noOfferReason(result)) (besides \(from?.id ?? "its own offer")).", hint: "Widen the job's resources (other GPUs, regions or spot).")
        }
        if sameOfferFirst {
            // Whatever is left of the old gang goes first: on a Slurm cluster its allocation
            // would hold the very nodes the new one waits for (until its time limit).
            try await retireAll(of: cluster, except: nil)
            faults.hit("move.retired-first")
        }
        say("moving cluster \(name) off \(from?.id ?? "?")")
        let owner = try await store.ownerID()
        // The new gang names the one it replaces: a crash before the move is recorded leaves a
        // trail reconcile can finish (the new gang runs) or undo (it does not).
        let (ready, attempts) = await launchGang(cluster: cluster, owner: owner, offers: candidates, stage: "move", tags: [CapstanTags.moveFrom: cluster.intentKey ?? ""])
        guard let (_, instances, key) = ready, let intent = try await store.intent(key) else {
            throw CapstanError(.capacity, "Cluster '\(name)' cannot move: all \(attempts.count) other offer(s) failed: " + attempts.map { "\($0.offer.id) \($0.outcome)" }.joined(separator: ", ") + ".", hint: "Widen the job's resources (other GPUs, regions or spot).")
        }
        faults.hit("move.launched")
        try await finishMove(&cluster, to: intent)
        say("moved: \(instances.count) node(s) on \(intent.offer.provider) \(intent.offer.instanceType) in \(intent.offer.zone ?? intent.offer.region)")
        return ProvisionReport(cluster: cluster, attempts: attempts, instances: instances)
    }

    /// The last half of a move, once `intent`'s gang runs: every other instance of the cluster
    /// (what the store knows and what the providers tag with its id) is terminated, then the
    /// cluster points at the new gang. The caller holds the cluster's lock.
    func finishMove(_ cluster: inout Cluster, to intent: LaunchIntent) async throws {
        try await retireAll(of: cluster, except: intent.key, alsoAt: intent.provider)
        faults.hit("move.retired")
        let from = cluster.offer
        cluster.offer = intent.offer
        cluster.spot = intent.spot
        cluster.pricePerHour = Self.clusterPrice(intent, nodes: cluster.nodes)
        cluster.intentKey = intent.key
        cluster.lastError = nil
        try await store.update(cluster)
        await store.event("moved", "Moved from \(from?.id ?? "?") to \(intent.offer.id), " + String(format: "$%.2f/h", cluster.pricePerHour ?? 0) + ".", cluster: cluster.id)
    }

    /// Retires every instance of `cluster` (recorded, or tagged with it at its providers)
    /// except those of launch `keep`.
    func retireAll(of cluster: Cluster, except keep: String?, alsoAt extra: String? = nil) async throws {
        let records = try await store.instances(cluster: cluster.id)
        for providerName in Set(records.map(\.provider) + (extra.map { [$0] } ?? [])).sorted() {
            guard let p = provider(providerName) else { continue }
            var old = Dictionary(records.filter { $0.provider == providerName && !$0.state.isGone && $0.intentKey != keep }.map { ($0.id, Owner(cluster: cluster.id, intent: $0.intentKey)) }) { a, _ in a }
            for i in (try? await p.describe(InstanceQuery(tags: [CapstanTags.clusterID: cluster.id]))) ?? [] where i.tags[CapstanTags.intent] != keep {
                old[i.id] = Owner(cluster: cluster.id, intent: i.tags[CapstanTags.intent] ?? "")
            }
            guard !old.isEmpty else { continue }
            try await retire(old, at: p)
        }
    }

    /// `offer` (the cluster's own) ranked for a launch of `nodes` of the cluster's nodes, on its
    /// market, priced for the whole cluster.
    static func own(_ offer: Offer, of cluster: Cluster, nodes: Int) -> RankedOffer {
        let perNode = (cluster.spot ? offer.spotPricePerHour : offer.onDemandPricePerHour) ?? 0
        return RankedOffer(offer: offer, spot: cluster.spot, pricePerNode: perNode, nodes: nodes, clusterPricePerHour: perNode * Double(cluster.nodes))
    }

    /// A cluster's price on `intent`'s offer and market, $/h.
    static func clusterPrice(_ intent: LaunchIntent, nodes: Int) -> Double {
        ((intent.spot ? intent.offer.spotPricePerHour : intent.offer.onDemandPricePerHour) ?? 0) * Double(nodes)
    }

    // MARK: - Down

    /// Autostop: takes down every running cluster idle past its ``Cluster/idleMinutes`` at
    /// `now` (``IdlePolicy``), through the same path as ``down(name:)``: the cluster's lock, the
    /// terminating mark, every instance retired, an `autostop` event on the cluster saying how
    /// long it was idle. The policy is checked again under the lock (a job may have started on
    /// the cluster meanwhile); a cluster another process is working on is left for the next
    /// call. Returns the names of the clusters taken down. `capstan serve` calls it every
    /// minute, `capstan reconcile` once.
    @discardableResult
    public func stopIdleClusters(now: Date = Date()) async -> [String] {
        guard let clusters = try? await store.clusters(includeFinished: false), clusters.contains(where: { $0.idleMinutes != nil }) else { return [] }
        guard let jobs = await jobsForIdlePolicy() else { return [] }
        var stopped: [String] = []
        for idle in IdlePolicy.idleClusters(clusters, jobs: jobs, now: now) {
            guard let lock = try? await locks.acquire(idle.cluster) else { continue }
            defer { lock.release() }
            guard var cluster = try? await store.cluster(named: idle.cluster), let jobsNow = await jobsForIdlePolicy(),
                let still = IdlePolicy.idle(cluster, jobs: jobsNow, now: now)
            else { continue }
            let minutes = Int(still.idleFor / 60)
            let since = ISO8601DateFormatter().string(from: still.since)
            await store.event("autostop", "autostop: idle \(minutes) min (limit \(still.limitMinutes) min; idle since \(since)); terminating the cluster.", cluster: cluster.id)
            say("autostop: cluster \(cluster.name) idle \(minutes) min (limit \(still.limitMinutes) min); terminating it")
            do {
                try await finishTermination(&cluster)
                stopped.append(cluster.name)
            } catch {
                // Left terminating: the next call, reconcile or `down` finishes it.
                logger.error("autostop could not terminate the cluster", metadata: ["capstan.cluster": "\(cluster.name)", "error": "\(error)"])
            }
        }
        return stopped
    }

    /// Every unfinished job and the newest finished ones: what ``IdlePolicy`` needs.
    func jobsForIdlePolicy() async -> [JobRecord]? {
        guard let unfinished = try? await store.unfinishedJobs(), let recent = try? await store.jobs(includeFinished: true, limit: 1000) else { return nil }
        var seen = Set<String>()
        return (unfinished + recent).filter { seen.insert($0.id).inserted }
    }

    /// `capstan down`, the server's `DELETE /v1/clusters/{name}` and the SDK's `down`: as
    /// ``down(name:)``, but refused (`.invalidRequest`, naming the jobs and `--force`) while a
    /// job that has not ended runs on the live cluster `name`, unless `force`.
    public func down(name: String, force: Bool) async throws -> Cluster {
        if !force, let cluster = try await store.cluster(named: name), cluster.status.isLive {
            try Self.refuseBusy(name, jobs: try await store.unfinishedJobs())
        }
        return try await down(name: name, checkingBusy: !force)
    }

    /// Refuses to take down `cluster` while an unfinished job of `jobs` runs on it.
    static func refuseBusy(_ cluster: String, jobs: [JobRecord]) throws {
        let busy = jobs.filter { $0.clusterName == cluster && !$0.status.isFinished }
        guard let first = busy.first else { return }
        let names = busy.map { "\($0.id) (\($0.status.rawValue))" }.joined(separator: ", ")
        let one = busy.count == 1
        throw CapstanError(
            .invalidRequest, "Cluster \(cluster) is not taken down: job\(one ? "" : "s") \(names) \(one ? "runs" : "run") on it.",
            hint: "Cancel \(one ? "it" : "them") first (`capstan cancel \(first.id)`), or run `capstan down \(cluster) --force` to terminate the cluster under \(one ? "it" : "them").")
    }

    /// Terminates every instance of cluster `name` and marks it terminated, whatever runs on
    /// it (a job's own controller taking its cluster down; people go through
    /// ``down(name:force:)``). Idempotent; a cluster whose earlier `down` died is finished.
    public func down(name: String) async throws -> Cluster {
        try await down(name: name, checkingBusy: false)
    }

    /// `checkingBusy`: the busy check again once the cluster's lock is held, so a job launched
    /// onto it between the first check and the lock is not left without its cluster.
    func down(name: String, checkingBusy: Bool) async throws -> Cluster {
        var found = try await store.cluster(named: name)
        if found == nil {
            // Unknown here: perhaps the database was lost and the cluster lives on in the clouds.
            _ = await reconcile()
            found = try await store.cluster(named: name)
        }
        guard var cluster = found else {
            throw CapstanError(.notFound, "No cluster named '\(name)'.", hint: "See `capstan status` (`capstan reconcile` first, if the state database was lost).")
        }
        guard cluster.status.isLive else { return cluster }
        guard let lock = try await locks.acquire(name) else {
            throw CapstanError(.invalidRequest, "Another capstan process is working on cluster '\(name)'.", hint: "Wait for it to finish (or kill it; the next command reconciles).")
        }
        defer { lock.release() }
        if checkingBusy, cluster.status != .terminating {
            try Self.refuseBusy(name, jobs: try await store.unfinishedJobs())
        }
        try await finishTermination(&cluster)
        return cluster
    }

    /// Marks `cluster` terminating, terminates every instance the store knows or the providers
    /// tag with its id, and marks it terminated. The caller holds its lock. A crash anywhere
    /// here leaves it `terminating`, which the next reconcile, `up`, or `down` finishes.
    func finishTermination(_ cluster: inout Cluster) async throws {
        if cluster.status != .terminating {
            cluster.status = .terminating
            try await store.update(cluster)
            faults.hit("down.marked")
        }
        let records = try await store.instances(cluster: cluster.id)
        var failures: [String] = []
        // Every provider the cluster ever used, and the one it runs on.
        let names = Set(records.map(\.provider) + [cluster.offer?.provider].compactMap { $0 })
        for providerName in names.sorted() {
            let group = records.filter { $0.provider == providerName }
            guard let provider = provider(providerName) else {
                let live = group.filter { !$0.state.isGone }.count
                if live > 0 { failures.append("provider \(providerName) is not enabled, so \(live) instance(s) could not be terminated") }
                continue
            }
            // Everything tagged with this cluster, not only what the store knows.
            var owners = Dictionary(group.filter { !$0.state.isGone }.map { ($0.id, Owner(cluster: cluster.id, intent: $0.intentKey)) }) { a, _ in a }
            do {
                // Preempted instances too: one the cloud still lists (a stopped spot VM) bills its
                // disk until it is deleted.
                for i in try await provider.describe(InstanceQuery(tags: [CapstanTags.clusterID: cluster.id], includeTerminated: true)) where owners[i.id] == nil && i.state != .terminated {
                    owners[i.id] = Owner(cluster: cluster.id, intent: i.tags[CapstanTags.intent] ?? "")
                }
            } catch {
                failures.append("\(providerName): cannot list its instances: \((error as? CapstanError)?.message ?? "\(error)")")
            }
            faults.hit("down.listed")
            guard !owners.isEmpty else { continue }
            do {
                try await retire(owners, at: provider, point: "down.terminated")
            } catch {
                failures.append("\(providerName): \((error as? CapstanError)?.description ?? "\(error)")")
            }
        }
        faults.hit("down.recorded")
        if !failures.isEmpty {
            cluster.lastError = failures.joined(separator: "; ")
            try await store.update(cluster)
            throw CapstanError(.transient, "Cluster '\(cluster.name)' could not be fully terminated: \(cluster.lastError!).", hint: "Run `capstan down \(cluster.name)` again; nothing is forgotten.")
        }
        // The key pair goes before the status says so: a crash in between leaves the cluster
        // `terminating`, and the next reconcile finishes (and removes) again.
        await options.clusterKeys?.remove(cluster)
        cluster.status = .terminated
        cluster.terminatedAt = Date()
        try await store.update(cluster)
        await store.event("terminated", "Cluster \(cluster.name) terminated.", cluster: cluster.id)
    }

    // MARK: - Reconcile

    /// Compares every provider's Capstan instances with the state store and repairs the
    /// difference: finish interrupted `down`s and `up`s, rebuild clusters the store lost,
    /// adopt what belongs to a live cluster, terminate the rest, close dead intents.
    ///
    /// The executor of a ``ReconcilePlan``: it gathers the facts (store, providers, locks), asks
    /// the plan phase by phase, and does what it says. Every decision is the plan's.
    public func reconcile() async -> ReconcileReport {
        var report = ReconcileReport()
        guard let owners = try? await store.ownerIDs() else { return report }
        // List every provider at once, for every owner id this store has had.
        let queries = ReconcilePlan.queries(owners: owners)
        // Launches that finish after this may be missing from the listing (ReconcilePlan.gone).
        let listedFrom = options.clock()
        var listed: [String: [Instance]] = [:]
        await withTaskGroup(of: (String, Result<[Instance], CapstanError>).self) { group in
            for p in providers {
                group.addTask {
                    do {
                        var found: [String: Instance] = [:]
                        for query in queries {
                            let some = try await withDeadline(.seconds(60), provider: p.name) { try await p.describe(query) }
                            for i in some { found[i.id] = i }
                        }
                        return (p.name, .success(found.values.sorted { $0.id < $1.id }))
                    } catch {
                        return (p.name, .failure(error as? CapstanError ?? CapstanError(.transient, "\(error)", provider: p.name)))
                    }
                }
            }
            for await (name, result) in group {
                switch result {
                case .success(let found): listed[name] = found
                case .failure(let e): report.providerErrors[name] = e
                }
            }
        }
        faults.hit("reconcile.listed")

        var clusters = await (try? store.clusters(includeFinished: true)) ?? []
        let createdAt = await (try? store.createdAt()) ?? .distantPast
        var plan = ReconcilePlan(.init(owners: owners, providers: Set(providers.map(\.name)), listed: listed, listingErrors: report.providerErrors, createdAt: createdAt, listedFrom: listedFrom))
        // Clusters the store does not know at all: its database was lost or replaced. (The
        // clusters are read again only when that wrote some: reading every cluster is what
        // grows with the store.)
        let known = Set(clusters.map(\.id))
        if !plan.rebuilds(known: known).isEmpty {
            await rebuildUnknownClusters(plan, known: known, report: &report)
            clusters = await (try? store.clusters(includeFinished: true)) ?? clusters
        }
        faults.hit("reconcile.read")

        // Clusters left half-done by a dead process (`up` or `down`): take their locks; a lock
        // someone holds means live work, left alone.
        var held: [any HeldLock] = []
        defer { held.forEach { $0.release() } }
        // The clusters the probes saw: a pending intent of one created since is at work.
        let probed = Set(clusters.map(\.id))
        for step in plan.locking(clusters) {
            switch step {
            case .probe(let c):
                if await locks.isHeld(c.name) { plan.receive(.busy(clusterID: c.id)); report.busyClusters.append(c.name) }
            case .take(let c):
                if let lock = try? await locks.acquire(c.name) {
                    held.append(lock)
                    // The record was read before the lock: its `up` or `down` may have finished
                    // and let go of the lock since (a running cluster is not an interrupted
                    // `up`). Only a record still as read is half-done work to repair.
                    let current = try? await store.cluster(id: c.id)
                    if current?.status != c.status {
                        plan.receive(.busy(clusterID: c.id))
                        report.busyClusters.append(c.name)
                    }
                } else {
                    plan.receive(.busy(clusterID: c.id))
                    report.busyClusters.append(c.name)
                }
            }
        }
        faults.hit("reconcile.locked")

        // Launched intents by cluster, read at the first running cluster's check (after the
        // interrupted `down`s and `up`s, which come first, have changed theirs).
        var launchedByCluster: [String: [LaunchIntent]]?
        // Whether a recovery changed a cluster (else the clusters need not be read again).
        var recovered = false
        for step in plan.recoveries(clusters) {
            switch step {
            case .finishTermination(let c):
                // `down` died: finish it.
                recovered = true
                var cluster = c
                faults.hit("reconcile.finishing")
                do {
                    try await finishTermination(&cluster)
                    report.finishedTerminations.append(c.name)
                    await report.terminated.append(contentsOf: (try? store.instances(cluster: c.id))?.filter { $0.terminatedAt != nil }.map(\.id) ?? [])
                } catch {
                    report.providerErrors[c.offer?.provider ?? "?"] = error as? CapstanError ?? CapstanError(.transient, "\(error)")
                }
                plan.receive(.handled(clusterID: c.id))
            case .recoverUp(let c):
                // `up` died: finish its work when its last launch is whole, else clean up.
                recovered = true
                await recoverInterrupted(c, plan: plan, report: &report)
                plan.receive(.handled(clusterID: c.id))
            case .checkMove(let c):
                // A move died: finish it when its new gang runs whole, else undo it. Every
                // running cluster is checked: their launched intents are read once, together.
                if launchedByCluster == nil {
                    launchedByCluster = Dictionary(grouping: await (try? store.intents(status: .launched)) ?? [], by: \.clusterID)
                }
                let launched = launchedByCluster?[c.id] ?? []
                guard let move = plan.pendingMove(c, launched: launched) else { continue }
                guard let lock = try? await locks.acquire(c.name) else {
                    plan.receive(.busy(clusterID: c.id))
                    report.busyClusters.append(c.name)
                    continue
                }
                held.append(lock)
                recovered = true
                await recoverMove(c, to: move, plan: plan, report: &report)
                plan.receive(.handled(clusterID: c.id))
            }
        }

        // Re-read: recovery and finishing changed statuses.
        if recovered { clusters = await (try? store.clusters(includeFinished: true)) ?? clusters }
        // Launches that completed for a cluster after its first (node replacements).
        var launchedIntents: [String: String] = [:]
        // (As read for the moves, when no recovery has changed them since.)
        var launched = recovered ? nil : launchedByCluster.map { Array($0.values.joined()) }
        if launched == nil { launched = await (try? store.intents(status: .launched)) ?? [] }
        for i in launched ?? [] { launchedIntents[i.key] = i.clusterID }
        // The records of the providers listed: the only ones the plan looks at.
        let listedProviders = listed.keys.sorted()
        var records: [String: InstanceRecord] = [:]
        for r in await (try? store.instances(providers: listedProviders)) ?? [] { records[r.provider + "/" + r.id] = r }

        let steps = plan.instances(clusters: clusters, launched: launchedIntents, recorded: Set(records.keys))
        var faultHit = false
        // Whether a step below wrote a record (else the records read above are still current).
        var wrote = false
        for step in steps {
            switch step {
            case .adopt(let i, let clusterID, let intent, let isRecorded):
                // Written only when the cloud says something new (a write per adopted instance
                // per reconcile is what made `status` and `up` slow with many clusters).
                if isRecorded, let rec = records[i.provider + "/" + i.id], ReconcilePlan.recordChanges(rec, listed: i) {
                    wrote = true
                    await bestEffort("reconcile: record an instance") { _ = try await store.record(i, clusterID: clusterID, intentKey: intent) }
                }
                report.adopted.append(i.id)
            case .noteLeaving(let i, let clusterID, let intent):
                wrote = true
                // Already on its way out (EC2 `shutting-down`): nothing to do but note it.
                await bestEffort("reconcile: record an instance") { _ = try await store.record(i, clusterID: clusterID, intentKey: intent) }
            case .number(let gang, let c, let intent, let cloudTags):
                wrote = true
                // Instances of a running cluster the store has not recorded (a crash between
                // writing the cluster and its instances: a rebuild), numbered around the others.
                let others = await (try? store.instances(cluster: c.id)) ?? []
                let tags = ReconcilePlan.adoptionTags(intent: await (try? store.intent(intent)) ?? nil, cloudTags: cloudTags)
                await stamp(gang, tags: tags, clusterID: c.id, intent: intent, nodes: c.nodes, taken: ReconcilePlan.takenIndices(others))
            case .terminate(let providerName, let instances, _):
                wrote = true
                if !faultHit { faults.hit("reconcile.terminating"); faultHit = true }
                guard let p = provider(providerName) else { continue }
                do {
                    try await retire(Owner.byTags(instances), at: p, point: "reconcile.terminated")
                    report.terminated.append(contentsOf: instances.map(\.id))
                    await store.event("reconciled", "Terminated \(instances.count) instance(s) on \(providerName) that no live cluster owns: \(instances.map(\.id).joined(separator: ", ")).")
                } catch {
                    report.providerErrors[providerName] = error as? CapstanError ?? CapstanError(.transient, "\(error)", provider: providerName)
                }
            }
        }

        // Intents of dead processes, closed first: their records are then judged like any other.
        let abandoned = plan.abandoned(await (try? store.intents(status: .pending)) ?? [], known: probed)
        for (key, error) in abandoned {
            await bestEffort("reconcile: close an intent") { try await store.setIntent(key, status: .abandoned, error: error) }
            report.abandonedIntents.append(key)
        }

        // Instances the store thinks are alive but the provider no longer lists are gone —
        // unless their launch is too recent for the listing (ReconcilePlan.gone): their intents
        // are read after the records, so a launch recorded since shows as pending or launched.
        var current = recovered || wrote ? nil : Array(records.values)
        if current == nil { current = await (try? store.instances(providers: listedProviders)) ?? [] }
        let candidates = plan.gone(current ?? [])
        if !candidates.isEmpty {
            let closed = Set(abandoned.map(\.key))
            var launches: [LaunchIntent] = []
            for key in Set(candidates.map(\.intentKey)).subtracting(closed).sorted() {
                if let i = await (try? store.intent(key)) ?? nil { launches.append(i) }
            }
            for rec in plan.gone(candidates, intents: launches) {
                var gone = rec.instance
                gone.state = .terminated
                await bestEffort("reconcile: record an instance") { _ = try await store.record(gone, clusterID: rec.clusterID, intentKey: rec.intentKey) }
            }
        }
        if report.didSomething {
            logger.notice("reconciled", metadata: ["terminated": "\(report.terminated.count)", "adopted": "\(report.adopted.count)"])
        }
        return report
    }

    /// Whose an instance is, for its record: its cluster and launch intent.
    struct Owner {
        var cluster: String
        var intent: String

        /// From each instance's own tags (`cluster` instead of its cluster-id tag when given).
        static func byTags(_ instances: [Instance], cluster: String? = nil) -> [String: Owner] {
            Dictionary(instances.map { ($0.id, Owner(cluster: cluster ?? $0.tags[CapstanTags.clusterID] ?? "", intent: $0.tags[CapstanTags.intent] ?? "")) }) { a, _ in a }
        }
    }

    /// Terminates `owners`' instances at `provider` and records each as gone under its owner
    /// (one the cloud still reports shutting down bills no more: it is recorded terminated).
    /// `point`: a fault point between the cloud's answer and the records.
    func retire(_ owners: [String: Owner], at provider: any ComputeProvider, point: String? = nil) async throws {
        let after = try await provider.terminate(ids: owners.keys.sorted())
        if let point { faults.hit(point) }
        for i in after {
            var gone = i
            if !gone.state.isGone { gone.state = .terminated }
            let owner = owners[i.id] ?? Owner(cluster: i.tags[CapstanTags.clusterID] ?? "", intent: i.tags[CapstanTags.intent] ?? "")
            await bestEffort("reconcile: record an instance") { _ = try await store.record(gone, clusterID: owner.cluster, intentKey: owner.intent) }
        }
    }

    /// A cluster whose `up` died (status `provisioning`, lock now ours), as the plan decides
    /// (``ReconcilePlan/interruptedUp(_:intents:)``): adopt its last launch once running, else
    /// terminate every instance of it (it failed); a provider not listed leaves it as is.
    func recoverInterrupted(_ c: Cluster, plan: ReconcilePlan, report: inout ReconcileReport) async {
        let intents = await (try? store.intents(cluster: c.id)) ?? []
        let decision = plan.interruptedUp(c, intents: intents)
        var mine: [Instance]
        switch decision {
        case .leave(let unlisted):
            logger.warning("interrupted cluster left for later: provider not listed", metadata: ["cluster": "\(c.name)", "capstan.provider": "\(unlisted)"])
            return
        case .fail(let all):
            faults.hit("reconcile.recovering")
            mine = all
        case .tryAdopt(let last, let gang, let others, let all):
            faults.hit("reconcile.recovering")
            mine = all
            // (The dead `up` may not have recorded them: numbered here, once.)
            await stamp(gang, tags: last.tags, clusterID: c.id, intent: last.key, nodes: c.nodes)
            if let provider = provider(last.provider),
               // At most the provisioner's own ready timeout: a reconcile must not wait a day on
               // an allocation queued in Slurm (given up, it is cancelled; the job's controller
               // submits a new one and waits there, where a cancel can end the wait).
               case .running(let nodes) = await waitUntilRunning(provider: provider, ids: gang.map(\.id), clusterID: c.id, intent: last.key, stage: "reconcile", timeout: options.readyTimeout) {
                // Anything else of this cluster (an earlier offer's leftovers) goes.
                await terminate(others, clusterID: c.id, report: &report)
                await bestEffort("reconcile: close an intent") { try await store.setIntent(last.key, status: .launched) }
                await bestEffort("reconcile: update a cluster") { try await store.update(plan.recoveredCluster(c, on: last, price: Self.clusterPrice(last, nodes: c.nodes), now: Date())) }
                await store.event("recovered", "Provisioning was interrupted; the \(c.nodes) node(s) it had launched were adopted once running.", cluster: c.id)
                report.recoveredClusters.append(c.name)
                report.adopted.append(contentsOf: nodes.map(\.id))
                return
            }
        }
        // Not whole, or a node failed: nothing of it may keep billing.
        var leftovers = mine
        for p in Set(intents.map(\.provider)) {
            if let prov = provider(p), let tagged = try? await prov.describe(InstanceQuery(tags: [CapstanTags.clusterID: c.id])) {
                leftovers = ReconcilePlan.leftovers(leftovers, tagged: tagged)
            }
        }
        await terminate(leftovers, clusterID: c.id, report: &report)
        let failed = plan.failedUp(c, intents: intents, now: Date())
        for key in failed.abandon { await bestEffort("reconcile: close an intent") { try await store.setIntent(key, status: .abandoned, error: "its capstan process died; reconcile cleaned up") } }
        await bestEffort("reconcile: update a cluster") { try await store.update(failed.cluster) }
        await store.event("failed", failed.cluster.lastError!, cluster: c.id)
        report.failedClusters.append(c.name)
    }

    /// Terminates `instances` (any providers), records their end and reports them.
    func terminate(_ instances: [Instance], clusterID: String, report: inout ReconcileReport) async {
        for (providerName, group) in Dictionary(grouping: instances.filter { $0.state.isLive }, by: \.provider) {
            guard let p = provider(providerName) else { continue }
            do {
                try await retire(Owner.byTags(group, cluster: clusterID), at: p)
                report.terminated.append(contentsOf: group.map(\.id))
            } catch {
                report.providerErrors[providerName] = error as? CapstanError ?? CapstanError(.transient, "\(error)", provider: providerName)
            }
        }
    }

    /// Instances tagged with a cluster id the store has never heard of: the database was lost,
    /// emptied or replaced (the owner id survived it). As the plan decides
    /// (``ReconcilePlan/rebuilds(known:)``), each such cluster is rebuilt from its instances'
    /// tags — name, id, node count, node indices, intents — and its offer from the provider's
    /// catalog, so `status`, `down NAME` and jobs find it again; a group that is not whole is
    /// terminated instead.
    func rebuildUnknownClusters(_ plan: ReconcilePlan, known: Set<String>, report: inout ReconcileReport) async {
        for step in plan.rebuilds(known: known) {
            switch step {
            case .terminate(let clusterID, let group):
                await terminate(group, clusterID: clusterID, report: &report)
                await store.event("reconciled", "Terminated \(group.count) instance(s) of a cluster the state no longer knows (\(clusterID)): it was not whole.")
            case .rebuild(let r):
                guard let provider = provider(r.provider) else { continue }
                var nameTaken = false
                if let tagged = r.tagName { nameTaken = (try? await store.cluster(named: tagged))??.status.isLive ?? false }
                let name = ReconcilePlan.rebuiltName(tagName: r.tagName, clusterID: r.clusterID, valid: { (try? Provisioner.validate(name: $0)) != nil }, liveNameTaken: nameTaken)
                let offer = await recoveredOffer(for: r.group[0], provider: provider)
                let cluster = plan.rebuiltCluster(r, name: name, offer: offer, now: Date())
                do { try await store.insert(cluster) } catch {
                    logger.warning("could not rebuild a cluster", metadata: ["cluster": "\(name)", "error": "\(error)"])
                    continue
                }
                faults.hit("reconcile.rebuilt")
                for (key, members) in r.intents {
                    await bestEffort("reconcile: insert a rebuilt record") { try await store.insert(LaunchIntent(key: key, clusterID: r.clusterID, provider: r.provider, offer: offer, count: members.count, spot: cluster.spot, tags: members[0].tags, status: .launched)) }
                    for i in members { await bestEffort("reconcile: record an instance") { _ = try await store.record(i, clusterID: r.clusterID, intentKey: key) } }
                }
                await store.event("rebuilt", "Cluster \(name) was not in the state database; rebuilt from its \(r.nodes) instance(s)' tags on \(r.provider).", cluster: r.clusterID)
                report.rebuiltClusters.append(name)
                report.adopted.append(contentsOf: r.group.map(\.id))
            }
        }
    }

    /// The offer an instance runs on, from its provider's catalog (instance type, region and
    /// zone), else as much as the instance itself says (``ReconcilePlan/recoveredOffer(for:catalog:)``).
    func recoveredOffer(for i: Instance, provider: any ComputeProvider) async -> Offer {
        let catalog = (try? await withDeadline(.seconds(30), provider: provider.name) { try await provider.offers(for: ResourceRequest()) }) ?? []
        return ReconcilePlan.recoveredOffer(for: i, catalog: catalog)
    }

    /// A running cluster whose `move` died after its new gang was launched (lock now ours), as
    /// the plan decides (``ReconcilePlan/moveOutcome(_:move:)``): when that gang runs whole, the
    /// move is finished (the old gang goes); otherwise the new gang is terminated and the
    /// cluster stays where it was.
    func recoverMove(_ c: Cluster, to move: LaunchIntent, plan: ReconcilePlan, report: inout ReconcileReport) async {
        let outcome = plan.moveOutcome(c, move: move)
        faults.hit("reconcile.moving")
        var cluster = c
        switch outcome {
        case .finish(let gang):
            await stamp(gang, tags: move.tags, clusterID: c.id, intent: move.key, nodes: c.nodes)
            do {
                try await finishMove(&cluster, to: move)
                report.recoveredClusters.append(c.name)
                report.adopted.append(contentsOf: gang.map(\.id))
            } catch {
                report.providerErrors[move.provider] = error as? CapstanError ?? CapstanError(.transient, "\(error)", provider: move.provider)
            }
        case .undo(let gang):
            await terminate(gang, clusterID: c.id, report: &report)
            await bestEffort("reconcile: close an intent") { try await store.setIntent(move.key, status: .failed, error: "the move was interrupted before its new gang ran; the cluster stays on its offer") }
            await store.event("move-undone", "A move to \(move.offer.id) was interrupted before its \(c.nodes) node(s) ran; they were terminated and the cluster stays on \(c.offer?.id ?? "its offer").", cluster: c.id)
        }
    }
}
