import CapstanCore
@testable import CapstanPostgres
import Foundation
import PostgresNIO
import Testing

/// Leases across machines (PostgresLeases): each "replica" is its own PostgresLeases (its own
/// holder name) and, where it matters, its own store (its own connection pool).
@Suite("PostgreSQL leases")
struct PostgresLeasesTests {
    @Test("exclusive: one holder per name; other names are free; isHeld sees it; release frees it")
    func exclusive() async throws {
        try await TestPostgres.withStore { store in
            let a = PostgresLeases(store: store, namespace: "job", holder: "a")
            let b = PostgresLeases(store: store, namespace: "job", holder: "b")
            await #expect(a.isHeld("x") == false)
            let held = try #require(try await a.acquireLease("x"))
            #expect(held.isValid && held.fence == 1)
            await #expect(try b.acquire("x") == nil)
            await #expect(try a.acquire("x") == nil)  // not re-entrant, as a flock is not
            await #expect(b.isHeld("x"))
            // Namespaces keep names apart.
            let cluster = PostgresLeases(store: store, namespace: "cluster", holder: "b")
            let other = try #require(try await cluster.acquire("x"))
            let y = try #require(try await b.acquire("y"))
            await held.releaseAndWait()
            #expect(!held.isValid)
            await #expect(b.isHeld("x") == false)
            await #expect(cluster.isHeld("x"))
            await (other as! PostgresLease).releaseAndWait()
            await (y as! PostgresLease).releaseAndWait()
        }
    }

    @Test("20 replicas racing for one name: exactly one wins")
    func race() async throws {
        try await TestPostgres.withStore { store in
            // Five pools (replicas) of four racers each.
            var stores = [store]
            for _ in 0..<4 { stores.append(try await TestPostgres.connect(store.locationForTests)) }
            let winners = try await withThrowingTaskGroup(of: PostgresLease?.self) { g in
                for n in 0..<20 {
                    let leases = PostgresLeases(store: stores[n % stores.count], namespace: "job", holder: "r\(n)")
                    g.addTask { try await leases.acquireLease("contended") }
                }
                var won: [PostgresLease] = []
                for try await w in g { if let w { won.append(w) } }
                return won
            }
            #expect(winners.count == 1)
            #expect(winners.first?.fence == 1)
            for w in winners { await w.releaseAndWait() }
            for s in stores.dropFirst() { await s.close() }
        }
    }

    @Test("the fence grows strictly: across release and re-acquire, also after a plain release()")
    func fenceAcrossRelease() async throws {
        try await TestPostgres.withStore { store in
            let a = PostgresLeases(store: store, namespace: "job", holder: "a")
            let b = PostgresLeases(store: store, namespace: "job", holder: "b")
            var fences: [Int64] = []
            for round in 0..<5 {
                let leases = round % 2 == 0 ? a : b
                var got: PostgresLease?
                // release() expires the row in the background: wait for it by polling.
                #expect(try await eventually { got = try await leases.acquireLease("f"); return got != nil })
                let held = try #require(got)
                fences.append(held.fence)
                held.release()
            }
            #expect(fences == fences.sorted() && Set(fences).count == fences.count)
            #expect(fences.first == 1)
            await #expect(try a.fence("f") == fences.last)
        }
    }

    @Test("a holder that stops renewing loses isValid; another takes over after the TTL with a larger fence; the stale release leaves the new lease alone")
    func expiryTakeover() async throws {
        try await TestPostgres.withStore { store in
            // The paused holder's lease is short (expiry comes quickly); the new holder's is long
            // (it stays valid through the checks below however loaded the machine).
            let a = PostgresLeases(store: store, namespace: "job", holder: "a", ttl: .seconds(1))
            let replica = try await TestPostgres.connect(store.locationForTests)
            let b = PostgresLeases(store: replica, namespace: "job", holder: "b", ttl: .seconds(60))
            let old = try #require(try await a.acquireLease("t"))
            old.suspendRenewals()  // paused, partitioned: its renewals stop
            #expect(try await eventually { !old.isValid })
            var got: PostgresLease?
            #expect(try await eventually { got = try await b.acquireLease("t"); return got != nil })
            let new = try #require(got)
            #expect(new.fence > old.fence)
            #expect(!old.isValid)  // for good
            // The stale holder's release does not free the new holder's lease.
            await old.releaseAndWait()
            old.release()
            await #expect(b.isHeld("t"))
            await #expect(try a.acquire("t") == nil)
            // The new holder's renewals still find the row its own.
            #expect(await new.renewOnce())
            #expect(new.isValid)
            await new.releaseAndWait()
            await replica.close()
        }
    }

    @Test("a renewal that finds the lease taken by a newer fence makes the holder invalid at once")
    func takenOver() async throws {
        try await TestPostgres.withStore { store in
            let a = PostgresLeases(store: store, namespace: "job", holder: "a", ttl: .seconds(60))
            let held = try #require(try await a.acquireLease("s"))
            #expect(await held.renewOnce())
            #expect(held.isValid)
            // Another holder got it (as after an expiry): the row's fence moved on.
            try await store.execute("UPDATE lease SET fence = fence + 1, holder = 'thief' WHERE name = 'job/s'")
            #expect(await held.renewOnce() == false)
            #expect(!held.isValid)
            #expect(await held.renewOnce() == false)
            await #expect(a.isHeld("s"))  // the thief's
        }
    }

    @Test("renewals keep a lease past several TTLs: still valid, still exclusive")
    func renewalsKeepIt() async throws {
        try await TestPostgres.withStore { store in
            // Renewed every 10 s; lost only if none got through for 30 s. (A 12 s TTL lapsed in
            // the whole suite's first two minutes on two cores, when hundreds of tests share
            // Swift's two cooperative threads and each renewal waits its turn: that is load,
            // not what this checks.)
            let ttl = Duration.seconds(30)
            let a = PostgresLeases(store: store, namespace: "job", holder: "a", ttl: ttl)
            let b = PostgresLeases(store: store, namespace: "job", holder: "b", ttl: ttl)
            let held = try #require(try await a.acquireLease("r"))
            try await Task.sleep(for: .seconds(65))
            #expect(held.isValid)
            await #expect(try b.acquire("r") == nil)
            await held.releaseAndWait()
            let next = try #require(try await b.acquireLease("r"))
            #expect(next.fence == held.fence + 1)
            await next.releaseAndWait()
        }
    }

    @Test("a lease nobody references any more stops renewing and lapses")
    func dropped() async throws {
        try await TestPostgres.withStore { store in
            let a = PostgresLeases(store: store, namespace: "job", holder: "a", ttl: .seconds(1))
            _ = try #require(try await a.acquireLease("d"))
            #expect(try await eventually { try await a.acquire("d") != nil })
        }
    }
}

extension PostgresStateStore {
    /// The store's URL (no password: the tests' environment supplies it).
    var locationForTests: String { location }
}
