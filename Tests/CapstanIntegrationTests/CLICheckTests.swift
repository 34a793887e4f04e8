import CapstanCore
import CapstanRuntime
import Foundation
import Testing

/// `capstan check` on fresh homes, run as a user would: the built binary, AWS on moto (a real
/// EC2 emulator), the sim plugin next to the binary.
@Suite("capstan check", .serialized)
struct CLICheckTests {
    /// What `check --json` prints (decoded nested, as a script would read it).
    struct Report: Decodable {
        struct Provider: Decodable {
            struct Credentials: Decodable { var status: String; var foundIn: String?; var searched: [String] }
            struct PluginFile: Decodable { var path: String; var source: String }
            var name: String
            var kind: String
            var status: String
            var enabled: Bool
            var plugin: PluginFile?
            var credentials: Credentials
            var api: Probe?
            var error: CapstanError?
            var enable: String?
        }
        struct Probe: Decodable {
            var call: String
            var detail: String?
            var answered: Bool
            var timedOut: Bool
            var seconds: Double
            var result: String?
            var error: CapstanError?
        }
        struct ConfigFile: Decodable { var path: String; var exists: Bool }
        var ok: Bool
        var home: String
        var config: ConfigFile
        var providers: [Provider]
        var state: Probe
        var bucket: Probe
        func provider(_ name: String) -> Provider? { providers.first { $0.name == name } }
    }

    /// A fresh home that is also the user's `HOME` (so `~/.aws` is empty), run with this
    /// process's environment minus every `AWS_*` variable.
    struct FreshHome {
        let dir = TempDir("capstan-check")
        func capstan(_ args: [String], env extra: [String: String] = [:]) async throws -> ProcessResult {
            var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") && !$0.key.hasPrefix("GOOGLE_") && $0.key != "CAPSTAN_PLUGIN_PATH" && $0.key != "RUNPOD_API_KEY" && $0.key != "LAMBDA_API_KEY" }
            env["CAPSTAN_HOME"] = dir.path
            env["HOME"] = dir.path
            for (k, v) in extra { env[k] = v }
            let environment = env
            let r = try await Spawn.onThread { try Spawn.runCapturing([BuildProducts.capstan] + args, environment: environment, timeout: 120) }
            let code: Int32 = switch r.status { case .exited(let c): c; case .signaled(let s): s }
            return ProcessResult(status: code, stdout: String(decoding: r.stdout, as: UTF8.self), stderr: String(decoding: r.stderr, as: UTF8.self))
        }
        func report(_ r: ProcessResult) throws -> Report { try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8)) }
    }

    static func awsSection(endpoint: String) -> String {
        "  aws:\n    profile: training\n    endpoint: \(endpoint)\n    regions: [us-east-1]\n"
    }

    @Test("a fresh home with AWS configured wrong: aws named with where its keys were looked for, sim and local answer, exit 1; with the keys in place, moto answers and it exits 0; no key is ever printed")
    func awsConfiguredWrong() async throws {
        let moto = try TestServers.moto
        let home = FreshHome(); defer { home.dir.cleanup() }
        // The profile is in ~/.aws/config (its region), but its keys are nowhere.
        _ = home.dir.write(".aws/config", "[profile training]\nregion = us-east-1\n")
        _ = home.dir.write("config.yaml", "providers:\n" + Self.awsSection(endpoint: moto) + "  sim: {}\n")

        let text = try await home.capstan(["check"])
        print("$ capstan check\n\(text.stdout)\(text.stderr)")
        #expect(text.status == 1, "\(text.stdout)\n\(text.stderr)")
        #expect(text.stdout.contains("NOT STARTED"), "\(text.stdout)")
        #expect(text.stdout.contains("\(home.dir.path)/.aws/credentials [training] (no such file)"), "\(text.stdout)")
        #expect(text.stdout.contains("\(home.dir.path)/.aws/config [profile training] (no aws_access_key_id and aws_secret_access_key)"), "\(text.stdout)")
        #expect(text.stderr.contains("error: 1 enabled provider did not answer: aws."), "\(text.stderr)")
        #expect(text.stdout.contains("to enable it, add to config.yaml:"), "\(text.stdout)")

        let json = try await home.capstan(["check", "--json"])
        #expect(json.status == 1)
        let report = try home.report(json)
        #expect(!report.ok && report.home == home.dir.path && report.config.exists)
        let aws = try #require(report.provider("aws"))
        #expect(aws.enabled && aws.kind == "plugin" && aws.status == "not started" && aws.api == nil, "\(aws)")
        #expect(aws.error?.code == .auth && aws.error?.message.contains("profile 'training'") == true, "\(String(describing: aws.error))")
        #expect(aws.credentials.status == "missing" && aws.credentials.foundIn == nil)
        #expect(aws.credentials.searched.first == "environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (not used: a profile is named)", "\(aws.credentials.searched)")
        #expect(aws.plugin?.path.hasSuffix("libCapstanPluginAWS.so") == true)
        // The plugin that is there and enabled answers; local (built in) too.
        let sim = try #require(report.provider("sim"))
        #expect(sim.status == "ok" && sim.api?.answered == true && sim.api?.call == "compute.describe" && sim.credentials.status == "not needed", "\(sim)")
        let local = try #require(report.provider("local"))
        #expect(local.kind == "built-in" && local.status == "ok" && local.api?.result == "0 Capstan instances", "\(local)")
        // Found but off: said so, with the lines that turn it on.
        let gcp = try #require(report.provider("gcp"))
        #expect(!gcp.enabled && gcp.status == "disabled" && gcp.enable?.contains("  gcp:\n    credentialsFile:") == true, "\(gcp)")
        #expect(report.provider("ssh")?.enable?.contains("hosts:") == true)
        #expect(report.state.answered && report.state.detail == "sqlite" && report.state.call == home.dir.path + "/state/capstan.db", "\(report.state)")
        #expect(report.bucket.answered && report.bucket.call == "file://\(home.dir.path)/bucket", "\(report.bucket)")

        // The keys, where the profile says: moto answers the describe; exit 0.
        _ = home.dir.write(".aws/credentials", "[training]\naws_access_key_id = AKIDMOTOTEST\naws_secret_access_key = motosecret-9c1e\n")
        let fixed = try await home.capstan(["check"])
        print("$ capstan check   # after adding [training] to ~/.aws/credentials\n\(fixed.stdout)\(fixed.stderr)")
        #expect(fixed.status == 0, "\(fixed.stdout)\n\(fixed.stderr)")
        let ok = try home.report(try await home.capstan(["check", "--json"]))
        let awsOK = try #require(ok.provider("aws"))
        #expect(ok.ok && awsOK.status == "ok" && awsOK.api?.answered == true && awsOK.credentials.foundIn == "\(home.dir.path)/.aws/credentials [training]", "\(awsOK)")
        for out in [text.stdout, text.stderr, json.stdout, fixed.stdout, fixed.stderr] {
            #expect(!out.contains("motosecret") && !out.contains("AKIDMOTOTEST"), "a credential was printed: \(out)")
        }
    }

    @Test("an endpoint and a PostgreSQL state that never answer are reported within --timeout, exit 1; the database password is never printed")
    func noAnswer() async throws {
        // Both listen for the test's whole life and never accept: the kernel takes each
        // connection and nothing answers (a port picked and released could be taken meanwhile).
        let silent = try SilentListener()
        defer { silent.stop() }
        let silentPostgres = try SilentListener()
        defer { silentPostgres.stop() }
        let home = FreshHome(); defer { home.dir.cleanup() }
        _ = home.dir.write(".aws/credentials", "[training]\naws_access_key_id = AKIDMOTOTEST\naws_secret_access_key = motosecret\n")
        let port = silentPostgres.port
        _ = home.dir.write("config.yaml", "providers:\n" + Self.awsSection(endpoint: silent.url) + "state: postgres://capstan:hunter2-pw@127.0.0.1:\(port)/capstan\n")
        let r = try await home.capstan(["check", "--json", "--timeout", "3"])
        #expect(r.status == 1, "\(r.stdout)\n\(r.stderr)")
        let report = try home.report(r)
        let aws = try #require(report.provider("aws"))
        #expect(aws.status == "no answer" && aws.api?.timedOut == true && aws.api?.error?.code == .timeout, "\(aws)")
        #expect(!report.state.answered && report.state.detail == "postgres" && report.state.call == "postgres://capstan@127.0.0.1:\(port)/capstan", "\(report.state)")
        #expect(!r.stdout.contains("hunter2") && !r.stderr.contains("hunter2"), "\(r.stdout)\(r.stderr)")
        let text = try await home.capstan(["check", "--timeout", "3"])
        #expect(text.status == 1 && text.stdout.contains("NO ANSWER"), "\(text.stdout)")
        #expect(text.stderr.contains("error: 1 enabled provider did not answer: aws; the state store did not answer."), "\(text.stderr)")
        #expect(!text.stdout.contains("hunter2") && !text.stderr.contains("hunter2"))
    }

    @Test("the config.yaml lines check prints for a provider that is off are accepted as written: pasted in, that provider is on")
    func enableSnippets() async throws {
        let home = FreshHome(); defer { home.dir.cleanup() }
        let first = try home.report(try await home.capstan(["check", "--json"]))
        #expect(first.ok && !first.config.exists, "a fresh home: only local, which answers")
        // ssh's lines name a host (10.0.0.5) that a check would try to reach: the config is
        // only loaded (`plugins list` checks every section against its schema).
        _ = home.dir.write("config.yaml", try #require(first.provider("ssh")?.enable) + "\n")
        let ssh = try await home.capstan(["plugins", "list"])
        #expect(ssh.status == 0, "ssh's enable lines are not a valid config: \(ssh.stderr)")
        for name in ["aws", "gcp", "runpod", "sim"] {
            let snippet = try #require(first.provider(name)?.enable, "\(name) has no enable lines")
            _ = home.dir.write("config.yaml", snippet + "\n")
            let r = try await home.capstan(["check", "--json", "--timeout", "5"])
            let report = try home.report(r)
            let p = try #require(report.provider(name))
            #expect(p.enabled, "\(name): still off after pasting\n\(snippet)\n\(r.stderr)")
            // Whatever else is wrong (no key file, no such host), never the config itself.
            #expect(p.error?.code != .config, "\(name): \(String(describing: p.error))")
        }
        // `enabled: false` in a section: the line that undoes it.
        _ = home.dir.write("config.yaml", "providers:\n  local:\n    enabled: false\n")
        let off = try home.report(try await home.capstan(["check", "--json"]))
        #expect(off.provider("local")?.enable?.contains("enabled: true") == true)
    }

    @Test("bad input: --timeout out of range is refused with the range")
    func badTimeout() async throws {
        let home = FreshHome(); defer { home.dir.cleanup() }
        for value in ["0", "-1", "601", "nan"] {
            let r = try await home.capstan(["check", "--timeout", value])
            #expect(r.status == 64 && r.stderr.hasPrefix("error: --timeout") && r.stderr.contains("above 0, at most 600"), "\(value): \(r.stderr)")
        }
    }
}
