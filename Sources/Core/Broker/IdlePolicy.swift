public import Foundation

/// Autostop, decided: which clusters with an idle limit (``Cluster/idleMinutes``, `capstan up
/// --idle-minutes N`) have been idle past it. Pure: the clusters, the jobs and `now` come in,
/// and ``Provisioner/stopIdleClusters(now:)`` takes the answer down.
///
/// A cluster is idle from the later of when it became ready (``Cluster/readyAt``) and when the
/// last job that ran on it finished (``JobRecord/finishedAt``; jobs name their cluster in
/// ``JobRecord/clusterName``). A cluster with an unfinished job on it is never idle, whatever
/// the job's state (pending, provisioning, restarting, cancelling: its controller may be about
/// to use the nodes). Only running clusters are considered: one provisioning has no `readyAt`
/// yet, one terminating is already going.
public enum IdlePolicy {
    /// A cluster idle past its limit.
    public struct Idle: Sendable, Hashable {
        public var cluster: String
        /// Its limit, in minutes.
        public var limitMinutes: Int
        /// When it became idle.
        public var since: Date
        /// How long it has been idle at `now`.
        public var idleFor: TimeInterval

        public init(cluster: String, limitMinutes: Int, since: Date, idleFor: TimeInterval) {
            self.cluster = cluster
            self.limitMinutes = limitMinutes
            self.since = since
            self.idleFor = idleFor
        }
    }

    /// The clusters idle past their limit at `now`, by name.
    public static func idleClusters(_ clusters: [Cluster], jobs: [JobRecord], now: Date) -> [Idle] {
        clusters.compactMap { idle($0, jobs: jobs, now: now) }.sorted { $0.cluster < $1.cluster }
    }

    /// `cluster`, if it is idle past its limit at `now`.
    public static func idle(_ cluster: Cluster, jobs: [JobRecord], now: Date) -> Idle? {
        guard let limit = cluster.idleMinutes, limit > 0, cluster.status == .running, let since = idleSince(cluster, jobs: jobs) else { return nil }
        let idleFor = now.timeIntervalSince(since)
        guard idleFor >= Double(limit) * 60 else { return nil }
        return Idle(cluster: cluster.name, limitMinutes: limit, since: since, idleFor: idleFor)
    }

    /// Since when `cluster` has been idle; nil when a job on it is unfinished (or it was never
    /// ready).
    public static func idleSince(_ cluster: Cluster, jobs: [JobRecord]) -> Date? {
        guard let ready = cluster.readyAt else { return nil }
        // Jobs name their cluster; a job from before this cluster was created (an older
        // cluster of the same name) does not count.
        let mine = jobs.filter { $0.clusterName == cluster.name && ($0.finishedAt ?? .distantFuture) >= cluster.createdAt }
        if mine.contains(where: { !$0.status.isFinished }) { return nil }
        return ([ready] + mine.compactMap(\.finishedAt)).max()
    }
}
