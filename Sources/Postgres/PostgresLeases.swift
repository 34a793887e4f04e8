public import CapstanCore
import Foundation
import Logging
import PostgresNIO

/// Locks across machines: leases in the state database, with fencing tokens (``LockService``).
///
/// A lease is one row of table `lease` (`name`, `holder`, `fence`, `expires_at`). Taking it is
/// one statement — insert, or take over a row whose lease has expired — so of any number of
/// replicas racing for a name exactly one wins; each win adds one to the row's `fence`, and the
/// row is never deleted (release only expires it), so a fence is strictly larger than every
/// earlier holder's of that name.
///
/// The holder's ``HeldLock`` renews the lease in the background every `ttl / 3`. It stops
/// being valid, for good, when a renewal finds the lease taken by a newer fence, or when no
/// renewal has succeeded for a whole `ttl` (counted on this machine's monotonic clock from the
/// moment the last successful renewal was sent, so it lapses here before it can lapse in the
/// database). Expiry is judged by the database's clock (`now()`), never a client's.
///
/// Names live in a `namespace` ("job", "cluster"): `acquire("x")` takes row `job/x`.
public struct PostgresLeases: LockService {
    public let store: PostgresStateStore
    public let namespace: String
    /// Who takes the leases (for people; the fence is the truth): `<host>:<pid>` by default.
    public let holder: String
    /// How long a lease lasts without a renewal.
    public let ttl: Duration

    /// `<host name>:<pid>`.
    public static var defaultHolder: String { "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier)" }

    /// Leases named `<namespace>/<name>` in `store`'s database, held by `holder`, lasting `ttl`
    /// (at least a second) between renewals.
    public init(store: PostgresStateStore, namespace: String, holder: String = PostgresLeases.defaultHolder, ttl: Duration = .seconds(15)) {
        self.store = store
        self.namespace = namespace
        self.holder = holder
        self.ttl = max(ttl, .seconds(1))
    }

    func key(_ name: String) -> String { namespace + "/" + name }

    /// Takes the lease `name`, or returns nil at once when another holder has a live one.
    public func acquire(_ name: String) async throws -> (any HeldLock)? {
        try await acquireLease(name)
    }

    /// ``acquire(_:)`` with the concrete type (tests, and callers that want ``PostgresLease``'s extras).
    public func acquireLease(_ name: String) async throws -> PostgresLease? {
        let key = key(name), holder = self.holder, ms = Int64(ttl.seconds * 1000)
        let sent = ContinuousClock.now
        let fence = try await store.one("""
            INSERT INTO lease AS l (name, holder, fence, expires_at) VALUES (\(key), \(holder), 1, now() + \(ms) * interval '1 millisecond')
            ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, fence = l.fence + 1, expires_at = EXCLUDED.expires_at
            WHERE l.expires_at IS NULL OR l.expires_at < now()
            RETURNING fence
            """) { try $0.decode(Int64.self) }
        guard let fence else { return nil }
        store.logger.debug("lease acquired", metadata: ["lease": "\(key)", "fence": "\(fence)", "holder": "\(holder)"])
        return PostgresLease(leases: self, name: name, fence: fence, acquiredAt: sent)
    }

    /// Whether some holder has a live (unexpired) lease on `name`. When the database cannot be
    /// asked, answers true: a caller that would otherwise take over work (reconcile) leaves it alone.
    public func isHeld(_ name: String) async -> Bool {
        do {
            return try await store.one("SELECT 1 FROM lease WHERE name = \(key(name)) AND expires_at > now()") { _ in () } != nil
        } catch {
            store.logger.warning("lease state unknown; taking it as held", metadata: ["lease": "\(key(name))", "error": "\(error)"])
            return true
        }
    }

    /// The current fence of `name` (0 when it was never taken), whether or not it is held.
    public func fence(_ name: String) async throws -> Int64 {
        try await store.one("SELECT fence FROM lease WHERE name = \(key(name))") { try $0.decode(Int64.self) } ?? 0
    }
}

/// A lease held through ``PostgresLeases``; renews itself until ``release()``, until it is lost,
/// or until it is no longer referenced (then it lapses after its TTL).
public final class PostgresLease: HeldLock {
    public let name: String
    public let fence: Int64
    let leases: PostgresLeases

    struct State {
        /// When the newest successful renewal (or the acquisition) was sent.
        var lastSent: ContinuousClock.Instant
        /// Lost or released: never valid again.
        var over = false
        /// Test hook: renewals are not sent (a paused or partitioned holder).
        var suspended = false
        var renewer: Task<Void, Never>?
    }
    let state: LockedBox<State>

    init(leases: PostgresLeases, name: String, fence: Int64, acquiredAt: ContinuousClock.Instant) {
        self.leases = leases
        self.name = name
        self.fence = fence
        self.state = LockedBox(State(lastSent: acquiredAt))
        let interval = leases.ttl / 3
        let renewer = Task { [weak self] in
            while !Task.isCancelled {
                guard (try? await Task.sleep(for: interval)) != nil else { return }
                guard let lease = self else { return }
                guard await lease.renewOnce() else { return }
            }
        }
        state.withLock { $0.renewer = renewer }
    }

    deinit {
        // Unreferenced: stop renewing; the lease lapses after its TTL.
        state.withLock { $0.renewer }?.cancel()
    }

    /// Whether the lease is still this holder's: not released, not taken over, and renewed
    /// (sent) less than a TTL ago. Once false, false for good.
    public var isValid: Bool {
        state.withLock { s in
            if !s.over, ContinuousClock.now - s.lastSent >= leases.ttl { s.over = true }
            return !s.over
        }
    }

    /// One renewal; false when the renewals are over (lost, released, lapsed).
    func renewOnce() async -> Bool {
        guard isValid else { return false }
        if state.withLock({ $0.suspended }) { return true }
        let key = leases.key(name), fence = self.fence, ms = Int64(leases.ttl.seconds * 1000)
        let sent = ContinuousClock.now
        do {
            let renewed = try await Deadline.run(leases.ttl / 3) { [store = leases.store] in
                try await store.one("""
                    UPDATE lease SET expires_at = now() + \(ms) * interval '1 millisecond'
                    WHERE name = \(key) AND fence = \(fence) AND expires_at > now() RETURNING 1
                    """) { _ in () } != nil
            }
            if !renewed {
                leases.store.logger.warning("lease lost: taken by a newer holder or expired", metadata: ["lease": "\(key)", "fence": "\(fence)"])
                state.withLock { $0.over = true }
                return false
            }
            return state.withLock { s in
                // A renewal that comes back after the lease lapsed here does not revive it.
                if s.over || ContinuousClock.now - s.lastSent >= leases.ttl {
                    s.over = true
                    return false
                }
                s.lastSent = max(s.lastSent, sent)
                return true
            }
        } catch {
            leases.store.logger.warning("lease renewal failed", metadata: ["lease": "\(key)", "fence": "\(fence)", "error": "\(error)"])
            return isValid
        }
    }

    /// Stops the renewals and expires the lease in the database (in the background: the TTL
    /// is the backstop). A release by a holder that lost the lease leaves the new holder's alone.
    public func release() {
        stop()
        let lease = self
        let task = Task.detached { await lease.expireRow() }
        PendingReleases.shared.add(task)
    }

    /// ``release()``, waiting until the database has the lease expired (or the attempt failed).
    public func releaseAndWait() async {
        stop()
        await expireRow()
    }

    private func stop() {
        let renewer: Task<Void, Never>? = state.withLock { s in
            defer { s.over = true; s.renewer = nil }
            return s.renewer
        }
        renewer?.cancel()
    }

    private func expireRow() async {
        let store = leases.store, key = leases.key(name), fence = self.fence
        do {
            try await store.execute("UPDATE lease SET expires_at = now() - interval '1 millisecond' WHERE name = \(key) AND fence = \(fence) AND expires_at > now()")
        } catch {
            store.logger.warning("lease release failed; it lapses after its TTL", metadata: ["lease": "\(key)", "fence": "\(fence)", "error": "\(error)"])
        }
    }

    /// Test hook: stop sending renewals (as a paused or partitioned holder would).
    package func suspendRenewals() { state.withLock { $0.suspended = true } }
}

/// Releases still on their way to the database. A short-lived process (a CLI verb) awaits
/// ``PostgresLeases/finishReleases()`` before it exits, so the next process does not find its
/// leases held until their TTL runs out (a `flock` is freed by the process's exit; a lease is not).
final class PendingReleases: Sendable {
    static let shared = PendingReleases()
    let tasks = LockedBox<[Int: Task<Void, Never>]>([:])
    let next = LockedBox(0)

    func add(_ task: Task<Void, Never>) {
        let id = next.withLock { n in
            n += 1
            return n
        }
        tasks.withLock { $0[id] = task }
        Task.detached { [self] in
            await task.value
            _ = tasks.withLock { $0.removeValue(forKey: id) }
        }
    }

    func drain() async {
        for task in tasks.withLock({ Array($0.values) }) { await task.value }
    }
}

extension PostgresLeases {
    /// Waits until every lease released in this process is released in the database too.
    public static func finishReleases() async {
        await PendingReleases.shared.drain()
    }
}
