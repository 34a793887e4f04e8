import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Verbs of the built `capstan` that no other test drives directly: `reconcile`, `storage rm`
/// and the internal `job-controller`.
@Suite("capstan reconcile, storage rm, job-controller", .serialized)
struct CLIVerbTests {
    /// A home on the sim cloud whose instances outlive each `capstan` (a state file).
    struct SimHome {
        let dir = TempDir("capstan-verbs")
        init() {
            dir.write("config.yaml", "providers:\n  local:\n    enabled: false\n  sim:\n    bootSeconds: 0.3\n    stateFile: \(dir.file("sim-cloud.json"))\n")
        }
        static let up = ["up", "c1", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2"]
        func capstan(_ args: [String], crashAt: String? = nil) async throws -> ProcessResult {
            var env = ["CAPSTAN_HOME": dir.path]
            if let crashAt { env["CAPSTAN_TEST_CRASH_AT"] = crashAt }
            return try await runProcess(BuildProducts.capstan, args, environment: env, timeout: 120)
        }
        var cloud: SimulatedCloud { SimulatedCloud(configuration: .init(stateFile: dir.file("sim-cloud.json"))) }
        func store() throws -> SQLiteStateStore { try SQLiteStateStore(path: dir.file("state/capstan.db")) }
        /// Live instances at the sim cloud (terminating ones aside).
        func live() async throws -> [Instance] {
            try await cloud.describe(InstanceQuery()).filter { $0.state.isLive && $0.state != .terminating }
        }
        func report(_ r: ProcessResult) throws -> ReconcileReport {
            try JSONDecoder().decode(ReconcileReport.self, from: Data(r.stdout.utf8))
        }
    }

    // MARK: reconcile

    @Test("reconcile: an `up` killed while its nodes boot is completed, and said so; a second reconcile finds nothing to do")
    func reconcileRecoversCrashedUp() async throws {
        let home = SimHome(); defer { home.dir.cleanup() }
        let crashed = try await home.capstan(SimHome.up, crashAt: "up.waiting")
        #expect(crashed.status == 9, "the fault point was not reached: \(crashed.stderr)")
        await #expect(try home.store().cluster(named: "c1")?.status == .provisioning)
        let r = try await home.capstan(["reconcile"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("recovered clusters 1"), "\(r.stdout)")
        let c1 = try await #require(try home.store().cluster(named: "c1"))
        #expect(c1.status == .running)
        let live = try await home.live()
        #expect(live.count == 2 && live.allSatisfy { $0.tags[CapstanTags.clusterID] == c1.id }, "\(live.map(\.id))")
        await #expect(Set(try home.store().instances(cluster: c1.id).filter { !$0.state.isGone }.map(\.id)) == Set(live.map(\.id)))
        // Nothing left to repair: a report that says nothing was done.
        let again = try await home.capstan(["reconcile", "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        let report = try home.report(again)
        #expect(!report.didSomething && report.terminated.isEmpty && report.recoveredClusters.isEmpty, "\(again.stdout)")
        #expect(try await home.capstan(["down", "c1"]).status == 0)
        #expect(try await home.live().isEmpty)
    }

    @Test("reconcile: an instance of this home that no cluster owns is terminated and named; the running cluster is kept")
    func reconcileTerminatesOrphan() async throws {
        let home = SimHome(); defer { home.dir.cleanup() }
        #expect(try await home.capstan(SimHome.up).status == 0)
        let c1 = try await #require(try home.store().cluster(named: "c1"))
        // An instance tagged as node 0 of a cluster that has since been taken down.
        let store = try home.store()
        var gone = Cluster(name: "gone", request: ResourceRequest(nodes: 1))
        gone.status = .terminated
        gone.terminatedAt = Date()
        try await store.insert(gone)
        let offer = try #require(try await home.cloud.offers(for: ResourceRequest(gpu: "H100", gpusPerNode: 8)).first)
        let key = "cap-" + UUID().uuidString.lowercased()
        let orphan = try #require(try await home.cloud.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: key, tags: [
            CapstanTags.managed: "true", CapstanTags.owner: try store.ownerID(), CapstanTags.cluster: "gone",
            CapstanTags.clusterID: gone.id, CapstanTags.intent: key, CapstanTags.node: "0",
        ], name: "capstan-gone")).first)
        // Another owner's instance (another home's) is not this reconcile's to touch.
        let foreign = try #require(try await home.cloud.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: key + "-f", tags: [
            CapstanTags.managed: "true", CapstanTags.owner: "someone-else", CapstanTags.cluster: "theirs",
            CapstanTags.clusterID: "cl-theirs", CapstanTags.intent: key + "-f", CapstanTags.node: "0",
        ], name: "capstan-theirs")).first)

        let r = try await home.capstan(["reconcile"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("terminated 1,") && r.stdout.contains("  terminated \(orphan.id)"), "\(r.stdout)")
        let after = try await home.cloud.describe(InstanceQuery(ids: [orphan.id, foreign.id], includeTerminated: true))
        #expect(after.first { $0.id == orphan.id }.map { !$0.state.isLive || $0.state == .terminating } == true, "\(after)")
        #expect(after.first { $0.id == foreign.id }?.state.isLive == true && after.first { $0.id == foreign.id }?.state != .terminating, "another owner's instance was touched: \(after)")
        await #expect(try home.store().cluster(named: "c1")?.status == .running)
        #expect(try await home.live().filter { $0.tags[CapstanTags.clusterID] == c1.id }.count == 2)
        _ = try await home.cloud.terminate(ids: [foreign.id])
        #expect(try await home.capstan(["down", "c1"]).status == 0)
    }

    @Test("reconcile: a `down` killed half-way is finished, and the report says so")
    func reconcileFinishesDown() async throws {
        let home = SimHome(); defer { home.dir.cleanup() }
        #expect(try await home.capstan(SimHome.up).status == 0)
        let killed = try await home.capstan(["down", "c1"], crashAt: "down.marked")
        #expect(killed.status == 9, "the fault point was not reached: \(killed.stderr)")
        await #expect(try home.store().cluster(named: "c1")?.status == .terminating)
        let r = try await home.capstan(["reconcile", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try home.report(r)
        #expect(report.finishedTerminations.count == 1, "\(r.stdout)")
        await #expect(try home.store().cluster(named: "c1")?.status == .terminated)
        #expect(try await home.live().isEmpty)
        // The text form names it too.
        let home2 = SimHome(); defer { home2.dir.cleanup() }
        #expect(try await home2.capstan(SimHome.up).status == 0)
        #expect(try await home2.capstan(["down", "c1"], crashAt: "down.marked").status == 9)
        let text = try await home2.capstan(["reconcile"])
        #expect(text.status == 0 && text.stdout.contains("finished terminations 1"), "\(text.stdout)")
        #expect(try await home2.live().isEmpty)
    }

    // MARK: storage rm

    @Test("storage rm: removes the one object (its emptied folders too), leaves its neighbours, refuses '..' and reserved keys, and a missing object is not an error")
    func storageRemove() async throws {
        let home = TempDir(), t = TempDir(); defer { home.cleanup(); t.cleanup() }
        func capstan(_ args: [String]) async throws -> ProcessResult {
            try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": home.path])
        }
        _ = t.write("src.txt", "payload")
        let bucket = "file://\(t.path)/bucket"
        for key in ["top.txt", "a/b/one.txt", "a/b/two.txt"] {
            let put = try await capstan(["storage", "cp", t.file("src.txt"), "\(bucket)/\(key)"])
            #expect(put.status == 0, "\(put.stderr)")
        }
        func keys() async throws -> [String] {
            let ls = try await capstan(["storage", "ls", bucket, "--json"])
            #expect(ls.status == 0, "\(ls.stderr)")
            struct Row: Decodable { var key: String }
            return try JSONDecoder().decode([Row].self, from: Data(ls.stdout.utf8)).map(\.key).sorted()
        }
        #expect(try await keys() == ["a/b/one.txt", "a/b/two.txt", "top.txt"])

        let rm = try await capstan(["storage", "rm", "\(bucket)/a/b/one.txt"])
        #expect(rm.status == 0, "\(rm.stderr)")
        #expect(try await keys() == ["a/b/two.txt", "top.txt"])
        #expect(!FileManager.default.fileExists(atPath: t.file("bucket/a/b/one.txt")))
        // The last object of a folder: the folder goes with it, metadata included.
        #expect(try await capstan(["storage", "rm", "\(bucket)/a/b/two.txt"]).status == 0)
        #expect(try await keys() == ["top.txt"])
        #expect(!FileManager.default.fileExists(atPath: t.file("bucket/a")))
        #expect(!FileManager.default.fileExists(atPath: t.file("bucket/.capstan-meta/a")))

        // '..' anywhere: refused before any I/O.
        for uri in ["\(bucket)/a/../top.txt", "\(bucket)/../bucket/top.txt"] {
            let bad = try await capstan(["storage", "rm", uri])
            #expect(bad.status == 1 && bad.stderr.contains("Invalid bucket URI"), "\(uri): \(bad.status) \(bad.stderr)")
        }
        // The store's own records are not objects to delete: top.txt keeps its checksum record.
        #expect(FileManager.default.fileExists(atPath: t.file("bucket/.capstan-meta/top.txt.json")))
        let reserved = try await capstan(["storage", "rm", "\(bucket)/.capstan-meta/top.txt.json"])
        #expect(reserved.status == 1 && reserved.stderr.contains("reserved prefix"), "\(reserved.status) \(reserved.stderr)")
        #expect(FileManager.default.fileExists(atPath: t.file("bucket/.capstan-meta/top.txt.json")), "top.txt's checksum record was deleted")
        #expect(try await keys() == ["top.txt"])
        #expect(try String(contentsOfFile: t.file("bucket/top.txt"), encoding: .utf8) == "payload")

        // A key that is not there: like S3's DELETE, done (nothing to remove), nothing else touched.
        let missing = try await capstan(["storage", "rm", "\(bucket)/no/such.txt"])
        #expect(missing.status == 0, "\(missing.status) \(missing.stderr)")
        #expect(try await keys() == ["top.txt"])
        #expect(!FileManager.default.fileExists(atPath: t.file("bucket/no")))
    }

    @Test("storage rm on s3:// (SeaweedFS): removes the object, leaves its neighbour; a missing key is not an error")
    func storageRemoveS3() async throws {
        let endpoint = try TestServers.seaweed
        let creds = try TestServers.seaweedCredentials
        let home = TempDir(), t = TempDir(); defer { home.cleanup(); t.cleanup() }
        let env = ["CAPSTAN_HOME": home.path, "AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_REGION": "us-east-1"]
        let admin = try S3ObjectStore(location: "s3://capstan-rm", credentials: creds, configuration: S3Configuration(endpoint: endpoint, region: "us-east-1", uploadStateFolder: t.file("uploads")))
        try await admin.createBucket()
        let prefix = "run-\(UUID().uuidString.prefix(8))"
        _ = t.write("src.txt", "payload")
        for key in ["x.txt", "y.txt"] {
            let put = try await runProcess(BuildProducts.capstan, ["storage", "cp", t.file("src.txt"), "s3://capstan-rm/\(prefix)/\(key)"], environment: env)
            #expect(put.status == 0, "\(put.stderr)")
        }
        let rm = try await runProcess(BuildProducts.capstan, ["storage", "rm", "s3://capstan-rm/\(prefix)/x.txt"], environment: env)
        #expect(rm.status == 0, "\(rm.stderr)")
        #expect(try await admin.list(prefix: prefix + "/").map(\.key) == ["\(prefix)/y.txt"])
        let missing = try await runProcess(BuildProducts.capstan, ["storage", "rm", "s3://capstan-rm/\(prefix)/x.txt"], environment: env)
        #expect(missing.status == 0, "\(missing.stderr)")
        let bad = try await runProcess(BuildProducts.capstan, ["storage", "rm", "s3://capstan-rm/\(prefix)/../y.txt"], environment: env)
        #expect(bad.status == 1 && bad.stderr.contains("Invalid bucket URI"), "\(bad.stderr)")
        #expect(try await admin.list(prefix: prefix + "/").map(\.key) == ["\(prefix)/y.txt"])
        try await admin.delete(key: "\(prefix)/y.txt")
    }

    // MARK: job-controller

    @Test("job-controller: an unknown job is an error; one drives a job whose controller died to its end while a second is refused; a finished job returns at once")
    func jobController() async throws {
        let home = SmallJobHome(run: "'while [ ! -f \"$GO\" ]; do sleep 0.1; done; echo finished-by-the-new-controller'", env: ["GO": "GO_FILE"])
        defer { home.dir.cleanup() }
        let go = home.dir.file("go")
        home.dir.write("job/job.yaml", try String(contentsOfFile: home.spec, encoding: .utf8).replacingOccurrences(of: "GO_FILE", with: go))

        let unknown = try await home.capstan(["job-controller", "job-nosuch"])
        #expect(unknown.status == 1 && unknown.stderr.contains("No job 'job-nosuch'"), "\(unknown.status) \(unknown.stderr)")

        let launched = try await home.capstan(["launch", home.spec, "--detach"] + SmallJobHome.fast)
        #expect(launched.status == 0, "\(launched.stderr)")
        let job = try await #require(try home.job())
        // The detached controller has the job running; it dies.
        let running = try await eventually(timeout: 60) { let j = try await home.job(); return j?.status == .running && j?.controllerPID != nil }
        let seen = try? await home.job()
        #expect(running, "\(String(describing: seen))")
        let first = try await #require(try home.job()?.controllerPID)
        kill(first, SIGKILL)
        // Gone (or a zombie nobody reaped yet).
        #expect(try await eventually(timeout: 60) { kill(first, 0) != 0 || ((try? String(contentsOfFile: "/proc/\(first)/stat", encoding: .utf8))?.contains(") Z ") ?? true) }, "controller \(first) still alive")
        await #expect(try home.job()?.status == .running)

        // A new controller takes over…
        async let taken = home.capstan(["job-controller", job.id], timeout: 180)
        #expect(try await eventually(timeout: 60) { let pid = try await home.job()?.controllerPID; return pid != nil && pid != first }, "no new controller recorded")
        // …and a second one is refused while it works.
        let second = try await home.capstan(["job-controller", job.id])
        #expect(second.status == 1 && second.stderr.contains("Another capstan process is controlling job \(job.id)"), "\(second.status) \(second.stderr)")
        FileManager.default.createFile(atPath: go, contents: nil)
        let r = try await taken
        #expect(r.status == 0 && r.stdout.contains("job \(job.id) succeeded"), "\(r.status) \(r.stdout) \(r.stderr)")
        let final = try await #require(try home.job())
        #expect(final.status == .succeeded && final.attempt == 1, "the running attempt was followed, not restarted: attempt \(final.attempt)")
        #expect(home.log(job.id).contains("finished-by-the-new-controller"))

        // Finished: it says so and returns without starting anything.
        let done = try await home.capstan(["job-controller", job.id])
        #expect(done.status == 0 && done.stdout.contains("job \(job.id) succeeded"), "\(done.stdout) \(done.stderr)")
        let after = try await #require(try home.job())
        #expect(after.status == .succeeded && after.attempt == 1, "attempt \(after.attempt)")
    }
}
