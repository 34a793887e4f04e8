import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTrainer
import Foundation
import Testing

/// A home with the local provider and a one-node job whose command is a few lines of shell or
/// Python (no torch): fast, and each test controls exactly what the command does.
struct SmallJobHome {
    let dir = TempDir("capstan-small-job")

    /// `config` is appended to config.yaml's `providers:` section.
    /// The `TMPDIR` of every process the test starts (see ``JobHome/tmp``).
    var tmp: String { dir.file("tmp") }

    init(run: String, files: [String: String] = [:], env: [String: String] = [:], storage: String? = nil, maxRestarts: Int = 3, providers: String = "") {
        dir.write("config.yaml", "providers:\n  local:\n    slots: 4\n" + providers)
        try? FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        try? FileManager.default.createDirectory(atPath: dir.file("job"), withIntermediateDirectories: true)
        for (name, text) in files { dir.write("job/\(name)", text) }
        let envLines = env.sorted { $0.key < $1.key }.map { "  \($0.key): \"\($0.value)\"" }
        dir.write("job/job.yaml", """
            name: small
            resources: {nodes: 1, providers: [local]}
            workdir: .
            \(envLines.isEmpty ? "" : "env:\n" + envLines.joined(separator: "\n"))
            run: \(run)
            checkpoint: {keep: 5}
            maxRestarts: \(maxRestarts)
            storage: \(storage ?? "file://" + dir.file("bucket"))
            """)
    }

    var spec: String { dir.file("job/job.yaml") }

    /// Runs the built `capstan` with exactly this process's environment minus every `AWS_*`
    /// variable (and the plugin path), plus `extra`.
    func capstan(_ args: [String], env extra: [String: String] = [:], timeout: Double = 240) async throws -> ProcessResult {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") && $0.key != "CAPSTAN_PLUGIN_PATH" }
        for (k, v) in extra { env[k] = v }
        env["CAPSTAN_HOME"] = dir.path
        env["TMPDIR"] = tmp
        let environment = env
        let r = try await Spawn.onThread { try Spawn.runCapturing([BuildProducts.capstan] + args, environment: environment, timeout: timeout) }
        let code: Int32 = switch r.status { case .exited(let c): c; case .signaled(let s): s }
        return ProcessResult(status: code, stdout: String(decoding: r.stdout, as: UTF8.self), stderr: String(decoding: r.stderr, as: UTF8.self))
    }

    func store() throws -> SQLiteStateStore { try SQLiteStateStore(path: dir.file("state/capstan.db")) }
    func job() async throws -> JobRecord? { try await store().jobs().first }
    func log(_ job: String) -> String { (try? String(contentsOfFile: dir.file("jobs/\(job)/logs/node-0.log"), encoding: .utf8)) ?? "" }

    /// The leak scan of the home (its database included) and of the temp folder every process
    /// the test started was given.
    func scan(for secret: String) -> SecretScan { SecretScan([dir.path, tmp], for: secret) }

    static let fast = ["--heartbeat-timeout", "10", "--exit-grace", "20", "--stop-grace", "3"]
}

@Suite("Job reliability: corrupt checkpoints, bucket credentials, the command's environment", .serialized)
struct JobReliabilityTests {
    /// Attempt 1 writes steps 10, 20, 30, waits for step 30's manifest, flips a byte of its file
    /// in the bucket (same size: the store's recorded checksum still matches the manifest) and
    /// dies of SIGKILL. Later attempts print what they resumed from and succeed.
    static let corruptingJob = """
        import json, os, signal, sys, time
        attempt = int(os.environ["CAPSTAN_ATTEMPT"])
        resume = os.environ.get("CAPSTAN_RESUME_DIR")
        state = open(resume + "/state.txt").read().split()[1] if resume else None
        print(json.dumps({"attempt": attempt, "resumed": state}), flush=True)
        if attempt > 1:
            sys.exit(0)
        ck = os.environ["CAPSTAN_CHECKPOINT_DIR"]
        for step in (10, 20, 30):
            os.makedirs(f"{ck}/step-{step}")
            with open(f"{ck}/step-{step}/state.txt", "w") as f:
                f.write(f"step {step} " + "x" * 4000)
            open(f"{ck}/step-{step}/.done", "w").close()
        bucket = os.environ["TEST_BUCKET"] + "/" + os.environ["CAPSTAN_JOB_ID"] + "/checkpoints/step-30"
        for _ in range(600):
            if os.path.exists(bucket + "/manifest.json"):
                break
            time.sleep(0.1)
        data = bucket + "/attempt-1/node-0/state.txt"
        with open(data, "r+b") as f:
            f.seek(100)
            f.write(b"Y")
        print("corrupted", data, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """

    @Test("a corrupt newest checkpoint: restore falls back to the newest one that verifies, records the bad one and says why; checkpoints --verify re-hashes")
    func corruptCheckpointFallsBack() async throws {
        let home = SmallJobHome(run: "python3 job.py", files: ["job.py": Self.corruptingJob], env: ["TEST_BUCKET": "BUCKET"], maxRestarts: 2)
        defer { home.dir.cleanup() }
        // The bucket's folder, for the job to corrupt (written after init, which knows no paths).
        let yaml = try String(contentsOfFile: home.spec, encoding: .utf8).replacingOccurrences(of: "\"BUCKET\"", with: "\"\(home.dir.file("bucket"))\"")
        home.dir.write("job/job.yaml", yaml)
        let r = try await home.capstan(["launch", home.spec, "--quiet"] + SmallJobHome.fast)
        let job = try await #require(try home.job())
        let attempts = try await home.store().attempts(job: job.id)
        let history = attempts.map { "attempt \($0.attempt) from \($0.resumeStep.map(String.init) ?? "-"): \($0.outcome.rawValue) \($0.failureKind ?? "") \($0.message ?? "")" }.joined(separator: "\n")
        #expect(r.status == 0 && job.status == .succeeded, "\(r.stdout)\n\(r.stderr)\n\(history)\n\(home.log(job.id))")
        // Attempt 2 chose step 30 and found it damaged; attempt 3 resumed from step 20.
        #expect(attempts.map(\.resumeStep) == [nil, 30, 20], "\(history)")
        #expect(attempts.dropFirst().first?.failureKind == "corrupt-checkpoint", "\(history)")
        #expect(attempts.last?.outcome == .succeeded)
        #expect(home.log(job.id).contains("{\"attempt\": 3, \"resumed\": \"20\"}"), "\(home.log(job.id))")
        // Only the SIGKILL counted as a restart: the corrupt checkpoint cost none.
        #expect(job.restarts == 1, "\(history)")
        // Said, with the step and why.
        let events = try await home.store().events(job: job.id).filter { $0.kind == "checkpoint-corrupt" }
        #expect(events.count == 1 && events[0].message.contains("step 30") && events[0].message.contains("SHA-256"), "\(events.map(\.message))")
        #expect(r.stdout.contains("Checkpoint step 30 is corrupt"), "\(r.stdout)")
        // The listing no longer calls it verified; --verify re-hashes every file.
        let list = try await home.capstan(["checkpoints", job.id])
        #expect(list.status == 0 && list.stdout.contains("CORRUPT"), "\(list.stdout)\n\(list.stderr)")
        let verify = try await home.capstan(["checkpoints", job.id, "--verify"])
        #expect(verify.status == 1, "\(verify.stdout)\n\(verify.stderr)")
        let rows = verify.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(rows.contains { $0.hasPrefix("30 ") && $0.contains("CORRUPT") && $0.contains("state.txt") }, "\(verify.stdout)")
        #expect(rows.contains { $0.hasPrefix("20 ") && $0.contains("OK") } && rows.contains { $0.hasPrefix("10 ") && $0.contains("OK") }, "\(verify.stdout)")
    }

    @Test("the command sees only the base environment, the env contract and the spec's env: no secret of the launching shell, nor in any log")
    func commandEnvironmentIsMinimal() async throws {
        let home = SmallJobHome(run: "env | sort", env: ["SPEC_VAR": "kept-by-spec"])
        defer { home.dir.cleanup() }
        let secrets = ["AWS_SECRET_ACCESS_KEY": "canary-aws-secret-1f2e", "MY_SERVICE_TOKEN": "canary-token-9d8c", "HF_TOKEN": "canary-hf-7a6b"]
        let r = try await home.capstan(["launch", home.spec] + SmallJobHome.fast, env: secrets)
        let job = try await #require(try home.job())
        #expect(r.status == 0 && job.status == .succeeded, "\(r.stdout)\n\(r.stderr)")
        let log = home.log(job.id)
        // The command ran and printed its environment.
        for expected in ["PATH=", "HOME=", "SPEC_VAR=kept-by-spec", "CAPSTAN_JOB_ID=\(job.id)", "NODE_RANK=0", "CAPSTAN_CHECKPOINT_DIR="] {
            #expect(log.contains("\n" + expected) || log.hasPrefix(expected), "\(expected) missing from:\n\(log)")
        }
        for (name, value) in secrets {
            #expect(!log.contains(name + "="), "\(name) reached the command:\n\(log)")
            let scan = home.scan(for: value)
            #expect(scan.covered("/state/capstan.db") && scan.hits.isEmpty, "\(name)'s value is in \(scan.hits) (\(scan.scanned.count) files scanned)")
            #expect(!r.stdout.contains(value) && !r.stderr.contains(value))
        }
    }

    /// `providers.aws` for S3 on SeaweedFS (and EC2 on moto) with the key in a credentials file.
    static func awsSection(_ home: TempDir, key: String, secret: String) throws -> String {
        home.write("aws-credentials", "[default]\naws_access_key_id = \(key)\naws_secret_access_key = \(secret)\n")
        return """
              aws:
                credentialsFile: \(home.file("aws-credentials"))
                endpoint: \(try TestServers.moto)
                s3Endpoint: \(try TestServers.seaweed)
                regions: [us-east-1]

            """
    }

    /// Two checkpoints, the second 24 MiB (a multipart upload still in flight when the command
    /// ends at once).
    static let twoCheckpoints = #"d=$CAPSTAN_CHECKPOINT_DIR; mkdir -p $d/step-1 $d/step-2 && echo one > $d/step-1/state.txt && touch $d/step-1/.done && head -c 25165824 /dev/urandom > $d/step-2/state.bin && touch $d/step-2/.done && echo wrote"#

    @Test("s3:// storage with the key only in a credentials file and the endpoint in providers.aws (no AWS_* anywhere): checkpoints land in the bucket")
    func s3FromConfigOnly() async throws {
        let creds = try TestServers.seaweedCredentials
        let bucketURI = "s3://capstan-reliability/runs"
        let admin = try S3ObjectStore(location: bucketURI, credentials: creds, configuration: S3Configuration(endpoint: try TestServers.seaweed, region: "us-east-1", uploadStateFolder: NSTemporaryDirectory() + "capstan-admin-uploads"))
        try await admin.createBucket()
        let dir = TempDir("capstan-aws-cfg")
        defer { dir.cleanup() }
        // The command waits for the test to look at the running processes first.
        let home = SmallJobHome(run: "'while [ ! -f \"$GO\" ]; do sleep 0.1; done; \(Self.twoCheckpoints)'", env: ["GO": "GO_FILE"], storage: bucketURI, providers: try Self.awsSection(dir, key: creds.accessKeyID, secret: creds.secretAccessKey))
        defer { home.dir.cleanup() }
        let go = home.dir.file("go")
        home.dir.write("job/job.yaml", try String(contentsOfFile: home.spec, encoding: .utf8).replacingOccurrences(of: "GO_FILE", with: go))
        async let launched = home.capstan(["launch", home.spec] + SmallJobHome.fast)
        // While it runs: neither the agent's nor the command's arguments or environment hold
        // the secret (it reached the agent through a pipe).
        var looked: [String] = []
        for _ in 0..<300 where looked.isEmpty {
            try await Task.sleep(for: .milliseconds(100))
            let found = (try? FileManager.default.subpathsOfDirectory(atPath: home.dir.file("local"))) ?? []
            for f in found where f.hasSuffix("attempt-1/status.json") {
                guard let data = FileManager.default.contents(atPath: home.dir.file("local/" + f)),
                      let s = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let command = s["commandPID"] as? Int, let agent = s["agentPID"] as? Int else { continue }
                for pid in [agent, command] {
                    for what in ["cmdline", "environ"] {
                        let text = String(decoding: FileManager.default.contents(atPath: "/proc/\(pid)/\(what)") ?? Data(), as: UTF8.self)
                        #expect(!text.isEmpty && !text.contains(creds.secretAccessKey), "/proc/\(pid)/\(what)")
                        looked.append("\(pid)/\(what)")
                    }
                }
            }
        }
        #expect(looked.count == 4, "\(looked)")
        FileManager.default.createFile(atPath: go, contents: nil)
        let r = try await launched
        let job = try await #require(try home.job())
        let log = home.log(job.id)
        #expect(r.status == 0 && job.status == .succeeded, "\(r.stdout)\n\(r.stderr)\n\(log)")
        let bucket = try S3ObjectStore(location: job.storage, credentials: creds, configuration: S3Configuration(endpoint: try TestServers.seaweed, region: "us-east-1", uploadStateFolder: home.dir.file("admin-uploads")))
        let cs = CheckpointStore(store: bucket, prefix: "checkpoints")
        #expect(try await cs.committedSteps() == [1, 2])
        #expect(try await cs.latestVerified()?.totalBytes == 25_165_824)
        #expect(!log.contains("CancellationError") && !log.contains("upload failed"), "\(log)")
        let scan = home.scan(for: creds.secretAccessKey)
        #expect(scan.covered("/state/capstan.db") && scan.hits.isEmpty, "the secret is in \(scan.hits) (\(scan.scanned.count) files scanned)")
    }

    @Test("a key the bucket refuses writes with: the job fails at once with the agent's start-up error, without the secret")
    func badCredentialIsTheAgentsStartupError() async throws {
        let env = ProcessInfo.processInfo.environment
        guard let key = env["CAPSTAN_TEST_S3_READER_KEY"], let secret = env["CAPSTAN_TEST_S3_READER_SECRET"] else {
            throw CapstanError(.config, "CAPSTAN_TEST_S3_READER_KEY is not set.", hint: "Run the tests with scripts/test.sh (scripts/test-servers.sh starts SeaweedFS with a read-only key).")
        }
        let creds = try TestServers.seaweedCredentials
        let bucketURI = "s3://capstan-reliability/refused"
        let admin = try S3ObjectStore(location: bucketURI, credentials: creds, configuration: S3Configuration(endpoint: try TestServers.seaweed, region: "us-east-1", uploadStateFolder: NSTemporaryDirectory() + "capstan-admin-uploads"))
        try await admin.createBucket()
        let dir = TempDir("capstan-aws-cfg")
        defer { dir.cleanup() }
        let home = SmallJobHome(run: "echo should-not-run", storage: bucketURI, providers: try Self.awsSection(dir, key: key, secret: secret))
        defer { home.dir.cleanup() }
        let start = Date()
        let r = try await home.capstan(["launch", home.spec] + SmallJobHome.fast)
        let seconds = Date().timeIntervalSince(start)
        let job = try await #require(try home.job())
        let error = job.lastError ?? ""
        #expect(r.status == 1 && job.status == .failed, "\(r.stdout)\n\(r.stderr)")
        #expect(error.contains("could not start") && error.contains("cannot write to the bucket") && error.contains("AccessDenied"), "\(error)")
        #expect(!error.contains("did not start within"), "\(error)")
        #expect(!home.log(job.id).contains("should-not-run"))
        #expect(!error.contains(secret) && !r.stdout.contains(secret) && !r.stderr.contains(secret))
        let scan = home.scan(for: secret)
        #expect(scan.covered("/state/capstan.db") && scan.hits.isEmpty, "the secret is in \(scan.hits) (\(scan.scanned.count) files scanned)")
        print("bad credential: the job failed in \(String(format: "%.1f", seconds)) s: \(error)")
    }
}
