import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanTrainer
import Testing

@Suite("Job spec")
struct JobSpecTests {
    @Test("a full spec parses; everything else has defaults")
    func full() throws {
        let spec = try JobSpec.parse("""
            name: llama-lora
            resources:
              gpu: H100
              gpusPerNode: 8
              nodes: 2
              spot: allowed
              regions: [us-east-1, us-west-2]
              maxPricePerHour: 60
            setup:
              - pip install -r requirements.txt
              - python prepare.py
            run: torchrun --nnodes=$NNODES train.py
            env:
              WANDB_MODE: offline
              SEED: 7
            checkpoint:
              intervalMinutes: 30
              keep: 5
            storage: s3://my-bucket/jobs
            maxRestarts: 4
            """)
        #expect(spec.name == "llama-lora")
        #expect(spec.resources == ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2, regions: ["us-east-1", "us-west-2"], spot: .allowed, maxPricePerHour: 60))
        #expect(spec.setup == ["pip install -r requirements.txt", "python prepare.py"])
        #expect(spec.run == "torchrun --nnodes=$NNODES train.py")
        #expect(spec.env == ["WANDB_MODE": "offline", "SEED": "7"])
        #expect(spec.checkpoint.intervalMinutes == 30 && spec.checkpoint.keep == 5)
        #expect(spec.storage == "s3://my-bucket/jobs" && spec.maxRestarts == 4)

        let minimal = try JobSpec.parse("run: python train.py\n")
        #expect(minimal.name == "job" && minimal.resources == ResourceRequest() && minimal.checkpoint.keep == 3 && minimal.maxRestarts == 3 && minimal.storage == nil)
        #expect(try JobSpec.parse("run: x\nsetup: make\nresources: {spot: true}\n").setup == ["make"])
        #expect(try JobSpec.parse("run: x\nresources: {spot: true}\n").resources.spot == .allowed)
    }

    @Test("unknown keys and bad values name the key and the line", arguments: [
        ("run: x\nresources:\n  gpu: H100\n  gpus_per_node: 8\n", "unknown key 'resources.gpus_per_node'", 4),
        ("run: x\nchekpoint:\n  keep: 2\n", "unknown key 'chekpoint' (did you mean 'checkpoint'?)", 2),
        ("run: x\nresources:\n  gpu: H1000\n", "Unknown GPU 'H1000'", 3),
        ("run: x\nresources:\n  nodes: 0\n", "'resources.nodes' must be a whole number ≥ 1", 3),
        ("run: x\nresources:\n  spot: sometimes\n", "'resources.spot' must be true, false, never, allowed or only", 3),
        ("run: x\ncheckpoint:\n  keep: 0\n", "'checkpoint.keep' must be a whole number ≥ 1", 3),
        ("run: x\nstorage: my-bucket\n", "'storage' must be a bucket URI", 2),
        ("run: x\nname: My Job\n", "'name' must be lower-case letters", 2),
        ("run: x\nenv:\n  1BAD: y\n", "'env.1BAD' is not a valid variable name", 3),
        ("run: x\nmaxRestarts: -1\n", "'maxRestarts' must be a whole number from 0 to 1000", 2),
    ] as [(String, String, Int)])
    func invalid(text: String, message: String, line: Int) {
        let e = #expect(throws: CapstanError.self) { try JobSpec.parse(text, source: "job.yaml") }
        #expect(e?.code == .config)
        #expect(e?.message.contains(message) == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("job.yaml:\(line): ") == true, "\(e?.message ?? "")")
    }

    @Test("resources.maxDuration takes a number and a unit (s, m, h, d); resources.deadManMinutes a positive number of minutes; both off by default")
    func limits() throws {
        #expect(try JobSpec.parse("run: x\n").maxDuration == nil)
        #expect(try JobSpec.parse("run: x\n").deadManMinutes == nil)
        for (text, seconds) in [("45s", 45.0), ("90m", 5400), ("36h", 129_600), ("2d", 172_800), ("1.5h", 5400)] {
            let spec = try JobSpec.parse("run: x\nresources:\n  maxDuration: \(text)\n")
            #expect(spec.maxDuration == .seconds(seconds), "\(text)")
            // The offer request is untouched: limits are the job's, not the cluster's.
            #expect(spec.resources == ResourceRequest())
        }
        #expect(try JobSpec.parse("run: x\nresources: {deadManMinutes: 15}\n").deadManMinutes == 15)
        #expect(try JobSpec.parse("run: x\nresources: {deadManMinutes: 0.5}\n").deadManMinutes == 0.5)
        #expect(JobSpec.describe(.seconds(5400)) == "1h 30m" && JobSpec.describe(.seconds(45)) == "45s" && JobSpec.describe(.seconds(86400 + 7200)) == "26h" && JobSpec.describe(.seconds(2 * 86400 + 3600)) == "2d 1h" && JobSpec.describe(.seconds(172_800)) == "2d")
    }

    @Test("a bad maxDuration or deadManMinutes names the field, the line and the accepted forms", arguments: [
        ("run: x\nresources:\n  maxDuration: 90\n", "'resources.maxDuration' must be a positive number and a unit: s, m, h or d (45s, 90m, 36h, 2d), got '90'", 3),
        ("run: x\nresources:\n  maxDuration: 90 minutes\n", "got '90 minutes'", 3),
        ("run: x\nresources:\n  maxDuration: 0m\n", "'resources.maxDuration' must be a positive number and a unit", 3),
        ("run: x\nresources:\n  maxDuration: -5h\n", "got '-5h'", 3),
        ("run: x\nresources:\n  maxDuration: 2w\n", "got '2w'", 3),
        ("run: x\nresources:\n  maxDuration: h\n", "got 'h'", 3),
        ("run: x\nresources:\n  maxDuration: [1h]\n", "'resources.maxDuration' must be a positive number and a unit", 3),
        ("run: x\nresources:\n  deadManMinutes: 0\n", "'resources.deadManMinutes' must be a positive number of minutes (fractions allowed, e.g. 15 or 0.5), got '0'", 3),
        ("run: x\nresources:\n  deadManMinutes: -3\n", "got '-3'", 3),
        ("run: x\nresources:\n  deadManMinutes: soon\n", "got 'soon'", 3),
        ("run: x\nresources:\n  deadManMinutes: true\n", "got 'true'", 3),
        ("run: x\nresources:\n  maxDurration: 1h\n", "unknown key 'resources.maxDurration' (did you mean 'maxDuration'?)", 3),
    ] as [(String, String, Int)])
    func badLimits(text: String, message: String, line: Int) {
        let e = #expect(throws: CapstanError.self) { try JobSpec.parse(text, source: "job.yaml") }
        #expect(e?.code == .config)
        #expect(e?.message.contains(message) == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("job.yaml:\(line): ") == true, "\(e?.message ?? "")")
        #expect(e?.hint?.contains("docs/jobs.md") == true)
    }

    @Test("a missing run command and malformed YAML are clear errors")
    func missing() {
        let e = #expect(throws: CapstanError.self) { try JobSpec.parse("name: x\n") }
        #expect(e?.message.contains("'run' is missing") == true)
        let y = #expect(throws: CapstanError.self) { try JobSpec.parse("run: [unclosed\n", source: "j.yaml") }
        #expect(y?.code == .config && y?.message.contains("j.yaml") == true)
        let n = #expect(throws: CapstanError.self) { try JobSpec.parse("- a\n- b\n") }
        #expect(n?.message.contains("must be a mapping") == true)
    }
}
