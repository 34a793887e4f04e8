public import CapstanCore
public import CapstanRuntime
public import Foundation

/// A built-in training program a job names instead of writing `run` (`recipe: sft`): Capstan
/// ships its source inside the binary, writes it on every node, builds its Python environment,
/// and runs it under torchrun with the env contract.
///
/// ```yaml
/// recipe: sft
/// model: ./my-model            # a local Hugging Face model folder, on every node
/// data: data/train.jsonl       # chat `messages` or `prompt`/`completion` records
/// train: {method: lora, epochs: 2, lr: 2e-4}   # everything defaulted
/// ```
public struct RecipeSpec: Sendable, Hashable {
    /// A setting's value as the recipe's JSON config carries it.
    public enum Value: Sendable, Hashable {
        case int(Int), double(Double), string(String), bool(Bool)

        var json: Any {
            switch self {
            case .int(let v): v
            case .double(let v): v
            case .string(let v): v
            case .bool(let v): v
            }
        }
    }

    /// The recipe's name (``Recipe/all``).
    public var name: String
    /// A Hugging Face model folder, as the node sees it (relative paths are from the workdir),
    /// or where the agents fetch one from: `hf://org/name[@revision]`, `s3://bucket/prefix/`.
    public var model: String
    /// JSONL files, as the node sees them, or `s3://` objects or prefixes the agents fetch.
    public var data: [String]
    /// `train:` settings by the recipe's own (snake_case) names.
    public var settings: [String: Value]

    public init(name: String, model: String, data: [String], settings: [String: Value] = [:]) {
        self.name = name
        self.model = model
        self.data = data
        self.settings = settings
    }

    /// The recipe's config file (`--config`), JSON.
    public func configJSON() -> String {
        var object: [String: Any] = ["model": model, "data": data]
        for (k, v) in settings { object[k] = v.json }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

/// A built-in recipe: its program, the `train:` settings it takes, and what it needs installed.
public struct Recipe: Sendable {
    public enum Kind: Sendable { case int, number, text, flag
        /// A size as Hugging Face writes it: digits then KB, MB or GB (`5GB`).
        case size
    }

    /// A `train:` key as the spec spells it, the recipe's name for it, its type and its choices.
    public struct Setting: Sendable {
        public let key: String
        public let recipeKey: String
        public let kind: Kind
        public let choices: [String]
        /// Smallest accepted value (ints and numbers).
        public let minimum: Double?
    }

    public let name: String
    /// The program's file name on the node.
    public let fileName: String
    /// The program's source.
    public let source: String
    public let settings: [Setting]
    /// pip requirements the recipe needs (torch is usually the image's or the interpreter's own:
    /// with system packages visible, pip keeps it).
    public let requirements: [String]

    public static let sft = Recipe(
        name: "sft", fileName: "sft.py", source: String(decoding: PackageResources.sft_py, as: UTF8.self),
        settings: [
            .init(key: "method", recipeKey: "method", kind: .text, choices: ["lora", "full"], minimum: nil),
            .init(key: "init", recipeKey: "init", kind: .text, choices: ["pretrained", "random"], minimum: nil),
            .init(key: "epochs", recipeKey: "epochs", kind: .number, choices: [], minimum: 0.001),
            .init(key: "steps", recipeKey: "steps", kind: .int, choices: [], minimum: 1),
            .init(key: "batchSize", recipeKey: "batch_size", kind: .int, choices: [], minimum: 1),
            .init(key: "gradAccum", recipeKey: "grad_accum", kind: .int, choices: [], minimum: 1),
            .init(key: "seqLen", recipeKey: "seq_len", kind: .int, choices: [], minimum: 8),
            .init(key: "lr", recipeKey: "lr", kind: .number, choices: [], minimum: 0),
            .init(key: "scheduler", recipeKey: "scheduler", kind: .text, choices: ["cosine", "linear", "constant"], minimum: nil),
            .init(key: "warmupRatio", recipeKey: "warmup_ratio", kind: .number, choices: [], minimum: 0),
            .init(key: "weightDecay", recipeKey: "weight_decay", kind: .number, choices: [], minimum: 0),
            .init(key: "maxGradNorm", recipeKey: "max_grad_norm", kind: .number, choices: [], minimum: 0),
            .init(key: "loraRank", recipeKey: "lora_rank", kind: .int, choices: [], minimum: 1),
            .init(key: "loraAlpha", recipeKey: "lora_alpha", kind: .number, choices: [], minimum: 0),
            .init(key: "loraDropout", recipeKey: "lora_dropout", kind: .number, choices: [], minimum: 0),
            .init(key: "loraTargets", recipeKey: "lora_targets", kind: .text, choices: [], minimum: nil),
            .init(key: "gradientCheckpointing", recipeKey: "gradient_checkpointing", kind: .flag, choices: [], minimum: nil),
            .init(key: "dtype", recipeKey: "dtype", kind: .text, choices: ["auto", "bf16", "fp16", "fp32"], minimum: nil),
            .init(key: "checkpointEvery", recipeKey: "checkpoint_every", kind: .int, choices: [], minimum: 1),
            .init(key: "logEvery", recipeKey: "log_every", kind: .int, choices: [], minimum: 1),
            .init(key: "seed", recipeKey: "seed", kind: .int, choices: [], minimum: 0),
            .init(key: "shuffle", recipeKey: "shuffle", kind: .flag, choices: [], minimum: nil),
            .init(key: "checkpointMode", recipeKey: "checkpoint_mode", kind: .text, choices: ["background", "sync"], minimum: nil),
            .init(key: "parallelism", recipeKey: "parallelism", kind: .text, choices: ["auto", "ddp", "fsdp"], minimum: nil),
            .init(key: "cpuOffload", recipeKey: "cpu_offload", kind: .flag, choices: [], minimum: nil),
            .init(key: "packing", recipeKey: "packing", kind: .flag, choices: [], minimum: nil),
            .init(key: "exportShardSize", recipeKey: "export_shard_size", kind: .size, choices: [], minimum: nil),
        ],
        requirements: ["torch", "transformers>=4.46", "peft>=0.13", "safetensors"])

    /// Every built-in recipe.
    public static let all: [Recipe] = [.sft]

    public static func named(_ name: String) -> Recipe? { all.first { $0.name == name } }

    /// Where the agent writes the recipe's files, inside its attempt's state folder.
    public static let folderName = "recipe"

    /// The command every node runs: torchrun with the env contract, the recipe and its config
    /// (written by the agent in `$CAPSTAN_RECIPE_DIR`), on `$CAPSTAN_PYTHON` (the job's
    /// Python environment). `CAPSTAN_NPROC_PER_NODE` in the job's `env:` overrides the
    /// processes per node (one per GPU, or one on a CPU node).
    public var command: String {
        "\"$CAPSTAN_PYTHON\" -m torch.distributed.run --nnodes=$NNODES --node-rank=$NODE_RANK"
            + " --nproc-per-node=${CAPSTAN_NPROC_PER_NODE:-$NPROC_PER_NODE} --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT"
            + " \"$CAPSTAN_RECIPE_DIR/\(fileName)\" --config \"$CAPSTAN_RECIPE_DIR/\(name).json\""
    }

    /// The files the agent writes in `$CAPSTAN_RECIPE_DIR`: the program and its config.
    public func files(for spec: RecipeSpec) -> [String: String] {
        [fileName: source, "\(name).json": spec.configJSON()]
    }
}
