import CapstanCore
import CapstanRuntime
import CapstanTestSupport
@testable import CapstanTrainer
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `secrets:`, `resources.anyOf` and `launch --env` in the job spec; secrets files and where a
/// secret's value is looked for.
@Suite("Job spec: secrets, anyOf, --env")
struct SpecSecretsTests {
    @Test("secrets: a name or a list; anyOf: alternatives each with its GPU")
    func parses() throws {
        let spec = try JobSpec.parse("""
            run: x
            secrets: [WANDB_API_KEY, HF_TOKEN]
            resources:
              nodes: 2
              spot: allowed
              anyOf:
                - {gpu: H100, gpusPerNode: 8}
                - {gpu: A100-80GB, gpusPerNode: 8}
            """)
        #expect(spec.secrets == ["WANDB_API_KEY", "HF_TOKEN"])
        #expect(spec.resources.anyOf == [.init(gpu: "H100", gpusPerNode: 8), .init(gpu: "A100-80GB", gpusPerNode: 8)])
        #expect(spec.resources.gpu == nil && spec.resources.gpuDescription == "H100×8 or A100-80GB×8")
        // Each alternative is the shared request with its own GPU.
        #expect(spec.resources.alternatives.map { [$0.gpu ?? "", "\($0.gpusPerNode ?? 0)", "\($0.nodes)", $0.spot.rawValue] } == [["H100", "8", "2", "allowed"], ["A100-80GB", "8", "2", "allowed"]])
        #expect(try JobSpec.parse("run: x\nsecrets: WANDB_API_KEY\n").secrets == ["WANDB_API_KEY"])
        #expect(try JobSpec.parse("run: x\n").secrets.isEmpty)
        // A request without anyOf encodes as before (plugins and the offer cache see no new key).
        let plain = String(decoding: try PluginWire.encoder.encode(ResourceRequest(gpu: "H100")), as: UTF8.self)
        #expect(!plain.contains("anyOf"))
        let back = try PluginWire.decoder.decode(ResourceRequest.self, from: PluginWire.encoder.encode(spec.resources))
        #expect(back == spec.resources)
    }

    @Test("bad secrets and anyOf name the key, the line and what to write", arguments: [
        ("run: x\nsecrets: {a: b}\n", "'secrets' must be a variable name or a list of them", 2),
        ("run: x\nsecrets: [1BAD]\n", "'secrets': '1BAD' is not a valid variable name", 2),
        ("run: x\nsecrets: [A, A]\n", "'secrets' lists A twice", 2),
        ("run: x\nsecrets: [MASTER_ADDR]\n", "MASTER_ADDR is set by Capstan itself", 2),
        ("run: x\nsecrets: [CAPSTAN_HOME]\n", "CAPSTAN_HOME is set by Capstan itself", 2),
        ("run: x\nresources:\n  anyOf: []\n", "'resources.anyOf' is an empty list", 3),
        ("run: x\nresources:\n  anyOf: H100\n", "'resources.anyOf' must be a list of alternatives", 3),
        ("run: x\nresources:\n  anyOf:\n    - {gpu: H1000}\n", "'resources.anyOf[0].gpu': Unknown GPU 'H1000'", 4),
        ("run: x\nresources:\n  anyOf:\n    - {gpu: H100}\n    - {gpu: A100, gpusPerNode: 0}\n", "'resources.anyOf[1].gpusPerNode' must be a whole number from 1 to 64", 5),
        ("run: x\nresources:\n  anyOf:\n    - {gpu: H100, gpus: 8}\n", "unknown key 'resources.anyOf[0].gpus' (did you mean 'gpu'?)", 4),
        ("run: x\nresources:\n  anyOf:\n    - H100\n", "'resources.anyOf[0]' must be a mapping", 4),
        ("run: x\nresources:\n  anyOf:\n    - {}\n", "'resources.anyOf[0]' names neither gpu nor gpusPerNode", 4),
        ("run: x\nresources:\n  anyOf:\n    - {gpu: H100}\n    - {gpu: H100}\n", "'resources.anyOf[1]' repeats resources.anyOf[0] (H100)", 5),
        ("run: x\nresources:\n  anyOf: [{gpu: H100}]\n  gpu: A100\n", "'resources.anyOf' goes with neither 'resources.gpu' nor 'resources.gpusPerNode'", 3),
        ("run: x\nresources:\n  gpusPerNode: 8\n  anyOf: [{gpu: H100}]\n", "goes with neither", 4),
        ("run: x\nresources:\n  anyOf: [{gpu: H100}, {gpu: A100}, {gpu: L4}, {gpu: L40S}, {gpu: A10G}, {gpu: H200}, {gpu: T4}, {gpu: V100}, {gpu: B200}]\n", "at most 8 are searched", 3),
    ] as [(String, String, Int)])
    func invalid(text: String, message: String, line: Int) {
        let e = #expect(throws: CapstanError.self) { try JobSpec.parse(text, source: "job.yaml") }
        #expect(e?.code == .config)
        #expect(e?.message.contains(message) == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("job.yaml:\(line): ") == true, "\(e?.message ?? "")")
    }

    @Test("a name in both env: and secrets: is refused")
    func envAndSecret() {
        let e = #expect(throws: CapstanError.self) { try JobSpec.parse("run: x\nenv: {TOKEN: abc}\nsecrets: [TOKEN]\n", source: "job.yaml") }
        #expect(e?.message.contains("'TOKEN' is in both 'env' and 'secrets'") == true, "\(e?.message ?? "")")
    }

    @Test("anyOf checked as a request: empty, with a top-level GPU, an entry without either key")
    func requestValidation() {
        for (request, message) in [
            (ResourceRequest(anyOf: []), "anyOf is an empty list."),
            (ResourceRequest(gpu: "H100", anyOf: [.init(gpu: "A100")]), "anyOf goes with neither gpu nor gpusPerNode: each alternative names its own."),
            (ResourceRequest(anyOf: [.init()]), "anyOf[0] names neither gpu nor gpusPerNode."),
            (ResourceRequest(anyOf: [.init(gpu: "H100"), .init(gpu: "Z9")]), "anyOf[1]: Unknown GPU 'Z9'."),
            (ResourceRequest(anyOf: [.init(gpu: "H100", gpusPerNode: 99)]), "anyOf[0]: GPUs per node must be between 1 and 64, got 99."),
        ] {
            let e = #expect(throws: CapstanError.self) { try request.validate() }
            #expect(e?.code == .invalidRequest && e?.message == message, "\(e?.message ?? "")")
        }
    }

    @Test("launch --env: set over env:, never over a secret or the env contract")
    func launchEnv() throws {
        let spec = try JobSpec.parse("run: x\nenv: {A: one, B: two}\nsecrets: [TOKEN]\n")
        var settings = JobSettings()
        settings.env = ["B": "three", "C": ""]
        #expect(spec.applying(settings).env == ["A": "one", "B": "three", "C": ""])
        #expect(spec.applying(JobSettings()).env == spec.env)
        try spec.checkLaunchEnv(["B": "x"])
        for (env, message) in [
            (["TOKEN": "x"], "--env TOKEN=… would set the job's secret TOKEN in plain text."),
            (["NODE_RANK": "3"], "--env NODE_RANK=…: NODE_RANK is set by Capstan on every node (the env contract)."),
            (["CAPSTAN_ATTEMPT": "3"], "CAPSTAN_ATTEMPT is set by Capstan on every node"),
            (["9X": "3"], "'9X' is not a valid variable name."),
        ] {
            let e = #expect(throws: CapstanError.self) { try spec.checkLaunchEnv(env) }
            #expect(e?.message.contains(message) == true, "\(e?.message ?? "")")
        }
        // Settings written before --env existed still decode; new ones round-trip.
        let old = try PluginWire.decoder.decode(JobSettings.self, from: Data(#"{"heartbeatTimeoutSeconds": 4}"#.utf8))
        #expect(old.env == nil && old.heartbeatTimeoutSeconds == 4)
        #expect(try PluginWire.decoder.decode(JobSettings.self, from: PluginWire.encoder.encode(settings)).env == settings.env)
    }

    @Test("a secrets file: NAME=value lines, export, quotes, comments; bad lines name the line, never a value")
    func secretsFile() throws {
        let values = try SecretsFile.parse("""
            # tokens
            WANDB_API_KEY=wandb-123
            export HF_TOKEN = "hf abc=def"
              QUOTED='it''s'

            EMPTY=
            """)
        #expect(values == ["WANDB_API_KEY": "wandb-123", "HF_TOKEN": "hf abc=def", "QUOTED": "it''s", "EMPTY": ""])
        for (text, message) in [
            ("A=1\nno-equals-sign-secretvalue\n", "line 2: no '='"),
            ("A=1\n1B=secretvalue\n", "line 2: the name before '=' is not a valid variable name"),
            ("A=secretvalue\nA=secretvalue\n", "line 2: A is set twice"),
        ] {
            let e = #expect(throws: CapstanError.self) { try SecretsFile.parse(text, source: "s.env") }
            #expect(e?.message.contains("The secrets file s.env, \(message)") == true, "\(e?.message ?? "")")
            #expect(e?.description.contains("secretvalue") == false)
        }
    }

    @Test("secrets are read from the environment, then the secrets file (0600 only); a missing one names every place looked")
    func resolve() throws {
        let dir = TempDir("capstan-secrets")
        defer { dir.cleanup() }
        let file = dir.write("secrets.env", "FROM_FILE=file-value\nBOTH=file-loses\nBLANK=\n")
        chmod(file, 0o600)
        let source = SecretSource(environment: ["FROM_ENV": "env-value", "BOTH": "env-wins"], file: file)
        #expect(try source.resolve(["FROM_ENV", "FROM_FILE", "BOTH"]) == ["FROM_ENV": "env-value", "FROM_FILE": "file-value", "BOTH": "env-wins"])
        #expect(try source.resolve([]) == [:])

        let missing = #expect(throws: CapstanError.self) { try source.resolve(["NOPE"]) }
        #expect(missing?.code == .config)
        #expect(missing?.message == "The job's secret NOPE is not set: looked for NOPE in the launching environment and NOPE in the secrets file \(file).")
        #expect(missing?.hint?.contains("Export NOPE before `capstan launch`") == true)
        let blank = #expect(throws: CapstanError.self) { try source.resolve(["BLANK"]) }
        #expect(blank?.message.contains("The job's secret BLANK is empty") == true)
        let noFile = #expect(throws: CapstanError.self) { try SecretSource(environment: [:]).resolve(["X"]) }
        #expect(noFile?.message.contains("(config.yaml names no secrets file)") == true)

        // A file others can read is refused, saying how to fix it.
        chmod(file, 0o644)
        let open = #expect(throws: CapstanError.self) { try source.resolve(["FROM_FILE"]) }
        #expect(open?.message == "The secrets file \(file) can be read or written by others (mode 644); refusing to read secrets from it.")
        #expect(open?.hint == "Run `chmod 600 \(file)`.")
        // (Found in the environment first, the file is not even opened.)
        #expect(try source.resolve(["FROM_ENV"]) == ["FROM_ENV": "env-value"])
        let gone = #expect(throws: CapstanError.self) { try SecretSource(environment: [:], file: dir.file("none.env")).resolve(["X"]) }
        #expect(gone?.message.contains("does not exist") == true)

        // A server reads only CAPSTAN_SECRET_<NAME> of its environment: never its own credentials.
        chmod(file, 0o600)
        var server = SecretSource.server(file: file)
        server.environment = ["CAPSTAN_SECRET_TOKEN": "for-jobs", "AWS_SECRET_ACCESS_KEY": "the-servers-own"]
        #expect(try server.resolve(["TOKEN", "FROM_FILE"]) == ["TOKEN": "for-jobs", "FROM_FILE": "file-value"])
        let own = #expect(throws: CapstanError.self) { try server.resolve(["AWS_SECRET_ACCESS_KEY"]) }
        #expect(own?.message == "The job's secret AWS_SECRET_ACCESS_KEY is not set: looked for CAPSTAN_SECRET_AWS_SECRET_ACCESS_KEY in the server's environment and AWS_SECRET_ACCESS_KEY in the secrets file \(file).")
        #expect(own?.description.contains("the-servers-own") == false)
    }

    @Test("a secret shorter than 8 characters is refused at launch, naming the secret and why, never its value")
    func shortSecret() throws {
        let dir = TempDir("capstan-secrets")
        defer { dir.cleanup() }
        let file = dir.write("secrets.env", "SHORT_FILE=x7q\n")
        chmod(file, 0o600)
        let source = SecretSource(environment: ["SHORT": "abc1234", "LONG": "abcd1234"], file: file)
        #expect(try source.resolve(["LONG"]) == ["LONG": "abcd1234"])
        for (name, value) in [("SHORT", "abc1234"), ("SHORT_FILE", "x7q")] {
            let e = #expect(throws: CapstanError.self) { try source.resolve(["LONG", name]) }
            #expect(e?.code == .config)
            #expect(e?.message == "The job's secret \(name) is shorter than 8 characters; Capstan refuses it: every secret's value is replaced by <redacted> in the job's logs and events, and one this short would mask ordinary text too.", "\(e?.message ?? "")")
            #expect(e?.hint?.contains("or pass a value that is not secret with `env:` or `launch --env` instead") == true)
            #expect(e?.description.contains(value) == false)
        }
        // Launching checks the same way: JobService.create resolves the spec's secrets first.
        var server = SecretSource.server(file: nil)
        server.environment = ["CAPSTAN_SECRET_PIN": "1234"]
        let pin = #expect(throws: CapstanError.self) { try server.resolve(["PIN"]) }
        #expect(pin?.message.hasPrefix("The job's secret PIN is shorter than 8 characters") == true)
    }

    @Test("config.yaml names the secrets file; relative paths are from config.yaml's folder; bad keys are errors")
    func config() throws {
        #expect(try CapstanConfig.parse("secrets: {file: /etc/capstan/secrets.env}\n").secretsFile == "/etc/capstan/secrets.env")
        #expect(try CapstanConfig.parse("secrets: {file: secrets.env}\n", source: "/home/me/.capstan/config.yaml").secretsFile == "/home/me/.capstan/secrets.env")
        #expect(try CapstanConfig.parse("secrets:\n  file: ~/s.env\n").secretsFile == ("~/s.env" as NSString).expandingTildeInPath)
        #expect(try CapstanConfig.parse("storage: {default: file:///x}\n").secretsFile == nil)
        for (text, message) in [
            ("secrets: ~/s.env\n", "'secrets' must be a mapping like {file: ~/.capstan/secrets.env}"),
            ("secrets: {fiel: x}\n", "unknown key 'secrets.fiel' (did you mean 'file'?)"),
            ("secrets: {file: ''}\n", "'secrets.file' must be a path"),
        ] {
            let e = #expect(throws: CapstanError.self) { try CapstanConfig.parse(text, source: "config.yaml") }
            #expect(e?.message.contains(message) == true, "\(e?.message ?? "")")
        }
    }

    @Test("secrets are redacted from what the agent says and from log bytes copied home, longest first, byte for byte")
    func redaction() {
        let secrets = AgentSecrets(environment: ["A": "tok", "B": "tok-longer"])
        #expect(secrets.secrets == ["tok-longer", "tok"])
        #expect(secrets.redact("x tok-longer y tok z") == "x <redacted> y <redacted> z")
        let bytes = Data("a tok b\n".utf8) + Data([0xff, 0xfe]) + Data(" tok-longer\n".utf8)
        let out = Redactor.redact(bytes, Redactor(secrets.secrets).secrets)
        #expect(out == Data("a <redacted> b\n".utf8) + Data([0xff, 0xfe]) + Data(" <redacted>\n".utf8))
        #expect(Redactor.redact(Data("nothing".utf8), []) == Data("nothing".utf8))
        // The secrets travel on stdin as JSON and come back whole.
        let back = try? PluginWire.decoder.decode(AgentSecrets.self, from: PluginWire.encoder.encode(secrets))
        #expect(back?.environment == ["A": "tok", "B": "tok-longer"])
        #expect((try? PluginWire.decoder.decode(AgentSecrets.self, from: Data("{}".utf8)))?.environment == nil)
    }
}
