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

/// The sft recipe at scale on local CPU nodes: FSDP2 over 2 nodes × 2 processes (gloo), sharded
/// checkpoints in the bucket, resume after kill -9 and on another world size, packing.
/// In JobTests' serialized suite: jobs on 2 cores must not run side by side.
extension JobHome {
    /// A recipe job of 2 nodes × `procs` processes training the tiny model with `train`.
    static func shardedRecipe(train: String, procs: Int = 2, nodes: Int = 2, maxRestarts: Int = 3, stopAt: String? = nil) throws -> JobHome {
        let home = try JobHome.recipe(steps: 1, every: 1, maxRestarts: maxRestarts)
        home.dir.write("job/job.yaml", """
            name: sft
            resources: {nodes: \(nodes)}
            workdir: .
            recipe: sft
            model: model
            data: data/train.jsonl
            train: {init: random, batchSize: 2, seqLen: 64, lr: 3.0e-3, logEvery: 1, \(train)}
            env: {GLOO_SOCKET_IFNAME: lo, OMP_NUM_THREADS: "1", CAPSTAN_NPROC_PER_NODE: "\(procs)"\(stopAt.map { ", CAPSTAN_TEST_STOP_AT: \"\($0)\"" } ?? "")}
            checkpoint: {keep: 3}
            maxRestarts: \(maxRestarts)
            storage: file://\(home.dir.file("bucket"))
            """)
        return home
    }

    /// The job's committed manifests in its bucket, by step.
    func manifests(job: JobRecord) async throws -> [Int: CheckpointManifest] {
        let cs = CheckpointStore(store: try FileObjectStore(root: dir.file("bucket/\(job.id)")), prefix: "checkpoints")
        var out: [Int: CheckpointManifest] = [:]
        for step in try await cs.committedSteps() { out[step] = try await cs.verified(step: step) }
        return out
    }

    /// Runs the recipe directly under torchrun on one node with `procs` processes, resuming
    /// from `resume`, with the job's model, data and settings; returns its losses by step.
    func runRecipe(python: String, procs: Int, resume: String, config: [String: Any], name: String) async throws -> [Int: Double] {
        let work = dir.file("job")
        let cfg = dir.file("\(name).json")
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: cfg))
        let port = try freeLoopbackPort()
        let script = "cd '\(work)' && exec '\(python)' -m torch.distributed.run --nnodes=1 --nproc-per-node=\(procs) --master-addr=127.0.0.1 --master-port=\(port) '\(JobHome.repoRoot)/Sources/Trainer/Recipes/sft.py' --config '\(cfg)'"
        let r = try await runProcess("/bin/sh", ["-c", script], environment: [
            "CAPSTAN_RESUME_DIR": resume, "CAPSTAN_CHECKPOINT_DIR": dir.file("\(name)/ckpt"), "CAPSTAN_OUTPUT_DIR": dir.file("\(name)/out"),
            "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
        ], timeout: 300)
        #expect(r.status == 0, "\(name): \(r.stderr.suffix(3000))")
        var out: [Int: Double] = [:]
        for line in r.stdout.split(separator: "\n") {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], o["event"] == nil,
                  let step = o["step"] as? Int, let loss = o["loss"] as? Double else { continue }
            out[step] = loss
        }
        return out
    }
}

extension JobTests {
    /// The recipe's venv (transformers, peft): one a recipe test built, or one a 2-step job
    /// builds now (the tests of this suite run in any order).
    func recipePython() async throws -> String {
        if let py = try await recipeVenv() { return py }
        let home = try JobHome.recipe(steps: 2, every: 2)
        defer { home.dir.cleanup() }
        _ = try await home.capstan(["launch", home.spec] + JobHome.fast, timeout: 420)
        let job = try await home.job()
        return try #require(job.flatMap { home.venvPython(job: $0.id) }, "no venv: \(home.logTail(job: job?.id ?? "-"))")
    }

    @Test("sft under FSDP, 2 nodes × 2 processes: kill -9 a worker mid-run, the resume retraces the same losses; one shard per rank per checkpoint, nothing twice; the checkpoint resumes on 1 node × 2 and × 4 processes on the same losses; full export in HF shards")
    func fsdpKillResumeReshard() async throws {
        // Between two checkpoints (step 12; they come every 8), a random rank's worker stops
        // itself and is killed -9 there: attempt 2 resumes from 8 and retraces steps 9–12.
        let rank = Int.random(in: 0...3)
        let home = try JobHome.shardedRecipe(train: "method: full, parallelism: fsdp, steps: 24, checkpointEvery: 8, exportShardSize: 1MB", stopAt: "1:12:\(rank)")
        defer { home.dir.cleanup() }
        let launch = try home.startLaunch()
        defer { if launch.isRunning { launch.terminate() } }
        let checkpointed = try await home.wait(timeout: 420) { (try await home.job()?.latestCheckpoint ?? 0) >= 8 }
        let jobID = (try? await home.job()?.id) ?? "-"
        #expect(checkpointed, "no checkpoint: \(home.logTail(job: jobID))")
        let job0 = try await #require(try home.job())
        var stopped: (pid: pid_t, node: Int)?
        _ = try await home.wait(timeout: 300) { stopped = home.stoppedWorker(job: job0.id); return stopped != nil }
        let worker = try #require(stopped, "no worker stopped at step 12: \(home.logTail(job: job0.id))")
        #expect(worker.node == rank / 2)
        let node = worker.node
        kill(worker.pid, SIGKILL)
        #expect(try await home.wait(timeout: 420) { !launch.isRunning }, "launch did not end: \(home.logTail(job: job0.id))")
        let job = try await #require(try home.job())
        #expect(job.status == .succeeded && job.attempt == 2, "\(job.status) \(job.lastError ?? "") \(home.logTail(job: job.id))")
        let resume = try #require(try await home.store().attempts(job: job.id).last?.resumeStep)
        let losses = home.losses(job: job.id)
        let first = try #require(losses[1]), second = try #require(losses[2])
        let overlap = Set(first.keys).intersection(second.keys).sorted()
        #expect(!overlap.isEmpty, "attempt 2 resumed from \(resume): no step retraced")
        for s in overlap {
            #expect(abs(first[s]! - second[s]!) <= 1e-3 * max(1, abs(first[s]!)), "step \(s): \(first[s]!) vs \(second[s]!)")
        }
        print("fsdp kill trial: killed a worker of node \(node), resumed from step \(resume); \(overlap.count) retraced step(s) matched")

        // The bucket: per checkpoint, each rank's shard and RNG once, the index and trainer
        // state once, in the part of the node that ran the rank; no file twice.
        let manifests = try await home.manifests(job: job)
        #expect(Set(manifests.keys) == [8, 16, 24], "\(manifests.keys.sorted())")
        let params = 803_968.0, state = params * 4 * 3  // fp32 weights + AdamW's two moments
        for (step, m) in manifests.sorted(by: { $0.key < $1.key }) {
            let paths = m.parts.sorted { $0.node < $1.node }.map { Set($0.files.map(\.path)) }
            #expect(paths.count == 2 && paths[0].isDisjoint(with: paths[1]))
            #expect(paths[0] == ["global/dcp/__0_0.distcp", "global/dcp/__1_0.distcp", "global/dcp/.metadata", "global/rng-rank0.pt", "global/rng-rank1.pt", "global/trainer.json"], "step \(step): \(paths[0])")
            #expect(paths[1] == ["global/dcp/__2_0.distcp", "global/dcp/__3_0.distcp", "global/rng-rank2.pt", "global/rng-rank3.pt"], "step \(step): \(paths[1])")
            let ratio = Double(m.totalBytes) / state
            #expect(ratio > 0.95 && ratio < 1.2, "step \(step): \(m.totalBytes) bytes for \(Int(state)) bytes of state")
            print("fsdp 2x2 checkpoint step \(step): \(m.totalBytes) bytes in the bucket = \(String(format: "%.3f", ratio))x the state (\(Int(state)) bytes)")
        }

        // Reshard: the step-16 checkpoint, restored as a 1-node cluster's agent restores it
        // (every node's global/ files), continues on 2 and on 4 processes.
        let m16 = try #require(manifests[16])
        let cs = CheckpointStore(store: try FileObjectStore(root: home.dir.file("bucket/\(job.id)")), prefix: "checkpoints")
        let restored = home.dir.file("resume-16")
        try await cs.restore(m16, node: 0, into: restored)
        let python = try #require(home.venvPython(job: job.id))
        let config: [String: Any] = ["model": "model", "data": "data/train.jsonl", "init": "random", "batch_size": 2, "seq_len": 64, "lr": 3.0e-3,
                                     "log_every": 1, "method": "full", "parallelism": "fsdp", "steps": 24, "checkpoint_every": 100]
        let reference = second.merging(first) { a, _ in a }
        var table = ["step | 2 nodes × 2 (uninterrupted) | 1 node × 2 | 1 node × 4"]
        let two = try await home.runRecipe(python: python, procs: 2, resume: restored, config: config, name: "reshard-2")
        let four = try await home.runRecipe(python: python, procs: 4, resume: restored, config: config, name: "reshard-4")
        let tolerance = 1e-3  // relative: the same examples per step; only reduction order differs
        for s in 17...24 {
            let want = try #require(reference[s], "no reference loss at step \(s)")
            table.append("\(s) | \(want) | \(two[s].map { "\($0)" } ?? "-") | \(four[s].map { "\($0)" } ?? "-")")
            for (name, got) in [("1×2", two[s]), ("1×4", four[s])] {
                let g = try #require(got, "\(name) logged no step \(s)")
                #expect(abs(g - want) <= tolerance * max(1, abs(want)), "\(name) step \(s): \(g), uninterrupted \(want)")
            }
        }
        print("reshard (tolerance \(tolerance) relative):\n" + table.joined(separator: "\n"))

        // The final model: HF layout, safetensors shards with their index.
        let out = home.dir.file("bucket/\(job.id)/outputs")
        let index = try #require(try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/model.safetensors.index.json"))) as? [String: Any])
        let shards = Set(((index["weight_map"] as? [String: String]) ?? [:]).values)
        #expect(shards.count > 1 && shards.allSatisfy { FileManager.default.fileExists(atPath: out + "/" + $0) }, "\(shards)")
        let load = try await runProcess(python, ["-c", """
            import sys, json
            from transformers import AutoModelForCausalLM
            m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
            print(json.dumps({"params": sum(p.numel() for p in m.parameters())}))
            """, out], timeout: 120)
        #expect(load.status == 0 && load.stdout.contains("\"params\": 803968"), "\(load.stdout) \(load.stderr.suffix(2000))")
    }

    @Test("sft under DDP, 2 nodes × 2 processes, packed: the bucket holds one copy of the state per checkpoint (not one per node), every rank's RNG")
    func ddpOneCopy() async throws {
        let home = try JobHome.shardedRecipe(train: "method: full, parallelism: ddp, packing: true, steps: 4, checkpointEvery: 4", maxRestarts: 0)
        defer { home.dir.cleanup() }
        let r = try await home.capstan(["launch", home.spec] + JobHome.fast, timeout: 420)
        let job = try await #require(try home.job())
        #expect(r.status == 0 && job.status == .succeeded, "\(r.stderr) \(home.logTail(job: job.id))")
        let m = try #require(try await home.manifests(job: job)[4])
        let all = m.parts.flatMap(\.files).map(\.path)
        #expect(Set(all).count == all.count)
        #expect(Set(all.filter { $0.hasPrefix("global/rng-rank") }) == ["global/rng-rank0.pt", "global/rng-rank1.pt", "global/rng-rank2.pt", "global/rng-rank3.pt"])
        let state = 803_968.0 * 4 * 3
        let ratio = Double(m.totalBytes) / state
        #expect(ratio > 0.95 && ratio < 1.2, "\(m.totalBytes) bytes for \(Int(state)) bytes of state")
        print("ddp 2x2 checkpoint: \(m.totalBytes) bytes in the bucket = \(String(format: "%.3f", ratio))x the state (one copy per node before: 2x)")
        let log = home.logTail(job: job.id)
        #expect(home.losses(job: job.id)[1]?[4] != nil, "\(log)")
    }

    @Test("packing: on a fixed batch, every example's trained targets and attention segment are identical to unpacked")
    func packingMasks() async throws {
        let home = try JobHome.shardedRecipe(train: "packing: true, steps: 1", maxRestarts: 0)
        defer { home.dir.cleanup() }
        let python = try await recipePython()
        let cfg = home.dir.file("pack.json")
        try JSONSerialization.data(withJSONObject: ["model": "model", "data": "data/train.jsonl", "seq_len": 128, "batch_size": 8, "packing": true])
            .write(to: URL(fileURLWithPath: cfg))
        let r = try await runProcess("/bin/sh", ["-c", "cd '\(home.dir.file("job"))' && exec '\(python)' '\(JobHome.repoRoot)/Sources/Trainer/Recipes/sft.py' --config '\(cfg)' --check-data"], timeout: 120)
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        let o = try #require(try JSONSerialization.jsonObject(with: Data((r.stdout.split(separator: "\n").last ?? "").utf8)) as? [String: Any])
        let p = try #require(o["packing"] as? [String: Any], "\(r.stdout)")
        #expect(p["identical"] as? Bool == true && (p["checked"] as? Int ?? 0) > 8, "\(p)")
        #expect((p["rows"] as? Int ?? .max) < (o["records"] as? Int ?? 0) / 2, "\(p)")
        print("packing: \(p)")
    }
}
