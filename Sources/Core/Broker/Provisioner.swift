import Foundation
import Logging

/// Settings for provisioning: how hard to try, how to back off, how long to wait for boot.
public struct ProvisionOptions: Sendable, Hashable {
    /// Offers tried at most (in rank order) before giving up.
    public var maxAttempts: Int = 12
    /// Retries of the same offer after a rate-limit or transient error (same idempotency key).
    public var launchRetries: Int = 3
    /// Backoff before retrying an offer, and between consecutive offers of one provider.
    public var backoff = Backoff()
    /// Readiness waiter: poll `describe` between these delays (doubling), up to `readyTimeout`.
    public var waitMinDelay: Duration = .milliseconds(500)
    public var waitMaxDelay: Duration = .seconds(15)
    public var readyTimeout: Duration = .seconds(900)
    /// Per-cluster SSH key pairs: the public key goes with every launch. Nil: none.
    public var clusterKeys: ClusterKeys?

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

    public init() {}

    public var didSomething: Bool {
        !terminated.isEmpty || !recoveredClusters.isEmpty || !failedClusters.isEmpty || !abandonedIntents.isEmpty
    }
}

/// A test hook: a point in `up` where a fault can be injected (the CLI's
/// `CAPSTAN_TEST_CRASH_AT=point[:attempt]` SIGKILLs the process there).
public struct FaultPoints: Sendable {
    public var hit: @Sendable (_ point: String, _ attempt: Int) -> Void
    public init(hit: @escaping @Sendable (String, Int) -> Void) { self.hit = hit }
    public static let none = FaultPoints { _, _ in }

    /// Reads `CAPSTAN_TEST_CRASH_AT` (`before-launch`, `after-launch`, `waiting`, optionally
    /// `:N` for the N-th attempt, 1-based) and kills the process with SIGKILL there.
    public static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) -> FaultPoints {
        guard let spec = env["CAPSTAN_TEST_CRASH_AT"], !spec.isEmpty else { return .none }
        let parts = spec.split(separator: ":")
        let point = String(parts[0])
        let attempt = parts.count > 1 ? Int(parts[1]) ?? 1 : 1
        return FaultPoints { p, n in
            if p == point, n == attempt { kill(getpid(), SIGKILL) }
        }
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
    public var store: StateStore
    public var locks: ClusterLocks
    public var options: ProvisionOptions
    public var faults: FaultPoints
    public var logger: Logger
    /// Called with one line per step (offer tried, failed, launched, ready).
    public var progress: (@Sendable (String) -> Void)?

    public init(
        providers: [any ComputeProvider], store: StateStore, locks: ClusterLocks, options: ProvisionOptions = .init(),
        faults: FaultPoints = .none, logger: Logger = Logger(label: "capstan", factory: { _ in SwiftLogNoOpLogHandler() }),
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

    /// Checks a cluster name: lower-case letters, digits and dashes, at most 63 characters.
    public static func validate(name: String) throws {
        guard name.range(of: "^[a-z0-9][a-z0-9-]{0,62}$", options: .regularExpression) != nil else {
            throw CapstanError(.invalidRequest, "Invalid cluster name '\(name)'.", hint: "Use lower-case letters, digits and dashes, starting with a letter or digit (at most 63).")
        }
    }

    // MARK: - Up

    /// Provisions cluster `name` for `request` on the cheapest offer that has capacity.
    /// Throws before anything is created (bad name, name taken, no offer search possible);
    /// otherwise returns a report whose cluster is `running` or `failed`.
    public func up(name: String, request: ResourceRequest, search: OfferSearch) async throws -> ProvisionReport {
        try Self.validate(name: name)
        try request.validate()
        guard let lock = try locks.acquire(name) else {
            throw CapstanError(.invalidRequest, "Another capstan process is working on cluster '\(name)'.", hint: "Wait for it to finish, or check `capstan status`.")
        }
        defer { lock.release() }

        var cluster = Cluster(name: name, request: request)
        try store.insert(cluster)
        store.event("created", "Cluster \(name) requested: \(request.nodes) node(s)\(request.gpu.map { " of \($0)" } ?? "").", cluster: cluster.id)

        let owner = try store.ownerID()
        let result: OfferSearchResult
        do {
            result = try await search.run(request)
        } catch {
            cluster.status = .failed
            cluster.terminatedAt = Date()
            cluster.lastError = "\(error)"
            try? store.update(cluster)
            throw error
        }
        var attempts: [ProvisionAttempt] = []
        guard !result.ranked.isEmpty else {
            let reasons = Dictionary(grouping: result.rejected, by: \.reason).sorted { $0.value.count > $1.value.count }.prefix(3)
                .map { "\($0.value.count)× \($0.key)" }.joined(separator: "; ")
            let providerErrors = result.providers.compactMap { r in r.error.map { "\(r.provider): \($0.message)" } }
            let why = (["no offer matches the request"] + (reasons.isEmpty ? [] : ["filtered out: \(reasons)"]) + providerErrors).joined(separator: ". ")
            cluster.status = .failed
            cluster.lastError = why
            cluster.terminatedAt = Date()
            try store.update(cluster)
            store.event("failed", why, cluster: cluster.id)
            return ProvisionReport(cluster: cluster, attempts: [], instances: [], noOfferReason: why)
        }

        var skippedProviders: [String: CapstanError] = [:]
        var launchesPerProvider: [String: Int] = [:]
        for ranked in result.ranked {
            if attempts.count >= options.maxAttempts { break }
            let offer = ranked.offer
            if skippedProviders[offer.provider] != nil { continue }
            guard let provider = provider(offer.provider) else { continue }
            // Pace consecutive launches on one provider (backoff per offer).
            if let n = launchesPerProvider[offer.provider], n > 0 {
                try await Task.sleep(for: options.backoff.delay(n - 1))
            }
            launchesPerProvider[offer.provider, default: 0] += 1
            let attemptNumber = attempts.count + 1
            let start = ContinuousClock.now
            let outcome = await attempt(cluster: cluster, owner: owner, ranked: ranked, provider: provider, number: attemptNumber)
            let seconds = (ContinuousClock.now - start).seconds
            switch outcome {
            case .ready(let instances, let intent):
                attempts.append(ProvisionAttempt(offer: offer, spot: ranked.spot, clusterPricePerHour: ranked.clusterPricePerHour, intentKey: intent, outcome: "ready", error: nil, seconds: seconds))
                cluster.status = .running
                cluster.offer = offer
                cluster.spot = ranked.spot
                cluster.pricePerHour = ranked.clusterPricePerHour
                cluster.intentKey = intent
                cluster.readyAt = Date()
                try store.update(cluster)
                store.event("ready", "Running on \(offer.provider) \(offer.instanceType) in \(offer.zone ?? offer.region), " + String(format: "$%.2f/h", ranked.clusterPricePerHour) + (ranked.spot ? " (spot)." : "."), cluster: cluster.id)
                say("ready: \(instances.count) node(s) on \(offer.provider) \(offer.instanceType) in \(offer.zone ?? offer.region)")
                return ProvisionReport(cluster: cluster, attempts: attempts, instances: instances)
            case .failed(let error, let intent):
                attempts.append(ProvisionAttempt(offer: offer, spot: ranked.spot, clusterPricePerHour: ranked.clusterPricePerHour, intentKey: intent, outcome: error.code.name, error: error, seconds: seconds))
                say("failed: \(offer.id): \(error.code.name): \(error.message)")
                if [.auth, .config, .pluginFailure].contains(error.code) {
                    skippedProviders[offer.provider] = error
                    say("skipping the rest of \(offer.provider)'s offers (\(error.code.name))")
                }
            }
        }
        cluster.status = .failed
        cluster.terminatedAt = Date()
        cluster.lastError = "All \(attempts.count) attempt(s) failed: " + attempts.map { "\($0.offer.id) \($0.outcome)" }.joined(separator: ", ")
        try store.update(cluster)
        store.event("failed", cluster.lastError ?? "", cluster: cluster.id)
        return ProvisionReport(cluster: cluster, attempts: attempts, instances: [])
    }

    enum AttemptOutcome {
        case ready([Instance], String)
        case failed(CapstanError, String)
    }

    /// One offer: intent → launch (with retries) → wait for running. Cleans up after itself on
    /// every failure path.
    /// `node` set: a replacement for that one node index (count 1) instead of the whole cluster.
    func attempt(cluster: Cluster, owner: String, ranked: RankedOffer, provider: any ComputeProvider, number: Int, node: Int? = nil) async -> AttemptOutcome {
        let offer = ranked.offer
        let key = "cap-" + UUID().uuidString.lowercased()
        let count = node == nil ? cluster.nodes : 1
        var tags = [
            CapstanTags.managed: "true", CapstanTags.owner: owner, CapstanTags.cluster: cluster.name,
            CapstanTags.clusterID: cluster.id, CapstanTags.intent: key,
        ]
        if let node { tags[CapstanTags.node] = "\(node)" }
        let intent = LaunchIntent(
            key: key, clusterID: cluster.id, provider: offer.provider, offer: offer, count: count, spot: ranked.spot,
            tags: tags, status: .pending, createdAt: Date(), updatedAt: Date(), error: nil, pid: getpid())
        do {
            try store.insert(intent)
        } catch {
            return .failed(error as? CapstanError ?? CapstanError(.io, "\(error)"), key)
        }
        say("trying \(offer.id): \(count) node(s), " + String(format: "$%.2f/h", ranked.clusterPricePerHour) + (ranked.spot ? " spot" : ""))
        faults.hit("before-launch", number)

        var request = LaunchRequest(offer: offer, count: count, idempotencyKey: key, tags: tags, name: "capstan-\(cluster.name)", spot: ranked.spot)
        if let keys = options.clusterKeys {
            do { request.sshPublicKey = try keys.publicKey(cluster: cluster.name) } catch {
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
                await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: [])
                try? store.setIntent(key, status: .failed, error: e.description)
                return .failed(e, key)
            }
        }
        faults.hit("after-launch", number)
        // Clouds do not always say what an instance costs (EC2 spot): use the offer's price.
        instances = instances.map { i in
            var i = i
            if i.pricePerHour == nil { i.pricePerHour = ranked.pricePerNode }
            return i
        }
        for i in instances { try? store.record(i, clusterID: cluster.id, intentKey: key) }
        try? store.setIntent(key, status: .launched)
        if instances.count != count {
            await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: instances.map(\.id))
            let e = CapstanError(.internalError, "\(offer.provider) launched \(instances.count) instance(s) for \(count) node(s).", provider: offer.provider)
            try? store.setIntent(key, status: .failed, error: e.description)
            return .failed(e, key)
        }
        say("launched \(instances.map(\.id).joined(separator: ", ")); waiting until running")

        // Readiness waiter: poll between min and max delay, doubling.
        let ids = instances.map(\.id)
        let deadline = ContinuousClock.now + options.readyTimeout
        var delay = options.waitMinDelay
        var polls = 0
        while true {
            do {
                let seen = try await provider.describe(InstanceQuery(ids: ids, includeTerminated: true))
                polls += 1
                for i in seen { try? store.record(i, clusterID: cluster.id, intentKey: key) }
                if polls == 1 { faults.hit("waiting", number) }
                if let dead = seen.first(where: { $0.state.isGone || $0.state == .failed || $0.state == .stopped }) {
                    await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: ids)
                    let e = CapstanError(.capacity, "Instance \(dead.id) went \(dead.state.rawValue) while booting\(dead.stateReason.map { " (\($0))" } ?? "").", provider: offer.provider)
                    try? store.setIntent(key, status: .failed, error: e.description)
                    return .failed(e, key)
                }
                if seen.count == ids.count, seen.allSatisfy({ $0.state == .running }) {
                    return .ready(seen.sorted { $0.nodeIndex < $1.nodeIndex }, key)
                }
            } catch {
                logger.warning("describe failed while waiting", metadata: ["capstan.provider": "\(offer.provider)", "error": "\(error)"])
            }
            if ContinuousClock.now + delay > deadline {
                await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: ids)
                let e = CapstanError(.timeout, "Instances on \(offer.id) were not running after \(options.readyTimeout).", provider: offer.provider)
                try? store.setIntent(key, status: .failed, error: e.description)
                return .failed(e, key)
            }
            do { try await Task.sleep(for: delay) } catch {
                await cleanUp(provider: provider, clusterID: cluster.id, intent: key, known: ids)
                try? store.setIntent(key, status: .failed, error: "cancelled")
                return .failed(CapstanError(.timeout, "Cancelled while waiting for \(offer.id)."), key)
            }
            delay = min(delay * 2, options.waitMaxDelay)
        }
    }

    /// Terminates what an intent created: the known ids plus anything carrying its tag, and
    /// records their end.
    func cleanUp(provider: any ComputeProvider, clusterID: String, intent: String, known: [String]) async {
        var ids = Set(known)
        if let tagged = try? await provider.describe(InstanceQuery(tags: [CapstanTags.intent: intent])) {
            ids.formUnion(tagged.map(\.id))
        }
        guard !ids.isEmpty else { return }
        // Every id here is a real instance of this intent (known, or found by its tag).
        for i in (try? await provider.terminate(ids: ids.sorted())) ?? [] {
            try? store.record(i, clusterID: clusterID, intentKey: intent)
        }
    }

    // MARK: - Replace one node

    /// Replaces node `node` of running cluster `name`: terminates the instance serving it (if
    /// any is left) and launches one instance on the cluster's offer — same provider, instance
    /// type and zone, so the gang stays on one network — tagged with the same node index.
    /// The launch is an intent like any other, so a crash here is reconciled. Capacity errors
    /// are retried with backoff up to `options.launchRetries` times; then the error is thrown.
    /// Returns the new instance once it is running.
    public func replaceNode(cluster name: String, node: Int) async throws -> Instance {
        guard var cluster = try store.cluster(named: name), cluster.status == .running, let offer = cluster.offer else {
            throw CapstanError(.notFound, "Cluster '\(name)' is not running, so node \(node) cannot be replaced.", hint: "See `capstan status`.")
        }
        guard let provider = provider(offer.provider) else {
            throw CapstanError(.config, "Provider \(offer.provider) of cluster '\(name)' is not enabled.", hint: "Enable it in config.yaml.")
        }
        guard let lock = try locks.acquire(name) else {
            throw CapstanError(.invalidRequest, "Another capstan process is working on cluster '\(name)'.", hint: "Wait for it to finish.")
        }
        defer { lock.release() }
        // Retire whatever serves the node now.
        let current = try store.instances(cluster: cluster.id).filter { !$0.state.isGone && $0.instance.nodeIndex == node }
        if !current.isEmpty {
            for i in try await provider.terminate(ids: current.map(\.id)) {
                var gone = i
                if !gone.state.isGone { gone.state = .terminated }
                try? store.record(gone, clusterID: cluster.id, intentKey: current.first { $0.id == i.id }?.intentKey ?? "")
            }
        }
        let owner = try store.ownerID()
        let perNode = (cluster.spot ? offer.spotPricePerHour : offer.onDemandPricePerHour) ?? 0
        let ranked = RankedOffer(offer: offer, spot: cluster.spot, pricePerNode: perNode, nodes: 1, clusterPricePerHour: perNode * Double(cluster.nodes))
        var last: CapstanError?
        tries: for n in 0...options.launchRetries {
            if n > 0 { try await Task.sleep(for: options.backoff.delay(n - 1)) }
            switch await attempt(cluster: cluster, owner: owner, ranked: ranked, provider: provider, number: n + 1, node: node) {
            case .ready(let instances, _):
                store.event("replaced", "Node \(node) replaced by \(instances[0].id) on \(offer.provider) \(offer.instanceType).", cluster: cluster.id)
                return instances[0]
            case .failed(let e, _):
                last = e
                guard [.capacity, .quota, .rateLimited, .transient, .timeout].contains(e.code) else { break tries }
            }
        }
        let e = last ?? CapstanError(.capacity, "No capacity to replace node \(node).")
        cluster.lastError = "Replacing node \(node) failed: \(e.message)"
        try? store.update(cluster)
        throw CapstanError(e.code, "Could not replace node \(node) of cluster '\(name)' on \(offer.id): \(e.message)", hint: e.hint, provider: offer.provider)
    }

    // MARK: - Down

    /// Terminates every instance of cluster `name` and marks it terminated. Idempotent.
    public func down(name: String) async throws -> Cluster {
        guard var cluster = try store.cluster(named: name) else {
            throw CapstanError(.notFound, "No cluster named '\(name)'.", hint: "See `capstan status`.")
        }
        guard cluster.status.isLive else { return cluster }
        guard let lock = try locks.acquire(name) else {
            throw CapstanError(.invalidRequest, "Another capstan process is working on cluster '\(name)'.", hint: "Wait for it to finish (or kill it; the next command reconciles).")
        }
        defer { lock.release() }
        cluster.status = .terminating
        try store.update(cluster)
        let records = try store.instances(cluster: cluster.id)
        var failures: [String] = []
        for (providerName, group) in Dictionary(grouping: records, by: \.provider) {
            guard let provider = provider(providerName) else {
                failures.append("provider \(providerName) is not enabled, so \(group.count) instance(s) could not be terminated")
                continue
            }
            // Everything tagged with this cluster, not only what the store knows.
            var ids = Set(group.filter { !$0.state.isGone }.map(\.id))
            if let tagged = try? await provider.describe(InstanceQuery(tags: [CapstanTags.clusterID: cluster.id])) {
                ids.formUnion(tagged.map(\.id))
            }
            guard !ids.isEmpty else { continue }
            do {
                for i in try await provider.terminate(ids: ids.sorted()) {
                    let intent = group.first { $0.id == i.id }?.intentKey ?? i.tags[CapstanTags.intent] ?? ""
                    var gone = i
                    if !gone.state.isGone { gone.state = .terminated }
                    try store.record(gone, clusterID: cluster.id, intentKey: intent)
                }
            } catch {
                failures.append("\(providerName): \(error)")
            }
        }
        if !failures.isEmpty {
            cluster.lastError = failures.joined(separator: "; ")
            try store.update(cluster)
            throw CapstanError(.transient, "Cluster '\(name)' could not be fully terminated: \(cluster.lastError!).", hint: "Run `capstan down \(name)` again; nothing is forgotten.")
        }
        cluster.status = .terminated
        cluster.terminatedAt = Date()
        try store.update(cluster)
        store.event("terminated", "Cluster \(name) terminated.", cluster: cluster.id)
        return cluster
    }

    // MARK: - Reconcile

    /// Compares every provider's Capstan instances with the state store and repairs the
    /// difference: adopt what belongs to a live cluster, terminate the rest, close dead intents.
    public func reconcile() async -> ReconcileReport {
        var report = ReconcileReport()
        guard let owner = try? store.ownerID() else { return report }
        // List every provider at once.
        var listed: [String: [Instance]] = [:]
        await withTaskGroup(of: (String, Result<[Instance], CapstanError>).self) { group in
            for p in providers {
                group.addTask {
                    do {
                        let found = try await withDeadline(.seconds(60), provider: p.name) {
                            try await p.describe(InstanceQuery(tags: [CapstanTags.managed: "true", CapstanTags.owner: owner]))
                        }
                        return (p.name, .success(found))
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

        let clusters = (try? store.clusters(includeFinished: true)) ?? []
        let byID = Dictionary(clusters.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        var busy = Set<String>()
        for c in clusters where c.status.isLive && locks.isHeld(c.name) {
            busy.insert(c.id)
            report.busyClusters.append(c.name)
        }

        // Interrupted provisioning: `up` died (its lock is free) with the cluster provisioning.
        var interrupted: [String: Cluster] = [:]
        for c in clusters where c.status == .provisioning && !busy.contains(c.id) { interrupted[c.id] = c }

        // Launches that completed for a cluster after its first (node replacements).
        var launchedIntents: [String: String] = [:]
        for i in (try? store.intents(status: .launched)) ?? [] { launchedIntents[i.key] = i.clusterID }

        var toTerminate: [String: [Instance]] = [:]
        var recovered: [String: (intent: String, instances: [Instance])] = [:]
        for (providerName, instances) in listed {
            for i in instances where i.state.isLive {
                let clusterID = i.tags[CapstanTags.clusterID] ?? ""
                let intent = i.tags[CapstanTags.intent] ?? ""
                if busy.contains(clusterID) { continue }
                if let c = byID[clusterID], (c.status == .running || c.status == .terminating),
                   c.intentKey == intent || launchedIntents[intent] == c.id {
                    try? store.record(i, clusterID: c.id, intentKey: intent)
                    report.adopted.append(i.id)
                } else if let c = interrupted[clusterID] {
                    // Group by intent; decided below once all are seen.
                    var entry = recovered[c.id] ?? (intent, [])
                    if entry.intent == intent { entry.instances.append(i) } else { toTerminate[providerName, default: []].append(i) }
                    recovered[c.id] = entry
                } else {
                    toTerminate[providerName, default: []].append(i)
                }
            }
        }

        for (clusterID, c) in interrupted {
            var cluster = c
            if let entry = recovered[clusterID], entry.instances.count == c.nodes,
               let intent = try? store.intent(entry.intent), entry.instances.allSatisfy({ $0.state == .running || $0.state == .pending }) {
                // Everything the dead `up` asked for exists: finish its work.
                for i in entry.instances { try? store.record(i, clusterID: clusterID, intentKey: entry.intent) }
                try? store.setIntent(entry.intent, status: .launched)
                cluster.status = .running
                cluster.offer = intent.offer
                cluster.spot = intent.spot
                let perNode = (intent.spot ? intent.offer.spotPricePerHour : intent.offer.onDemandPricePerHour) ?? 0
                cluster.pricePerHour = perNode * Double(c.nodes)
                cluster.intentKey = entry.intent
                cluster.readyAt = Date()
                try? store.update(cluster)
                store.event("recovered", "Provisioning was interrupted; the \(c.nodes) node(s) it had launched were adopted.", cluster: clusterID)
                report.recoveredClusters.append(c.name)
                report.adopted.append(contentsOf: entry.instances.map(\.id))
            } else {
                if let entry = recovered[clusterID] {
                    let provider = entry.instances.first?.provider ?? ""
                    toTerminate[provider, default: []].append(contentsOf: entry.instances)
                }
                cluster.status = .failed
                cluster.terminatedAt = Date()
                cluster.lastError = "Provisioning was interrupted (the capstan process died); whatever it had launched was terminated."
                try? store.update(cluster)
                store.event("failed", cluster.lastError!, cluster: clusterID)
                report.failedClusters.append(c.name)
            }
        }

        for (providerName, instances) in toTerminate where !instances.isEmpty {
            guard let p = provider(providerName) else { continue }
            do {
                let after = try await p.terminate(ids: instances.map(\.id))
                for i in after {
                    let clusterID = instances.first { $0.id == i.id }?.tags[CapstanTags.clusterID] ?? ""
                    let intent = instances.first { $0.id == i.id }?.tags[CapstanTags.intent] ?? ""
                    var gone = i
                    if !gone.state.isGone { gone.state = .terminated }
                    try? store.record(gone, clusterID: clusterID, intentKey: intent)
                }
                report.terminated.append(contentsOf: instances.map(\.id))
                store.event("reconciled", "Terminated \(instances.count) instance(s) on \(providerName) that no live cluster owns: \(instances.map(\.id).joined(separator: ", ")).")
            } catch {
                report.providerErrors[providerName] = error as? CapstanError ?? CapstanError(.transient, "\(error)", provider: providerName)
            }
        }

        // Instances the store thinks are alive but the provider no longer lists are gone.
        for rec in (try? store.allInstances()) ?? [] where !rec.state.isGone {
            guard let seen = listed[rec.provider], !busy.contains(rec.clusterID) else { continue }
            if !seen.contains(where: { $0.id == rec.id && $0.state.isLive }) {
                var gone = rec.instance
                gone.state = .terminated
                try? store.record(gone, clusterID: rec.clusterID, intentKey: rec.intentKey)
            }
        }

        // Intents of dead processes.
        for intent in (try? store.intents(status: .pending)) ?? [] where !busy.contains(intent.clusterID) {
            try? store.setIntent(intent.key, status: .abandoned, error: "the process that wrote it (pid \(intent.pid)) died before the launch was recorded")
            report.abandonedIntents.append(intent.key)
        }
        if report.didSomething {
            logger.notice("reconciled", metadata: ["terminated": "\(report.terminated.count)", "adopted": "\(report.adopted.count)"])
        }
        return report
    }
}
