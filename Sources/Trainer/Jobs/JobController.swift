public import CapstanCore
public import CapstanRuntime
public import CapstanProviders
public import Foundation
public import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Everything a controller needs besides the job itself.
public struct JobContext: Sendable {
    public var home: CapstanHome
    public var store: any StateStore
    public var provisioner: Provisioner
    /// Used when the job provisions its own cluster.
    public var search: OfferSearch
    /// Tried in order; the first that serves a node reaches it.
    public var transports: [any NodeTransport]
    /// Opens a bucket URI (`file://`, `s3://`, a plugin's scheme).
    public var openBucket: @Sendable (String) throws -> any ObjectStore
    /// How the nodes' agents open a bucket URI (settings and credentials, resolved once per
    /// controller and handed to each agent on its stdin); nil: they open it themselves.
    public var bucketAccess: @Sendable (String) throws -> BucketAccess?
    public var logger: Logger
    /// One controller per job: `flock`s in the home (one machine), or leases in a shared
    /// database (`capstan serve` replicas). Each holder gets a fencing token.
    public var jobLocks: any LockService
    /// Who this process is, in ``JobRecord/controllerHolder`` (`<host>:<pid>`).
    public var holder: String
    /// Where jobs' `secrets:` get their values (read at launch and by each controller when it
    /// starts; kept in memory only).
    public var secretSource = SecretSource()

    public init(
        home: CapstanHome, store: any StateStore, provisioner: Provisioner, search: OfferSearch, transports: [any NodeTransport],
        openBucket: @escaping @Sendable (String) throws -> any ObjectStore,
        bucketAccess: @escaping @Sendable (String) throws -> BucketAccess? = { _ in nil }, logger: Logger,
        jobLocks: (any LockService)? = nil
    ) {
        self.jobLocks = jobLocks ?? ClusterLocks(folder: home.stateFolder + "/locks/jobs")
        self.holder = ProcessInfo.processInfo.hostName + ":\(getpid())"
        self.home = home
        self.store = store
        self.provisioner = provisioner
        self.search = search
        self.transports = transports
        self.openBucket = openBucket
        self.bucketAccess = bucketAccess
        self.logger = logger
    }

    public func jobFolder(_ id: String) -> String { home.path("jobs/\(id)") }
    public func logFile(job: String, node: Int) -> String { jobFolder(job) + "/logs/node-\(node).log" }
}

/// The gang runner: drives one job to its end. Acquires (or finds) the cluster, starts an
/// agent on every node with the env contract, follows their heartbeats, exits and logs,
/// watches the instances, records checkpoints, and on a failure stops the gang, replaces only
/// the failed node's capacity when it is suspect, and restarts every node from the latest
/// verified checkpoint with `CAPSTAN_ATTEMPT` + 1 — within ``RestartPolicy``.
///
/// All of its state is in the state store and on the nodes, so a controller that is killed
/// can be replaced by another (``JobService/ensureController(_:)``) which re-attaches to the
/// running agents instead of restarting them. One controller per job: its job lock (``JobContext/jobLocks``), with a fencing token on every write of the job record.
public final class JobController: Sendable {
    public let jobID: String
    let ctx: JobContext
    let onEvent: @Sendable (JobEvent) -> Void
    /// The job lock this controller holds while it runs (nil before and after).
    let held = Mutex<(any HeldLock)?>(nil)
    /// The job's `notify:` (its spec's, else config.yaml's recorded at submit); nil: none.
    let notifier = Mutex<Notifier?>(nil)

    public init(jobID: String, context: JobContext, onEvent: @escaping @Sendable (JobEvent) -> Void = { _ in }) {
        self.jobID = jobID
        self.ctx = context
        self.onEvent = onEvent
    }

    var store: any StateStore { ctx.store }
    var logger: Logger { ctx.logger }

    /// Runs the job to its end (or returns at once if it has ended). Throws when another
    /// controller holds the job.
    @discardableResult
    public func run() async throws -> JobRecord {
        guard let lock = try await ctx.jobLocks.acquire(jobID) else {
            throw CapstanError(.invalidRequest, "Another capstan process is controlling job \(jobID).", hint: "Follow it with `capstan logs \(jobID) -f`.")
        }
        defer {
            held.withLock { $0 = nil }
            lock.release()
        }
        guard var job = try await store.job(jobID) else { throw CapstanError(.notFound, "No job '\(jobID)'.", hint: "See `capstan jobs`.") }
        if job.status.isFinished { return job }
        // Take the job over with this lock's fencing token: from here on, a controller that
        // still holds an older token (it lost its lease) can no longer write the job.
        let fence = lock.fence, holder = ctx.holder
        job = try await store.updateJob(jobID) { j in
            if let current = j.controllerFence, current >= fence {
                throw CapstanError(.invalidRequest, "Job \(j.id) is controlled under fencing token \(current) (\(j.controllerHolder ?? "another process")); this controller's token \(fence) is older.", hint: "Another controller took the job over; follow it with `capstan logs \(j.id) -f`.")
            }
            j.controllerFence = fence
            j.controllerHolder = holder
            j.controllerPID = getpid()
        }
        held.withLock { $0 = lock }
        await store.jobEvent("controller", "Controller \(holder) took the job (fencing token \(fence)).", job: jobID)
        let settings = (try? PluginWire.decoder.decode(JobSettings.self, from: Data(job.settings.utf8))) ?? JobSettings()
        let spec = try JobSpec.parse(job.spec, source: "job \(jobID)").applying(settings)
        notifier.withLock { $0 = Notifier.forJob(spec: spec, settings: settings) }
        let bucket: any ObjectStore
        var secrets: AgentSecrets
        do {
            bucket = try ctx.openBucket(job.storage)
            secrets = AgentSecrets(bucket: try ctx.bucketAccess(job.storage))
            if let recipe = spec.recipe { secrets.addSources(of: recipe, specEndpoint: spec.env["HF_ENDPOINT"], access: ctx.bucketAccess) }
            secrets.addInputs(spec.inputs, access: ctx.bucketAccess)
        } catch where job.attempt == 0 {
            // A job that has not started, without credentials or with a bad endpoint: no agent
            // could work either. (A running job is left to its agents: this controller may just
            // lack the environment of the one that launched it.)
            let message = "Cannot open the job's bucket \(job.storage): \((error as? CapstanError)?.description ?? "\(error)")"
            return await Run(controller: self, spec: spec, settings: settings, bucket: nil, secrets: AgentSecrets()).drive(after: .bucketUnavailable(message))
        }
        // The spec's `secrets:`, read now (this controller's environment, the secrets file). A
        // job not started yet cannot start without them; a running one keeps its agents (they
        // have theirs), and only a restart that needs them fails, saying why.
        var secretsMissing: CapstanError?
        var values: [String: String] = [:]
        for name in spec.secrets {
            do { values[name] = try ctx.secretSource.resolve([name])[name] } catch let e as CapstanError { secretsMissing = secretsMissing ?? e }
        }
        if !values.isEmpty { secrets.environment = values }
        if let e = secretsMissing {
            if job.attempt == 0 {
                return await Run(controller: self, spec: spec, settings: settings, bucket: nil, secrets: AgentSecrets()).drive(after: .bucketUnavailable("Cannot start the job: \(e.message) \(e.hint ?? "")"))
            }
            await store.jobEvent("controller", "This controller (\(holder)) cannot read the job's secrets: \(e.message) The running agents keep theirs; a restart would fail.", job: jobID)
        }
        let run = Run(controller: self, spec: spec, settings: settings, bucket: bucket, secrets: secrets)
        run.secretsMissing = secretsMissing
        return await run.drive()
    }

    func emit(_ e: JobEvent) { onEvent(e) }

    /// The context's provisioner, its progress lines also emitted as ``JobEvent/provisioning(_:)``;
    /// a launch waiting to run (in a batch queue, for hours) gives up once the job is cancelled.
    var provisioner: Provisioner {
        var p = ctx.provisioner
        let previous = p.progress, onEvent = onEvent
        p.progress = { line in
            previous?(line)
            onEvent(.provisioning(line))
        }
        let store = ctx.store, job = jobID
        p.stopWaiting = { (try? await store.job(job))?.status == .cancelling ? "the job was cancelled" : nil }
        return p
    }

    /// Whether this controller may go on: it holds the job's lock, and the lock is still valid
    /// (a lease renewed in time).
    var holdsJob: Bool { held.withLock { $0?.isValid ?? false } }

    /// Changes the job record in one transaction, fenced: refused (`.invalidRequest`) when
    /// another controller has taken the job over since this one did.
    /// `recording`: the event of the change (and its notifications), written in the same
    /// transaction.
    @discardableResult
    func updateJob(_ change: @escaping @Sendable (inout JobRecord) throws -> Void, recording: (@Sendable (JobRecord) -> JobEventWrite?)? = nil) async throws -> JobRecord {
        let fence = held.withLock { $0?.fence }
        let fenced: @Sendable (inout JobRecord) throws -> Void = { j in
            if let fence, let current = j.controllerFence, current != fence {
                throw CapstanError(.invalidRequest, "Job \(j.id) is now controlled under fencing token \(current) (\(j.controllerHolder ?? "another process")), not this controller's \(fence).", hint: "This controller stops; the other one goes on.")
            }
            try change(&j)
        }
        guard let recording else { return try await store.updateJob(jobID, fenced) }
        return try await store.updateJob(jobID, fenced, recording: recording)
    }

    /// Sets the job's status unless a cancel came in meanwhile, and records its event with the
    /// notifications it means in the same transaction.
    @discardableResult
    func setStatus(_ status: JobStatus, _ message: String, error: String? = nil) async -> JobRecord? {
        let job: JobRecord?
        let notice = await statusNotice(status, message)
        do {
            job = try await updateJob({ j in
                if j.status == .cancelling && !status.isFinished { return }
                j.status = status
                if let error { j.lastError = error }
                if status == .running, j.startedAt == nil { j.startedAt = Date() }
                if status.isFinished { j.finishedAt = Date() }
            }, recording: notice)
        } catch {
            // The controller goes on (the next pass sets it again); the failure is logged.
            logger.error("could not write the job's status", metadata: ["capstan.job": "\(jobID)", "status": "\(status.rawValue)", "error": "\(error)"])
            await store.jobEvent(status.rawValue, message, job: jobID)
            job = nil
        }
        emit(.status(job?.status ?? status, message))
        logger.notice("\(message)", metadata: ["capstan.job": "\(jobID)", "status": "\(status.rawValue)"])
        return job
    }
}

/// One controller's pass over a job: performs what the job's ``JobLifecycle`` decides (the
/// processes, the state store, the providers, the clock) and keeps what the I/O needs in memory.
final class Run: @unchecked Sendable {
    let c: JobController
    let spec: JobSpec
    let settings: JobSettings
    let checkpoints: CheckpointStore
    /// Handed to every agent on its stdin.
    let secrets: AgentSecrets
    /// Why this controller could not read the spec's `secrets:` (it re-attached without them):
    /// starting an attempt then fails with it.
    var secretsMissing: CapstanError?
    /// What the logs copied home are redacted of: every secret handed to the agents.
    let redactions: [Data]
    /// Bytes of each node log already copied home, by "attempt/node".
    var logOffsets: [String: Int64] = [:]
    /// Unfinished lines of each node's log, for the line events.
    var lines: [Int: LineBuffer] = [:]
    /// The leader's newest metrics line, and when the job record last got one.
    var latestMetrics: String?
    var metricsSaved = Date.distantPast
    var knownCheckpoints: Set<Int> = []
    /// When each node's newest telemetry sample saved was taken, by rank (``saveTelemetry(_:)``).
    var telemetrySaved: [Int: Date] = [:]
    /// The job's lifecycle: this class performs what it decides.
    var lifecycle: JobLifecycle
    /// The job's record at the top of the loop (nil: it is gone).
    var looped: JobRecord?
    /// The gang: the cluster's nodes in rank order when the attempt was found or started.
    var nodes: [Instance] = []
    /// The attempt found, started or followed.
    var attempt: JobAttemptRecord?
    /// The nodes the cluster should have.
    var wantNodes = 0
    /// The job's cost and progress, for `notify:` (``watchProgress()``).
    var progress = ProgressWatch()

    /// `bucket` nil: a run that can only finish (the bucket could not be opened).
    init(controller: JobController, spec: JobSpec, settings: JobSettings, bucket: (any ObjectStore)?, secrets: AgentSecrets) {
        self.c = controller
        self.spec = spec
        self.settings = settings
        self.secrets = secrets
        self.redactions = Redactor(secrets.secrets).secrets
        self.lifecycle = JobLifecycle(config: JobLifecycle.Config(maxRestarts: spec.maxRestarts, settings: settings, maxDuration: spec.maxDuration))
        self.checkpoints = CheckpointStore(store: bucket ?? UnopenedBucket(), prefix: "checkpoints")
        self.logOffsets = (try? JSONDecoder().decode([String: Int64].self, from: Data(contentsOf: URL(fileURLWithPath: offsetsFile)))) ?? [:]
    }

    var store: any StateStore { c.ctx.store }
    var jobID: String { c.jobID }
    var offsetsFile: String { c.ctx.jobFolder(c.jobID) + "/logs/offsets.json" }
    func job() async -> JobRecord? { try? await store.job(jobID) }

    // MARK: - The job's life

    /// What a run whose job record is gone returns.
    var placeholder: JobRecord { JobRecord(id: jobID, name: "?", spec: "", specFolder: "", settings: "", clusterName: "", ownsCluster: false, storage: "") }

    /// Drives ``JobLifecycle`` to its end: performs each action it asks for, and feeds it what
    /// the action found. `first`: an event before the loop's first look at the job.
    func drive(after first: JobLifecycle.Event? = nil) async -> JobRecord {
        knownCheckpoints = Set(((try? await store.checkpoints(job: jobID)) ?? []).map(\.step))
        var queue = first.map { lifecycle.receive($0) } ?? JobLifecycle.start
        while !queue.isEmpty {
            // Cancelled (its handle detached, or the process is shutting down): this controller
            // stops here, and the job stays as its state says, for another to pick up.
            if Task.isCancelled { return await job() ?? placeholder }
            // Its lease lapsed (this process was paused or cut off from the database): another
            // controller may own the job now, so this one does nothing more.
            if !c.holdsJob {
                c.logger.warning("lost the job's lock; this controller stops", metadata: ["capstan.job": "\(jobID)"])
                return await job() ?? placeholder
            }
            let action = queue.removeFirst()
            switch action {
            case .finish(let status, let message, let error):
                return await finish(status, message, error: error)
            case .end:
                return looped ?? placeholder
            default:
                if let event = await perform(action) { queue += lifecycle.receive(event) }
            }
        }
        // The machine ends every path with .finish or .end; this is not reached.
        return await job() ?? placeholder
    }

    /// Performs one action of the machine; a request's answer is the event returned.
    func perform(_ action: JobLifecycle.Action) async -> JobLifecycle.Event? {
        func cannotGoOn(_ error: any Error) -> JobLifecycle.Event { .cannotGoOn((error as? CapstanError)?.description ?? "\(error)") }
        // A launch given up because the job was cancelled (or one that failed meanwhile) is
        // the cancel's to finish, not a failure of the job.
        func provisioningFailed(_ error: any Error) async -> JobLifecycle.Event {
            await self.job()?.status == .cancelling ? .cancelRequested : cannotGoOn(error)
        }
        let job = looped ?? placeholder
        switch action {
        case .loadJob:
            looped = await self.job()
            // How long since the job first started, on the wall clock (its record's `startedAt`):
            // the machine times `maxDuration` from it.
            let ranFor = looped?.startedAt.map { Duration.milliseconds(Int64(max(0, Date().timeIntervalSince($0)) * 1000)) }
            return .jobLoaded(looped?.status, attempt: looped?.attempt ?? 0, ranFor: ranFor, at: .now)
        case .ensureCluster:
            do { return try await ensureCluster(job) } catch { return cannotGoOn(error) }
        case .provisionCluster:
            do { return try await provisionCluster(job) } catch { return await provisioningFailed(error) }
        case .replaceNode(let node):
            do { return try await replace(node: node, of: job) } catch { return await provisioningFailed(error) }
        case .moveGang:
            do { return try await move(job) } catch { return await provisioningFailed(error) }
        case .relaunchGang:
            do { return try await move(job, sameOfferFirst: true) } catch { return await provisioningFailed(error) }
        case .findAttempt:
            do { return try await findAttempt(job) } catch { return cannotGoOn(error) }
        case .startAttempt:
            do {
                return try await startAttempt(job, nodes: nodes)
            } catch let lost as NodeUnreachable {
                do {
                    let number = await self.job()?.attempt ?? job.attempt
                    guard let started = try await store.attempt(job: jobID, number: number) else { throw lost.error }
                    attempt = started
                    return .nodeUnreachable(Self.attempt(started), rank: lost.rank, error: lost.error.message)
                } catch { return cannotGoOn(error) }
            } catch { return cannotGoOn(error) }
        case .stopGang(let stop):
            return await stopGang(stop, job: job)
        case .observe:
            return await observe()
        case .checkInstances:
            return .instancesChecked(await describeNodes(nodes))
        case .readErrorLine(let rank):
            return .errorLine(Self.errorLine(inLog: c.ctx.logFile(job: jobID, node: rank)))
        case .readAgentOutput(let rank):
            var said = ""
            if let attempt, nodes.indices.contains(rank), let t = try? transport(for: nodes[rank]) { said = await t.agentOutput(job: jobID, attempt: attempt.attempt, on: nodes[rank]) }
            return .agentSaid(said.isEmpty ? nil : String(secrets.redact(said).suffix(500)))
        case .loadRestartFacts:
            guard let attempt else { return await .restartFacts(latestCheckpoint: latestCommitted(), previous: nil, restartsUsed: (self.job() ?? job).restarts) }
            return await restartFacts(after: attempt, job: job)
        case .sleep(let duration):
            try? await Task.sleep(for: duration)
            return .woke(at: .now)
        case .loadLatestCheckpoint:
            await syncCheckpoints()
            return .latestCheckpoint(await latestCommitted())
        case .setStatus(let status, let message):
            await c.setStatus(status, message)
        case .emit(let event):
            // An attempt's start is part of the job's history (`capstan events`); the rest of
            // what is emitted is written where it happens.
            if case .attemptStarted(let number, let resume, let nodes) = event {
                await c.store.jobEvent("attempt", "Attempt \(number) started on \(nodes.count) node(s) (\(nodes.joined(separator: ", ")))" + (resume.map { ", resuming from step \($0)." } ?? ", from the start."), job: c.jobID)
            }
            c.emit(event)
        case .closeAttempt(let number, let outcome, let failure):
            await closeAttempt(number, outcome: outcome, failure: failure)
        case .syncCheckpoints:
            await syncCheckpoints()
        case .pullLogs(let only):
            if let attempt { await pullLogs(attempt, nodes: nodes, only: only) }
        case .drainLogs(let skipping):
            if let attempt { await drainLogs(attempt, nodes: nodes, skipping: ids(skipping)) }
        case .recordCorrupt(let bad):
            await recordCorrupt(bad)
        case .countRestart:
            await bestEffort("restart counted") { _ = try await c.updateJob { $0.restarts += 1 } }
        case .finish, .end:
            break
        }
        return nil
    }

    /// What the restart decision after `attempt` needs: the newest checkpoint, how the attempt
    /// before it failed, the restarts spent.
    func restartFacts(after attempt: JobAttemptRecord, job: JobRecord) async -> JobLifecycle.Event {
        let previous = await (try? store.attempt(job: jobID, number: attempt.attempt - 1)).flatMap { a -> AttemptFailure? in
            guard a.outcome == .failed, let kind = a.failureKind.flatMap(AttemptFailure.Kind.init(rawValue:)) else { return nil }
            return AttemptFailure(kind: kind, node: a.failedNode, exit: a.exitCode.map { .fromCode(Int32($0)) }, message: a.message ?? "")
        }
        let current = await self.job() ?? job
        return await .restartFacts(latestCheckpoint: latestCommitted(), previous: previous, restartsUsed: current.restarts)
    }

    /// The instance ids of these ranks of the gang.
    func ids(_ ranks: Set<Int>) -> Set<String> { Set(ranks.filter { nodes.indices.contains($0) }.map { nodes[$0].id }) }

    static func attempt(_ a: JobAttemptRecord) -> JobLifecycle.Attempt {
        JobLifecycle.Attempt(number: a.attempt, nodes: a.nodes, resumeStep: a.resumeStep)
    }

    /// A node that could not be reached to start its part of an attempt.
    struct NodeUnreachable: Error {
        var rank: Int
        var node: String
        var error: CapstanError
    }

    /// Whether the cluster runs (a cluster left provisioning by a controller that died is
    /// reconciled first), and which of its nodes are missing.
    func ensureCluster(_ job: JobRecord) async throws -> JobLifecycle.Event {
        var cluster = try await store.cluster(named: job.clusterName)
        if cluster?.status == .provisioning {
            // A controller died while provisioning: let reconcile decide what it left (its wait
            // for a launch still booting or queued gives up, like this job's, on a cancel).
            _ = await c.provisioner.reconcile()
            cluster = try await store.cluster(named: job.clusterName)
        }
        wantNodes = cluster?.nodes ?? spec.resources.nodes
        if cluster?.status != .running {
            guard job.ownsCluster else {
                throw CapstanError(.notFound, "Cluster '\(job.clusterName)' is not running.", hint: "Start it with `capstan up`, or launch without --cluster.")
            }
            return .clusterNeedsProvisioning(cluster: job.clusterName, nodes: spec.resources.nodes, gpu: spec.resources.gpuDescription)
        }
        return await .clusterReady(missing: try missingNodes(job))
    }

    /// Provisions the job's own cluster.
    func provisionCluster(_ job: JobRecord) async throws -> JobLifecycle.Event {
        let report = try await c.provisioner.up(name: job.clusterName, request: spec.resources, search: c.ctx.search)
        guard report.cluster.status == .running else {
            throw CapstanError(.capacity, "No capacity for the job: \(report.noOfferReason ?? report.cluster.lastError ?? "every offer failed").", hint: "Try other GPUs, regions or spot; `capstan offers --explain` shows why offers were filtered.")
        }
        return await .clusterReady(missing: try missingNodes(job))
    }

    /// The node indices without a live instance: lost while no controller was watching, or a
    /// replacement that did not finish.
    func missingNodes(_ job: JobRecord) async throws -> [Int] {
        let nodes = try await currentNodes(job)
        return (0..<wantNodes).filter { index in !nodes.contains(where: { $0.nodeIndex == index }) }
    }

    /// Replaces node `node`'s capacity (``Provisioner/replaceNode(cluster:node:)``). When the
    /// cluster's own offer has no capacity left for it (or its region is gone), says so: the
    /// whole gang then moves (``move(_:)``).
    /// On a provider that allocates gangs (Slurm), the whole gang is relaunched instead: a
    /// one-node allocation beside the others would end on its own time limit.
    func replace(node: Int, of job: JobRecord) async throws -> JobLifecycle.Event {
        if try await c.ctx.provisioner.allocatesGangs(cluster: job.clusterName) {
            await store.jobEvent("relaunch", "Node \(node) is lost, and its provider gives nodes only as a whole allocation: relaunching the gang.", job: jobID)
            return try await move(job, sameOfferFirst: true)
        }
        do {
            let fresh = try await c.provisioner.replaceNode(cluster: job.clusterName, node: node)
            c.emit(.nodeReplaced(node: node, instance: fresh.id))
            await store.jobEvent("replaced", "Node \(node) is now \(fresh.id).", job: jobID)
            return .nodeReplaced(node)
        } catch let e as CapstanError where [.capacity, .quota, .notFound, .timeout].contains(e.code) && e.provider != nil {
            return .replacementUnavailable(node: node, reason: e.message)
        }
    }

    /// Moves the whole gang to the next offer that fits, on any provider
    /// (``Provisioner/move(cluster:search:)``); the job resumes there from the bucket.
    /// `sameOfferFirst`: every node is gone, so the cluster's own offer is tried first.
    func move(_ job: JobRecord, sameOfferFirst: Bool = false) async throws -> JobLifecycle.Event {
        let report = try await c.provisioner.move(cluster: job.clusterName, search: c.ctx.search, sameOfferFirst: sameOfferFirst)
        let to = report.cluster.offer.map { "\($0.provider) \($0.instanceType) in \($0.zone ?? $0.region)" } ?? "?"
        await store.jobEvent("moved", "The gang moved to \(to) (\(report.instances.map(\.id).joined(separator: ", "))); the job resumes there from the bucket.", job: jobID)
        return .gangMoved
    }

    func currentNodes(_ job: JobRecord) async throws -> [Instance] {
        guard let cluster = try await store.cluster(named: job.clusterName) else { return [] }
        let live = try await store.instances(cluster: cluster.id).filter { !$0.state.isGone }.map(\.instance)
        // One instance per node index (the newest, should a stale record linger).
        var byIndex: [Int: Instance] = [:]
        for i in live.sorted(by: { ($0.launchedAt ?? .distantPast) < ($1.launchedAt ?? .distantPast) }) { byIndex[i.nodeIndex] = i }
        return byIndex.keys.sorted().map { byIndex[$0]! }
    }

    func transport(for node: Instance) throws -> any NodeTransport {
        try NodeTransports.transport(for: node, among: c.ctx.transports)
    }

    /// The attempt to follow: the running one (re-attach), or a new one.
    /// The gang (the cluster's nodes now) and the job's current attempt, if it has one.
    func findAttempt(_ job: JobRecord) async throws -> JobLifecycle.Event {
        nodes = try await currentNodes(job)
        attempt = nil
        if let a = try await store.attempt(job: jobID, number: job.attempt) {
            attempt = a
            return .attemptFound(Self.attempt(a), a.outcome, sameNodes: a.nodes == nodes.map(\.id), at: .now)
        }
        return .attemptFound(nil, nil, sameNodes: false, at: .now)
    }
    /// Starts attempt `job.attempt + 1` on every node of the gang, from the newest verified checkpoint.
    func startAttempt(_ job: JobRecord, nodes: [Instance]) async throws -> JobLifecycle.Event {
        let number = job.attempt + 1
        if let missing = secretsMissing {
            throw CapstanError(.config, "Cannot start attempt \(number): \(missing.message)", hint: "The controller that took the job over reads secrets from its own environment (the shell that ran `capstan jobs`/`logs`) or config.yaml's secrets file; keep them in the secrets file so any controller finds them (docs/jobs.md, Secrets).")
        }
        let resume = try await checkpoints.latestVerified()
        let chosen = NodeAddresses(nodes)
        let masterAddress = chosen.master ?? "127.0.0.1"
        let port = Self.pickPort(address: masterAddress)
        var record = JobAttemptRecord(jobID: jobID, attempt: number, nodes: nodes.map(\.id), masterAddress: masterAddress, masterPort: port, resumeStep: resume?.step)
        try await store.save(record)
        _ = try await c.updateJob { $0.attempt = number }
        let gpus = await (try? store.cluster(named: job.clusterName))??.offer?.gpusPerNode ?? spec.resources.gpusPerNode ?? 0
        let addresses = chosen.addresses
        var starts: [(any NodeTransport, AgentConfig, Instance)] = []
        for (rank, node) in nodes.enumerated() {
            let t = try transport(for: node)
            let l = try t.layout(job: jobID, attempt: number, on: node)
            let contract = EnvContract(
                jobID: jobID, nodeRank: rank, nodeAddresses: addresses, gpusPerNode: gpus, masterPort: port, checkpointDir: l.checkpointDir,
                resumeDir: resume == nil ? nil : l.resumeDir, outputDir: l.outputDir, attempt: number)
            var env = spec.env
            for (k, v) in contract.variables { env[k] = v }
            // The interface of the node's private address (its access names it), unless the job does.
            if let iface = node.resolvedAccess?.networkInterface {
                for k in ["GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"] where env[k] == nil { env[k] = iface }
            }
            var files: [String: String] = [:]
            if let r = spec.recipe, let recipe = Recipe.named(r.name) {
                env["CAPSTAN_RECIPE_DIR"] = l.stateDir + "/" + Recipe.folderName
                for (name, text) in recipe.files(for: r) { files[Recipe.folderName + "/" + name] = text }
                // The Hub endpoint the launch checked the model against, for the agents' fetch.
                if env["HF_ENDPOINT"] == nil, let e = ProcessInfo.processInfo.environment["HF_ENDPOINT"], !r.remoteSources.isEmpty { env["HF_ENDPOINT"] = e }
            }
            var config = AgentConfig(
                job: jobID, attempt: number, node: rank, nodes: nodes.count, setup: spec.setup, run: spec.run, environment: env,
                workdir: l.workdir, stateDir: l.stateDir, checkpointDir: l.checkpointDir, outputDir: l.outputDir,
                resumeDir: resume == nil ? nil : l.resumeDir, resumeStep: resume?.step, bucket: job.storage, keep: spec.checkpoint.keep)
            config.heartbeatSeconds = settings.heartbeatSeconds
            config.telemetrySeconds = settings.telemetrySeconds
            config.checkpointPollSeconds = settings.checkpointPollSeconds
            config.stopGraceSeconds = settings.stopGraceSeconds
            config.commitWaitSeconds = settings.commitWaitSeconds
            config.pidsFile = l.pidsFile
            config.deadManSeconds = spec.deadManMinutes.map { $0 * 60 }
            // Only where the provider says a guest shutdown stops billing (nil elsewhere: the
            // dead-man switch then stops the command and leaves the node up).
            config.shutdownCommand = node.shutdownCommand
            config.files = files
            config.python = spec.python
            config.inputs = spec.inputs.isEmpty ? nil : spec.inputs
            config.image = spec.image
            // In a container, setup and the command are one script: setup's changes stay for it.
            if spec.image != nil { (config.setup, config.run) = ([], ContainerRun.script(setup: spec.setup, run: spec.run)) }
            appendHome(node: rank, Data("==== attempt \(number) on \(node.id) (\(addresses[rank]))\(resume.map { ", resuming from checkpoint step \($0.step)" } ?? "") ====\n".utf8))
            starts.append((t, config, node))
        }
        // Every node at once: over SSH each costs round trips, and nodes are independent.
        let workdir = spec.workdir.map { $0.hasPrefix("/") ? $0 : job.specFolder + "/" + $0 }
        let job = jobID
        let secrets = self.secrets
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (t, config, node) in starts {
                group.addTask {
                    do {
                        if let workdir { try await t.uploadWorkdir(workdir, job: job, on: node) }
                        try await t.startAgent(config, secrets: secrets, on: node)
                    } catch let e as CapstanError where e.code == .transient || e.code == .timeout {
                        throw NodeUnreachable(rank: config.node, node: node.id, error: e)
                    }
                }
            }
            try await group.waitForAll()
        }
        record.outcome = .running
        try await store.save(record)
        attempt = record
        return .attemptStarted(Self.attempt(record), masterAddress: masterAddress, port: port, reason: chosen.reason, at: .now)
    }


    // MARK: - Following an attempt

    /// One pass over the nodes for the machine: every node's status (read concurrently: an
    /// unreachable node's read, bounded by its transport, must not make the others look
    /// silent), and the new log bytes of those that answered.
    func observe() async -> JobLifecycle.Event {
        if await job()?.status == .cancelling { return .cancelRequested }
        guard let attempt else { return .cancelRequested }
        let readsBegan = ContinuousClock.now
        let answers = await readStatuses(attempt, nodes: nodes)
        let answered = ContinuousClock.now
        await saveTelemetry(answers)
        await pullLogs(attempt, nodes: nodes, only: Set(answers.map(\.0)))
        await watchProgress()
        let pass = JobLifecycle.Pass(
            readsBegan: readsBegan, answered: answered, now: .now,
            answers: answers.map { JobLifecycle.Answer(rank: $0.0, status: $0.1, running: $0.2) })
        return .observed(pass)
    }

    /// The last line of a node log that reads like the reason a command failed ("ValueError:
    /// …", "sft recipe: data.jsonl:3: not valid JSON", the agent's "python env failed: …"),
    /// skipping torchrun's own summary; nil when there is none in the last 16 KiB.
    static func errorLine(inLog path: String) -> String? {
        guard let h = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? h.close() }
        let end = (try? h.seekToEnd()) ?? 0
        try? h.seek(toOffset: end > 16384 ? end - 16384 : 0)
        let text = String(decoding: (try? h.readToEnd()) ?? Data(), as: UTF8.self)
        for raw in text.split(separator: "\n").reversed() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.contains("ChildFailedError") || line.contains("torch.distributed.elastic") || line.hasPrefix("====") { continue }
            if line.hasPrefix("[capstan-agent") {
                if line.contains("python env failed") { return String(line.prefix(400)) }
                continue
            }
            if line.hasPrefix("sft recipe:") || line.range(of: #"^(\[rank[0-9]+\]: *)?[A-Za-z_.]*(Error|Exception)\b"#, options: .regularExpression) != nil {
                return String(line.prefix(400))
            }
        }
        return nil
    }


    /// The gang's instances as their providers describe them, a provider at a time, up to the
    /// first provider that reports one gone (``JobLifecycle/goneFailure(_:)`` decides).
    func describeNodes(_ nodes: [Instance]) async -> [JobLifecycle.Seen] {
        var out: [JobLifecycle.Seen] = []
        for (providerName, group) in Dictionary(grouping: nodes.enumerated(), by: { $0.element.provider }) {
            guard let p = c.ctx.provisioner.providers.first(where: { $0.name == providerName }) else { continue }
            guard let seen = try? await p.describe(InstanceQuery(ids: group.map(\.element.id), includeTerminated: true)) else { continue }
            for (rank, node) in group {
                let now = seen.first { $0.id == node.id }
                out.append(JobLifecycle.Seen(rank: rank, instance: node.id, state: now?.state, reason: now?.state == .running ? nil : now?.stateReason))
            }
            if JobLifecycle.goneFailure(out) != nil { break }
        }
        return out
    }

    // MARK: - Stopping

    /// Stops the gang the machine names: for a cancel, the job's current attempt on the
    /// cluster's current nodes (nothing when it has none); otherwise the attempt found or followed.
    func stopGang(_ stop: JobLifecycle.StopGang, job: JobRecord) async -> JobLifecycle.Event {
        switch stop.reason {
        case .cancel:
            // An attempt already closed (a failed one, its gang being relaunched when the cancel
            // came) keeps its outcome and failure.
            if let a = try? await store.attempt(job: jobID, number: job.attempt), a.outcome == .running || a.outcome == .starting,
                let nodes = try? await currentNodes(job)
            {
                await stopGang(a, nodes: nodes, waitAtMost: stop.waitAtMost)
                return .gangStopped(attemptFound: true)
            }
            return .gangStopped(attemptFound: false)
        case .maxDuration:
            // Like a cancel, but an attempt already closed (a failed one) keeps its outcome.
            guard let a = try? await store.attempt(job: jobID, number: job.attempt), a.outcome == .running || a.outcome == .starting,
                let nodes = try? await currentNodes(job)
            else { return .gangStopped(attemptFound: false) }
            await stopGang(a, nodes: nodes, waitAtMost: stop.waitAtMost)
            // The last lines (the command's final checkpoint, the agents' uploads) come home.
            if attempt?.attempt == a.attempt { await drainLogs(a, nodes: nodes) }
            return .gangStopped(attemptFound: true)
        case .stale, .failure:
            guard let attempt else { return .gangStopped(attemptFound: false) }
            await stopGang(attempt, nodes: nodes, silent: ids(stop.silent), waitAtMost: stop.waitAtMost)
        }
        return .gangStopped(attemptFound: true)
    }

    /// Stops every agent of `attempt` (all nodes at once) and waits up to `waitAtMost` for them
    /// to finish their uploads, then kills what is left; `silent` nodes (lost heartbeat: likely
    /// unreachable) get the stop but are not waited for — their capacity is replaced anyway.
    func stopGang(_ attempt: JobAttemptRecord, nodes: [Instance], silent: Set<String> = [], waitAtMost: Duration) async {
        let targets = nodes.filter { attempt.nodes.contains($0.id) }
        let job = jobID
        func stopAll(force: Bool) async {
            // A silent node is not forced: it would only wait out another read; releasing its
            // capacity (the provider) ends whatever runs there.
            let pairs = targets.filter { !force || !silent.contains($0.id) }.compactMap { n in (try? transport(for: n)).map { (n, $0) } }
            await withTaskGroup(of: Void.self) { group in
                for (node, t) in pairs {
                    group.addTask { try? await t.stopAgent(job: job, attempt: attempt.attempt, on: node, force: force) }
                }
            }
        }
        await stopAll(force: false)
        let waitFor = targets.filter { !silent.contains($0.id) }
        let deadline = ContinuousClock.now + waitAtMost
        while ContinuousClock.now < deadline, !waitFor.isEmpty {
            if await readStatuses(attempt, nodes: waitFor).allSatisfy({ !$0.2 }) { break }
            try? await Task.sleep(for: .milliseconds(200))
        }
        await stopAll(force: true)
        // Steps whose parts all arrived but whose leader did not commit them (it was lost, or
        // stopped before the last part came): the data is complete, so they are committed.
        for step in (try? await checkpoints.commitComplete(job: jobID, nodes: attempt.nodes.count)) ?? [] {
            await c.record("checkpoint", "Checkpoint step \(step) had every part but no manifest; committed it.", notify: .checkpoint, detail: "\(step)", checkpoint: step)
        }
    }

    func closeAttempt(_ number: Int, outcome: JobAttemptRecord.Outcome, failure: AttemptFailure?) async {
        guard var a = try? await store.attempt(job: jobID, number: number) else { return }
        a.outcome = outcome
        a.endedAt = Date()
        a.failureKind = failure?.kind.rawValue
        a.failedNode = failure?.node
        a.exitCode = failure?.exit.map { Int($0.code) }
        a.message = failure?.message
        await bestEffort("attempt \(number) closed") { try await store.save(a) }
    }

    func finish(_ status: JobStatus, _ message: String, error: String? = nil) async -> JobRecord {
        guard let job = await job() else { return await c.setStatus(status, message, error: error) ?? placeholder }
        if job.ownsCluster, let cluster = try? await store.cluster(named: job.clusterName), cluster.status.isLive {
            do {
                _ = try await c.ctx.provisioner.down(name: job.clusterName)
                await store.jobEvent("cluster-down", "Cluster \(job.clusterName) terminated.", job: jobID)
            } catch {
                await store.jobEvent("cluster-down-failed", "Cluster \(job.clusterName) could not be terminated: \(error). Run `capstan down \(job.clusterName)`.", job: jobID)
            }
        }
        let final = await c.setStatus(status, message, error: error) ?? job
        c.emit(.finished(final))
        return final
    }

    // MARK: - Checkpoints

    func latestCommitted() async -> Int? { await job()?.latestCheckpoint }

    /// A node found checkpoint `bad.step` damaged while restoring it: records that in the
    /// bucket (every later attempt, and every controller, skips it) and says so.
    func recordCorrupt(_ bad: CorruptCheckpoint) async {
        let message = "Checkpoint step \(bad.step) is corrupt (\(bad.reason)); it is recorded and never restored again. The next attempt resumes from the newest checkpoint that verifies."
        do { try await checkpoints.markCorrupt(bad) } catch {
            await store.jobEvent("checkpoint-corrupt", message + " (Recording it in the bucket failed: \(error))", job: jobID)
            return
        }
        await store.jobEvent("checkpoint-corrupt", message, job: jobID)
        c.logger.warning("\(message)", metadata: ["capstan.job": "\(jobID)"])
        c.emit(.status(.restarting, message))
    }

    /// A state write whose failure must not stop the controller: logged, never silently dropped.
    func bestEffort(_ what: String, _ write: () async throws -> Void) async {
        await c.logger.bestEffort(what, metadata: ["capstan.job": "\(jobID)"], write)
    }

    /// Records checkpoints that appeared in the bucket (and marks those retention deleted).
    func syncCheckpoints() async {
        guard let steps = try? await checkpoints.committedSteps() else { return }
        let present = Set(steps)
        for step in steps where !knownCheckpoints.contains(step) {
            guard let m = try? await checkpoints.verified(step: step) else { continue }
            do {
                try await store.save(CheckpointRecord(jobID: jobID, step: step, attempt: m.attempt, bytes: m.totalBytes, committedAt: m.createdAt))
            } catch {
                // Not known yet: the next pass records it again (the bucket holds it).
                c.logger.error("could not record a checkpoint", metadata: ["capstan.job": "\(jobID)", "step": "\(step)", "error": "\(error)"])
                continue
            }
            knownCheckpoints.insert(step)
            c.ctx.provisioner.faults.hit("controller-checkpoint")
            await bestEffort("latest checkpoint") { _ = try await c.updateJob { j in j.latestCheckpoint = max(j.latestCheckpoint ?? -1, step) } }
            await c.record("checkpoint", "Checkpoint step \(step) committed (\(m.totalBytes) bytes, attempt \(m.attempt)).", notify: .checkpoint, detail: "\(step)", checkpoint: step)
            c.emit(.checkpoint(step: step, bytes: m.totalBytes))
        }
        let records = await (try? store.checkpoints(job: jobID)) ?? []
        for r in records where !r.deleted && !present.contains(r.step) {
            var d = r
            d.deleted = true
            await bestEffort("checkpoint \(d.step) deleted") { try await store.save(d) }
        }
        // The job's latest checkpoint follows its records, even when a controller died between
        // recording a step and updating the job.
        if let newest = records.filter({ present.contains($0.step) }).map(\.step).max(), await (job()?.latestCheckpoint ?? -1) < newest {
            await bestEffort("latest checkpoint") { _ = try await c.updateJob { j in j.latestCheckpoint = max(j.latestCheckpoint ?? -1, newest) } }
        }
    }

    // MARK: - Logs

    func appendHome(node: Int, _ bytes: Data) {
        let path = c.ctx.logFile(job: jobID, node: node)
        try? PrivateFile.createFolder((path as NSString).deletingLastPathComponent)
        AppendFile.append(bytes, to: path)
    }

    /// Copies new bytes of every node log home and reports complete lines as events.
    /// The agents' statuses of this attempt, read from every node concurrently: (rank, status,
    /// whether the agent still runs). A node whose status cannot be read is left out.
    func readStatuses(_ attempt: JobAttemptRecord, nodes: [Instance]) async -> [(Int, AgentStatus, Bool)] {
        let job = jobID
        let pairs: [(Int, Instance, any NodeTransport)] = nodes.enumerated().compactMap { rank, node in
            (try? transport(for: node)).map { (rank, node, $0) }
        }
        return await withTaskGroup(of: (Int, AgentStatus, Bool)?.self) { group in
            for (rank, node, t) in pairs {
                group.addTask {
                    // The controller's poll: it also tells the agent a controller is there (its dead-man switch).
                    guard let s = try? await t.pollAgent(job: job, attempt: attempt.attempt, on: node), s.attempt == attempt.attempt else { return nil }
                    return (rank, s, t.isAgentRunning(s, on: node))
                }
            }
            var out: [(Int, AgentStatus, Bool)] = []
            for await r in group { if let r { out.append(r) } }
            return out
        }
    }

    /// `only`: the ranks to read (those that answered this pass); nil: all. With secrets to
    /// keep out (``AgentSecrets/secrets``), a tail that could be the start of one waits for the
    /// next read (``Redactor/safeCut(_:secrets:)``) and every whole one is redacted; `final`
    /// (the attempt is over) copies what is left as well.
    func pullLogs(_ attempt: JobAttemptRecord, nodes: [Instance], only: Set<Int>? = nil, final: Bool = false) async {
        let limit = 1 << 20
        for (rank, node) in nodes.enumerated() where attempt.nodes.contains(node.id) && only?.contains(rank) != false {
            guard let t = try? transport(for: node) else { continue }
            let key = "\(attempt.attempt)/\(rank)"
            while true {
                let offset = logOffsets[key] ?? 0
                guard let read = try? await t.readLog(job: jobID, attempt: attempt.attempt, on: node, from: offset, limit: limit), !read.isEmpty else { break }
                var data = Data(read)
                if !redactions.isEmpty {
                    // The agent redacted what it wrote already (docs/jobs.md); this is the
                    // second line of defence. All but a tail that could be the start of a
                    // secret (read again next time); all of it when the attempt is over.
                    if !final {
                        let cut = Redactor.safeCut(data, secrets: redactions)
                        if cut == 0 && data.count < limit { break }
                        if cut > 0 { data = data.prefix(cut) }
                    }
                    logOffsets[key] = offset + Int64(data.count)
                    data = Redactor.redact(data, redactions)
                } else {
                    logOffsets[key] = offset + Int64(data.count)
                }
                appendHome(node: rank, data)
                // The offsets right after the copy, before anything that waits (a metrics write
                // to PostgreSQL): a controller killed in between leaves the next one (a replica
                // taking over) to copy those bytes again — seen as repeated lines in the HA test.
                saveOffsets()
                for line in lines[rank, default: LineBuffer()].feed(data) { emitLine(rank, line) }
                if read.count < limit { break }
            }
        }
        await saveMetrics(force: false)
    }

    /// Writes ``logOffsets`` (atomically: a reader never sees half of it).
    func saveOffsets() {
        if let data = try? JSONEncoder().encode(logOffsets) { try? PrivateFile.write(data, to: offsetsFile) }
    }

    /// A node's log line as an event; the leader's metrics lines as typed metrics too.
    func emitLine(_ rank: Int, _ line: String) {
        c.emit(.log(node: rank, line: line))
        if rank == 0, let point = MetricsPoint.parse(line) {
            latestMetrics = line
            c.emit(.metrics(point))
        }
    }

    func drainLogs(_ attempt: JobAttemptRecord, nodes: [Instance], skipping: Set<String> = []) async {
        await pullLogs(attempt, nodes: nodes, only: Set(nodes.indices.filter { !skipping.contains(nodes[$0].id) }), final: true)
        for rank in lines.keys.sorted() {
            if let rest = lines[rank]?.flush() { emitLine(rank, rest) }
        }
        await saveMetrics(force: true)
    }

    /// Keeps each node's newest telemetry sample in the store (docs/telemetry.md), once per
    /// sample. Best effort: a store that refuses it is logged, and the job goes on.
    func saveTelemetry(_ answers: [(Int, AgentStatus, Bool)]) async {
        for (rank, status, _) in answers {
            guard var sample = status.telemetry, telemetrySaved[rank] != sample.sampledAt else { continue }
            // The controller's names for it, whatever the agent wrote.
            sample.job = jobID
            sample.node = rank
            sample.attempt = status.attempt
            telemetrySaved[rank] = sample.sampledAt
            await bestEffort("telemetry") { try await store.saveTelemetry(sample) }
        }
    }

    /// Puts the newest metrics line on the job record (`capstan jobs`), at most every 2 s.
    func saveMetrics(force: Bool) async {
        guard let m = latestMetrics, force || Date().timeIntervalSince(metricsSaved) >= 2 else { return }
        metricsSaved = Date()
        await bestEffort("metrics") { _ = try await c.updateJob { if $0.metrics != m { $0.metrics = m } } }
    }

    // MARK: - Ports

    /// A rendezvous port for an attempt: random in 20000–32767 (a fresh one per attempt, so a
    /// socket of the last attempt in TIME_WAIT never blocks the next), below Linux's ephemeral
    /// range (32768–60999), where any outgoing connection — gloo's own among them — may hold a
    /// port at any moment. When the leader is on this machine the port is checked free on the
    /// wildcard address too, which is where torchrun's TCPStore listens.
    static func pickPort(address: String) -> Int {
        for _ in 0..<50 {
            let port = Int.random(in: 20000..<32768)
            if !address.hasPrefix("127.") || (canBind(address: "0.0.0.0", port: port) && canBind(address: address, port: port)) { return port }
        }
        return 29500
    }

    static func canBind(address: String, port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, address, &addr.sin_addr)
        return withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

/// The store of a run whose bucket could not be opened: it only finishes the job, and every
/// call says why.
struct UnopenedBucket: ObjectStore {
    var location: String { "(unopened)" }
    func fail() -> CapstanError { CapstanError(.internalError, "The job's bucket is not open.") }
    func put(file path: String, key: String, options: PutOptions, progress: TransferProgressHandler?) async throws -> ObjectInfo { throw fail() }
    func get(key: String, to path: String, progress: TransferProgressHandler?) async throws -> ObjectInfo { throw fail() }
    func list(prefix: String) async throws -> [ObjectInfo] { throw fail() }
    func head(key: String) async throws -> ObjectInfo? { throw fail() }
    func delete(key: String) async throws { throw fail() }
}
