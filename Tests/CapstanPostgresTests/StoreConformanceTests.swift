import CapstanCore
import CapstanPostgres
import CapstanSQLite
import Foundation
import Synchronization
import Testing

/// One set of test bodies, run against SQLiteStateStore and PostgresStateStore: both stores
/// provably keep the repository contract (Repositories.swift) the same way.
@Suite("State store conformance (SQLite and PostgreSQL)")
struct StoreConformanceTests {
    static let t0 = Date(timeIntervalSince1970: 1_700_000_000)
    static let offer = Offer(provider: "sim", instanceType: "sim.8xh100", region: "r-east", zone: "r-east-a", gpuName: "H100", gpusPerNode: 8, vcpus: 96, memoryGiB: 1024.5,
                             onDemandPricePerHour: 20.25, spotPricePerHour: 10.125, availability: .available, maxNodes: 4, details: ["gpuMemoryMiB": "81920"])

    static func cluster(_ name: String, id: String? = nil, status: ClusterStatus = .provisioning, at offset: Double = 0) -> Cluster {
        var c = Cluster(id: id ?? UUID().uuidString.lowercased(), name: name, request: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2, regions: ["r-east"], maxPricePerHour: 50, providers: ["sim"]), createdAt: t0.addingTimeInterval(offset))
        c.status = status
        return c
    }

    static func job(_ id: String, name: String? = nil, status: JobStatus = .pending, at offset: Double = 0) -> JobRecord {
        var j = JobRecord(id: id, name: name ?? id, spec: "name: \(id)\nrun: python train.py\n", specFolder: "/work", settings: "{\"heartbeatSeconds\":10}", clusterName: "c-\(id)", ownsCluster: true, storage: "file:///bucket", createdAt: t0.addingTimeInterval(offset))
        j.status = status
        return j
    }

    @Test("clusters: insert, a live name is taken, finished names are history, lookups and updates", arguments: StoreKind.allCases)
    func clusters(kind: StoreKind) async throws {
        try await kind.withStore { store in
            var a = Self.cluster("alpha", id: "c1", status: .terminated, at: 0)
            a.offer = Self.offer
            a.spot = true
            a.pricePerHour = 40.5
            a.intentKey = "k1"
            a.readyAt = Self.t0.addingTimeInterval(60)
            a.terminatedAt = Self.t0.addingTimeInterval(120)
            a.lastError = "boom"
            a.idleMinutes = 30
            try await store.insert(a)
            await #expect(try store.cluster(id: "c1") == a)

            // A finished cluster leaves its name free; a live one takes it.
            let b = Self.cluster("alpha", id: "c2", status: .running, at: 10)
            try await store.insert(b)
            let dup = Self.cluster("alpha", id: "c3", status: .provisioning, at: 20)
            let e = await #expect(throws: CapstanError.self) { try await store.insert(dup) }
            #expect(e?.code == .invalidRequest)
            #expect(e?.message.contains("alpha") == true)
            // The same id twice is refused too.
            let sameID = Self.cluster("other", id: "c2", status: .terminated, at: 30)
            let idTaken = await #expect(throws: CapstanError.self) { try await store.insert(sameID) }
            #expect(idTaken?.code == .invalidRequest)

            // Live first, else the newest finished one.
            await #expect(try store.cluster(named: "alpha")?.id == "c2")
            var bDone = b
            bDone.status = .terminated
            try await store.update(bDone)
            await #expect(try store.cluster(named: "alpha")?.id == "c2")  // newest finished
            try await store.insert(Self.cluster("alpha", id: "c4", status: .failed, at: 5))
            await #expect(try store.cluster(named: "alpha")?.id == "c2")
            await #expect(try store.cluster(named: "nobody") == nil)
            await #expect(try store.cluster(id: "nope") == nil)

            try await store.insert(Self.cluster("beta", id: "c5", status: .running, at: 40))
            await #expect(try store.clusters().map(\.id) == ["c5"])
            await #expect(try store.clusters(includeFinished: true).map(\.id) == ["c1", "c4", "c2", "c5"])
            // By name: every one of those names, live or finished, oldest first.
            await #expect(try store.clusters(named: ["alpha", "beta", "alpha"]).map(\.id) == ["c1", "c4", "c2", "c5"])
            await #expect(try store.clusters(named: ["beta", "nobody"]).map(\.id) == ["c5"])
            await #expect(try store.clusters(named: []).isEmpty)

            // Updating a cluster that is not there is an error, not a silent no-op.
            let ghost = Self.cluster("ghost", id: "c-ghost")
            let missing = await #expect(throws: CapstanError.self) { try await store.update(ghost) }
            #expect(missing?.code == .notFound)
        }
    }

    @Test("clusters: of 10 concurrent inserts of one live name exactly one lands; the others are invalidRequest", arguments: StoreKind.allCases)
    func concurrentClusterNames(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let codes = try await withThrowingTaskGroup(of: CapstanError.Code?.self) { g in
                for n in 0..<10 {
                    g.addTask {
                        do {
                            try await store.insert(Self.cluster("race", id: "r\(n)", status: .provisioning, at: Double(n)))
                            return nil
                        } catch let e as CapstanError {
                            return e.code
                        }
                    }
                }
                var out: [CapstanError.Code?] = []
                for try await c in g { out.append(c) }
                return out
            }
            #expect(codes.filter { $0 == nil }.count == 1)
            #expect(codes.compactMap { $0 }.allSatisfy { $0 == .invalidRequest })
            await #expect(try store.clusters().count == 1)
        }
    }

    @Test("launch intents: insert, status and error (kept when not given), filters, oldest first", arguments: StoreKind.allCases)
    func intents(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let tags = [CapstanTags.managed: "true", CapstanTags.clusterID: "c1", "team": "ml"]
            let i1 = LaunchIntent(key: "k1", clusterID: "c1", provider: "sim", offer: Self.offer, count: 2, spot: true, tags: tags, createdAt: Self.t0, updatedAt: Self.t0, pid: 4242)
            let i2 = LaunchIntent(key: "k2", clusterID: "c2", provider: "sim", offer: Self.offer, count: 1, spot: false, tags: [:], createdAt: Self.t0.addingTimeInterval(1), updatedAt: Self.t0.addingTimeInterval(1), pid: 1)
            let i3 = LaunchIntent(key: "k3", clusterID: "c1", provider: "aws", offer: Self.offer, count: 1, spot: false, tags: [:], createdAt: Self.t0.addingTimeInterval(2), updatedAt: Self.t0.addingTimeInterval(2), pid: 1)
            for i in [i3, i1, i2] { try await store.insert(i) }
            await #expect(try store.intent("k1") == i1)
            await #expect(try store.intent("nope") == nil)
            let keyTaken = await #expect(throws: CapstanError.self) { try await store.insert(i1) }
            #expect(keyTaken?.code == .invalidRequest)

            try await store.setIntent("k1", status: .abandoned, error: "its process died")
            try await store.setIntent("k1", status: .abandoned)
            let k1 = try #require(try await store.intent("k1"))
            #expect(k1.status == .abandoned && k1.error == "its process died" && k1.updatedAt > Self.t0)
            // Only a pending intent is abandoned: one its process closed meanwhile keeps its status.
            try await store.setIntent("k2", status: .launched)
            try await store.setIntent("k2", status: .abandoned, error: "late")
            let k2 = try #require(try await store.intent("k2"))
            #expect(k2.status == .launched && k2.error == nil)

            await #expect(try store.intents().map(\.key) == ["k1", "k2", "k3"])
            await #expect(try store.intents(cluster: "c1").map(\.key) == ["k1", "k3"])
            await #expect(try store.intents(status: .pending).map(\.key) == ["k3"])
            await #expect(try store.intents(cluster: "c1", status: .abandoned).map(\.key) == ["k1"])
            await #expect(try store.intents(cluster: "c9").isEmpty)
        }
    }

    @Test("instances: insert, update, Capstan's tags stand whatever the provider echoes, cost", arguments: StoreKind.allCases)
    func instances(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let launched = Self.t0
            let first = Instance(id: "i-1", provider: "sim", instanceType: "sim.8xh100", region: "r-east", zone: "r-east-a", state: .pending, privateAddress: "10.0.0.1",
                                 spot: true, pricePerHour: 10, tags: [CapstanTags.node: "0", CapstanTags.owner: "me", "Name": "one"], launchedAt: launched,
                                 details: ["k": "v"], access: .local(LocalNodeAccess(folder: "/tmp/n", workdir: "/tmp/n/w")))
            let recorded = try await store.record(first, clusterID: "c1", intentKey: "k1")
            #expect(recorded == first)
            let rec = try #require(try await store.instance(provider: "sim", id: "i-1"))
            #expect(rec.instance == first && rec.clusterID == "c1" && rec.intentKey == "k1" && rec.state == .pending && rec.terminatedAt == nil && rec.launchedAt == launched)
            #expect(abs(rec.cost(now: launched.addingTimeInterval(1800)) - 5) < 0.001)

            // The provider drops one of Capstan's tags and echoes another differently: Capstan's stand.
            var echoed = first
            echoed.state = .running
            echoed.publicAddress = "203.0.113.7"
            echoed.tags = [CapstanTags.node: "5", "Name": "renamed"]
            let merged = try await store.record(echoed, clusterID: "other", intentKey: "other")
            #expect(merged.tags == [CapstanTags.node: "0", CapstanTags.owner: "me", "Name": "renamed"])
            let after = try #require(try await store.instance(provider: "sim", id: "i-1"))
            #expect(after.instance == merged && after.state == .running && after.clusterID == "c1" && after.intentKey == "k1")

            var gone = echoed
            gone.state = .terminated
            try await store.record(gone, clusterID: "c1", intentKey: "k1")
            let ended = try #require(try await store.instance(provider: "sim", id: "i-1"))
            #expect(ended.state == .terminated && ended.terminatedAt != nil)
            // The end stands once recorded.
            try await store.record(gone, clusterID: "c1", intentKey: "k1")
            await #expect(try store.instance(provider: "sim", id: "i-1")?.terminatedAt == ended.terminatedAt)

            let second = Instance(id: "i-0", provider: "sim", instanceType: "t", region: "r", state: .running, launchedAt: launched)
            let third = Instance(id: "i-9", provider: "aws", instanceType: "t", region: "r", state: .running, launchedAt: launched.addingTimeInterval(-5))
            try await store.record(second, clusterID: "c1", intentKey: "k1")
            try await store.record(third, clusterID: "c2", intentKey: "k2")
            await #expect(try store.instances(cluster: "c1").map(\.id) == ["i-0", "i-1"])
            await #expect(try store.instances(cluster: "c2").map(\.id) == ["i-9"])
            await #expect(Set(try store.allInstances().map(\.id)) == ["i-0", "i-1", "i-9"])
            await #expect(try store.instance(provider: "aws", id: "i-1") == nil)
        }
    }

    @Test("instances by clusters and by providers: one set query each, the same lists as one query per cluster", arguments: StoreKind.allCases)
    func instanceSets(kind: StoreKind) async throws {
        try await kind.withStore { store in
            for (i, cluster) in ["c1", "c2", "c3"].enumerated() {
                for n in 0..<(i + 1) {
                    let inst = Instance(id: "\(cluster)-\(n)", provider: n == 0 ? "sim" : "aws", instanceType: "t", region: "r", state: .running,
                                        tags: [CapstanTags.node: "\(n)"], launchedAt: Self.t0.addingTimeInterval(Double(10 - n)))
                    try await store.record(inst, clusterID: cluster, intentKey: "k-\(cluster)")
                }
            }
            let sets = try await store.instances(clusters: ["c1", "c3", "c3", "nope"])
            #expect(Set(sets.keys) == ["c1", "c3"])
            for c in ["c1", "c3"] { #expect(sets[c] == (try await store.instances(cluster: c)), "\(c)") }
            #expect(try await store.instances(clusters: []).isEmpty)
            let aws = try await store.instances(providers: ["aws"])
            #expect(Set(aws.map(\.id)) == ["c2-1", "c3-1", "c3-2"])
            #expect(Set(try await store.instances(providers: ["sim", "aws"]).map(\.id)) == Set(try await store.allInstances().map(\.id)))
            #expect(try await store.instances(providers: []).isEmpty)
        }
    }

    @Test("instances: concurrent records of one instance all land, Capstan's tags kept", arguments: StoreKind.allCases)
    func concurrentRecords(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let base = Instance(id: "i-c", provider: "sim", instanceType: "t", region: "r", state: .pending, tags: [CapstanTags.node: "3"], launchedAt: Self.t0)
            try await withThrowingTaskGroup(of: Void.self) { g in
                for n in 0..<10 {
                    g.addTask {
                        var i = base
                        i.state = .running
                        i.tags = n == 0 ? base.tags : ["echo": "\(n)"]
                        try await store.record(i, clusterID: "c", intentKey: "k")
                    }
                }
                try await g.waitForAll()
            }
            let rec = try #require(try await store.instance(provider: "sim", id: "i-c"))
            #expect(rec.instance.tags[CapstanTags.node] == "3")
            await #expect(try store.allInstances().count == 1)
        }
    }

    @Test("jobs: insert, ids are unique, by id or newest by name, paging filters status in the query, unfinished oldest first", arguments: StoreKind.allCases)
    func jobs(kind: StoreKind) async throws {
        try await kind.withStore { store in
            var full = Self.job("train-aaaaaa", name: "train", status: .running, at: 0)
            full.attempt = 2
            full.restarts = 1
            full.latestCheckpoint = 400
            full.startedAt = Self.t0.addingTimeInterval(5)
            full.lastError = "node 1: exit 1"
            full.controllerPID = 777
            full.controllerFence = 12
            full.controllerHolder = "host:777"
            full.metrics = "{\"step\":400,\"loss\":1.25}"
            try await store.insert(full)
            await #expect(try store.job("train-aaaaaa") == full)
            let dup = await #expect(throws: CapstanError.self) { try await store.insert(Self.job("train-aaaaaa")) }
            #expect(dup?.code == .invalidRequest)

            try await store.insert(Self.job("train-bbbbbb", name: "train", status: .succeeded, at: 10))
            await #expect(try store.job("train")?.id == "train-bbbbbb")  // the newest by name
            await #expect(try store.job("nope") == nil)

            for i in 1...30 { try await store.insert(Self.job("done-\(i)", status: [.succeeded, .failed, .cancelled][i % 3], at: 20 + Double(i))) }
            try await store.insert(Self.job("new-pending", at: 1000))
            await #expect(try store.jobs(includeFinished: false, limit: 5).map(\.id) == ["new-pending", "train-aaaaaa"])
            await #expect(try store.jobs(includeFinished: false, limit: 1).map(\.id) == ["new-pending"])
            let page = try await store.jobs(includeFinished: true, limit: 10)
            #expect(page.map(\.id) == ["new-pending"] + (22...30).reversed().map { "done-\($0)" })
            await #expect(try store.jobs().count == 33)
            await #expect(try store.unfinishedJobs().map(\.id) == ["train-aaaaaa", "new-pending"])

            var changed = full
            changed.status = .succeeded
            changed.finishedAt = Self.t0.addingTimeInterval(99)
            try await store.update(changed)
            await #expect(try store.job("train-aaaaaa") == changed)
            await #expect(try store.unfinishedJobs().map(\.id) == ["new-pending"])
            let missing = await #expect(throws: CapstanError.self) { try await store.update(Self.job("ghost")) }
            #expect(missing?.code == .notFound)
        }
    }

    @Test("updateJob: one transaction; a missing job is notFound; a throwing change writes nothing; concurrent changes are all kept (a cancel is never lost)", arguments: StoreKind.allCases)
    func updateJob(kind: StoreKind) async throws {
        try await kind.withStore { store in
            try await store.insert(Self.job("j", status: .running))
            let e = await #expect(throws: CapstanError.self) { try await store.updateJob("nope") { $0.restarts += 1 } }
            #expect(e?.code == .notFound)

            struct Refused: Error {}
            await #expect(throws: (any Error).self) {
                try await store.updateJob("j") { j in
                    j.restarts = 99
                    throw Refused()
                }
            }
            await #expect(try store.job("j")?.restarts == 0)

            // 20 concurrent read-modify-writes, and a cancel among them: every one lands.
            try await withThrowingTaskGroup(of: Void.self) { g in
                for n in 0..<20 {
                    g.addTask {
                        try await store.updateJob("j") { j in
                            j.restarts += 1
                            if n == 7 { j.status = .cancelling }
                        }
                    }
                }
                try await g.waitForAll()
            }
            let j = try #require(try await store.job("j"))
            #expect(j.restarts == 20)
            #expect(j.status == .cancelling)
            let returned = try await store.updateJob("j") { $0.status = .cancelled }
            #expect(returned.status == .cancelled && returned.restarts == 20)
        }
    }

    @Test("attempts and checkpoints: saved (insert or replace), in order", arguments: StoreKind.allCases)
    func attemptsAndCheckpoints(kind: StoreKind) async throws {
        try await kind.withStore { store in
            var a2 = JobAttemptRecord(jobID: "j", attempt: 2, nodes: ["i-1", "i-0"], masterAddress: "10.0.0.1", masterPort: 29500, resumeStep: 100, startedAt: Self.t0)
            let a1 = JobAttemptRecord(jobID: "j", attempt: 1, nodes: ["i-1"], masterAddress: "10.0.0.1", masterPort: 29500, resumeStep: nil, startedAt: Self.t0)
            try await store.save(a2)
            try await store.save(a1)
            try await store.save(JobAttemptRecord(jobID: "other", attempt: 1, nodes: [], masterAddress: "x", masterPort: 1, resumeStep: nil, startedAt: Self.t0))
            a2.outcome = .failed
            a2.endedAt = Self.t0.addingTimeInterval(30)
            a2.failureKind = "command"
            a2.failedNode = 1
            a2.exitCode = 137
            a2.message = "killed"
            try await store.save(a2)
            await #expect(try store.attempts(job: "j") == [a1, a2])
            await #expect(try store.attempt(job: "j", number: 2) == a2)
            await #expect(try store.attempt(job: "j", number: 3) == nil)

            let c300 = CheckpointRecord(jobID: "j", step: 300, attempt: 2, bytes: 5_000_000_000, committedAt: Self.t0)
            var c100 = CheckpointRecord(jobID: "j", step: 100, attempt: 1, bytes: 1 << 20, committedAt: Self.t0)
            try await store.save(c300)
            try await store.save(c100)
            c100.deleted = true
            try await store.save(c100)
            try await store.save(CheckpointRecord(jobID: "k", step: 1, attempt: 1, bytes: 1, committedAt: Self.t0))
            await #expect(try store.checkpoints(job: "j") == [c100, c300])
            await #expect(try store.checkpoints(job: "none").isEmpty)
        }
    }

    @Test("events: never fail, newest `limit` returned oldest first, per cluster and per job", arguments: StoreKind.allCases)
    func events(kind: StoreKind) async throws {
        try await kind.withStore { store in
            for i in 0..<10 { await store.event("tick", "cluster event \(i)", cluster: i % 2 == 0 ? "c-even" : "c-odd") }
            await store.event("global", "no cluster")
            for i in 0..<6 { await store.jobEvent("step", "job event \(i)", job: "j1", cluster: "c-even") }
            await store.jobEvent("other", "another job", job: "j2")

            let all = try await store.events()
            #expect(all.count == 18)
            #expect(all.map(\.message).prefix(3) == ["cluster event 0", "cluster event 1", "cluster event 2"])
            #expect(all.last?.message == "another job")
            #expect(zip(all, all.dropFirst()).allSatisfy { $0.id! < $1.id! })
            let lastThree = try await store.events(cluster: nil, limit: 3)
            #expect(lastThree.map(\.message) == ["job event 4", "job event 5", "another job"])

            let even = try await store.events(cluster: "c-even", limit: 4)
            #expect(even.map(\.message) == ["job event 2", "job event 3", "job event 4", "job event 5"])
            let odd = try await store.events(cluster: "c-odd")
            #expect(odd.map(\.message) == (0..<5).map { "cluster event \(2 * $0 + 1)" })
            #expect(odd.allSatisfy { $0.clusterID == "c-odd" && $0.kind == "tick" })

            let job = try await store.events(job: "j1", limit: 2)
            #expect(job.map(\.message) == ["job event 4", "job event 5"])
            await #expect(try store.events(job: "j1").count == 6)
            await #expect(try store.events(job: "j2").map(\.kind) == ["other"])
            await #expect(try store.events(job: "none").isEmpty)
            // Paging: ids above `after`, oldest first.
            let firstPage = try await store.events(job: "j1", after: 0, limit: 4)
            #expect(firstPage.map(\.message) == (0..<4).map { "job event \($0)" })
            let rest = try await store.events(job: "j1", after: firstPage.last!.id!, limit: 4)
            #expect(rest.map(\.message) == ["job event 4", "job event 5"])
            await #expect(try store.events(job: "j1", after: rest.last!.id!, limit: 4).isEmpty)
            await #expect(try store.events(job: "j2", after: 0, limit: 10).map(\.kind) == ["other"])
            await #expect(try store.events(cluster: "c-none").isEmpty)
            await #expect(try store.events(cluster: nil, limit: 0).isEmpty)
        }
    }

    @Test("offer cache: round trip per provider and request, expiry by age", arguments: StoreKind.allCases)
    func offerCache(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let offers = [Self.offer, Offer(provider: "sim", instanceType: "b", region: "r", gpusPerNode: 1)]
            await #expect(try store.cachedOffers(provider: "sim", requestKey: "k", maxAge: .seconds(60)) == nil)
            try await store.cacheOffers(offers, provider: "sim", requestKey: "k")
            let hit = try #require(try await store.cachedOffers(provider: "sim", requestKey: "k", maxAge: .seconds(60)))
            #expect(hit.offers == offers)
            #expect(abs(hit.fetchedAt.timeIntervalSinceNow) < 3600)
            await #expect(try store.cachedOffers(provider: "sim", requestKey: "other", maxAge: .seconds(60)) == nil)
            await #expect(try store.cachedOffers(provider: "aws", requestKey: "k", maxAge: .seconds(60)) == nil)
            // Replaced, not added to.
            try await store.cacheOffers([offers[1]], provider: "sim", requestKey: "k")
            await #expect(try store.cachedOffers(provider: "sim", requestKey: "k", maxAge: .seconds(60))?.offers == [offers[1]])
            // Older than maxAge: a miss.
            try await Task.sleep(for: .milliseconds(50))
            await #expect(try store.cachedOffers(provider: "sim", requestKey: "k", maxAge: .milliseconds(1)) == nil)
        }
    }

    @Test("API tokens: insert, duplicate id or hash refused, lookup, revoke by id and by name, touch", arguments: StoreKind.allCases)
    func tokens(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let laptop = APIToken(id: "tok_1", name: "laptop", hash: String(repeating: "a", count: 64), createdAt: Self.t0)
            let ci = APIToken(id: "tok_2", name: "ci", hash: String(repeating: "b", count: 64), createdAt: Self.t0.addingTimeInterval(1))
            try await store.insert(ci)
            try await store.insert(laptop)
            let sameID = await #expect(throws: CapstanError.self) { try await store.insert(APIToken(id: "tok_1", name: "x", hash: "c", createdAt: Self.t0)) }
            #expect(sameID?.code == .invalidRequest)
            let sameHash = await #expect(throws: CapstanError.self) { try await store.insert(APIToken(id: "tok_3", name: "x", hash: laptop.hash, createdAt: Self.t0)) }
            #expect(sameHash?.code == .invalidRequest)

            await #expect(try store.token(hash: laptop.hash) == laptop)
            await #expect(try store.token(hash: "nope") == nil)
            await #expect(try store.tokens().map(\.id) == ["tok_1", "tok_2"])

            let revokedAt = Self.t0.addingTimeInterval(100)
            let r1 = try #require(try await store.revokeToken("tok_1", at: revokedAt))
            #expect(r1.revokedAt == revokedAt && r1.isRevoked)
            // Revoking again keeps the first time.
            await #expect(try store.revokeToken("tok_1", at: revokedAt.addingTimeInterval(5))?.revokedAt == revokedAt)
            await #expect(try store.token(hash: laptop.hash)?.revokedAt == revokedAt)
            let byName = try #require(try await store.revokeToken("ci", at: revokedAt))
            #expect(byName.id == "tok_2" && byName.revokedAt == revokedAt)
            await #expect(try store.revokeToken("nobody", at: revokedAt) == nil)

            try await store.insert(APIToken(id: "tok_4", name: "twin", hash: "d", createdAt: Self.t0))
            try await store.insert(APIToken(id: "tok_5", name: "twin", hash: "e", createdAt: Self.t0))
            let twins = await #expect(throws: CapstanError.self) { try await store.revokeToken("twin", at: revokedAt) }
            #expect(twins?.code == .invalidRequest)
            await #expect(try store.revokeToken("tok_4", at: revokedAt)?.id == "tok_4")
            await #expect(try store.revokeToken("twin", at: revokedAt)?.id == "tok_5")  // the one live left

            let used = Self.t0.addingTimeInterval(200)
            try await store.touchToken("tok_2", at: used)
            await #expect(try store.token(hash: ci.hash)?.lastUsedAt == used)
            try await store.touchToken("nope", at: used)  // nothing to touch: no error
        }
    }

    @Test("owner id: stable, current first; createdAt is when the store was made", arguments: StoreKind.allCases)
    func owner(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let owner = try await store.ownerID()
            #expect(owner.range(of: "^[a-z0-9-]{1,64}$", options: .regularExpression) != nil)
            await #expect(try store.ownerID() == owner)
            await #expect(try store.ownerIDs() == [owner])
            let created = try await store.createdAt()
            #expect(created <= Date().addingTimeInterval(60) && created > Date().addingTimeInterval(-3600))
            await #expect(try store.createdAt() == created)
        }
    }

    /// `events -f` and the API's `?after=` page by id: an id given before another but committed
    /// after it would be skipped by a follower that already saw the later one.
    @Test("events paging: a follower paging with after= while 6 writers append sees every event exactly once, in id order", arguments: StoreKind.allCases)
    func eventPagingUnderWriters(kind: StoreKind) async throws {
        try await kind.withStore { store in
            let writers = 6, each = 60
            let done = Mutex(false)
            async let follower: [Int64] = {
                var seen: [Int64] = [], after: Int64 = 0
                // (Ids are set on stored events.)
                while true {
                    let finished = done.withLock { $0 }
                    let page = try await store.events(job: "paged", after: after, limit: 50)
                    seen += page.compactMap(\.id)
                    after = page.last?.id ?? after
                    if page.isEmpty && finished { return seen }
                }
            }()
            try await withThrowingTaskGroup(of: Void.self) { g in
                for w in 0..<writers {
                    g.addTask {
                        for i in 0..<each {
                            if i % 2 == 0 {
                                await store.jobEvent("step", "writer \(w) event \(i)", job: "paged", cluster: nil)
                            } else {
                                try await store.jobEvent("step", "writer \(w) event \(i)", job: "paged", cluster: nil, notifications: [])
                            }
                        }
                    }
                }
                try await g.waitForAll()
            }
            done.withLock { $0 = true }
            let seen = try await follower
            let all = try await store.events(job: "paged", after: 0, limit: 10_000).compactMap(\.id)
            #expect(all.count == writers * each)
            let same = seen == all  // (not in the expectation: it would print all 360 ids)
            #expect(same, "the follower missed \(Set(all).subtracting(seen).sorted()) and saw twice \(seen.count - Set(seen).count)")
        }
    }
}
