import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTestSupport
import CapstanTrainer
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A test server on this machine's loopback, reached from the lab's hosts through a relay on the
/// lab bridge's address (scripts/netns-lab.sh; Fixtures/tcp_relay.py). Killed on ``stop()``.
struct LabRelay {
    let process: Process
    /// `http://<bridge address>:<port>` as the hosts reach it.
    let endpoint: String

    static func start(_ lab: NetnsLab, to target: URL) throws -> LabRelay {
        try start(bridge: lab.subnet + ".1", to: target)
    }

    /// A relay listening on `bridge` (a lab bridge's own address) to `target`.
    static func start(bridge: String, to target: URL) throws -> LabRelay {
        let relay = Process()
        relay.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        relay.arguments = ["python3", JobHome.repoRoot + "/Tests/CapstanIntegrationTests/Fixtures/tcp_relay.py", bridge, target.host ?? "127.0.0.1", "\(target.port ?? 80)"]
        let out = Pipe()
        relay.standardOutput = out
        // Not the test's own stderr: a child holding it would keep `swift test` waiting.
        relay.standardError = FileHandle.nullDevice
        try relay.run()
        let port = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return LabRelay(process: relay, endpoint: "http://\(bridge):\(port)")
    }

    /// SIGKILL: a child of the test process may inherit a mask that blocks SIGTERM.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

extension LambdaEmulator {
    /// The `hosts` switch for the lab's hosts (1-based): each launched instance is one of them.
    static func hosts(_ lab: NetnsLab, _ indices: [Int]) -> [[String: Any]] {
        indices.map { i in
            ["address": lab.hosts[i - 1].address, "authorized_keys": lab.dir.file("host\(i)/authorized_keys"), "netns": lab.hosts[i - 1].ns,
             "sshd_pid_file": lab.dir.file("host\(i)/sshd.pid"), "wipe": [lab.dir.file("host\(i)/home/.capstan-node")]]
        }
    }

    /// Terminates an instance through the public API, as a user in Lambda's console would.
    func terminateThroughAPI(_ id: String) throws {
        var req = URLRequest(url: URL(string: endpoint + "/instance-operations/terminate")!)
        req.httpMethod = "POST"
        req.setValue("Bearer \(Self.apiKey)", forHTTPHeaderField: "Authorization")
        req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        req.httpBody = try JSONSerialization.data(withJSONObject: ["instance_ids": [id]])
        let status = LockedBox<Int>(0)
        let done = DispatchSemaphore(value: 0)
        URLSession.shared.dataTask(with: req) { _, response, _ in
            status.withLock { $0 = (response as? HTTPURLResponse)?.statusCode ?? 0 }
            done.signal()
        }.resume()
        done.wait()
        let code = status.withLock { $0 }
        guard code == 200 else { throw CapstanError(.io, "terminating \(id) through the emulator answered HTTP \(code)") }
    }
}

extension JobTests {
    @Test("lambda: a 2-node job on the C Lambda plugin runs on the instances the cloud hands out (hosts with their own network stacks and real sshd): checkpoints go to the bucket, a killed training process resumes, an instance terminated in the cloud is replaced, and exactly the instances the job needed were ever billed")
    func lambdaJob() async throws {
        let lab = try await NetnsLab.up(3)
        defer { lab.down() }
        let emulator = try await LambdaEmulator(faults: [
            "hosts": LambdaEmulator.hosts(lab, [1, 2, 3]), "boot_seconds": 2.0, "forget_terminated_seconds": 3600.0,
        ])
        defer { emulator.stop() }
        // Attempts 1 and 2 hold at step 140 (the lab's hosts share this file system): each break
        // lands mid-attempt however late the test looks.
        var home = try JobHome(steps: 150, every: 10, pause: 0.06, hold: [(1, 140), (2, 140)])
        defer { home.dir.cleanup() }
        home.dir.write("lambda-key", "api_key = \(LambdaEmulator.apiKey)\n")
        home.dir.write("config.yaml", """
            providers:
              local: {enabled: false}
              lambda:
                endpoint: \(emulator.endpoint)
                apiKeyFile: \(home.dir.file("lambda-key"))
                sshUser: root
            # The lab's bridge is another machine to the hosts: plain HTTP to the bucket's relay
            # there must be allowed.
            storage:
              allowInsecureHTTP: true

            """)
        // The bucket is SeaweedFS (S3), which the instances reach through a relay on the lab
        // bridge; gloo talks over each host's own interface.
        let seaweed = try #require(URL(string: try TestServers.seaweed))
        let relay = try LabRelay.start(lab, to: seaweed)
        defer { relay.stop() }
        let creds = try TestServers.seaweedCredentials
        home.env = [
            "CAPSTAN_PLUGIN_PATH": try await LambdaPlugin.build(),
            "AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey,
            "AWS_ENDPOINT_URL_S3": relay.endpoint, "AWS_REGION": "us-east-1",
        ]
        let spec = try String(contentsOfFile: home.spec, encoding: .utf8)
            .replacingOccurrences(of: "storage: file://" + home.dir.file("bucket"), with: "storage: s3://capstan-lambda/runs")
            .replacingOccurrences(of: "GLOO_SOCKET_IFNAME: \"lo\"", with: "GLOO_SOCKET_IFNAME: \"eth0\"")
        home.dir.write("job/job.yaml", spec)
        var s3 = S3Configuration(endpoint: relay.endpoint, region: "us-east-1", uploadStateFolder: home.dir.file("uploads"))
        s3.allowInsecureHTTP = true
        try await S3ObjectStore(location: "s3://capstan-lambda/runs", credentials: creds, configuration: s3).createBucket()

        let launch = try home.startLaunch()
        defer { if launch.isRunning { launch.terminate() } }
        let started = try await home.wait(timeout: 240) { (try await home.job()?.latestCheckpoint ?? 0) >= 20 }
        #expect(started, "\((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
        let job0 = try await #require(try home.job())
        let store = try home.store()
        let cluster = try await #require(try store.cluster(named: job0.clusterName))
        // Capstan numbered the gang itself (the plugin returns no node tags): one node per index.
        let gang = try await store.instances(cluster: cluster.id).filter { !$0.state.isGone }.map(\.instance)
        #expect(gang.map(\.nodeIndex).sorted() == [0, 1], "\(gang.map { $0.tags })")
        #expect(gang.allSatisfy { $0.provider == "lambda" })
        let a1 = try await #require(try store.attempt(job: job0.id, number: 1))
        func host(of instanceID: String) async throws -> Int {
            let address = try #require(try await store.instances(cluster: cluster.id).first { $0.id == instanceID }?.instance.privateAddress)
            return try #require(lab.hosts.firstIndex { $0.address == address }) + 1
        }
        // The master is node 0's host.
        #expect(a1.masterAddress == lab.hosts[try await host(of: a1.nodes[0]) - 1].address)

        // 1. kill -9 of node 1's training process: the gang restarts on the same instances.
        let h1 = try await host(of: a1.nodes[1])
        let pidFile = lab.dir.file("host\(h1)/home/.capstan-node/jobs/\(job0.id)/attempt-1/worker-1.pid")
        let pid = try #require(pid_t(((try? String(contentsOfFile: pidFile, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)), "no \(pidFile)")
        #expect(!lab.processes(h1, containing: "train.py").isEmpty)
        kill(pid, SIGKILL)
        #expect(try await home.wait(timeout: 180) {
            guard let a = try await home.store().attempt(job: job0.id, number: 2), let c = try await home.job()?.latestCheckpoint else { return false }
            return c > (a.resumeStep ?? 0) + 10
        }, "\(home.logTail(job: job0.id))")
        let a2 = try await #require(try store.attempt(job: job0.id, number: 2))
        #expect(a2.nodes == a1.nodes, "a killed process needs no new capacity")
        #expect(try emulator.counter("launched") == 2)

        // 2. Node 0's instance is terminated in the cloud: it is replaced, on the spare host.
        let victim = a2.nodes[0]
        let lostHost = try await host(of: victim)
        try emulator.terminateThroughAPI(victim)
        #expect(try await home.wait(timeout: 300) { !launch.isRunning }, "\(home.logTail(job: job0.id))")
        let job = try await #require(try home.job())
        let attempts = try await store.attempts(job: job.id)
        let history = attempts.map { "attempt \($0.attempt): \($0.failureKind ?? "ok") node \($0.failedNode.map(String.init) ?? "-")" }
        #expect(job.status == .succeeded, "\(job.status) \(job.lastError ?? "") \(history) \(home.logTail(job: job.id))")
        let last = try #require(attempts.last)
        #expect(last.attempt == 3 && last.nodes[1] == a2.nodes[1] && last.nodes[0] != victim, "\(history)")
        // (The cloud may hand out the lost machine again, wiped: then nothing of before is there.)
        let fresh = try await host(of: last.nodes[0])
        #expect(fresh != h1)
        if fresh == lostHost { #expect(!FileManager.default.fileExists(atPath: lab.dir.file("host\(fresh)/home/.capstan-node/jobs/\(job0.id)/attempt-2"))) }
        await #expect(try store.instances(cluster: cluster.id).first { $0.id == last.nodes[0] }?.instance.nodeIndex == 0)
        let summary = try await home.checkContinuity(job: job, total: 150)

        // The checkpoints are in the bucket, the last one verified.
        let bucket = try S3ObjectStore(location: job.storage, credentials: creds, configuration: s3)
        let newest = try #require(try await CheckpointStore(store: bucket, prefix: "checkpoints").latestVerified())
        #expect(newest.step == 150 && newest.parts.map(\.node) == [0, 1])

        // Billing, by the cloud's own count: the two nodes plus the one replacement, every one
        // of them terminated now, none untagged or left over.
        let state = try emulator.state()
        let counters = state["counters"] as? [String: Any] ?? [:]
        let instances = try emulator.instances()
        #expect(counters["launched"] as? Int == 3, "\(counters)")
        #expect(instances.count == 3 && instances.allSatisfy { ["terminating", "terminated"].contains($0["status"] as? String ?? "") }, "\(instances.map { "\($0["id"] ?? "") \($0["status"] ?? "")" })")
        #expect(instances.allSatisfy { ($0["tags"] as? [[String: String]] ?? []).contains { $0["key"] == CapstanTags.clusterID && $0["value"] == cluster.id } })
        // Neither the bucket's secret nor Lambda's API key is in any file Capstan wrote, here or
        // on the hosts (their temp folders included); the API key only in the file it came from.
        for secret in [creds.secretAccessKey, LambdaEmulator.apiKey] {
            let scan = SecretScan([home.dir.path, home.tmp, lab.dir.path], for: secret) { $0.contains("/bin/capstan-") || $0.hasSuffix("/lambda-key") }
            #expect(scan.covered("/state/capstan.db"), "the scan missed files: \(scan.scanned.count) scanned")
            #expect(scan.hits.isEmpty, "a secret appears in \(scan.hits)")
        }
        let billed = instances.compactMap { $0["billed_seconds"] as? Double }
        print("lambda job: \(summary); emulator counters \(counters); billed seconds per instance \(billed.map { String(format: "%.1f", $0) })")
    }
}

/// The EC2 side of a cloud gang, as far as moto allows: moto's instances have addresses no test
/// may reach, so no job runs there; what a job's controller relies on — one node per index,
/// kept on every look, a replacement in the lost node's place — is checked through the aws
/// plugin (the .so) against moto's EC2.
@Suite("Cloud gangs on EC2 (moto): node indices are Capstan's", .serialized)
struct EC2GangTests {
    @Test("a 3-node gang launched in one RunInstances call is numbered 0..<3 by Capstan (EC2 holds no node tag for it); reconcile keeps the numbers; a replaced node takes the lost index; nothing extra is billed")
    func gangOnEC2() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let lib = try PluginLibrary.load(path: AWSPluginTests.pluginPath)
        let aws = try PluginComputeProvider(lib.instantiate(config: AWSPluginTests.config(dir, endpoint: try TestServers.moto)))
        var options = ProvisionOptions()
        options.waitMinDelay = .milliseconds(50)
        options.waitMaxDelay = .milliseconds(200)
        let p = Provisioner(providers: [aws], store: try SQLiteStateStore(path: dir.file("state/capstan.db"), identityFile: dir.file("owner-id")),
                            locks: ClusterLocks(folder: dir.file("state/locks")), options: options)
        let name = "gang-\(UUID().uuidString.prefix(6).lowercased())"
        let report = try await p.up(name: name, request: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 3), search: OfferSearch(providers: [aws]))
        #expect(report.instances.map(\.nodeIndex) == [0, 1, 2])
        // What EC2 itself holds: every ownership tag, no node index (a gang is one launch).
        let owner = try await p.store.ownerID()
        let inEC2 = try await aws.describe(InstanceQuery(tags: [CapstanTags.clusterID: report.cluster.id]))
        #expect(inEC2.count == 3 && inEC2.allSatisfy { $0.tags[CapstanTags.node] == nil && $0.tags[CapstanTags.owner] == owner && $0.tags[CapstanTags.nodes] == "3" })
        let ranks = Dictionary(uniqueKeysWithValues: report.instances.map { ($0.id, $0.nodeIndex) })
        for _ in 0..<2 { _ = await p.reconcile() }
        let recorded = try await p.store.instances(cluster: report.cluster.id).filter { !$0.state.isGone }
        #expect(Dictionary(uniqueKeysWithValues: recorded.map { ($0.id, $0.instance.nodeIndex) }) == ranks)
        // Node 1 is replaced: the new instance is node 1 (EC2 now holds that tag for it).
        let fresh = try await p.replaceNode(cluster: name, node: 1)
        #expect(fresh.nodeIndex == 1 && ranks[fresh.id] == nil)
        _ = await p.reconcile()
        let live = try await aws.describe(InstanceQuery(tags: [CapstanTags.clusterID: report.cluster.id]))
        #expect(live.count == 3, "\(live.map(\.id))")
        #expect(live.first { $0.id == fresh.id }?.tags[CapstanTags.node] == "1")
        let after = try await p.store.instances(cluster: report.cluster.id).filter { !$0.state.isGone }
        #expect(after.map(\.instance.nodeIndex).sorted() == [0, 1, 2] && Set(after.map(\.id)) == Set(live.map(\.id)))
        let all = try await aws.describe(InstanceQuery(tags: [CapstanTags.clusterID: report.cluster.id], includeTerminated: true))
        #expect(all.count == 4, "three nodes and one replacement were ever launched: \(all.map { "\($0.id) \($0.state)" })")
        _ = try await p.down(name: name)
        #expect(try await aws.describe(InstanceQuery(tags: [CapstanTags.clusterID: report.cluster.id])).isEmpty)
    }
}
