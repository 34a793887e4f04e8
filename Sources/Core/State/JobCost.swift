public import Foundation

/// What a job has cost: every node of its cluster, at its hourly price, for the part of the
/// node's life that overlaps the job's. Pure; ``StateStore/jobCosts(_:now:)`` reads the facts.
///
/// A job that made its own cluster is charged from when it was created (its nodes booted for
/// it); one on a shared cluster from when it started to run. Replaced nodes count for their own
/// lives, so a job that lost a node pays for both. The cluster is found by name among those
/// whose life overlaps the job's (a name may be reused after a `down`).
public enum JobCost {
    /// The window the job is charged for: `[from, to]`.
    public static func window(_ job: JobRecord, now: Date) -> (from: Date, to: Date) {
        let from = job.ownsCluster ? job.createdAt : (job.startedAt ?? job.createdAt)
        return (from, max(from, job.finishedAt ?? now))
    }

    /// The clusters of `clusters` that ran `job`: its cluster's name, alive at some time in its window.
    public static func clusters(of job: JobRecord, in clusters: [Cluster], now: Date) -> [Cluster] {
        let (from, to) = window(job, now: now)
        return clusters.filter { c in
            c.name == job.clusterName && c.createdAt <= to && (c.terminatedAt ?? now) >= from
        }
    }

    /// Dollars `job` has cost by `now`, given its clusters' instance records. A job on a shared
    /// cluster that never started (queued, or failed before running) has cost nothing.
    public static func cost(_ job: JobRecord, instances: [InstanceRecord], now: Date) -> Double {
        if !job.ownsCluster && job.startedAt == nil { return 0 }
        let (from, to) = window(job, now: now)
        return instances.reduce(0) { sum, i in
            guard let price = i.pricePerHour, price > 0 else { return sum }
            let start = max(from, i.launchedAt)
            let end = min(to, i.terminatedAt ?? now)
            return sum + max(0, end.timeIntervalSince(start)) / 3600 * price
        }
    }
}

extension StateStore {
    /// The cost of each of `jobs` by `now`, by job id, in two reads (every cluster, then their
    /// instances in one batch) however many jobs there are.
    public func jobCosts(_ jobs: [JobRecord], now: Date = Date()) async throws -> [String: Double] {
        guard !jobs.isEmpty else { return [:] }
        let names = Set(jobs.map(\.clusterName))
        let all = try await clusters(includeFinished: true).filter { names.contains($0.name) }
        var byJob: [String: [Cluster]] = [:]
        for job in jobs { byJob[job.id] = JobCost.clusters(of: job, in: all, now: now) }
        let ids = Array(Set(byJob.values.joined().map(\.id)))
        let instances = try await self.instances(clusters: ids)
        var out: [String: Double] = [:]
        for job in jobs {
            let records = (byJob[job.id] ?? []).flatMap { instances[$0.id] ?? [] }
            out[job.id] = JobCost.cost(job, instances: records, now: now)
        }
        return out
    }
}
