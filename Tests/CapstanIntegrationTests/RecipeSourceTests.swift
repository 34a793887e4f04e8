import CapstanAWS
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Fixtures/hub_server.py on 127.0.0.1: the Hub's download API, a bearer token required.
final class HubServer: @unchecked Sendable {
    let process = Process()
    let port: Int
    let root: String
    let log: String

    init(root: String, log: String, token: String) async throws {
        self.port = try freeLoopbackPort()
        self.root = root
        self.log = log
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", BuildProducts.fixtures + "/hub_server.py", "\(port)", root, log, "HUB_TOKEN"]
        process.environment = ProcessInfo.processInfo.environment.merging(["HUB_TOKEN": token]) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        _ = try await Spawn.onThread { pipe.fileHandleForReading.availableData }
    }

    var endpoint: String { "http://127.0.0.1:\(port)" }

    /// Paths of the successful file downloads (`/resolve/`) so far.
    func downloads() -> [String] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line -> String? in
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let path = o["path"] as? String, o["status"] as? Int == 200, path.contains("/resolve/") else { return nil }
            return path
        }
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

extension JobHome {
    /// examples/sft-tiny's model with seeded random weights saved beside it (a model as the
    /// Hub or a bucket holds it), in `folder`.
    func pretrainedTinyModel(in folder: String, python: String) async throws {
        try FileManager.default.createDirectory(atPath: (folder as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: JobHome.repoRoot + "/examples/sft-tiny/model", toPath: folder)
        let r = try await runProcess(python, ["-c", """
            import sys, torch
            from transformers import AutoConfig, AutoModelForCausalLM
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1])).save_pretrained(sys.argv[1])
            """, folder], timeout: 120)
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
    }

    func sourceSpec(model: String, data: String = "data/train.jsonl", nodes: Int = 2) {
        dir.write("job/job.yaml", """
            name: sft
            resources: {nodes: \(nodes)}
            workdir: .
            recipe: sft
            model: \(model)
            data: \(data)
            train: {steps: 2, batchSize: 2, seqLen: 64, checkpointEvery: 2, logEvery: 1}
            env: {GLOO_SOCKET_IFNAME: lo, OMP_NUM_THREADS: "1"}
            maxRestarts: 0
            storage: file://\(dir.file("bucket"))
            """)
    }
}

extension JobTests {
    @Test("model: hf://org/name from a Hub-API server: a missing model or a missing token is refused at launch; fetched once per machine with the token forwarded (never written down), verified, and not fetched again by the next run")
    func hubModel() async throws {
        var home = try JobHome.recipe(steps: 1, every: 1)
        defer { home.dir.cleanup() }
        try FileManager.default.removeItem(atPath: home.dir.file("job/model"))
        try await home.pretrainedTinyModel(in: home.dir.file("hub/capstan-test/tiny"), python: try await recipePython())
        let token = "hf_" + UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let hub = try await HubServer(root: home.dir.file("hub"), log: home.dir.file("hub.log"), token: token)
        defer { hub.stop() }
        home.env["HF_ENDPOINT"] = hub.endpoint
        home.env["CAPSTAN_SOURCE_CACHE"] = home.dir.file("sources")

        // Refused before anything is provisioned: no such model; no token for a gated one.
        home.sourceSpec(model: "hf://capstan-test/nope@main")
        let missing = try await home.capstan(["launch", home.spec] + JobHome.fast, env: ["HF_TOKEN": token])
        #expect(missing.status != 0 && missing.stderr.contains("No model hf://capstan-test/nope@main on the Hugging Face Hub at \(hub.endpoint)"), "\(missing.stderr)")
        home.sourceSpec(model: "hf://capstan-test/tiny")
        let anonymous = try await home.capstan(["launch", home.spec] + JobHome.fast)
        #expect(anonymous.status != 0 && anonymous.stderr.contains("refused access to hf://capstan-test/tiny@main (HTTP 401) without a token") && anonymous.stderr.contains("Set HF_TOKEN"), "\(anonymous.stderr)")
        await #expect(try home.store().jobs().isEmpty)

        // Two nodes on one machine: one download of each file, verified, used by both.
        let first = try await home.capstan(["launch", home.spec] + JobHome.fast, env: ["HF_TOKEN": token], timeout: 420)
        let job1 = try await #require(try home.store().jobs().first)
        #expect(first.status == 0 && job1.status == .succeeded, "\(first.stderr) \(home.logTail(job: job1.id))")
        let files = try FileManager.default.contentsOfDirectory(atPath: home.dir.file("hub/capstan-test/tiny")).sorted()
        let fetched = hub.downloads()
        #expect(try FileManager.default.contentsOfDirectory(atPath: home.dir.file("sources")).contains { $0.hasPrefix("hf-") && !$0.hasSuffix(".lock") })
        #expect(fetched.count == files.count && Set(fetched).count == files.count, "\(fetched)")
        let log = (try? String(contentsOfFile: home.dir.file("jobs/\(job1.id)/logs/node-0.log"), encoding: .utf8)) ?? ""
        #expect(log.contains("model hf://capstan-test/tiny@") && log.contains("\"model\": \"hf://capstan-test/tiny\""), "\(log.suffix(3000))")

        // The next run (a restart, or another job) finds it in the cache: no download.
        let second = try await home.capstan(["launch", home.spec] + JobHome.fast, env: ["HF_TOKEN": token], timeout: 420)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(hub.downloads().count == fetched.count, "downloaded again: \(hub.downloads().count - fetched.count) file(s)")

        // The token is nowhere in the home: state, logs, agent configs.
        let grep = try await runProcess("/bin/grep", ["-rlF", token, home.dir.path])
        #expect(grep.stdout.isEmpty, "the token is written in \(grep.stdout)")
    }

    @Test("model: s3://bucket/prefix/ and data: s3://bucket/key from SeaweedFS: fetched by the agents, trained on; a missing prefix is refused at launch")
    func bucketModelAndData() async throws {
        var home = try JobHome.recipe(steps: 1, every: 1)
        defer { home.dir.cleanup() }
        let creds = try TestServers.seaweedCredentials
        // The launching shell's AWS settings: the controller resolves the source bucket's
        // access from them and hands it to the agents on their stdin.
        let aws = ["AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey,
                   "AWS_ENDPOINT_URL_S3": try TestServers.seaweed, "AWS_REGION": "us-east-1"]
        home.env["CAPSTAN_SOURCE_CACHE"] = home.dir.file("sources")
        let s3 = try S3ObjectStore(location: "s3://capstan-src", credentials: creds, configuration: S3Configuration(endpoint: try TestServers.seaweed, uploadStateFolder: home.dir.file("uploads")))
        try? await s3.createBucket()
        let run = "run-" + UUID().uuidString.prefix(8).lowercased()
        try await home.pretrainedTinyModel(in: home.dir.file("src/tiny"), python: try await recipePython())
        for f in try FileManager.default.contentsOfDirectory(atPath: home.dir.file("src/tiny")) {
            _ = try await s3.put(file: home.dir.file("src/tiny/\(f)"), key: "\(run)/models/tiny/\(f)")
        }
        _ = try await s3.put(file: home.dir.file("job/data/train.jsonl"), key: "\(run)/data/train.jsonl")

        home.sourceSpec(model: "s3://capstan-src/\(run)/models/none/", data: "s3://capstan-src/\(run)/data/train.jsonl")
        let missing = try await home.capstan(["launch", home.spec] + JobHome.fast, env: aws)
        #expect(missing.status != 0 && missing.stderr.contains("The recipe's model s3://capstan-src/\(run)/models/none/ does not exist"), "\(missing.stderr)")

        home.sourceSpec(model: "s3://capstan-src/\(run)/models/tiny/", data: "s3://capstan-src/\(run)/data/train.jsonl")
        let r = try await home.capstan(["launch", home.spec] + JobHome.fast, env: aws, timeout: 420)
        let job = try await #require(try home.store().jobs().first)
        #expect(r.status == 0 && job.status == .succeeded, "\(r.stderr) \(home.logTail(job: job.id))")
        // The two nodes share the machine's cache: one fetches each source, the other finds it.
        let log = (0..<2).map { (try? String(contentsOfFile: home.dir.file("jobs/\(job.id)/logs/node-\($0).log"), encoding: .utf8)) ?? "" }.joined()
        for source in ["model s3://capstan-src/\(run)/models/tiny/", "data s3://capstan-src/\(run)/data/train.jsonl"] {
            #expect(log.components(separatedBy: "\(source): fetched ").count == 2, "\(source) not fetched exactly once: \(log.suffix(3000))")
        }
        #expect(!log.contains(creds.secretAccessKey))
        #expect(try FileManager.default.contentsOfDirectory(atPath: home.dir.file("sources")).filter { $0.hasPrefix("s3-") && !$0.hasSuffix(".lock") }.count == 2)
    }
}
