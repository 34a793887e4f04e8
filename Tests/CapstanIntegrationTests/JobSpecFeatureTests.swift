import CapstanCore
import CapstanRuntime
import CapstanSQLite
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A home for the job spec's `secrets:`, `launch --env` and `resources.anyOf`, on local nodes
/// through the built `capstan` (shell commands: no torch needed). Its config.yaml names a
/// secrets file in the home (mode 0600).
struct SpecHome {
    /// The home, its temp folder and how `capstan` runs in it (its own job spec is not used).
    let small = SmallJobHome(run: "'true'")
    var dir: TempDir { small.dir }
    var tmp: String { small.tmp }
    var secretsFile: String { dir.file("secrets.env") }

    /// `providers`: more of config.yaml's `providers:` section.
    init(slots: Int = 4, providers: String = "", secrets: String = "") throws {
        dir.write("config.yaml", "providers:\n  local:\n    slots: \(slots)\n\(providers)secrets: {file: \(dir.file("secrets.env"))}\n")
        dir.write("secrets.env", secrets)
        chmod(dir.file("secrets.env"), 0o600)
    }

    /// Writes `job/<name>.yaml` (its bucket in the home) and returns its path.
    func spec(_ name: String, _ body: String) -> String {
        dir.write("job/\(name).yaml", "name: \(name)\nstorage: file://\(dir.file("bucket"))\n" + body)
    }

    /// The built `capstan` with this process's environment (minus `AWS_*` and the plugin
    /// path), then `extra`.
    func capstan(_ args: [String], env extra: [String: String] = [:], timeout: Double = 180) async throws -> ProcessResult {
        try await small.capstan(args, env: extra, timeout: timeout)
    }

    func store() throws -> SQLiteStateStore { try SQLiteStateStore(path: dir.file("state/capstan.db")) }
    func job(named name: String) async throws -> JobRecord? { try await store().jobs().first { $0.name == name } }
    func log(_ job: String, node: Int) -> String { (try? String(contentsOfFile: dir.file("jobs/\(job)/logs/node-\(node).log"), encoding: .utf8)) ?? "" }

    /// Polls until `condition` holds (false after `timeout` seconds).
    func wait(timeout: Double = 120, _ condition: () async throws -> Bool) async throws -> Bool {
        try await eventually(timeout: timeout, condition)
    }

    /// The leak scan of the home (database, logs, bucket, local nodes' folders) and the temp
    /// folder, leaving out the secrets file itself.
    func scan(for secret: String) -> SecretScan {
        SecretScan([dir.path, tmp], for: secret) { $0.hasSuffix("/secrets.env") }
    }

    static let fast = SmallJobHome.fast
}

/// The first 16 hex digits of `value`'s SHA-256, as the jobs' commands print it.
func shortHash(_ value: String) async throws -> String {
    try await runProcess("/bin/sh", ["-c", "printf %s \"$V\" | sha256sum | cut -c1-16"], environment: ["V": value]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Every process's command line, from /proc (what `ps` shows), by pid.
func processCommandLines() -> [pid_t: String] {
    var out: [pid_t: String] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
        out[pid] = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
    }
    return out
}

/// `pid`'s environment (the processes of this user), nil when it cannot be read.
func processEnvironment(_ pid: pid_t) -> [String: String]? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return nil }
    var out: [String: String] = [:]
    for item in data.split(separator: 0) {
        let s = String(decoding: item, as: UTF8.self)
        if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
    }
    return out
}

@Suite("Job spec: secrets, --env and anyOf on local nodes", .serialized)
struct JobSpecFeatureTests {
    /// Prints the short hash of both secrets (setup and the command), waits in attempt 1 for a
    /// file and fails (a restart), then succeeds; node 0 echoes the env secret (redacted home).
    static let secretsJob = #"""
        resources: {nodes: 2, providers: [local]}
        secrets: [JOB_TOKEN, FILE_TOKEN]
        maxRestarts: 2
        setup: printf 'setup node=%s env=%s file=%s\n' "$NODE_RANK" "$(printf %s "$JOB_TOKEN" | sha256sum | cut -c1-16)" "$(printf %s "$FILE_TOKEN" | sha256sum | cut -c1-16)"
        run: |
          printf 'run attempt=%s node=%s env=%s file=%s extra=%s\n' "$CAPSTAN_ATTEMPT" "$NODE_RANK" "$(printf %s "$JOB_TOKEN" | sha256sum | cut -c1-16)" "$(printf %s "$FILE_TOKEN" | sha256sum | cut -c1-16)" "$EXTRA"
          if [ "$CAPSTAN_ATTEMPT" = 1 ]; then
            while [ ! -e "$GO_FILE" ]; do sleep 0.2; done
            exit 3
          fi
          if [ "$NODE_RANK" = 0 ]; then echo "echoed=$JOB_TOKEN"; fi

        """#

    @Test("secrets reach setup and the command on both nodes (env and secrets file), and nowhere else: home, bucket, node folders, ps, agents' environments, logs, jobs --json, events, the database; a controller killed -9 is replaced, and its restart delivers them again")
    func secretsEverywhereButWhereTheyShouldBe() async throws {
        let envToken = "envtok-" + UUID().uuidString.lowercased()
        let fileToken = "filetok-" + UUID().uuidString.lowercased()
        let home = try SpecHome(secrets: "# for jobs\nexport FILE_TOKEN='\(fileToken)'\n")
        defer { home.dir.cleanup() }
        let spec = home.spec("secrets", Self.secretsJob)
        let (envHash, fileHash) = (try await shortHash(envToken), try await shortHash(fileToken))
        let go = home.dir.file("go")
        let launch = ["launch", spec, "--detach", "--env", "EXTRA=hello", "--env", "GO_FILE=\(go)"] + SpecHome.fast

        // Bad input first: each is refused before anything runs.
        let missing = try await home.capstan(launch)
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("The job's secret JOB_TOKEN is not set: looked for JOB_TOKEN in the launching environment and JOB_TOKEN in the secrets file \(home.secretsFile)."), "\(missing.stderr)")
        chmod(home.secretsFile, 0o644)
        let readable = try await home.capstan(launch, env: ["JOB_TOKEN": envToken])
        #expect(readable.status != 0 && readable.stderr.contains("The secrets file \(home.secretsFile) can be read or written by others (mode 644); refusing to read secrets from it.") && readable.stderr.contains("chmod 600"), "\(readable.stderr)")
        chmod(home.secretsFile, 0o600)
        let noValue = try await home.capstan(["launch", spec, "--env", "FOO"], env: ["JOB_TOKEN": envToken])
        #expect(noValue.status != 0 && noValue.stderr.contains("--env FOO: expected NAME=VALUE"), "\(noValue.stderr)")
        let overSecret = try await home.capstan(["launch", spec, "--env", "JOB_TOKEN=plain"], env: ["JOB_TOKEN": envToken])
        #expect(overSecret.status != 0 && overSecret.stderr.contains("--env JOB_TOKEN=… would set the job's secret JOB_TOKEN in plain text."), "\(overSecret.stderr)")
        #expect(try await home.store().jobs().isEmpty, "a refused launch writes no job")

        let started = try await home.capstan(launch, env: ["JOB_TOKEN": envToken])
        #expect(started.status == 0, "\(started.stdout)\n\(started.stderr)")
        let job = try #require(try await home.job(named: "secrets"))
        for node in 0..<2 {
            let ok = try await home.wait {
                let log = home.log(job.id, node: node)
                return log.contains("setup node=\(node) env=\(envHash) file=\(fileHash)") && log.contains("run attempt=1 node=\(node) env=\(envHash) file=\(fileHash) extra=hello")
            }
            #expect(ok, "node \(node): \(home.log(job.id, node: node))")
        }

        // While it runs: no command line carries a secret; the agents hold them in memory only;
        // the file's secret is in the environment of this job's processes and of nothing else.
        let lines = processCommandLines()
        #expect(!lines.values.contains { $0.contains(envToken) || $0.contains(fileToken) })
        let ps = try await runProcess("/usr/bin/env", ["ps", "-eww", "-o", "args="])
        #expect(ps.status == 0 && ps.stdout.contains(" agent --config ") && !ps.stdout.contains(envToken) && !ps.stdout.contains(fileToken), "\(ps.stderr)")
        let agents = lines.filter { $0.value.contains(" agent --config ") && $0.value.contains("/\(job.id)/") }
        #expect(agents.count == 2, "\(agents)")
        for (pid, _) in agents {
            let env = try #require(processEnvironment(pid))
            #expect(!env.values.contains { $0.contains(envToken) || $0.contains(fileToken) }, "agent \(pid)'s environment holds a secret")
        }
        let holders = lines.keys.compactMap { pid in processEnvironment(pid).flatMap { $0["FILE_TOKEN"] == fileToken ? $0 : nil } }
        #expect(!holders.isEmpty && holders.allSatisfy { $0["CAPSTAN_JOB_ID"] == job.id && $0["JOB_TOKEN"] == envToken })
        #expect(Set(holders.compactMap { $0["NODE_RANK"] }) == ["0", "1"])
        for secret in [envToken, fileToken] {
            let scan = home.scan(for: secret)
            #expect(scan.covered("/agent.json") && scan.covered("/status.json") && scan.covered("/state/capstan.db") && scan.covered("/logs/node-1.log"), "the scan missed files: \(scan.scanned.count)")
            #expect(scan.hits.isEmpty, "a secret is in \(scan.hits)")
        }

        // kill -9 the controller; `capstan jobs` (same shell: same environment) starts another,
        // which re-attaches, then restarts the gang after attempt 1 fails, with the secrets.
        let controller = try #require(try await home.job(named: "secrets")?.controllerPID)
        kill(controller, SIGKILL)
        _ = try await home.wait(timeout: 90) { kill(controller, 0) != 0 }
        let listed = try await home.capstan(["jobs", "--json"], env: ["JOB_TOKEN": envToken])
        #expect(listed.status == 0 && !listed.stdout.contains(envToken) && !listed.stdout.contains(fileToken), "\(listed.stderr)")
        #expect(try await home.wait(timeout: 90) { (try await home.job(named: "secrets"))?.controllerPID.map { $0 != controller } == true })
        _ = FileManager.default.createFile(atPath: go, contents: nil)
        #expect(try await home.wait { (try await home.job(named: "secrets"))?.status.isFinished == true })
        let final = try #require(try await home.job(named: "secrets"))
        #expect(final.status == .succeeded && final.attempt == 2 && final.restarts == 1, "\(final.lastError ?? "")\n\(home.log(job.id, node: 0))")
        for node in 0..<2 {
            #expect(home.log(job.id, node: node).contains("run attempt=2 node=\(node) env=\(envHash) file=\(fileHash) extra=hello"), "\(home.log(job.id, node: node))")
        }
        // What the command printed of a secret comes home redacted.
        #expect(home.log(job.id, node: 0).contains("echoed=<redacted>"), "\(home.log(job.id, node: 0))")

        let logs = try await home.capstan(["logs", job.id])
        let events = try await home.capstan(["events", job.id])
        let jobs = try await home.capstan(["jobs", "--json"])
        #expect(logs.stdout.contains("echoed=<redacted>") && events.stdout.contains("took the job") && jobs.stdout.contains(job.id))
        for out in [logs, events, jobs] {
            #expect(!(out.stdout + out.stderr).contains(envToken) && !(out.stdout + out.stderr).contains(fileToken))
        }
        for secret in [envToken, fileToken] {
            let scan = home.scan(for: secret)
            #expect(scan.covered("/state/capstan.db") && scan.covered("/logs/node-0.log"))
            #expect(scan.hits.isEmpty, "a secret is in \(scan.hits)")
        }
    }

    @Test("a controller that takes a job over without its secrets leaves the running agents alone; the restart then fails, naming the secret and where it looked")
    func takeoverWithoutSecrets() async throws {
        let token = "tok-" + UUID().uuidString.lowercased()
        let home = try SpecHome()
        defer { home.dir.cleanup() }
        let go = home.dir.file("go")
        let spec = home.spec("takeover", """
            resources: {nodes: 1, providers: [local]}
            secrets: [JOB_TOKEN]
            maxRestarts: 2
            run: 'echo attempt=$CAPSTAN_ATTEMPT; while [ ! -e \(go) ]; do sleep 0.2; done; printf "late=%s\\nsplit=%s" "$JOB_TOKEN" "$(echo $JOB_TOKEN | cut -c1-9)"; sleep 1; echo "$JOB_TOKEN" | cut -c10-; while [ ! -e \(go)2 ]; do sleep 0.2; done; exit 3'

            """)
        let started = try await home.capstan(["launch", spec, "--detach"] + SpecHome.fast, env: ["JOB_TOKEN": token])
        #expect(started.status == 0, "\(started.stderr)")
        let job = try #require(try await home.job(named: "takeover"))
        #expect(try await home.wait { home.log(job.id, node: 0).contains("attempt=1") })
        let controller = try #require(try await home.job(named: "takeover")?.controllerPID)
        kill(controller, SIGKILL)
        _ = try await home.wait(timeout: 90) { kill(controller, 0) != 0 }
        // Another shell, without JOB_TOKEN (and the secrets file does not have it).
        let listed = try await home.capstan(["jobs"])
        #expect(listed.status == 0, "\(listed.stderr)")
        #expect(try await home.wait(timeout: 90) { (try await home.job(named: "takeover"))?.controllerPID.map { $0 != controller } == true })
        // What the command prints of the secret now (once whole, once split over two writes
        // a second apart) reaches the node's own log and the home redacted, although this
        // controller has no value to redact with: the agent redacted it.
        _ = FileManager.default.createFile(atPath: go, contents: nil)
        #expect(try await home.wait { home.log(job.id, node: 0).contains("late=<redacted>") && home.log(job.id, node: 0).contains("split=<redacted>") }, "\(home.log(job.id, node: 0))")
        let scan = home.scan(for: token)
        #expect(scan.scanned.contains { $0.hasSuffix("/node.log") } && scan.covered("/logs/node-0.log"), "the scan missed the node logs: \(scan.scanned)")
        #expect(scan.hits.isEmpty, "the secret is in \(scan.hits)")
        _ = FileManager.default.createFile(atPath: go + "2", contents: nil)
        #expect(try await home.wait { (try await home.job(named: "takeover"))?.status.isFinished == true })
        let final = try #require(try await home.job(named: "takeover"))
        #expect(final.status == .failed && final.attempt == 1)
        #expect(final.lastError?.contains("Cannot start attempt 2: The job's secret JOB_TOKEN is not set: looked for JOB_TOKEN in the launching environment and JOB_TOKEN in the secrets file \(home.secretsFile).") == true, "\(final.lastError ?? "")")
        let events = try await home.store().events(job: job.id).map(\.message)
        #expect(events.contains { $0.contains("cannot read the job's secrets") && $0.contains("The running agents keep theirs") }, "\(events)")
    }

    @Test("anyOf: the cheapest alternative (sim H100) has no capacity, so the job runs on the next (local nodes as A100s); offers --spec shows the pick; bad anyOf entries are refused")
    func anyOfFallsBack() async throws {
        let h100 = Offer(provider: "sim", instanceType: "sim.8xh100", region: "sim-full", gpuName: "H100", gpusPerNode: 8, onDemandPricePerHour: 0, availability: .available)
        let offer = String(decoding: try JSONEncoder().encode(h100), as: UTF8.self)
        let home = try SpecHome(providers: "  sim:\n    noCapacityRegions: [sim-full]\n    offers:\n      - \(offer)\n")
        defer { home.dir.cleanup() }
        // The local machine reports one A100 (a stand-in nvidia-smi).
        let smi = home.dir.write("nvidia-smi", "#!/bin/sh\necho 'NVIDIA A100-SXM4-80GB, 81920'\n")
        chmod(smi, 0o755)
        let env = ["CAPSTAN_NVIDIA_SMI": smi]
        let spec = home.spec("fallback", """
            resources:
              nodes: 2
              anyOf:
                - {gpu: H100, gpusPerNode: 8}
                - {gpu: A100-80GB, gpusPerNode: 1}
            run: echo "rank=$NODE_RANK gpus=$CAPSTAN_GPUS_PER_NODE"

            """)

        let offers = try await home.capstan(["offers", "--spec", spec], env: env)
        #expect(offers.status == 0, "\(offers.stderr)")
        #expect(offers.stdout.contains("Cheapest: sim sim.8xh100 in sim-full, $0.00/h for 2 node(s) on demand.") && offers.stdout.contains("Picked by anyOf[0]: H100×8"), "\(offers.stdout)")
        #expect(offers.stdout.contains("local-1xA100-80GB"), "\(offers.stdout)")

        let r = try await home.capstan(["launch", spec] + SpecHome.fast, env: env)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("[node 1] rank=1 gpus=1"), "\(r.stdout)")
        let job = try #require(try await home.job(named: "fallback"))
        #expect(job.status == .succeeded)
        let store = try home.store()
        let cluster = try #require(try await store.clusters(includeFinished: true).first { $0.name == job.clusterName })
        #expect(cluster.offer?.provider == "local" && cluster.offer?.gpu?.hasPrefix("A100-80GB") == true)
        let intents = try await store.intents(cluster: cluster.id)
        #expect(intents.map(\.provider) == ["sim", "local"] && intents.first?.status == .failed, "\(intents.map { "\($0.provider) \($0.status)" })")
        let events = try await store.events(cluster: cluster.id).map(\.message)
        #expect(events.contains("Cluster \(job.clusterName) requested: 2 node(s) of H100×8 or A100-80GB×1."), "\(events)")
        #expect(events.contains { $0.hasPrefix("Running on local ") && $0.hasSuffix(", anyOf[1]: A100-80GB×1.") }, "\(events)")
        let jobEvents = try await store.events(job: job.id).map(\.message)
        #expect(jobEvents.contains { $0.contains("of H100×8 or A100-80GB×1") }, "\(jobEvents)")

        // Bad entries: refused with the key and the line, nothing launched.
        for (body, says) in [
            ("resources:\n  gpu: H100\n  anyOf: [{gpu: A100}]\nrun: x\n", "job.yaml:4: 'resources.anyOf' goes with neither 'resources.gpu' nor 'resources.gpusPerNode'"),
            ("resources:\n  anyOf: [{gpu: Z9000}]\nrun: x\n", "'resources.anyOf[0].gpu': Unknown GPU 'Z9000'"),
            ("resources:\n  anyOf: []\nrun: x\n", "'resources.anyOf' is an empty list"),
        ] {
            let bad = home.dir.write("bad/job.yaml", "name: bad\n" + body)
            let refused = try await home.capstan(["launch", bad], env: env)
            #expect(refused.status != 0 && refused.stderr.contains(says), "\(refused.stderr)")
            let rankedBad = try await home.capstan(["offers", "--spec", bad], env: env)
            #expect(rankedBad.status == 1 && rankedBad.stderr.contains(says), "\(rankedBad.status) \(rankedBad.stderr)")
        }
        #expect(try await store.jobs().count == 1)
    }

    @Test("through `capstan serve`: a job's secrets come from the server (CAPSTAN_SECRET_ variables, its secrets file), never its own variables nor the client; --env goes through")
    func serverSecrets() async throws {
        let served = "srvtok-" + UUID().uuidString.lowercased()
        let fromFile = "srvfile-" + UUID().uuidString.lowercased()
        let own = "srvown-" + UUID().uuidString.lowercased()
        let home = try SpecHome(slots: 2, secrets: "FILE_TOKEN=\(fromFile)\n")
        let client = TempDir("capstan-spec-client")
        defer { home.dir.cleanup(); client.cleanup() }
        let token = try await createToken(home: home.dir.path, name: "itest")
        let serve = try await ServeProcess(home: home.dir.path, env: ["TMPDIR": home.tmp, "CAPSTAN_SECRET_SRV_TOKEN": served, "SRV_OWN": own])
        defer { serve.terminate() }
        func remote(_ args: [String]) async throws -> ProcessResult {
            // The client's own environment has a different SRV_TOKEN: the server's is the one used.
            try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": client.path, "CAPSTAN_SERVER": serve.url, "CAPSTAN_TOKEN": token, "SRV_TOKEN": "client-value", "TMPDIR": home.tmp], timeout: 180)
        }
        let spec = home.dir.write("served/job.yaml", """
            name: served
            resources: {nodes: 1, providers: [local]}
            secrets: [SRV_TOKEN, FILE_TOKEN]
            run: printf 'srv=%s file=%s extra=%s\\n' "$(printf %s "$SRV_TOKEN" | sha256sum | cut -c1-16)" "$(printf %s "$FILE_TOKEN" | sha256sum | cut -c1-16)" "$EXTRA"
            """)
        let r = try await remote(["launch", spec, "--env", "EXTRA=via-server"] + SpecHome.fast)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)\n\(serve.logText)")
        let expected = "srv=\(try await shortHash(served)) file=\(try await shortHash(fromFile)) extra=via-server"
        #expect(r.stdout.contains("[node 0] \(expected)"), "\(r.stdout)")

        let ownSpec = home.dir.write("own/job.yaml", "name: own\nresources: {nodes: 1, providers: [local]}\nsecrets: [SRV_OWN]\nrun: 'true'\n")
        let refused = try await remote(["launch", ownSpec])
        #expect(refused.status != 0 && refused.stderr.contains("The job's secret SRV_OWN is not set: looked for CAPSTAN_SECRET_SRV_OWN in the server's environment and SRV_OWN in the secrets file \(home.secretsFile)."), "\(refused.stderr)")
        #expect(!refused.stderr.contains(own))
        for secret in [served, fromFile, own] {
            let scan = SecretScan([home.dir.path, home.tmp, client.path], for: secret) { $0.hasSuffix("/secrets.env") }
            #expect(scan.covered("/state/capstan.db") && scan.hits.isEmpty, "a secret is in \(scan.hits)")
        }
    }
}
