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
    /// What it needs from the store (the price, the attempt before) is read now; the entries
    /// are made from the job as the change leaves it, inside the change's transaction. A
    /// change that did not take (a cancel came in) records the event without notifications.
    func statusNotice(_ status: JobStatus, _ message: String) async -> @Sendable (JobRecord) -> JobEventWrite? {
        let kind = status.rawValue
        guard let notifier = notifier.withLock({ $0 }) else { return { _ in JobEventWrite(kind: kind, message: message) } }
        let event: NotifySpec.Event?
        switch status {
        case .running: event = nil  // started or restarted: by the attempt, below
        case .succeeded: event = .succeeded
        case .failed: event = .failed
        case .cancelled: event = .cancelled
        default: return { _ in JobEventWrite(kind: kind, message: message) }
        }
        let current = (try? await store.job(jobID)) ?? nil
        let attempt = current?.attempt ?? 0
        let chosen = event ?? (attempt <= 1 ? .started : .restarted)
        guard !notifier.spec.targets(for: chosen).isEmpty else { return { _ in JobEventWrite(kind: kind, message: message) } }
        var price: Double?
        if let current { price = ((try? await store.cluster(named: current.clusterName)) ?? nil)?.pricePerHour }
        var reason: NotificationPayload.Reason?
        if chosen == .restarted, let before = (try? await store.attempt(job: jobID, number: attempt - 1)) ?? nil {
            reason = NotificationPayload.Reason(
                kind: before.failureKind ?? before.outcome.rawValue, node: before.failedNode,
                message: before.message ?? "attempt \(before.attempt) ended \(before.outcome.rawValue)")
        }
        let why = reason, perHour = price
        return { job in
            guard job.status == status else { return JobEventWrite(kind: kind, message: message) }
            let entries = notifier.entries(
                chosen, detail: chosen == .restarted ? "\(job.attempt)" : nil, job: job, message: message, reason: why,
                cost: Notifier.cost(pricePerHour: perHour, startedAt: job.startedAt))
            return JobEventWrite(kind: kind, message: message, notifications: entries)
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
