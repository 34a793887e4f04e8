import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The built-in `sft` recipe end to end: the agent builds the Python environment (transformers +
/// peft), the recipe fine-tunes examples/sft-tiny's Llama-architecture model on 2 local nodes.
/// In JobTests' serialized suite: jobs on 2 cores must not run side by side.
extension JobHome {
    /// Venvs are cached across tests and runs (one per requirements hash).
    static let pythonCache = NSTemporaryDirectory() + "capstan-test-python"

    /// A recipe job over a copy of examples/sft-tiny.
    /// `stopAt` (`attempt:step:rank`) makes that worker stop itself (SIGSTOP) after that step:
    /// see `stoppedWorker(job:)`.
    static func recipe(steps: Int, every: Int, data: String? = nil, maxRestarts: Int = 3, stopAt: String? = nil) throws -> JobHome {
        var home = try JobHome()
        home.env["CAPSTAN_PYTHON_CACHE"] = pythonCache
        let example = repoRoot + "/examples/sft-tiny"
        try FileManager.default.copyItem(atPath: example + "/model", toPath: home.dir.file("job/model"))
        try FileManager.default.createDirectory(atPath: home.dir.file("job/data"), withIntermediateDirectories: true)
        if let data {
            home.dir.write("job/data/train.jsonl", data)
        } else {
            try FileManager.default.copyItem(atPath: example + "/data/train.jsonl", toPath: home.dir.file("job/data/train.jsonl"))
        }
        home.dir.write("job/job.yaml", """
            name: sft
            resources: {nodes: 2}
            workdir: .
            recipe: sft
            model: model
            data: data/train.jsonl
            train: {init: random, steps: \(steps), batchSize: 8, seqLen: 128, lr: 3.0e-3, loraRank: 32, loraAlpha: 64, checkpointEvery: \(every), logEvery: 1}
            env: {GLOO_SOCKET_IFNAME: lo, OMP_NUM_THREADS: "1"\(stopAt.map { ", CAPSTAN_TEST_STOP_AT: \"\($0)\"" } ?? "")}
            checkpoint: {keep: 3}
            maxRestarts: \(maxRestarts)
            storage: file://\(home.dir.file("bucket"))
            """)
        return home
    }

    /// The recipe's metrics lines in the leader's log, by attempt and step.
    func losses(job: String) -> [Int: [Int: Double]] {
        let text = (try? String(contentsOfFile: dir.file("jobs/\(job)/logs/node-0.log"), encoding: .utf8)) ?? ""
        var out: [Int: [Int: Double]] = [:]
        for line in text.split(separator: "\n") {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], o["event"] == nil,
                  let step = o["step"] as? Int, let loss = o["loss"] as? Double, let attempt = o["attempt"] as? Int else { continue }
            out[attempt, default: [:]][step] = loss
        }
        return out
    }

    /// The venv the agents built, from the leader's log.
    func venvPython(job: String) -> String? {
        let text = (try? String(contentsOfFile: dir.file("jobs/\(job)/logs/node-0.log"), encoding: .utf8)) ?? ""
        guard let r = text.range(of: #"python env [0-9a-f]+: (building|cached) in \S+"#, options: .regularExpression) else { return nil }
        return text[r].split(separator: " ").last.map { String($0) + "/bin/python" }
    }

    /// The attempt-1 recipe worker that stopped itself at its `CAPSTAN_TEST_STOP_AT` (state T in
    /// /proc), with its node: a known point to kill -9 it, not a race with the log.
    func stoppedWorker(job: String) -> (pid: pid_t, node: Int)? {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let cmd = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            guard cmd.contains("/\(job)/attempt-1/recipe/sft.py"), !cmd.contains("torch.distributed.run"),
                  let node = (0...7).first(where: { cmd.contains("/node-\($0)-") }),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.range(of: ") ", options: .backwards) else { continue }
            if stat[close.upperBound...].hasPrefix("T") { return (pid, node) }
        }
        return nil
    }
}

extension JobTests {
    @Test("sft recipe: kill -9 a node's worker mid-run; the job resumes from the last checkpoint and retraces the same losses; the adapter loads and generates")
    func recipeKillResume() async throws {
        // Between two checkpoints (5 steps past 15), one node's worker stops itself, and is
        // killed -9 there: attempt 2 resumes from 15 and retraces steps 16–20.
        let rank = Int.random(in: 0...1)
        let home = try JobHome.recipe(steps: 90, every: 15, stopAt: "1:20:\(rank)")
        defer { home.dir.cleanup() }
        let launch = try home.startLaunch()
        defer { if launch.isRunning { launch.terminate() } }
        // The first run on a machine builds the venv (pip: transformers, peft).
        let checkpointed = try await home.wait(timeout: 420) { (try await home.job()?.latestCheckpoint ?? 0) >= 15 }
        let jobID = (try? await home.job()?.id) ?? "-"
        #expect(checkpointed, "no checkpoint: \(home.logTail(job: jobID))")
        let job0 = try await #require(try home.job())
        var stopped: (pid: pid_t, node: Int)?
        _ = try await home.wait(timeout: 300) { stopped = home.stoppedWorker(job: job0.id); return stopped != nil }
        let worker = try #require(stopped, "no worker stopped at step 20: \(home.logTail(job: job0.id))")
        #expect(worker.node == rank)
        kill(worker.pid, SIGKILL)
        #expect(try await home.wait(timeout: 300) { !launch.isRunning }, "launch did not end: \(home.logTail(job: job0.id))")
        let job = try await #require(try home.job())
        let attempts = try await home.store().attempts(job: job.id)
        #expect(job.status == .succeeded && job.attempt == 2 && job.restarts == 1, "\(job.status) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        #expect(attempts.first?.failureKind == "signal")
        let resume = try #require(attempts.last?.resumeStep)
        #expect(resume >= 15 && resume % 15 == 0)

        // Loss after the resume continues from where it was: the same steps give the same
        // losses (weights, optimizer, schedule, RNG and data position all restored).
        let losses = home.losses(job: job.id)
        let first = try #require(losses[1]), second = try #require(losses[2])
        #expect(second.keys.min() == resume + 1 && second.keys.max() == 90 && Set(second.keys) == Set((resume + 1)...90))
        let overlap = Set(first.keys).intersection(second.keys).sorted()
        #expect(!overlap.isEmpty, "attempt 1 logged steps \(first.keys.min() ?? 0)...\(first.keys.max() ?? 0), attempt 2 resumed from \(resume): no step was retraced, so nothing checks the restore")
        for s in overlap {
            let a = first[s]!, b = second[s]!
            #expect(abs(a - b) <= 1e-3 * max(1, abs(a)), "step \(s): attempt 1 loss \(a), attempt 2 loss \(b)")
        }
        let initial = try #require(first[1])
        #expect(second[resume + 1]! < initial * 0.9, "resumed at loss \(second[resume + 1]!), the initial loss was \(initial)")
        #expect(second[90]! < initial * 0.8)
        print("recipe kill trial: killed node \(rank)'s worker, resumed from step \(resume); \(overlap.count) retraced step(s) matched; loss \(initial) → \(second[90]!)")

        // Hugging Face layout in the bucket: the adapter, the tokenizer and the random base.
        let out = home.dir.file("bucket/\(job.id)/outputs")
        for f in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "base/config.json", "base/model.safetensors", "manifest.json"] {
            #expect(FileManager.default.fileExists(atPath: out + "/" + f), "outputs lack \(f)")
        }
        let python = try #require(home.venvPython(job: job.id))
        let gen = try await runProcess(python, [JobHome.repoRoot + "/examples/sft-tiny/generate.py", out, "What is 12 plus 30?", "Repeat the color red three times."], timeout: 120)
        #expect(gen.status == 0, "\(gen.stderr)")
        let answers = gen.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(answers.count == 2 && answers.allSatisfy { ($0["new_tokens"] as? Int ?? 0) > 0 }, "\(gen.stdout)")

        // The CLI shows the metrics.
        let jobs = try await home.capstan(["jobs"])
        #expect(jobs.stdout.contains("step 90 · loss"), "\(jobs.stdout)")
        let metrics = try await home.capstan(["metrics", job.id, "--json"])
        let points = try JSONDecoder().decode([MetricsPointView].self, from: Data(metrics.stdout.utf8))
        #expect(points.map(\.step) == Array(1...90) && points.last?.attempt == 2)
    }

    @Test("sft recipe: only answers are trained — chat turns and completions, the template's end-of-turn included")
    func recipeMasking() async throws {
        // The venv of the kill test, or one built by a 2-step job.
        var python = try await recipeVenv()
        if python == nil {
            let home = try JobHome.recipe(steps: 2, every: 2)
            defer { home.dir.cleanup() }
            _ = try await home.capstan(["launch", home.spec] + JobHome.fast, timeout: 420)
            python = try await home.job().flatMap { home.venvPython(job: $0.id) }
        }
        let py = try #require(python)
        let dir = TempDir("capstan-mask")
        defer { dir.cleanup() }
        dir.write("sft.py", String(decoding: FileManager.default.contents(atPath: JobHome.repoRoot + "/Sources/Trainer/Recipes/sft.py")!, as: UTF8.self))
        dir.write("chat.jsonl", #"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye."}]}"# + "\n")
        dir.write("pc.jsonl", #"{"prompt": "Q: 2+2?\nA: ", "completion": "4"}"# + "\n")
        dir.write("bad.jsonl", "{\"prompt\": \"x\", \"completion\": \"y\"}\n{not json\n")
        func check(_ data: String) async throws -> ProcessResult {
            dir.write("cfg.json", #"{"model": "\#(JobHome.repoRoot)/examples/sft-tiny/model", "data": "\#(dir.file(data))", "seq_len": 128}"#)
            return try await runProcess(py, [dir.file("sft.py"), "--config", dir.file("cfg.json"), "--check-data"], timeout: 120)
        }
        let chat = try await check("chat.jsonl")
        let c = try #require(try JSONSerialization.jsonObject(with: Data(chat.stdout.utf8)) as? [String: Any], "\(chat.stdout) \(chat.stderr)")
        let first = try #require(c["first_example"] as? [String: String])
        #expect(first["trained"] == "Hello.<|eos|>\nBye.<|eos|>\n")
        #expect(first["context"] == "<|bos|><|system|>\nBe brief.\n<|user|>\nHi?\n<|assistant|>\n<|user|>\nBye?\n<|assistant|>\n")
        let pc = try await check("pc.jsonl")
        let p = try #require(try JSONSerialization.jsonObject(with: Data(pc.stdout.utf8)) as? [String: Any], "\(pc.stdout) \(pc.stderr)")
        #expect((p["first_example"] as? [String: String])?["trained"] == "4<|eos|>")
        #expect((p["first_example"] as? [String: String])?["context"] == "Q: 2+2?\nA: ")
        let bad = try await check("bad.jsonl")
        #expect(bad.status == 2 && bad.stderr.contains("bad.jsonl:2: not valid JSON"), "\(bad.stderr)")
    }

    @Test("sft recipe: bad data fails the job as the job's own error, naming the file and line")
    func recipeBadData() async throws {
        let home = try JobHome.recipe(steps: 10, every: 5, data: "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n")
        defer { home.dir.cleanup() }
        let r = try await home.capstan(["launch", home.spec] + JobHome.fast, timeout: 420)
        #expect(r.status != 0)
        let job = try await #require(try home.job())
        #expect(job.status == .failed && job.restarts <= 1)
        let error = job.lastError ?? ""
        #expect(error.contains("failed the same way twice") && error.contains("data/train.jsonl:2: expected `messages`, or `prompt` and `completion`"), "\(error)")
    }

    /// A venv some recipe test already built, if any.
    func recipeVenv() async throws -> String? {
        let root = JobHome.pythonCache
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] where FileManager.default.fileExists(atPath: "\(root)/\(name)/.capstan-ready") {
            let py = "\(root)/\(name)/bin/python"
            if (try? await runProcess(py, ["-c", "import peft, transformers"], timeout: 60))?.status == 0 { return py }
        }
        return nil
    }
}

/// `capstan metrics --json` rows, as the test reads them.
struct MetricsPointView: Decodable {
    var step: Int
    var attempt: Int?
    var values: [String: Double]
}

extension JobTests {
    @Test("python env: installs offline from a wheel folder (the index unreachable), caches the venv, and a missing requirement fails clearly")
    func pythonEnvOffline() async throws {
        let home = try JobHome()
        defer { home.dir.cleanup() }
        var env = home
        env.env["CAPSTAN_PYTHON_CACHE"] = home.dir.file("pycache")
        // A one-module wheel, made by hand (a wheel is a zip with metadata).
        let wheels = home.dir.file("wheels")
        try FileManager.default.createDirectory(atPath: wheels, withIntermediateDirectories: true)
        let make = try await runProcess("/usr/bin/env", ["python3", "-c", """
            import zipfile, hashlib, base64, sys
            files = {"capstan_probe.py": b"VALUE = 'from-the-wheel-folder'\\n",
                     "capstan_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: capstan-probe\\nVersion: 1.0\\n",
                     "capstan_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
            rec = "".join(f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\\n" for n, d in files.items())
            files["capstan_probe-1.0.dist-info/RECORD"] = (rec + "capstan_probe-1.0.dist-info/RECORD,,\\n").encode()
            with zipfile.ZipFile(sys.argv[1] + "/capstan_probe-1.0-py3-none-any.whl", "w") as z:
                for n, d in files.items(): z.writestr(n, d)
            """, wheels])
        #expect(make.status == 0, "\(make.stderr)")
        func job(_ requirement: String) -> String {
            home.dir.write("job/job.yaml", """
                name: pyenv
                resources: {nodes: 1}
                python: {requirements: [\(requirement)], wheels: \(wheels), index: "http://127.0.0.1:9/simple", systemPackages: false}
                setup:
                  - |
                    f="$(dirname "$CAPSTAN_CHECKPOINT_DIR")/python-env.log"
                    if [ -f "$f" ]; then echo "env-log mode $(stat -c %a "$f"), $(grep -c 'Successfully install[e]d capstan-probe-1.0' "$f") install(s)"; else echo "env-log none"; fi
                run: "\\"$CAPSTAN_PYTHON\\" -c 'import capstan_probe, sys; print(capstan_probe.VALUE, sys.prefix)'"
                maxRestarts: 1
                storage: file://\(home.dir.file("bucket"))
                """)
            return home.spec
        }
        let first = try await env.capstan(["launch", job("capstan-probe==1.0")] + JobHome.fast, timeout: 300)
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")
        #expect(first.stdout.contains("installing from the wheel folder") && first.stdout.contains("from-the-wheel-folder " + home.dir.file("pycache")), "\(first.stdout)")
        // pip's output went to python-env.log (0600), not the log: the build says one line as it
        // starts, one progress line (piped: plain), and one when it is ready.
        #expect(first.stdout.contains("env-log mode 600, 1 install(s)"), "\(first.stdout)")
        for pipLine in ["Looking in links", "Processing ", "Installing collected packages", "Successfully installed", #""event": "python_env""#] {
            #expect(!first.stdout.contains(pipLine), "\(pipLine) in \(first.stdout)")
        }
        let build = first.stdout.split(separator: "\n").filter { $0.contains("python env") }
        #expect(build.count == 4 && build[1].contains("installing from the wheel folder") && build[2].hasPrefix("[node 0] python env: installing 1 package (") && build[3].contains("(1 package installed)") && !first.stdout.contains("\r"), "\(build)")
        // The same requirements again: the cached venv, no install.
        let again = try await env.capstan(["launch", job("capstan-probe==1.0")] + JobHome.fast, timeout: 300)
        #expect(again.status == 0 && again.stdout.contains(": cached in ") && !again.stdout.contains("installing from") && again.stdout.contains("env-log none"), "\(again.stdout)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: home.dir.file("pycache")).filter { !$0.hasSuffix(".lock") }.count == 1)
        // On a terminal (script(1) gives launch one), a new build is a live bar redrawn in place.
        let terminal = env.env.merging(["CAPSTAN_HOME": home.dir.path, "TMPDIR": home.tmp, "TERM": "xterm-256color", "COLUMNS": "120", "NO_COLOR": "", "CAPSTAN_PROGRESS": ""]) { $1 }
        let tty = try await runProcess("/usr/bin/script", ["-qfec", ([BuildProducts.capstan, "launch", job("capstan-probe")] + JobHome.fast).joined(separator: " "), "/dev/null"], environment: terminal, timeout: 300)
        #expect(tty.status == 0 && tty.stdout.contains("\r\u{1B}[K\u{1B}[1m[node 0] python env: installing\u{1B}[0m [") && tty.stdout.contains("/1 packages  "), "\(tty.stdout.debugDescription)")
        #expect(!tty.stdout.contains("python env: installing 1 package (") && !tty.stdout.contains(#""python_env""#) && tty.stdout.contains("(1 package installed)"), "\(tty.stdout.debugDescription)")
        // Not in the folder and no index: the job fails, saying what and where to look.
        let missing = try await env.capstan(["launch", job("capstan-nonexistent-probe==9.9")] + JobHome.fast, timeout: 300)
        #expect(missing.status != 0)
        let failed = try await #require(try home.store().jobs().first { $0.status == .failed })
        #expect(failed.lastError?.contains("python env failed: Installing the job's Python requirements") == true, "\(failed.lastError ?? "")")
        // pip's last lines are in the log, and where all of them are.
        #expect(failed.lastError?.contains("/python-env.log on node 0") == true, "\(failed.lastError ?? "")")
        #expect(missing.stdout.contains("python env: pip failed; its last ") && missing.stdout.contains("python-env.log") && missing.stdout.contains("ERROR: No matching distribution found for capstan-nonexistent-probe==9.9"), "\(missing.stdout)")
    }
}

extension JobTests {
    @Test("sft recipe: a model folder or data file missing from the workdir is refused before anything is provisioned")
    func recipeMissingInputs() async throws {
        let home = try JobHome.recipe(steps: 2, every: 2)
        defer { home.dir.cleanup() }
        try FileManager.default.removeItem(atPath: home.dir.file("job/model/config.json"))
        let r = try await home.capstan(["launch", home.spec] + JobHome.fast)
        #expect(r.status != 0 && r.stderr.contains("The recipe's model folder model has no config.json"), "\(r.stderr)")
        try FileManager.default.copyItem(atPath: JobHome.repoRoot + "/examples/sft-tiny/model/config.json", toPath: home.dir.file("job/model/config.json"))
        try FileManager.default.removeItem(atPath: home.dir.file("job/data/train.jsonl"))
        let d = try await home.capstan(["launch", home.spec] + JobHome.fast)
        #expect(d.status != 0 && d.stderr.contains("The recipe's data file data/train.jsonl is not in the workdir"), "\(d.stderr)")
        let live = try await home.liveNodes()
        await #expect(try home.store().jobs().isEmpty && live.isEmpty)
    }
}
