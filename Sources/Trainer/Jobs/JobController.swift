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

    public init(
        home: CapstanHome, store: any StateStore, provisioner: Provisioner, search: OfferSearch, transports: [any NodeTransport],
        openBucket: @escaping @Sendable (String) throws -> any ObjectStore,
        bucketAccess: @escaping @Sendable (String) throws -> BucketAccess? = { _ in nil }, logger: Logger
    ) {
        self.home = home
        self.store = store
        self.provisioner = provisioner
        self.search = search
        self.transports = transports
        self.openBucket = openBucket
        self.bucketAccess = bucketAccess
        self.logger = logger
    }

    /// Per-job locks: held by the one controller working on a job.
    public var jobLocks: ClusterLocks { ClusterLocks(folder: home.stateFolder + "/locks/jobs") }
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
/// running agents instead of restarting them. One controller per job: a file lock.
public final class JobController: Sendable {
    public let jobID: String
    let ctx: JobContext
    let onEvent: @Sendable (JobEvent) -> Void

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
        defer { lock.release() }
        guard var job = try await store.job(jobID) else { throw CapstanError(.notFound, "No job '\(jobID)'.", hint: "See `capstan jobs`.") }
        if job.status.isFinished { return job }
        job = try await store.updateJob(jobID) { $0.controllerPID = getpid() }
        let spec = try JobSpec.parse(job.spec, source: "job \(jobID)")
        let settings = (try? PluginWire.decoder.decode(JobSettings.self, from: Data(job.settings.utf8))) ?? JobSettings()
        let bucket: any ObjectStore
        let secrets: AgentSecrets
        do {
            bucket = try ctx.openBucket(job.storage)
            secrets = AgentSecrets(bucket: try ctx.bucketAccess(job.storage))
        } catch where job.attempt == 0 {
            // A job that has not started, without credentials or with a bad endpoint: no agent
            // could work either. (A running job is left to its agents: this controller may just
            // lack the environment of the one that launched it.)
            let message = "Cannot open the job's bucket \(job.storage): \((error as? CapstanError)?.description ?? "\(error)")"
            return await Run(controller: self, spec: spec, settings: settings, bucket: nil, secrets: AgentSecrets()).finish(.failed, message, error: message)
        }
        let run = Run(controller: self, spec: spec, settings: settings, bucket: bucket, secrets: secrets)
        return await run.drive()
    }

    func emit(_ e: JobEvent) { onEvent(e) }

    /// Sets the job's status (and records an event) unless a cancel came in meanwhile.
    @discardableResult
    func setStatus(_ status: JobStatus, _ message: String, error: String? = nil) async -> JobRecord? {
        let job = try? await store.updateJob(jobID) { j in
            if j.status == .cancelling && !status.isFinished { return }
            j.status = status
            if let error { j.lastError = error }
            if status == .running, j.startedAt == nil { j.startedAt = Date() }
            if status.isFinished { j.finishedAt = Date() }
        }
        await store.jobEvent(status.rawValue, message, job: jobID)
        emit(.status(job?.status ?? status, message))
        logger.notice("\(message)", metadata: ["capstan.job": "\(jobID)", "status": "\(status.rawValue)"])
        return job
    }
}

/// One controller's pass over a job (the state a control loop keeps in memory).
final class Run: @unchecked Sendable {
    let c: JobController
    let spec: JobSpec
    let settings: JobSettings
    let checkpoints: CheckpointStore
    /// Handed to every agent on its stdin.
    let secrets: AgentSecrets
    /// Bytes of each node log already copied home, by "attempt/node".
    var logOffsets: [String: Int64] = [:]
    /// Unfinished lines of each node's log, for the line events.
    var lines: [Int: LineBuffer] = [:]
    /// The leader's newest metrics line, and when the job record last got one.
    var latestMetrics: String?
    var metricsSaved = Date.distantPast
    var knownCheckpoints: Set<Int> = []

    /// `bucket` nil: a run that can only finish (the bucket could not be opened).
    init(controller: JobController, spec: JobSpec, settings: JobSettings, bucket: (any ObjectStore)?, secrets: AgentSecrets) {
        self.c = controller
        self.spec = spec
        self.settings = settings
        self.secrets = secrets
        self.checkpoints = CheckpointStore(store: bucket ?? UnopenedBucket(), prefix: "checkpoints")
        self.logOffsets = (try? JSONDecoder().decode([String: Int64].self, from: Data(contentsOf: URL(fileURLWithPath: offsetsFile)))) ?? [:]
    }

    var store: any StateStore { c.ctx.store }
    var jobID: String { c.jobID }
    var offsetsFile: String { c.ctx.jobFolder(c.jobID) + "/logs/offsets.json" }
    func job() async -> JobRecord? { try? await store.job(jobID) }

    // MARK: - The job's life

    func drive() async -> JobRecord {
        knownCheckpoints = Set(((try? await store.checkpoints(job: jobID)) ?? []).map(\.step))
        while true {
            guard let job = await job() else { return JobRecord(id: jobID, name: "?", spec: "", specFolder: "", settings: "", clusterName: "", ownsCluster: false, storage: "") }
            if job.status.isFinished { return job }
            if job.status == .cancelling {
                if let a = try? await store.attempt(job: jobID, number: job.attempt), let nodes = try? await currentNodes(job) {
                    await stopGang(a, nodes: nodes)
                    await closeAttempt(a.attempt, outcome: .stopped, failure: nil)
                }
                return await finish(.cancelled, "Cancelled.")
            }
            do {
                let nodes = try await ensureCluster(job)
                let attempt: JobAttemptRecord
                do {
                    attempt = try await ensureAttempt(job, nodes: nodes)
                } catch let lost as NodeUnreachable {
                    // A node that cannot be reached to start its part is a lost node, like one
                    // that stops beating: stop the others, replace it, try again.
                    let number = await self.job()?.attempt ?? job.attempt
                    guard let started = try await store.attempt(job: jobID, number: number) else { throw lost.error }
                    let failure = AttemptFailure(kind: .heartbeat, node: lost.rank, exit: nil, message: "node \(lost.rank) (\(lost.node)) could not be reached to start attempt \(number): \(lost.error.message)")
                    if let finished = try await afterFailure(failure, of: started, nodes: nodes, job: job) { return finished }
                    continue
                }
                let result = await monitor(attempt, nodes: nodes)
                switch result {
                case .succeeded:
                    await closeAttempt(attempt.attempt, outcome: .succeeded, failure: nil)
                    await syncCheckpoints()
                    return await finish(.succeeded, "Succeeded in attempt \(attempt.attempt).")
                case .cancelled:
                    continue
                case .failed(let failure):
                    if let finished = try await afterFailure(failure, of: attempt, nodes: nodes, job: job) { return finished }
                }
            } catch {
                let message = (error as? CapstanError)?.description ?? "\(error)"
                return await finish(.failed, "The job cannot go on: \(message)", error: message)
            }
        }
    }

    enum Result { case succeeded, failed(AttemptFailure), cancelled }

    /// A node that could not be reached to start its part of an attempt.
    struct NodeUnreachable: Error {
        var rank: Int
        var node: String
        var error: CapstanError
    }

    /// After `failure` ends `attempt`: stops the gang (a lost node is neither waited for nor
    /// forced), closes the attempt, then replaces lost capacity or gives up, as
    /// ``RestartPolicy`` decides. Returns the finished job when it gives up.
    func afterFailure(_ failure: AttemptFailure, of attempt: JobAttemptRecord, nodes: [Instance], job: JobRecord) async throws -> JobRecord? {
        c.emit(.failure(attempt: attempt.attempt, failure))
        await c.setStatus(.restarting, "Attempt \(attempt.attempt) failed: \(failure). Stopping the gang.")
        let silent = failure.kind == .heartbeat ? failure.node.flatMap { nodes.indices.contains($0) ? [nodes[$0].id] : nil } ?? [] : []
        await stopGang(attempt, nodes: nodes, silent: Set(silent))
        await drainLogs(attempt, nodes: nodes, skipping: Set(silent))
        await closeAttempt(attempt.attempt, outcome: .failed, failure: failure)
        await syncCheckpoints()
        let progressed = await (latestCommitted() ?? -1) > (attempt.resumeStep ?? -1)
        let previous = await (try? store.attempt(job: jobID, number: attempt.attempt - 1)).flatMap { a -> AttemptFailure? in
            guard a.outcome == .failed, let kind = a.failureKind.flatMap(AttemptFailure.Kind.init(rawValue:)) else { return nil }
            return AttemptFailure(kind: kind, node: a.failedNode, exit: a.exitCode.map { .fromCode(Int32($0)) }, message: a.message ?? "")
        }
        let current = await self.job() ?? job
        switch RestartPolicy.decide(failure: failure, previous: previous, progressed: progressed, restartsUsed: current.restarts, maxRestarts: spec.maxRestarts) {
        case .giveUp(let why):
            return await finish(.failed, why, error: why)
        case .restart(let lost):
            if failure.countsAsRestart { _ = try? await store.updateJob(jobID) { $0.restarts += 1 } }
            for node in lost {
                // A move brought a whole new gang: nothing else is left to replace.
                if try await replace(node: node, of: job, "Replacing node \(node)'s capacity.") == .moved { break }
            }
            return nil
        }
    }

    /// The cluster's live nodes in rank order, provisioning the cluster first when the job owns it.
    func ensureCluster(_ job: JobRecord) async throws -> [Instance] {
        var cluster = try await store.cluster(named: job.clusterName)
        if cluster?.status == .provisioning {
            // A controller died while provisioning: let reconcile decide what it left.
            _ = await c.ctx.provisioner.reconcile()
            cluster = try await store.cluster(named: job.clusterName)
        }
        if cluster?.status != .running {
            guard job.ownsCluster else {
                throw CapstanError(.notFound, "Cluster '\(job.clusterName)' is not running.", hint: "Start it with `capstan up`, or launch without --cluster.")
            }
            await c.setStatus(.provisioning, "Provisioning cluster \(job.clusterName): \(spec.resources.nodes) node(s)\(spec.resources.gpu.map { " of \($0)" } ?? "").")
            let report = try await c.ctx.provisioner.up(name: job.clusterName, request: spec.resources, search: c.ctx.search)
            guard report.cluster.status == .running else {
                throw CapstanError(.capacity, "No capacity for the job: \(report.noOfferReason ?? report.cluster.lastError ?? "every offer failed").", hint: "Try other GPUs, regions or spot; `capstan offers --explain` shows why offers were filtered.")
            }
        }
        var nodes = try await currentNodes(job)
        // A node lost while no controller was watching (or a replacement that did not finish).
        let want = cluster?.nodes ?? spec.resources.nodes
        for index in 0..<want where !nodes.contains(where: { $0.nodeIndex == index }) {
            let how = try await replace(node: index, of: job, "Node \(index) is missing; replacing it.")
            nodes = try await currentNodes(job)
            if how == .moved { break }
        }
        return nodes
    }

    enum Replacement { case replaced, moved }

    /// Replaces node `node`'s capacity (``Provisioner/replaceNode(cluster:node:)``) and says so.
    /// When the cluster's own offer has no capacity left for it (or its region is gone), the
    /// whole gang moves to the next offer that fits, on any provider
    /// (``Provisioner/move(cluster:search:)``), and the job resumes there from the bucket.
    @discardableResult
    func replace(node: Int, of job: JobRecord, _ why: String) async throws -> Replacement {
        await c.setStatus(.restarting, why)
        do {
            let fresh = try await c.ctx.provisioner.replaceNode(cluster: job.clusterName, node: node)
            c.emit(.nodeReplaced(node: node, instance: fresh.id))
            await store.jobEvent("replaced", "Node \(node) is now \(fresh.id).", job: jobID)
            return .replaced
        } catch let e as CapstanError where [.capacity, .quota, .notFound, .timeout].contains(e.code) && e.provider != nil {
            await c.setStatus(.restarting, "Node \(node) cannot be replaced on the cluster's offer (\(e.message)); moving the whole gang to the next offer that fits.")
            let report = try await c.ctx.provisioner.move(cluster: job.clusterName, search: c.ctx.search)
            let to = report.cluster.offer.map { "\($0.provider) \($0.instanceType) in \($0.zone ?? $0.region)" } ?? "?"
            await store.jobEvent("moved", "The gang moved to \(to) (\(report.instances.map(\.id).joined(separator: ", "))); the job resumes there from the bucket.", job: jobID)
            return .moved
        }
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
    func ensureAttempt(_ job: JobRecord, nodes: [Instance]) async throws -> JobAttemptRecord {
        if let a = try await store.attempt(job: jobID, number: job.attempt) {
            switch a.outcome {
            case .running where a.nodes == nodes.map(\.id):
                await c.setStatus(.running, "Following attempt \(a.attempt) on \(nodes.count) node(s).")
                return a
            case .running, .starting:
                // Started by a controller that died half-way, or on nodes since replaced.
                await stopGang(a, nodes: nodes)
                await closeAttempt(a.attempt, outcome: .stopped, failure: nil)
            default: break
            }
        }
        return try await startAttempt(job, nodes: nodes)
    }

    func startAttempt(_ job: JobRecord, nodes: [Instance]) async throws -> JobAttemptRecord {
        let number = job.attempt + 1
        let resume = try await checkpoints.latestVerified()
        let chosen = NodeAddresses(nodes)
        let masterAddress = chosen.master ?? "127.0.0.1"
        let port = Self.pickPort(address: masterAddress)
        var record = JobAttemptRecord(jobID: jobID, attempt: number, nodes: nodes.map(\.id), masterAddress: masterAddress, masterPort: port, resumeStep: resume?.step)
        try await store.save(record)
        _ = try await store.updateJob(jobID) { $0.attempt = number }
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
            }
            var config = AgentConfig(
                job: jobID, attempt: number, node: rank, nodes: nodes.count, setup: spec.setup, run: spec.run, environment: env,
                workdir: l.workdir, stateDir: l.stateDir, checkpointDir: l.checkpointDir, outputDir: l.outputDir,
                resumeDir: resume == nil ? nil : l.resumeDir, resumeStep: resume?.step, bucket: job.storage, keep: spec.checkpoint.keep)
            config.heartbeatSeconds = settings.heartbeatSeconds
            config.checkpointPollSeconds = settings.checkpointPollSeconds
            config.stopGraceSeconds = settings.stopGraceSeconds
            config.commitWaitSeconds = settings.commitWaitSeconds
            config.pidsFile = l.pidsFile
            config.files = files
            config.python = spec.python
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
        let msg = "Attempt \(number) started on \(nodes.count) node(s)" + (resume.map { ", resuming from checkpoint step \($0.step)" } ?? "") + "; MASTER_ADDR=\(masterAddress):\(port) (\(chosen.reason))."
        await c.setStatus(.running, msg)
        c.emit(.attemptStarted(attempt: number, resumeStep: resume?.step, nodes: nodes.map(\.id)))
        return record
    }

    // MARK: - Following an attempt

    func monitor(_ attempt: JobAttemptRecord, nodes: [Instance]) async -> Result {
        let started = Date()
        var beats: [Int: (count: Int, seen: Date)] = [:]
        /// Status reads in a row that got no answer, by rank.
        var failedReads: [Int: Int] = [:]
        var firstSuccess: Date?
        var lastDescribe = Date.distantPast
        var lastCheckpointSync = Date.distantPast
        while true {
            if await job()?.status == .cancelling { return .cancelled }
            var statuses: [Int: AgentStatus] = [:]
            var deadAgents: [Int] = []
            // Every node at once: an unreachable node's read (bounded by its transport) must
            // not make the others look silent.
            let readsBegan = Date()
            let answers = await readStatuses(attempt, nodes: nodes)
            for rank in nodes.indices {
                failedReads[rank] = answers.contains { $0.0 == rank } ? 0 : failedReads[rank, default: 0] + 1
            }
            for (rank, s, running) in answers {
                statuses[rank] = s
                if beats[rank]?.count != s.heartbeat { beats[rank] = (s.heartbeat, Date()) }
                // Died without its final word (where the transport can see its process).
                if !running && s.phase != .exited { deadAgents.append(rank) }
            }
            await pullLogs(attempt, nodes: nodes, only: Set(statuses.keys))
            let now = Date()
            if now.timeIntervalSince(lastCheckpointSync) >= 2 {
                lastCheckpointSync = now
                await syncCheckpoints()
            }
            // A lost node is the cause, and the other nodes' failures (a broken collective) its
            // symptoms: look for one before blaming a command.
            if let rank = deadAgents.first {
                if let gone = await goneFailure(nodes) { return .failed(gone) }
                return .failed(AttemptFailure(kind: .heartbeat, node: rank, message: "the agent on node \(rank) (\(nodes[rank].id)) died"))
            }
            // Failures, earliest on the nodes' clocks first.
            let failed = statuses.filter { $0.value.phase == .exited && !$0.value.succeeded }.sorted { ($0.value.endedAt ?? .distantFuture) < ($1.value.endedAt ?? .distantFuture) }
            if let (rank, s) = failed.first {
                if let gone = await goneFailure(nodes) { return .failed(gone) }
                await pullLogs(attempt, nodes: nodes, only: [rank])
                var failure = Self.failure(of: s, node: rank)
                if let bad = s.corruptCheckpoint { await recordCorrupt(bad) }
                if failure.kind == .command, let line = Self.errorLine(inLog: c.ctx.logFile(job: jobID, node: rank)) {
                    failure.message += ": \(line)"
                }
                return .failed(failure)
            }
            var silent: [(rank: Int, seconds: Double)] = []
            for rank in 0..<nodes.count where statuses[rank]?.phase != .exited {
                if let b = beats[rank] {
                    // A node that answered this pass is measured up to when the pass began to
                    // read: waiting on another node's read never counts against it.
                    // One failed read is a glitch (counted like an answer, to when the pass began);
                    // from the second in a row the node counts as silent up to now.
                    let until = failedReads[rank, default: 0] >= 2 ? now : readsBegan
                    let quiet = until.timeIntervalSince(b.seen)
                    if quiet > settings.heartbeatTimeoutSeconds { silent.append((rank, quiet)) }
                } else if now.timeIntervalSince(started) > settings.agentStartTimeoutSeconds {
                    // What the agent printed before it could write a status is the reason: then
                    // the node is fine (it ran the agent), and the agent could not start.
                    var said = ""
                    if let t = try? transport(for: nodes[rank]) { said = await t.agentOutput(job: jobID, attempt: attempt.attempt, on: nodes[rank]) }
                    let message = "the agent on node \(rank) (\(nodes[rank].id)) did not start within \(Int(settings.agentStartTimeoutSeconds)) s" + (said.isEmpty ? "" : "; it said: \(secrets.redact(String(said.suffix(500))))")
                    return .failed(AttemptFailure(kind: said.isEmpty ? .heartbeat : .startup, node: rank, message: message))
                }
            }
            // Several silent at once (one node's loss can stall the others' reads or agents):
            // the one silent longest is the cause; then the one whose reads fail.
            if let lost = silent.max(by: { ($0.seconds, failedReads[$0.rank, default: 0]) < ($1.seconds, failedReads[$1.rank, default: 0]) }) {
                return .failed(AttemptFailure(kind: .heartbeat, node: lost.rank, message: "node \(lost.rank) (\(nodes[lost.rank].id)) sent no heartbeat for \(Int(lost.seconds)) s"))
            }
            if now.timeIntervalSince(lastDescribe) >= settings.describeSeconds {
                lastDescribe = now
                if let gone = await goneFailure(nodes) { return .failed(gone) }
            }
            let done = statuses.filter { $0.value.succeeded }.count
            if done == nodes.count {
                await pullLogs(attempt, nodes: nodes)
                return .succeeded
            }
            if done > 0 {
                firstSuccess = firstSuccess ?? now
                if now.timeIntervalSince(firstSuccess!) > settings.exitGraceSeconds, let hung = (0..<nodes.count).first(where: { statuses[$0]?.succeeded != true }) {
                    return .failed(AttemptFailure(kind: .hungAtExit, node: hung, message: "node \(hung) had not exited \(Int(settings.exitGraceSeconds)) s after the others finished"))
                }
            }
            try? await Task.sleep(for: .seconds(settings.pollSeconds))
        }
    }

    static func failure(of s: AgentStatus, node: Int) -> AttemptFailure {
        if let bad = s.corruptCheckpoint {
            return AttemptFailure(kind: .corruptCheckpoint, node: node, message: "node \(node) could not restore it: \(bad)")
        }
        if s.endedIn == AgentStatus.startPhase, let f = s.failure {
            return AttemptFailure(kind: .startup, node: node, message: "the agent on node \(node) could not start: \(f)")
        }
        if let f = s.failure, s.exit == nil || s.exit?.succeeded == true {
            return AttemptFailure(kind: .agent, node: node, exit: s.exit, message: f)
        }
        if let sig = s.workerSignal {
            return AttemptFailure(kind: .signal, node: node, exit: s.exit, message: "a worker of the command on node \(node) was killed by signal \(sig) (the command then ended with \(s.exit.map { "\($0)" } ?? "?"))")
        }
        switch s.exit {
        case .signaled(let sig)?:
            return AttemptFailure(kind: .signal, node: node, exit: s.exit, message: "the command on node \(node) was \(ExitStatus.signaled(sig))")
        case .exited(let code)?:
            // 128+N from a shell means the child died of signal N: not the code's own verdict.
            if code > 128 && code <= 128 + 64 {
                return AttemptFailure(kind: .signal, node: node, exit: s.exit, message: "the command on node \(node) ended with \(code) (signal \(code - 128))")
            }
            return AttemptFailure(kind: .command, node: node, exit: s.exit, message: "\(s.endedIn == "setup" ? "setup" : "the command") on node \(node) ended with exit code \(code)")
        case nil:
            return AttemptFailure(kind: .agent, node: node, message: s.failure ?? "the agent on node \(node) ended without a result")
        }
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

    /// The failure of the first node whose instance the provider reports gone, if any.
    func goneFailure(_ nodes: [Instance]) async -> AttemptFailure? {
        for (providerName, group) in Dictionary(grouping: nodes.enumerated(), by: { $0.element.provider }) {
            guard let p = c.ctx.provisioner.providers.first(where: { $0.name == providerName }) else { continue }
            guard let seen = try? await p.describe(InstanceQuery(ids: group.map(\.element.id), includeTerminated: true)) else { continue }
            for (rank, node) in group {
                let now = seen.first { $0.id == node.id }
                if let now, !(now.state.isGone || now.state == .failed || now.state == .stopped) { continue }
                let state = now?.state.rawValue ?? "gone (the provider no longer lists it)"
                return AttemptFailure(kind: .instanceGone, node: rank, message: "instance \(node.id) is \(state)")
            }
        }
        return nil
    }

    // MARK: - Stopping

    /// Stops every node's agent (gracefully: the agents finish their uploads), then kills what
    /// is left once the grace periods are over.
    /// Stops every agent of `attempt` (all nodes at once) and waits for them to finish their
    /// uploads; `silent` nodes (lost heartbeat: likely unreachable) get the stop but are not
    /// waited for — their capacity is replaced anyway.
    func stopGang(_ attempt: JobAttemptRecord, nodes: [Instance], silent: Set<String> = []) async {
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
        let deadline = Date().addingTimeInterval(settings.stopGraceSeconds + settings.commitWaitSeconds + 5)
        while Date() < deadline, !waitFor.isEmpty {
            if await readStatuses(attempt, nodes: waitFor).allSatisfy({ !$0.2 }) { break }
            try? await Task.sleep(for: .milliseconds(200))
        }
        await stopAll(force: true)
        // Steps whose parts all arrived but whose leader did not commit them (it was lost, or
        // stopped before the last part came): the data is complete, so they are committed.
        for step in (try? await checkpoints.commitComplete(job: jobID, nodes: attempt.nodes.count)) ?? [] {
            await store.jobEvent("checkpoint", "Checkpoint step \(step) had every part but no manifest; committed it.", job: jobID)
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
        try? await store.save(a)
    }

    func finish(_ status: JobStatus, _ message: String, error: String? = nil) async -> JobRecord {
        guard let job = await job() else { return await c.setStatus(status, message, error: error)! }
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

    /// Records checkpoints that appeared in the bucket (and marks those retention deleted).
    func syncCheckpoints() async {
        guard let steps = try? await checkpoints.committedSteps() else { return }
        let present = Set(steps)
        for step in steps where !knownCheckpoints.contains(step) {
            guard let m = try? await checkpoints.verified(step: step) else { continue }
            knownCheckpoints.insert(step)
            try? await store.save(CheckpointRecord(jobID: jobID, step: step, attempt: m.attempt, bytes: m.totalBytes, committedAt: m.createdAt))
            c.ctx.provisioner.faults.hit("controller-checkpoint")
            _ = try? await store.updateJob(jobID) { j in j.latestCheckpoint = max(j.latestCheckpoint ?? -1, step) }
            await store.jobEvent("checkpoint", "Checkpoint step \(step) committed (\(m.totalBytes) bytes, attempt \(m.attempt)).", job: jobID)
            c.emit(.checkpoint(step: step, bytes: m.totalBytes))
        }
        let records = await (try? store.checkpoints(job: jobID)) ?? []
        for r in records where !r.deleted && !present.contains(r.step) {
            var d = r
            d.deleted = true
            try? await store.save(d)
        }
        // The job's latest checkpoint follows its records, even when a controller died between
        // recording a step and updating the job.
        if let newest = records.filter({ present.contains($0.step) }).map(\.step).max(), await (job()?.latestCheckpoint ?? -1) < newest {
            _ = try? await store.updateJob(jobID) { j in j.latestCheckpoint = max(j.latestCheckpoint ?? -1, newest) }
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
                    guard let s = try? await t.agentStatus(job: job, attempt: attempt.attempt, on: node), s.attempt == attempt.attempt else { return nil }
                    return (rank, s, t.isAgentRunning(s, on: node))
                }
            }
            var out: [(Int, AgentStatus, Bool)] = []
            for await r in group { if let r { out.append(r) } }
            return out
        }
    }

    /// `only`: the ranks to read (those that answered this pass); nil: all.
    func pullLogs(_ attempt: JobAttemptRecord, nodes: [Instance], only: Set<Int>? = nil) async {
        var changed = false
        for (rank, node) in nodes.enumerated() where attempt.nodes.contains(node.id) && only?.contains(rank) != false {
            guard let t = try? transport(for: node) else { continue }
            let key = "\(attempt.attempt)/\(rank)"
            while true {
                let offset = logOffsets[key] ?? 0
                guard let data = try? await t.readLog(job: jobID, attempt: attempt.attempt, on: node, from: offset, limit: 1 << 20), !data.isEmpty else { break }
                appendHome(node: rank, data)
                logOffsets[key] = offset + Int64(data.count)
                changed = true
                for line in lines[rank, default: LineBuffer()].feed(data) {
                    if rank == 0, MetricsPoint.parse(line) != nil { latestMetrics = line }
                    c.emit(.log(node: rank, line: line))
                }
                if data.count < 1 << 20 { break }
            }
        }
        await saveMetrics(force: false)
        if changed, let data = try? JSONEncoder().encode(logOffsets) {
            try? PrivateFile.write(data, to: offsetsFile)
        }
    }

    func drainLogs(_ attempt: JobAttemptRecord, nodes: [Instance], skipping: Set<String> = []) async {
        await pullLogs(attempt, nodes: nodes, only: Set(nodes.indices.filter { !skipping.contains(nodes[$0].id) }))
        for rank in lines.keys.sorted() {
            if let rest = lines[rank]?.flush() {
                if rank == 0, MetricsPoint.parse(rest) != nil { latestMetrics = rest }
                c.emit(.log(node: rank, line: rest))
            }
        }
        await saveMetrics(force: true)
    }

    /// Puts the newest metrics line on the job record (`capstan jobs`), at most every 2 s.
    func saveMetrics(force: Bool) async {
        guard let m = latestMetrics, force || Date().timeIntervalSince(metricsSaved) >= 2 else { return }
        metricsSaved = Date()
        _ = try? await store.updateJob(jobID) { if $0.metrics != m { $0.metrics = m } }
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
