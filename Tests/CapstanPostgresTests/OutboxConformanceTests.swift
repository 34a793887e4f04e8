import CapstanCore
import CapstanPostgres
import CapstanSQLite
import Foundation
import Testing

/// The notification outbox (NotificationOutbox) on both stores: written with its event,
/// idempotent keys, claims as leases (two claimers never share an entry), outcomes.
@Suite("Notification outbox conformance (SQLite and PostgreSQL)")
struct OutboxConformanceTests {
    static let t0 = Date(timeIntervalSince1970: 1_700_000_000)

    static func entry(_ key: String, job: String = "j1", at offset: Double = 0) -> OutboxEntry {
        OutboxEntry(key: key, jobID: job, target: "webhook-0", event: "failed", payload: #"{"id":"\#(key)","event":"failed"}"#, createdAt: t0.addingTimeInterval(offset))
    }

    @Test("enqueue with the event, in one write; a key enqueued again is ignored; listing per job", arguments: StoreKind.allCases)
    func enqueue(kind: StoreKind) async throws {
        try await kind.withStore { store in
            try await store.jobEvent("failed", "Attempt 1 failed.", job: "j1", cluster: nil, notifications: [Self.entry("a"), Self.entry("b", at: 1)])
            try await store.jobEvent("failed", "Attempt 1 failed.", job: "j1", cluster: nil, notifications: [Self.entry("a", at: 5)])
            try await store.jobEvent("started", "x", job: "j2", cluster: nil, notifications: [Self.entry("c", job: "j2", at: 2)])
            let events = try await store.events(job: "j1")
            #expect(events.map(\.kind) == ["failed", "failed"])
            let rows = try await store.outbox(job: "j1")
            #expect(rows.map(\.key) == ["a", "b"])
            #expect(rows[0] == Self.entry("a"))
            #expect(try await store.outbox().map(\.key) == ["a", "b", "c"])
            #expect(try await store.outbox(job: "nobody").isEmpty)
        }
    }

    @Test("claims: only due, unclaimed entries, oldest due first, up to the limit; a lapsed claim is taken again", arguments: StoreKind.allCases)
    func claims(kind: StoreKind) async throws {
        try await kind.withStore { store in
            var later = Self.entry("later", at: 0)
            later.nextAttemptAt = Self.t0.addingTimeInterval(100)
            try await store.jobEvent("e", "m", job: "j1", cluster: nil, notifications: [Self.entry("a", at: 2), Self.entry("b", at: 1), later])
            let now = Self.t0.addingTimeInterval(10)
            let first = try await store.claimOutbox(holder: "h1", now: now, lease: .seconds(30), limit: 1)
            #expect(first.map(\.key) == ["b"])
            #expect(first[0].claimedBy == "h1")
            let second = try await store.claimOutbox(holder: "h2", now: now, lease: .seconds(30), limit: 10)
            #expect(second.map(\.key) == ["a"])
            #expect(try await store.claimOutbox(holder: "h3", now: now, lease: .seconds(30), limit: 10).isEmpty)
            // h1's claim lapsed: another takes it; "later" is due by then too.
            let retaken = try await store.claimOutbox(holder: "h3", now: now.addingTimeInterval(200), lease: .seconds(30), limit: 10)
            #expect(Set(retaken.map(\.key)) == ["a", "b", "later"])
            // Released: claimable at once.
            try await store.releaseOutbox(holder: "h3")
            #expect(try await store.claimOutbox(holder: "h4", now: now.addingTimeInterval(200), lease: .seconds(30), limit: 10).count == 3)
        }
    }

    @Test("outcomes: delivered and given-up entries are never claimed again; a retry waits; a stale holder's failure is ignored", arguments: StoreKind.allCases)
    func outcomes(kind: StoreKind) async throws {
        try await kind.withStore { store in
            try await store.jobEvent("e", "m", job: "j1", cluster: nil, notifications: [Self.entry("ok"), Self.entry("retry"), Self.entry("bad")])
            let now = Self.t0.addingTimeInterval(10)
            _ = try await store.claimOutbox(holder: "h", now: now, lease: .seconds(30), limit: 10)
            try await store.outboxDelivered("ok", holder: "h", at: now)
            try await store.outboxFailed("retry", holder: "h", error: "HTTP 503", retryAt: now.addingTimeInterval(60), at: now)
            try await store.outboxFailed("bad", holder: "h", error: "HTTP 400", retryAt: nil, at: now)
            // A holder that no longer holds it changes nothing.
            try await store.outboxFailed("retry", holder: "someone-else", error: "late", retryAt: nil, at: now)
            let rows = Dictionary(uniqueKeysWithValues: try await store.outbox().map { ($0.key, $0) })
            #expect(rows["ok"]?.deliveredAt != nil && rows["ok"]?.attempts == 1 && rows["ok"]?.claimedBy == nil)
            #expect(rows["retry"]?.lastError == "HTTP 503" && rows["retry"]?.givenUpAt == nil && rows["retry"]?.attempts == 1)
            #expect(abs((rows["retry"]?.nextAttemptAt.timeIntervalSince(now) ?? 0) - 60) < 0.01)
            #expect(rows["bad"]?.givenUpAt != nil && rows["bad"]?.lastError == "HTTP 400" && rows["bad"]?.isPending == false)
            #expect(try await store.claimOutbox(holder: "h", now: now.addingTimeInterval(30), lease: .seconds(30), limit: 10).isEmpty)
            #expect(try await store.claimOutbox(holder: "h", now: now.addingTimeInterval(61), lease: .seconds(30), limit: 10).map(\.key) == ["retry"])
        }
    }

    @Test("claims race: 8 claimers at once over 40 entries take each exactly once", arguments: StoreKind.allCases)
    func race(kind: StoreKind) async throws {
        try await kind.withStore { store in
            try await store.jobEvent("e", "m", job: "j1", cluster: nil, notifications: (0..<40).map { Self.entry("k\($0)", at: Double($0)) })
            let now = Self.t0.addingTimeInterval(100)
            let taken = try await withThrowingTaskGroup(of: [String].self) { g in
                for h in 0..<8 {
                    g.addTask {
                        var mine: [String] = []
                        while true {
                            let got = try await store.claimOutbox(holder: "h\(h)", now: now, lease: .seconds(60), limit: 3)
                            if got.isEmpty { return mine }
                            mine += got.map(\.key)
                        }
                    }
                }
                var all: [String] = []
                for try await keys in g { all += keys }
                return all
            }
            #expect(taken.count == 40)
            #expect(Set(taken).count == 40)
        }
    }

    @Test("a job change with its event and notifications: all in one write; a change that throws writes none of them; a key already there is left as it is", arguments: StoreKind.allCases)
    func changeWithEvent(kind: StoreKind) async throws {
        try await kind.withStore { store in
            try await store.insert(StoreConformanceTests.job("j1", status: .running))
            let done = try await store.updateJob("j1", { $0.status = .succeeded }, recording: { job in
                JobEventWrite(kind: "succeeded", message: "Succeeded in attempt \(job.attempt).", notifications: job.status == .succeeded ? [Self.entry("j1:succeeded:ops")] : [])
            })
            #expect(done.status == .succeeded)
            #expect(try await store.job("j1")?.status == .succeeded)
            #expect(try await store.events(job: "j1").map(\.kind) == ["succeeded"])
            #expect(try await store.outbox(job: "j1").map(\.key) == ["j1:succeeded:ops"])
            // A change that throws (a fenced-out controller): no status, no event, no entry.
            await #expect(throws: CapstanError.self) {
                try await store.updateJob("j1", { j in
                    j.status = .failed
                    throw CapstanError(.invalidRequest, "fenced out")
                }, recording: { _ in JobEventWrite(kind: "failed", message: "x", notifications: [Self.entry("j1:failed:ops")]) })
            }
            #expect(try await store.job("j1")?.status == .succeeded)
            #expect(try await store.events(job: "j1").count == 1)
            #expect(try await store.outbox(job: "j1").count == 1)
            // The same key again is left as it is; nil records nothing.
            _ = try await store.updateJob("j1", { $0.lastError = "later" }, recording: { _ in JobEventWrite(kind: "note", message: "again", notifications: [Self.entry("j1:succeeded:ops", at: 9)]) })
            _ = try await store.updateJob("j1", { $0.lastError = "quiet" }, recording: { _ in nil })
            #expect(try await store.events(job: "j1").map(\.kind) == ["succeeded", "note"])
            #expect(try await store.outbox(job: "j1") == [Self.entry("j1:succeeded:ops")])
            #expect(try await store.job("j1")?.lastError == "quiet")
            // An unknown job: .notFound, nothing written.
            await #expect(throws: CapstanError.self) { try await store.updateJob("nobody", { $0.status = .failed }, recording: { _ in JobEventWrite(kind: "failed", message: "x") }) }
            #expect(try await store.events(job: "nobody").isEmpty)
        }
    }
}
