import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanTrainer
import Foundation
import Testing

@Suite("Recipe jobs and Python environments")
struct RecipeSpecTests {
    @Test("recipe: sft builds the torchrun command, the recipe's config and its Python environment")
    func sft() throws {
        let spec = try JobSpec.parse("""
            name: tune
            resources: {nodes: 2}
            recipe: sft
            model: ./llama
            data: [a.jsonl, b.jsonl]
            train: {method: full, steps: 50, batchSize: 2, lr: 1e-5, gradientCheckpointing: true, loraAlpha: 16, parallelism: fsdp, cpuOffload: true, packing: true, exportShardSize: 2GB}
            python: {requirements: ["transformers==4.57.0", numpy], wheels: /opt/wheels}
            """)
        let recipe = try #require(spec.recipe)
        #expect(recipe.name == "sft" && recipe.model == "./llama" && recipe.data == ["a.jsonl", "b.jsonl"])
        #expect(spec.run.contains("-m torch.distributed.run") && spec.run.contains("$CAPSTAN_RECIPE_DIR/sft.py") && spec.run.contains("--master-port=$MASTER_PORT"))
        // The job's own pin replaces the recipe's requirement of the same package; the rest stay.
        let python = try #require(spec.python)
        #expect(python.requirements.contains("transformers==4.57.0") && !python.requirements.contains("transformers>=4.46"))
        #expect(python.requirements.contains("peft>=0.13") && python.requirements.contains("numpy") && python.wheels == "/opt/wheels")
        // Types survive into the recipe's JSON: whole numbers stay whole (the recipe checks).
        let config = try #require(try JSONSerialization.jsonObject(with: Data(recipe.configJSON().utf8)) as? [String: Any])
        #expect(config["steps"] as? Int == 50 && config["batch_size"] as? Int == 2 && config["method"] as? String == "full")
        #expect(config["lr"] as? Double == 1e-5 && config["gradient_checkpointing"] as? Bool == true && config["lora_alpha"] as? Double == 16)
        #expect(config["parallelism"] as? String == "fsdp" && config["cpu_offload"] as? Bool == true && config["packing"] as? Bool == true && config["export_shard_size"] as? String == "2GB")
        #expect(spec.run.contains("--nproc-per-node=${CAPSTAN_NPROC_PER_NODE:-$NPROC_PER_NODE}"))
        #expect(recipe.configJSON().contains("\"steps\" : 50") || recipe.configJSON().contains("\"steps\": 50"))
        let files = Recipe.sft.files(for: recipe)
        #expect(files["sft.py"]?.contains("class Checkpointer") == true && files["sft.json"] == recipe.configJSON())
    }

    @Test("a bare recipe job has defaults for everything but model and data")
    func minimal() throws {
        let spec = try JobSpec.parse("recipe: sft\nmodel: m\ndata: d.jsonl\n")
        #expect(spec.recipe?.settings.isEmpty == true && spec.python?.requirements == Recipe.sft.requirements)
        #expect(spec.python?.systemPackages == true && spec.resources.nodes == 1)
        // An image that has everything: no venv, the node's python3.
        #expect(try JobSpec.parse("recipe: sft\nmodel: m\ndata: d.jsonl\npython: system\n").python == nil)
    }

    @Test("recipe mistakes are errors that say what to do", arguments: [
        ("recipe: sft\nrun: python x.py\nmodel: m\ndata: d\n", "either 'recipe' or 'run'"),
        ("recipe: dpo\nmodel: m\ndata: d\n", "unknown recipe 'dpo'; built in: sft"),
        ("recipe: sft\ndata: d\n", "'model' is missing"),
        ("recipe: sft\nmodel: m\n", "'data' is missing"),
        ("run: x\nmodel: m\n", "'model' belongs to a recipe job"),
        ("recipe: sft\nmodel: m\ndata: d\ntrain: {batchsize: 2}\n", "unknown key 'train.batchsize' (did you mean 'batchSize'?)"),
        ("recipe: sft\nmodel: m\ndata: d\ntrain: {steps: 2.5}\n", "'train.steps' must be a whole number"),
        ("recipe: sft\nmodel: m\ndata: d\ntrain: {method: qlora}\n", "'train.method' must be one of lora, full, got 'qlora'"),
        ("recipe: sft\nmodel: m\ndata: d\ntrain: {batchSize: 0}\n", "'train.batchSize' must be at least 1"),
        ("recipe: sft\nmodel: hf://meta-llama/Llama/3\ndata: d\n", "'model' is 'hf://meta-llama/Llama/3', not a Hub model: write hf://org/name or hf://org/name@revision"),
        ("recipe: sft\nmodel: hf://org/name@\ndata: d\n", "'model' names the revision '' in 'hf://org/name@'"),
        ("recipe: sft\nmodel: m\ndata: hf://org/set\n", "'data' cannot come from the Hugging Face Hub"),
        ("recipe: sft\nmodel: s3://bucket\ndata: d\n", "name the objects too, as s3://bucket/prefix/"),
        ("recipe: sft\nmodel: gs://b/m\ndata: d\n", "the scheme gs:// is not one Capstan fetches"),
        ("recipe: sft\nmodel: m\ndata: d\ntrain: {parallelism: zero3}\n", "'train.parallelism' must be one of auto, ddp, fsdp, got 'zero3'"),
        ("recipe: sft\nmodel: m\ndata: d\ntrain: {packing: yes please}\n", "'train.packing' must be true or false"),
        ("recipe: sft\nmodel: m\ndata: d\ntrain: {cpuOffload: 1}\n", "'train.cpuOffload' must be true or false"),
        ("recipe: sft\nmodel: m\ndata: d\ntrain: {exportShardSize: 5 gigs}\n", "'train.exportShardSize' must be a size like 5GB or 500MB, got '5 gigs'"),
        ("recipe: sft\nmodel: m\ndata: d\npython: {requirement: [x]}\n", "unknown key 'python.requirement' (did you mean 'requirements'?)"),
        ("run: x\npython: {systemPackages: maybe}\n", "'python.systemPackages' must be true or false"),
        ("run: x\npython: conda\n", "'python' must be a mapping, or `system`"),
    ])
    func errors(text: String, expected: String) {
        let e = #expect(throws: CapstanError.self) { try JobSpec.parse(text, source: "job.yaml") }
        #expect(e?.message.contains(expected) == true, "\(e?.message ?? "no error")")
    }

    @Test("an error built from a hint that ends in a full stop gets no second one")
    func oneFullStop() {
        let e = #expect(throws: CapstanError.self) { try JobSpec.parse("run: x\nresources: {gpu: H900}\n", source: "job.yaml") }
        #expect(e?.message.hasSuffix(".") == true && e?.message.contains("..") == false, "\(e?.message ?? "no error")")
        #expect(CapstanError.sentence("done") == "done." && CapstanError.sentence("done.") == "done." && CapstanError.sentence("why?") == "why?")
    }

    @Test("a venv's identity: same inputs share one; any change to what gets installed makes another")
    func envHash() {
        let env = PythonEnvironment(requirements: ["peft", "transformers>=4.46"])
        let h = env.hash(fileContents: nil, pythonVersion: "3.11.7")
        #expect(h.count == 64)
        #expect(PythonEnvironment(requirements: ["transformers>=4.46", "peft"]).hash(fileContents: nil, pythonVersion: "3.11.7") == h)
        #expect(env.hash(fileContents: nil, pythonVersion: "3.12.1") != h)
        #expect(env.hash(fileContents: "numpy\n", pythonVersion: "3.11.7") != h)
        // Comments and blank lines in a requirements file do not count.
        #expect(env.hash(fileContents: "numpy  # arrays\n\n", pythonVersion: "3.11.7") == env.hash(fileContents: "numpy\n", pythonVersion: "3.11.7"))
        var isolated = env
        isolated.systemPackages = false
        #expect(isolated.hash(fileContents: nil, pythonVersion: "3.11.7") != h)
        var offline = env
        offline.wheels = "/opt/wheels"
        #expect(offline.hash(fileContents: nil, pythonVersion: "3.11.7") != h)
        #expect(PythonEnvironment.cacheRoot(environment: ["CAPSTAN_PYTHON_CACHE": "/c", "HOME": "/h"]) == "/c")
        #expect(PythonEnvironment.cacheRoot(environment: ["HOME": "/h"]) == "/h/.cache/capstan/python")
    }
}

@Suite("Job metrics")
struct MetricsTests {
    @Test("HF_TOKEN goes only to the launching environment's Hub endpoint, never to one a job spec names")
    func hubTokenEndpoint() {
        #expect(HubClient.mayReceiveToken(specEndpoint: nil, environment: [:]))
        #expect(HubClient.mayReceiveToken(specEndpoint: nil, environment: ["HF_ENDPOINT": "https://mirror.example"]))
        #expect(HubClient.mayReceiveToken(specEndpoint: "https://mirror.example", environment: ["HF_ENDPOINT": "https://mirror.example"]))
        #expect(!HubClient.mayReceiveToken(specEndpoint: "http://collector.example", environment: [:]))
        #expect(!HubClient.mayReceiveToken(specEndpoint: "http://collector.example", environment: ["HF_ENDPOINT": "https://mirror.example"]))
    }

    @Test("metrics lines are JSON objects with a whole step and numbers; events and other lines are not")
    func parse() throws {
        let p = try #require(MetricsPoint.parse(#"{"step": 120, "loss": 4.37, "lr": 0.0011, "tokens_per_s": 6100, "attempt": 2, "note": "x", "ok": true}"#))
        #expect(p.step == 120 && p.attempt == 2 && p.values == ["loss": 4.37, "lr": 0.0011, "tokens_per_s": 6100])
        #expect(p.summary == "step 120 · loss 4.37 · 6.1k tok/s")
        #expect(MetricsPoint.parse(#"{"event": "checkpoint", "step": 50, "stall_s": 0.01}"#) == nil)
        #expect(MetricsPoint.parse(#"{"step": 1.5, "loss": 2}"#) == nil)
        #expect(MetricsPoint.parse(#"{"step": 3, "name": "no numbers"}"#) == nil)
        #expect(MetricsPoint.parse("[capstan-agent node 0] step 3") == nil)
        #expect(MetricsPoint.parse(#"{"step": 3, "loss": 1"#) == nil)
    }

    @Test("a log's points: a restarted attempt's steps replace the old ones; the chart spans them")
    func readAndChart() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var log = "==== attempt 1 ====\n"
        for s in 1...30 { log += #"{"step": \#(s), "loss": \#(10.0 - Double(s) * 0.2), "attempt": 1}"# + "\n" }
        log += "[capstan-agent node 0] command ended: signal 9\n==== attempt 2 ====\n"
        for s in 21...40 { log += #"{"step": \#(s), "loss": \#(10.0 - Double(s) * 0.2 + 0.001), "attempt": 2}"# + "\n" }
        try log.write(toFile: dir + "/node-0.log", atomically: true, encoding: .utf8)
        let points = MetricsPoint.read(log: dir + "/node-0.log")
        #expect(points.map(\.step) == Array(1...40))
        #expect(points.filter { $0.attempt == 2 }.map(\.step) == Array(21...40))
        let chart = try #require(MetricsPoint.chart(points, width: 20, height: 5))
        let lines = chart.split(separator: "\n")
        #expect(lines.first == "loss by step" && lines.count == 1 + 5 + 2)
        // Highest on the left, lowest on the right: a falling loss.
        #expect(lines[1] == "  9.7 |***" + String(repeating: " ", count: 17))
        #expect(lines[5] == "2.101 |" + String(repeating: " ", count: 17) + "***")
        #expect(lines.last?.contains("step 1") == true && lines.last?.contains("step 40") == true)
        #expect(MetricsPoint.chart(Array(points.prefix(1))) == nil)
    }
}
