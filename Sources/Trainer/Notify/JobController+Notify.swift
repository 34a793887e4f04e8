public import CapstanCore
public import CapstanRuntime
import Foundation
import Logging
import Synchronization

// Where the controller records a job event, it enqueues the job's notifications in the same
// write (NotificationOutbox.jobEvent): every path that records a status, a checkpoint, a cost
// or a stall notifies, and nothing is sent from here (the deliverer sends, never the job).

extension JobController {
    /// Records a job event; where the job's `notify:` takes `event`, enqueues its entries in
    /// the same transaction. `job`: the record after the change (read here when nil).
    func record(
        _ kind: String, _ message: String, notify event: NotifySpec.Event?, detail: String? = nil, job: JobRecord? = nil,
        reason: NotificationPayload.Reason? = nil, checkpoint: Int? = nil, threshold: Double? = nil
    ) async {
        var entries: [OutboxEntry] = []
        if let event, let notifier = notifier.withLock({ $0 }), !notifier.spec.targets(for: event).isEmpty {
            var current = job
            if current == nil { current = (try? await store.job(jobID)) ?? nil }
            if let job = current {
                let price = await (try? store.cluster(named: job.clusterName))??.pricePerHour
                let cost = Notifier.cost(pricePerHour: price, startedAt: job.startedAt)
                entries = notifier.entries(event, detail: detail, job: job, message: message, reason: reason, checkpoint: checkpoint, threshold: threshold, cost: cost)
            }
        }
        guard !entries.isEmpty else {
            await store.jobEvent(kind, message, job: jobID)
            return
        }
        do {
            try await store.jobEvent(kind, message, job: jobID, cluster: nil, notifications: entries)
        } catch {
            // The event alone, as before: the notification is lost, and the log says so.
            logger.error("could not write the job event with its notifications", metadata: ["capstan.job": "\(jobID)", "event": "\(kind)", "error": "\(error)"])
            await store.jobEvent(kind, message, job: jobID)
        }
    }

    /// A status change's event, with the notification it means: `started` (attempt 1 running),
    /// `restarted` (a later attempt running, with how the one before failed), and the ends.
    func record(_ kind: String, _ message: String, status: JobStatus, job: JobRecord?) async {
        guard let job, job.status == status, notifier.withLock({ $0 != nil }) else {
            await store.jobEvent(kind, message, job: jobID)
            return
        }
        switch status {
        case .running where job.attempt <= 1:
            await record(kind, message, notify: .started, detail: nil, job: job)
        case .running:
            let before = try? await store.attempt(job: jobID, number: job.attempt - 1)
            let reason = before.map { a in
                NotificationPayload.Reason(
                    kind: a.failureKind ?? a.outcome.rawValue, node: a.failedNode,
                    message: a.message ?? "attempt \(a.attempt) ended \(a.outcome.rawValue)")
            }
            await record(kind, message, notify: .restarted, detail: "\(job.attempt)", job: job, reason: reason)
        case .succeeded: await record(kind, message, notify: .succeeded, job: job)
        case .failed: await record(kind, message, notify: .failed, job: job)
        case .cancelled: await record(kind, message, notify: .cancelled, job: job)
        default: await store.jobEvent(kind, message, job: jobID)
        }
    }
}

/// What the controller watches for `cost-above` and `no-progress` while an attempt runs.
struct ProgressWatch {
    var attempt = 0
    var step: Int?
    var since = Date()
    var lastCheck = Date.distantPast
    var price: Double?
    var priceRead = Date.distantPast
    /// Keys already enqueued by this controller (the outbox ignores repeats anyway).
    var fired: Set<String> = []

    /// Notes the step seen now; returns how long it has not advanced.
    mutating func see(attempt: Int, step: Int?, now: Date) -> TimeInterval {
        if attempt != self.attempt || step != self.step {
            self.attempt = attempt
            self.step = step
            since = now
        }
        return now.timeIntervalSince(since)
    }
}

extension Run {
    /// Checks the job's cost and progress against its `notify:` (at most once a second).
    func watchProgress() async {
        guard let notifier = c.notifier.withLock({ $0 }), let attempt else { return }
        let spec = notifier.spec
        guard spec.costAbove != nil || spec.noProgressMinutes != nil else { return }
        let now = Date()
        guard now.timeIntervalSince(progress.lastCheck) >= 1 else { return }
        progress.lastCheck = now
        let step = latestMetrics.flatMap { MetricsPoint.parse($0)?.step }
        let stalled = progress.see(attempt: attempt.attempt, step: step, now: now)
        if let minutes = spec.noProgressMinutes, stalled >= minutes * 60 {
            let detail = "\(attempt.attempt)-\(step.map(String.init) ?? "none")"
            if progress.fired.insert("no-progress:" + detail).inserted {
                let at = step.map { "at step \($0)" } ?? "before its first step"
                let message = "No progress for \(JobSpec.describe(.seconds(Int64(stalled)))): attempt \(attempt.attempt) is still \(at) (notify.noProgressMinutes: \(minutes))."
                await c.record("no-progress", message, notify: .noProgress, detail: detail)
            }
        }
        if let threshold = spec.costAbove, !progress.fired.contains("cost-above") {
            if now.timeIntervalSince(progress.priceRead) >= 30 {
                progress.priceRead = now
                progress.price = await (try? store.cluster(named: looped?.clusterName ?? jobID))??.pricePerHour
            }
            var startedAt = looped?.startedAt
            if startedAt == nil { startedAt = await job()?.startedAt }
            if let cost = Notifier.cost(pricePerHour: progress.price, startedAt: startedAt, now: now), cost >= threshold {
                progress.fired.insert("cost-above")
                await c.record("cost-above", String(format: "The job has cost $%.2f, above notify.costAbove ($%.2f).", cost, threshold), notify: .costAbove, detail: String(format: "%g", threshold), threshold: threshold)
            }
        }
    }
}
