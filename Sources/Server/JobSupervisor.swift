public import CapstanCore
public import CapstanTrainer
public import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// Owns the controllers of every unfinished job in the state store: every `period` it looks
/// for jobs that no controller holds (the job lock is free: a new job, a job whose `capstan`
/// died, a job of a replica that was killed) and runs their controllers in this process. A
/// job lock is taken by exactly one controller anywhere, so several replicas sweeping the
/// same store never run one job twice; each adoption gets a larger fencing token.
///
/// On graceful shutdown (SIGTERM) it stops its controllers, which leave their jobs as the
/// state says (agents go on running); the next replica's sweep or this one's restart adopts them.
public final class JobSupervisor: Service, Sendable {
    public let jobs: JobService
    public let period: Duration
    let logger: Logger
    let running = Mutex<[String: Task<Void, Never>]>([:])
    /// How many controllers this replica has started (for tests and the health page).
    let adoptions = Atomic<Int>(0)
    /// Jobs whose controller failed to run here: not tried again before `next` (doubling from
    /// 2 s to 5 min), so a job this replica cannot control (a bucket it cannot open, a spec it
    /// cannot read) is not retried every sweep forever.
    let backoff = Mutex<[String: (failures: Int, next: ContinuousClock.Instant)]>([:])
    /// Set when shutdown begins: no new controller starts after it.
    let stopping = Atomic<Bool>(false)
    /// What each controller reports (the job's id, the event): `/metrics` reads checkpoint durations.
    let onEvent: @Sendable (String, JobEvent) -> Void

    public init(jobs: JobService, period: Duration = .seconds(2), logger: Logger, onEvent: @escaping @Sendable (String, JobEvent) -> Void = { _, _ in }) {
        self.onEvent = onEvent
        self.jobs = jobs
        self.period = period
        self.logger = logger
    }

    var store: any StateStore { jobs.context.store }

    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.sweep()
                try await Task.sleep(for: self.period)
            }
        }
        await stopAll()
    }

    /// Jobs whose controller runs in this process now.
    public var controlled: [String] { running.withLock { Array($0.keys).sorted() } }

    /// How long a job no controller has taken yet is left to the process that wrote it (a
    /// replica's launch route, a `capstan launch`), which starts its controller right after
    /// writing it: a sweep of another replica in between would take it from its launcher.
    public static let launchGrace: TimeInterval = 10

    /// Adopts every unfinished job no controller holds (one never controlled, once it is older
    /// than ``launchGrace``).
    public func sweep() async {
        let unfinished: [JobRecord]
        do { unfinished = try await store.unfinishedJobs() } catch {
            logger.warning("cannot list unfinished jobs", metadata: ["error": "\(error)"])
            return
        }
        let now = Date()
        for job in unfinished where job.controllerHolder != nil || now.timeIntervalSince(job.createdAt) >= Self.launchGrace {
            await adopt(job.id)
        }
    }

    /// Starts a controller for `id` in this process unless one runs here or anywhere else.
    public func adopt(_ id: String) async {
        if stopping.load(ordering: .relaxed) || running.withLock({ $0[id] != nil }) { return }
        if let wait = backoff.withLock({ $0[id] }), ContinuousClock.now < wait.next { return }
        if await jobs.context.jobLocks.isHeld(id) { return }
        running.withLock { tasks in
            guard tasks[id] == nil, !stopping.load(ordering: .relaxed) else { return }
            tasks[id] = Task { [self] in
                defer { _ = running.withLock { $0.removeValue(forKey: id) } }
                do {
                    let final = try await JobController(jobID: id, context: jobs.context, onEvent: { [onEvent] in onEvent(id, $0) }).run()
                    _ = backoff.withLock { $0.removeValue(forKey: id) }
                    if final.status.isFinished {
                        logger.info("job finished", metadata: ["capstan.job": "\(id)", "status": "\(final.status.rawValue)"])
                    } else {
                        logger.info("controller stopped; the job goes on", metadata: ["capstan.job": "\(id)", "status": "\(final.status.rawValue)"])
                    }
                } catch let e as CapstanError where e.code == .invalidRequest {
                    // Another replica (or a `capstan` on this machine) won the job's lock.
                    logger.debug("job is controlled elsewhere", metadata: ["capstan.job": "\(id)", "why": "\(e.message)"])
                } catch {
                    let delay = backoff.withLock { b -> Duration in
                        let failures = (b[id]?.failures ?? 0) + 1
                        let delay = Duration.seconds(min(300, 2 << min(failures - 1, 8)))
                        b[id] = (failures, ContinuousClock.now + delay)
                        return delay
                    }
                    logger.error("controller failed; retrying later", metadata: ["capstan.job": "\(id)", "error": "\(error)", "retry_in": "\(delay)"])
                }
            }
            adoptions.add(1, ordering: .relaxed)
            logger.info("controlling job", metadata: ["capstan.job": "\(id)"])
        }
    }

    /// Stops every controller of this process and waits for them to return, at most
    /// `deadline` (a controller inside a long transfer may not notice at once; its lock lapses
    /// or is freed with the process, and another controller picks the job up).
    public func stopAll(deadline: Duration = .seconds(5)) async {
        stopping.store(true, ordering: .relaxed)
        let tasks = running.withLock { Array($0.values) }
        for t in tasks { t.cancel() }
        _ = try? await withDeadline(deadline) {
            for t in tasks { await t.value }
        }
    }
}

/// The clusters' side of the control plane, every `period`: reconcile the state with the
/// providers (one replica at a time), take down clusters whose owning job has ended but whose
/// termination did not happen (its controller died first, or the call failed), and autostop
/// clusters idle past their `idleMinutes` (``Provisioner/stopIdleClusters(now:)``).
public final class ClusterKeeper: Service, Sendable {
    public let provisioner: Provisioner
    public let period: Duration
    let logger: Logger
    /// What time it is, for idleness.
    let clock: @Sendable () -> Date
    /// Extra work each pass (for embedders).
    let extra: @Sendable (Provisioner, Date) async -> Void

    public init(provisioner: Provisioner, period: Duration = .seconds(30), logger: Logger, clock: @escaping @Sendable () -> Date = { Date() }, extra: @escaping @Sendable (Provisioner, Date) async -> Void = { _, _ in }) {
        self.provisioner = provisioner
        self.period = period
        self.logger = logger
        self.clock = clock
        self.extra = extra
    }

    /// The lock one replica holds while it reconciles (not a valid cluster name).
    static let lockName = "_control-plane-reconcile"

    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.pass(now: self.clock())
                try await Task.sleep(for: self.period)
            }
        }
    }

    /// One pass: reconcile, finish job-owned clusters whose job ended, the extra work.
    public func pass(now: Date = Date()) async {
        guard let lock = try? await provisioner.locks.acquire(Self.lockName) else { return }
        defer { lock.release() }
        let report = await provisioner.reconcile()
        if report.didSomething { logger.notice("reconciled", metadata: ["terminated": "\(report.terminated.count)", "recovered": "\(report.recoveredClusters.count)"]) }
        await downOrphanedJobClusters()
        let stopped = await provisioner.stopIdleClusters(now: now)
        if !stopped.isEmpty { logger.notice("autostopped idle clusters", metadata: ["clusters": "\(stopped.joined(separator: ", "))"]) }
        await extra(provisioner, now)
    }

    /// A job that owns its cluster terminates it when it ends; one whose controller died in
    /// between (or whose `down` failed) left it running. Those are taken down here.
    func downOrphanedJobClusters() async {
        guard let live = try? await provisioner.store.clusters(includeFinished: false) else { return }
        for c in live where c.status == .running {
            guard let job = try? await provisioner.store.job(c.name), job.clusterName == c.name, job.ownsCluster, job.status.isFinished else { continue }
            do {
                _ = try await provisioner.down(name: c.name)
                await provisioner.store.jobEvent("cluster-down", "Cluster \(c.name) terminated by the control plane (the job had ended with it still running).", job: job.id, cluster: c.id)
                logger.notice("terminated a finished job's cluster", metadata: ["capstan.cluster": "\(c.name)", "capstan.job": "\(job.id)"])
            } catch {
                logger.warning("cannot terminate a finished job's cluster", metadata: ["capstan.cluster": "\(c.name)", "error": "\(error)"])
            }
        }
    }
}
