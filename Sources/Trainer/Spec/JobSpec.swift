public import CapstanCore
public import CapstanRuntime
public import Foundation
public import Yams

/// A job as the user writes it (YAML, a handful of lines, defaults for everything else).
///
/// ```yaml
/// name: llama-lora
/// resources: {gpu: H100, gpusPerNode: 8, nodes: 2, spot: allowed}
/// setup: pip install -r requirements.txt
/// run: torchrun --nnodes=$NNODES --node-rank=$NODE_RANK ... train.py
/// env: {WANDB_MODE: offline}
/// checkpoint: {intervalMinutes: 30, keep: 3}
/// storage: s3://my-bucket/jobs
/// maxRestarts: 3
/// notify: {webhooks: [{url: https://hooks.example.com/x, secretEnv: HOOK_SECRET}]}
/// ```
/// Unknown keys and bad values are errors that name the key and the line.
public struct JobSpec: Sendable, Hashable {
    public struct Checkpoint: Sendable, Hashable {
        /// How often the job is expected to checkpoint (a hint for failure detection and logs).
        public var intervalMinutes: Double?
        /// Verified checkpoints kept in the bucket; older ones are deleted.
        public var keep: Int = 3
        public init() {}
    }

    public var name: String
    public var resources: ResourceRequest
    /// Shell commands run on every node before `run` (each attempt; cached work is the
    /// command's business).
    public var setup: [String]
    /// The command run on every node with the env contract (``EnvContract``).
    public var run: String
    public var env: [String: String]
    public var checkpoint: Checkpoint
    /// Bucket URI for checkpoints and outputs; nil: the config's `storage.default`.
    public var storage: String?
    /// Restarts after failures before the job is given up.
    public var maxRestarts: Int
    /// Working directory uploaded to every node (relative to the spec file).
    public var workdir: String?
    /// A built-in recipe (`recipe: sft` with `model`, `data`, `train`); `run` is then the
    /// recipe's command.
    public var recipe: RecipeSpec?
    /// The Python environment setup and `run` use (``PythonEnvironment``); a recipe implies one.
    public var python: PythonEnvironment?
    /// `resources.maxDuration`: the job's wall-clock budget from its first start, restarts
    /// included; past it the controller stops the gang gracefully and the job fails. Nil: none.
    public var maxDuration: Duration?
    /// `resources.deadManMinutes`: an agent that hears from no controller for this long stops
    /// its command (final checkpoint), uploads what is complete and, where its provider says a
    /// guest shutdown stops billing, shuts its machine down. Nil: off (the default).
    public var deadManMinutes: Double?
    /// `notify:`: webhooks and Slack targets told about the job (docs/notifications.md); nil:
    /// config.yaml's default. `notify: false` is an empty spec (no targets).
    public var notify: NotifySpec?
    /// `inputs:`: bucket prefixes every node fetches before setup (``JobInput``), by name.
    public var inputs: [JobInput] = []
    /// `image:`: the container image setup and `run` run in (``ContainerRun``); nil: on the node.
    public var image: String?
    /// `secrets:`: names of variables whose values are read when the job is launched (the
    /// launching environment, or config.yaml's `secrets.file`) and handed to every node's agent
    /// on its stdin (``AgentSecrets``), never written down; see ``SecretSource``.
    public var secrets: [String] = []

    public init(name: String, run: String, resources: ResourceRequest = .init()) {
        self.name = name
        self.resources = resources
        self.setup = []
        self.run = run
        self.env = [:]
        self.checkpoint = Checkpoint()
        self.storage = nil
        self.maxRestarts = 3
        self.workdir = nil
        self.recipe = nil
        self.python = nil
        self.maxDuration = nil
        self.deadManMinutes = nil
        self.notify = nil
    }

    /// Reads a spec file.
    public static func load(path: String) throws -> JobSpec {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CapstanError(.invalidRequest, "Cannot read job spec \(path): \(error.localizedDescription)", hint: "Check the path.")
        }
        return try parse(text, source: path)
    }

    /// Parses YAML `text` (named `source` in errors).
    public static func parse(_ text: String, source: String = "job.yaml") throws -> JobSpec {
        let r = YAMLReader(kind: "job spec", source: source, hint: "See docs/jobs.md for the keys a job spec takes.")
        let node = try r.compose(text)
        guard let node, let top = node.mapping else { throw r.bad("the job spec must be a mapping with at least `run`", node?.mark?.line) }
        var name: String?
        var run: String?
        var recipeName: (String, Int?)?
        var model: String?
        var data: [String]?
        var train: [String: RecipeSpec.Value] = [:]
        var trainNode: Node?
        var pythonSystem = false
        var spec = JobSpec(name: "", run: "")
        for (k, v) in top {
            let key = try r.key(k)
            switch key {
            case "name":
                let n = try r.string(v, key)
                guard n.range(of: "^[a-z0-9][a-z0-9-]{0,62}$", options: .regularExpression) != nil else {
                    throw r.bad("'name' must be lower-case letters, digits and dashes (at most 63), got '\(n)'", v.mark?.line)
                }
                name = n
            case "run": run = try r.string(v, key)
            case "setup":
                spec.setup = try r.strings(v, "setup", "a command or a list of commands")
            case "env":
                guard let m = v.mapping else { throw r.bad("'env' must be a mapping of NAME: value", v.mark?.line) }
                for (ek, ev) in m {
                    let n = try r.key(ek)
                    guard n.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil else {
                        throw r.bad("'env.\(n)' is not a valid variable name", ek.mark?.line)
                    }
                    guard let value = ev.scalar?.string else { throw r.bad("'env.\(n)' must be a plain value", ev.mark?.line) }
                    spec.env[n] = value
                }
            case "resources": spec.resources = try resources(v, r, limits: &spec)
            case "checkpoint":
                guard let m = v.mapping else { throw r.bad("'checkpoint' must be a mapping", v.mark?.line) }
                for (ck, cv) in m {
                    switch try r.key(ck) {
                    case "intervalMinutes":
                        guard let d = cv.float, d > 0 else { throw r.bad("'checkpoint.intervalMinutes' must be a positive number", cv.mark?.line) }
                        spec.checkpoint.intervalMinutes = d
                    case "keep":
                        guard let n = cv.int, n >= 1 else { throw r.bad("'checkpoint.keep' must be a whole number ≥ 1", cv.mark?.line) }
                        spec.checkpoint.keep = n
                    case let other: throw r.unknown("checkpoint.\(other)", ["intervalMinutes", "keep"], ck.mark?.line)
                    }
                }
            case "storage":
                let s = try r.string(v, key)
                guard s.contains("://") else { throw r.bad("'storage' must be a bucket URI like s3://bucket/prefix or file:///path, got '\(s)'", v.mark?.line) }
                spec.storage = s
            case "maxRestarts":
                guard let n = v.int, n >= 0, n <= 1000 else { throw r.bad("'maxRestarts' must be a whole number from 0 to 1000", v.mark?.line) }
                spec.maxRestarts = n
            case "workdir": spec.workdir = try r.string(v, key)
            case "recipe": recipeName = (try r.string(v, key), v.mark?.line)
            case "model": model = try r.string(v, key)
            case "data":
                data = try r.strings(v, "data", "a JSONL file or a list of them")
            case "train": trainNode = v
            case "notify": spec.notify = try NotifySpec.parse(v, r)
            case "inputs": spec.inputs = try inputs(v, r)
            case "image": spec.image = try image(v, r)
            case "secrets": spec.secrets = try secretNames(v, r)
            case "python":
                if v.string == "system" { pythonSystem = true } else { spec.python = try python(v, r) }
            default:
                throw r.unknown(key, keys, k.mark?.line)
            }
        }
        if let (rname, line) = recipeName {
            guard let recipe = Recipe.named(rname) else {
                throw r.bad("unknown recipe '\(rname)'; built in: \(Recipe.all.map(\.name).joined(separator: ", "))", line)
            }
            guard run == nil else { throw r.bad("a job has either 'recipe' or 'run', not both: the recipe is the command", line) }
            guard let model else { throw r.bad("'model' is missing: the recipe needs a Hugging Face model folder (on every node; relative to the workdir)", nil) }
            guard let data, !data.isEmpty else { throw r.bad("'data' is missing: the recipe needs a JSONL file of chat `messages` or `prompt`/`completion` records", nil) }
            for (what, text) in [("model", model)] + data.map({ ("data", $0) }) {
                do { _ = try RecipeSource.parse(text, what: what) } catch { throw r.bad(error.description, nil) }
            }
            if let trainNode { train = try settings(trainNode, recipe, r) }
            spec.recipe = RecipeSpec(name: recipe.name, model: model, data: data, settings: train)
            if !pythonSystem {
                var python = spec.python ?? PythonEnvironment()
                python.requirements = recipe.requirements.filter { req in
                    !python.requirements.contains { Self.requirementName($0) == Self.requirementName(req) }
                } + python.requirements
                spec.python = python
            }
            run = recipe.command
        } else {
            for (key, given) in [("model", model != nil), ("data", data != nil), ("train", trainNode != nil)] where given {
                throw r.bad("'\(key)' belongs to a recipe job; add `recipe: sft`, or pass it to your own command through `env`", nil)
            }
        }
        guard let run, !run.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw r.bad("'run' is missing: the command every node runs (or name a built-in `recipe`)", nil)
        }
        spec.run = run
        spec.name = name ?? "job"
        if spec.image != nil, spec.python != nil {
            throw r.bad("'image' cannot go with 'python' or a recipe yet: the image brings its own Python; install what the job needs in the image or in `setup`", nil)
        }
        if let both = spec.secrets.first(where: { spec.env[$0] != nil }) {
            throw r.bad("'\(both)' is in both 'env' and 'secrets'; a secret's value comes only from the launching environment or the secrets file", nil)
        }
        do { try spec.resources.validate() } catch let e as CapstanError {
            throw r.bad("'resources': \(e.message)\(e.hint.map { " \($0)" } ?? "")", nil)
        }
        return spec
    }

    static let keys = ["name", "resources", "setup", "run", "env", "checkpoint", "storage", "maxRestarts", "workdir", "recipe", "model", "data", "train", "python", "notify", "inputs", "image", "secrets"]

    /// `transformers>=4.46` → `transformers` (to let a job's own pin replace a recipe's).
    static func requirementName(_ req: String) -> String {
        let name = req.prefix { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }
        return name.lowercased().replacingOccurrences(of: "_", with: "-")
    }

    static func settings(_ v: Node, _ recipe: Recipe, _ r: YAMLReader) throws -> [String: RecipeSpec.Value] {
        guard let m = v.mapping else { throw r.bad("'train' must be a mapping of the recipe's settings", v.mark?.line) }
        var out: [String: RecipeSpec.Value] = [:]
        for (k, v) in m {
            let key = try r.key(k)
            guard let setting = recipe.settings.first(where: { $0.key == key }) else {
                throw r.unknown("train.\(key)", recipe.settings.map(\.key), k.mark?.line)
            }
            let line = v.mark?.line
            func check(_ x: Double) throws {
                if let min = setting.minimum, x < min { throw r.bad("'train.\(key)' must be at least \(min), got \(x)", line) }
            }
            switch setting.kind {
            case .int:
                guard let n = v.int else { throw r.bad("'train.\(key)' must be a whole number", line) }
                try check(Double(n))
                out[setting.recipeKey] = .int(n)
            case .number:
                guard let d = v.float ?? v.int.map(Double.init) else { throw r.bad("'train.\(key)' must be a number", line) }
                try check(d)
                out[setting.recipeKey] = .double(d)
            case .flag:
                guard let b = v.bool else { throw r.bad("'train.\(key)' must be true or false", line) }
                out[setting.recipeKey] = .bool(b)
            case .text:
                let s = try r.string(v, "train.\(key)")
                guard setting.choices.isEmpty || setting.choices.contains(s) else {
                    throw r.bad("'train.\(key)' must be one of \(setting.choices.joined(separator: ", ")), got '\(s)'", line)
                }
                out[setting.recipeKey] = .string(s)
            case .size:
                let s = try r.string(v, "train.\(key)")
                guard s.wholeMatch(of: /[0-9]+(KB|MB|GB)/) != nil else {
                    throw r.bad("'train.\(key)' must be a size like 5GB or 500MB, got '\(s)'", line)
                }
                out[setting.recipeKey] = .string(s)
            }
        }
        return out
    }

    static func python(_ v: Node, _ r: YAMLReader) throws -> PythonEnvironment {
        guard let m = v.mapping else { throw r.bad("'python' must be a mapping, or `system` (the node's python3 as it is)", v.mark?.line) }
        var env = PythonEnvironment()
        for (k, v) in m {
            switch try r.key(k) {
            case "requirements":
                if let seq = v.sequence {
                    env.requirements = try seq.map { try r.string($0, "python.requirements") }
                } else if let s = v.string {
                    env.requirementsFile = s
                } else { throw r.bad("'python.requirements' must be a list of requirements or a requirements file", v.mark?.line) }
            case "wheels": env.wheels = try r.string(v, "python.wheels")
            case "index": env.index = try r.string(v, "python.index")
            case "interpreter": env.interpreter = try r.string(v, "python.interpreter")
            case "systemPackages":
                guard let b = v.bool else { throw r.bad("'python.systemPackages' must be true or false", v.mark?.line) }
                env.systemPackages = b
            case let other:
                throw r.unknown("python.\(other)", ["requirements", "wheels", "index", "interpreter", "systemPackages"], k.mark?.line)
            }
        }
        return env
    }

    /// The forms `resources.maxDuration` takes.
    static let durationForms = "a positive number and a unit: s, m, h or d (45s, 90m, 36h, 2d)"

    static let durationUnits: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]

    /// `"90m"` → 90 minutes; nil when `text` is not a positive number followed by s, m, h or d.
    public static func parseDuration(_ text: String) -> Duration? {
        let t = text.trimmingCharacters(in: .whitespaces)
        guard let unit = t.last, let scale = durationUnits[unit],
            let n = Double(t.dropLast().trimmingCharacters(in: .whitespaces)), n.isFinite, n > 0, t.dropLast().allSatisfy({ $0.isNumber || $0 == "." || $0 == " " })
        else { return nil }
        return .milliseconds(Int64((n * scale * 1000).rounded()))
    }

    /// A duration as people read it: `45s`, `1m 30s`, `2h 5m`, `36h`, `3d 4h` (days from two on).
    public static func describe(_ d: Duration) -> String {
        let total = Int(d.components.seconds)
        let (days, hours, minutes, seconds) = (total / 86400, total % 86400 / 3600, total % 3600 / 60, total % 60)
        if days >= 2 { return hours > 0 ? "\(days)d \(hours)h" : "\(days)d" }
        if total >= 3600 { return minutes > 0 ? "\(total / 3600)h \(minutes)m" : "\(total / 3600)h" }
        if minutes > 0 { return seconds > 0 ? "\(minutes)m \(seconds)s" : "\(minutes)m" }
        return "\(seconds)s"
    }

    static func resources(_ v: Node, _ r: YAMLReader, limits spec: inout JobSpec) throws -> ResourceRequest {
        guard let m = v.mapping else { throw r.bad("'resources' must be a mapping", v.mark?.line) }
        var req = ResourceRequest()
        for (k, v) in m {
            switch try r.key(k) {
            case "gpu": req.gpu = try gpu(v, r, "resources.gpu")
            case "gpusPerNode":
                guard let n = v.int, n >= 0 else { throw r.bad("'resources.gpusPerNode' must be a whole number ≥ 0", v.mark?.line) }
                req.gpusPerNode = n
            case "nodes":
                guard let n = v.int, n >= 1 else { throw r.bad("'resources.nodes' must be a whole number ≥ 1", v.mark?.line) }
                req.nodes = n
            case "spot":
                if let b = v.bool { req.spot = b ? .allowed : .never } else if let s = v.string, let p = ResourceRequest.SpotPolicy(rawValue: s) {
                    req.spot = p
                } else { throw r.bad("'resources.spot' must be true, false, never, allowed or only", v.mark?.line) }
            case "regions":
                req.regions = try r.strings(v, "resources.regions", "a region or a list of regions")
            case "maxPricePerHour":
                guard let d = v.float, d > 0 else { throw r.bad("'resources.maxPricePerHour' must be a positive number", v.mark?.line) }
                req.maxPricePerHour = d
            case "providers":
                req.providers = try r.strings(v, "resources.providers", "a name or a list")
            case "maxDuration":
                let given = v.scalar?.string ?? ""
                guard let d = parseDuration(given) else {
                    throw r.bad("'resources.maxDuration' must be \(durationForms), got '\(given)'", v.mark?.line)
                }
                spec.maxDuration = d
            case "anyOf": req.anyOf = try alternatives(v, r)
            case "deadManMinutes":
                guard v.bool == nil, let d = v.float ?? v.int.map(Double.init), d.isFinite, d > 0 else {
                    throw r.bad("'resources.deadManMinutes' must be a positive number of minutes (fractions allowed, e.g. 15 or 0.5), got '\(v.scalar?.string ?? (v.mapping != nil ? "a mapping" : "a list"))'", v.mark?.line)
                }
                spec.deadManMinutes = d
            case let other:
                throw r.unknown("resources.\(other)", ["gpu", "gpusPerNode", "nodes", "spot", "regions", "maxPricePerHour", "providers", "maxDuration", "deadManMinutes", "anyOf"], k.mark?.line)
            }
        }
        if req.anyOf != nil, req.gpu != nil || req.gpusPerNode != nil {
            throw r.bad("'resources.anyOf' goes with neither 'resources.gpu' nor 'resources.gpusPerNode': each alternative names its own (move them into the anyOf entries)", m.first { $0.key.string == "anyOf" }?.key.mark?.line)
        }
        return req
    }

    /// A GPU name the catalog knows (`key` names it in the error).
    static func gpu(_ v: Node, _ r: YAMLReader, _ key: String) throws -> String {
        let g = try r.string(v, key)
        do { _ = try GPUCatalog.resolve(g) } catch let e as CapstanError {
            throw r.bad("'\(key)': \(e.message) \(e.hint ?? "")", v.mark?.line)
        }
        return g
    }

    /// `resources.anyOf`: a list of `{gpu, gpusPerNode}` alternatives, ranked together by price.
    static func alternatives(_ v: Node, _ r: YAMLReader) throws -> [ResourceRequest.Alternative] {
        guard let seq = v.sequence else {
            throw r.bad("'resources.anyOf' must be a list of alternatives like [{gpu: H100, gpusPerNode: 8}, {gpu: A100-80GB, gpusPerNode: 8}]", v.mark?.line)
        }
        guard !seq.isEmpty else {
            throw r.bad("'resources.anyOf' is an empty list; list at least one {gpu, gpusPerNode}, or use 'resources.gpu'", v.mark?.line)
        }
        guard seq.count <= ResourceRequest.maxAlternatives else {
            throw r.bad("'resources.anyOf' lists \(seq.count) alternatives; at most \(ResourceRequest.maxAlternatives) are searched", v.mark?.line)
        }
        var out: [ResourceRequest.Alternative] = []
        for (i, entry) in seq.enumerated() {
            let at = "resources.anyOf[\(i)]"
            guard let m = entry.mapping else { throw r.bad("'\(at)' must be a mapping like {gpu: H100, gpusPerNode: 8}", entry.mark?.line) }
            var alt = ResourceRequest.Alternative()
            for (k, v) in m {
                switch try r.key(k) {
                case "gpu": alt.gpu = try gpu(v, r, "\(at).gpu")
                case "gpusPerNode":
                    guard v.bool == nil, let n = v.int, (1...64).contains(n) else {
                        throw r.bad("'\(at).gpusPerNode' must be a whole number from 1 to 64", v.mark?.line)
                    }
                    alt.gpusPerNode = n
                case let other:
                    throw r.unknown("\(at).\(other)", ["gpu", "gpusPerNode"], k.mark?.line)
                }
            }
            guard alt.gpu != nil || alt.gpusPerNode != nil else {
                throw r.bad("'\(at)' names neither gpu nor gpusPerNode", entry.mark?.line)
            }
            if let j = out.firstIndex(of: alt) { throw r.bad("'\(at)' repeats resources.anyOf[\(j)] (\(alt.description))", entry.mark?.line) }
            out.append(alt)
        }
        return out
    }

    /// `secrets:`: a name or a list of names of environment variables, each once, none of the
    /// env contract's (``EnvContract``) nor Capstan's own `CAPSTAN_` settings.
    static func secretNames(_ v: Node, _ r: YAMLReader) throws -> [String] {
        let names = try r.strings(v, "secrets", "a variable name or a list of them, like [WANDB_API_KEY, HF_TOKEN]")
        var seen = Set<String>()
        for n in names {
            guard n.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil else {
                throw r.bad("'secrets': '\(n)' is not a valid variable name (letters, digits and _, not starting with a digit)", v.mark?.line)
            }
            guard seen.insert(n).inserted else { throw r.bad("'secrets' lists \(n) twice", v.mark?.line) }
            if EnvContract.reservedNames.contains(n) || n.hasPrefix("CAPSTAN_") {
                throw r.bad("'secrets': \(n) is set by Capstan itself (the env contract or its own settings); choose another name", v.mark?.line)
            }
        }
        return names
    }
}

extension JobSpec {
    /// The spec as the job runs it: `settings.env` (`launch --env`) set over `env:`.
    public func applying(_ settings: JobSettings) -> JobSpec {
        var spec = self
        for (k, v) in settings.env ?? [:] { spec.env[k] = v }
        return spec
    }

    /// Checks `launch --env` values for this spec: valid names, none of the spec's `secrets:`
    /// nor of the env contract's. Throws `.invalidRequest`.
    public func checkLaunchEnv(_ env: [String: String]) throws {
        for name in env.keys.sorted() {
            guard name.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil else {
                throw CapstanError(.invalidRequest, "--env \(name)=…: '\(name)' is not a valid variable name.", hint: "Use letters, digits and _, not starting with a digit: --env WANDB_MODE=offline.")
            }
            if secrets.contains(name) {
                throw CapstanError(.invalidRequest, "--env \(name)=… would set the job's secret \(name) in plain text.", hint: "Leave it to `secrets:` (read from the launching environment or the secrets file), or drop it from `secrets:`.")
            }
            if EnvContract.reservedNames.contains(name) || EnvContract.contractNames.contains(name) {
                throw CapstanError(.invalidRequest, "--env \(name)=…: \(name) is set by Capstan on every node (the env contract).", hint: "Choose another name; docs/jobs.md lists the contract.")
            }
        }
    }
}

