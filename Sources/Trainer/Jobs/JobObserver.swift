public import CapstanCore
public import CapstanRuntime
import Foundation

extension JobEvent {
    /// A job's ``StateEvent`` (as the job controller records it) as the event the controller
    /// emitted alongside, if it emitted one: a status change (with its message), a committed
    /// checkpoint, a replaced node. Others (`submitted`, `controller`, …) are nil.
    public init?(_ event: StateEvent) {
        if let status = JobStatus(rawValue: event.kind) { self = .status(status, event.message); return }
        switch event.kind {
        case "checkpoint-corrupt":
            // The controller goes back to an older checkpoint: said as a restart.
            self = .status(.restarting, event.message)
        case "checkpoint":
            // "Checkpoint step 20 committed (1234 bytes, attempt 1)."
            let words = event.message.split(separator: " ")
            guard words.count >= 5, words[0] == "Checkpoint", words[1] == "step", let step = Int(words[2]), words[3] == "committed",
                  words[4].hasPrefix("("), let bytes = Int64(words[4].dropFirst()) else { return nil }
            self = .checkpoint(step: step, bytes: bytes)
        case "replaced":
            // "Node 1 is now local-abc123."
            let words = event.message.split(separator: " ")
            guard words.count == 5, words[0] == "Node", let node = Int(words[1]), words[2] == "is", words[3] == "now" else { return nil }
            var instance = String(words[4])
            if instance.hasSuffix(".") { instance.removeLast() }
            self = .nodeReplaced(node: node, instance: instance)
        default:
            return nil
        }
    }
}

/// Follows a job from outside its controller, read-only: its status changes, checkpoints and
/// node replacements from the state store, its cluster's provisioning from the cluster's
/// events, its nodes' log lines from the logs the controller copies into the home, and the
/// leader's metrics lines as typed ``JobEvent/metrics(_:)``.
///
/// It never takes a job lock, starts a controller or writes anything: any number of observers
/// (in any process with the same home or state) may follow a job while one controller runs it.
/// A job whose controller died stays as it is until something re-attaches one
/// (``JobService/ensureController(_:)``, `capstan jobs`); the observer just goes on reading.
/// Log lines need the home's `jobs/` folder, so an observer on another machine (a shared
/// PostgreSQL state) sees the events and provisioning but no lines.
public struct JobObserver: Sendable {
    public let store: any StateStore
    public let home: CapstanHome
    /// How often the store and the logs are read.
    public var interval: Duration

    public init(store: any StateStore, home: CapstanHome, interval: Duration = .milliseconds(300)) {
        self.store = store
        self.home = home
        self.interval = interval
    }

    public init(context: JobContext, interval: Duration = .milliseconds(300)) {
        self.init(store: context.store, home: context.home, interval: interval)
    }

    /// Node `node`'s log of job `id` in the home (every attempt's lines, in order).
    public func logFile(job id: String, node: Int) -> String { home.path("jobs/\(id)/logs/node-\(node).log") }

    /// The job's events from its start: everything recorded so far first, then as it happens;
    /// ends with ``JobEvent/finished(_:)`` once the job has ended (at once for a finished job).
    /// Throws `notFound` for an unknown job.
    public func events(_ idOrName: String) -> AsyncThrowingStream<JobEvent, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: JobEvent.self, bufferingPolicy: .unbounded)
        let task = Task {
            do {
                try await follow(idOrName) { continuation.yield($0) }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// The loop behind ``events(_:)``; returns the job as it ended.
    @discardableResult
    public func follow(_ idOrName: String, _ emit: (JobEvent) -> Void) async throws -> JobRecord {
        guard var job = try await store.job(idOrName) else {
            throw CapstanError(.notFound, "No job '\(idOrName)' to observe.", hint: "See `capstan jobs` (or `Capstan.jobs()`) for job ids.")
        }
        let id = job.id
        let nodes = max(1, (try? JobSpec.parse(job.spec))?.resources.nodes ?? 1)
        var tail = NodeLogTail()
        var lastEvent: Int64 = 0, lastClusterEvent: Int64 = 0
        var clusterID: String?
        func pump(final: Bool) async throws {
            while true {
                let page = try await store.events(job: id, after: lastEvent, limit: 500)
                for e in page where (e.id ?? 0) > lastEvent {
                    lastEvent = e.id ?? lastEvent
                    if let event = JobEvent(e) { emit(event) }
                }
                if page.count < 500 { break }
            }
            if clusterID == nil { clusterID = try await store.cluster(named: job.clusterName)?.id }
            if let clusterID {
                for e in try await store.events(cluster: clusterID, limit: 200) where (e.id ?? 0) > lastClusterEvent {
                    lastClusterEvent = e.id ?? lastClusterEvent
                    // (A cluster the job runs on but did not create has older events.)
                    if e.time >= job.createdAt.addingTimeInterval(-1) { emit(.provisioning(e.message)) }
                }
            }
            for n in 0..<nodes {
                for line in tail.read(n, path: logFile(job: id, node: n), final: final) {
                    emit(.log(node: n, line: line))
                    if n == 0, let point = MetricsPoint.parse(line) { emit(.metrics(point)) }
                }
            }
        }
        while !job.status.isFinished {
            try await pump(final: false)
            try await Task.sleep(for: interval)
            guard let fresh = try await store.job(id) else {
                throw CapstanError(.notFound, "Job \(id) is no longer in the state store.", hint: "It was deleted while being observed.")
            }
            job = fresh
        }
        // The controller copies the nodes' last lines home before it records the end.
        try await pump(final: true)
        emit(.finished(job))
        return job
    }

    /// The leader's metrics so far (a restarted attempt's points replace the old ones).
    public func metrics(_ id: String) -> [MetricsPoint] { MetricsPoint.read(log: logFile(job: id, node: 0)) }

    /// Node `node`'s log lines so far.
    public func logs(_ id: String, node: Int = 0) -> [String] {
        var tail = NodeLogTail()
        return tail.read(node, path: logFile(job: id, node: node), final: true)
    }
}
