import CapstanCore
import CapstanRuntime
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A `capstan serve` on a fresh home (the local provider), with an API token, for the CLI to
/// talk to with `CAPSTAN_SERVER`. The CLI runs with a home of its own that stays empty: a verb
/// that quietly ran here instead of on the server would leave state in it.
final class ServedHome: @unchecked Sendable {
    let dir = TempDir("capstan-served")
    /// The client's own home: nothing may be written there.
    let clientHome = TempDir("capstan-client")
    private(set) var token = ""
    private var serve: ServeProcess?

    var tmp: String { dir.file("tmp") }
    var url: String { serve?.url ?? "" }

    init(slots: Int = 4) throws {
        dir.write("config.yaml", "providers:\n  local:\n    slots: \(slots)\n")
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    }

    /// Makes a token and starts the server on a free port (`serveArgs`: more flags for it).
    func start(_ serveArgs: [String] = []) async throws {
        token = try await createToken(home: dir.path, name: "itest")
        serve = try await ServeProcess(home: dir.path, extraArgs: serveArgs, env: ["TMPDIR": tmp])
    }

    func stop() {
        serve?.terminate()
        dir.cleanup()
        clientHome.cleanup()
    }

    var serveLog: String { serve?.logText ?? "" }

    /// The CLI with the server set (and the client's empty home).
    func remote(_ args: [String], env extra: [String: String] = [:], timeout: Double = 240) async throws -> ProcessResult {
        var env = ["CAPSTAN_HOME": clientHome.path, "CAPSTAN_SERVER": url, "CAPSTAN_TOKEN": token, "TMPDIR": tmp]
        for (k, v) in extra { env[k] = v }
        return try await runProcess(BuildProducts.capstan, args, environment: env, timeout: timeout)
    }

    /// The CLI in embedded mode over a home of its own with the same config (for runs the
    /// server must not see: its supervisor adopts any job of its home without a controller).
    func embeddedElsewhere(_ args: [String], timeout: Double = 240) async throws -> ProcessResult {
        let other = dir.file("elsewhere")
        if !FileManager.default.fileExists(atPath: other + "/config.yaml") {
            try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: dir.file("config.yaml"), toPath: other + "/config.yaml")
        }
        return try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": other, "TMPDIR": tmp], timeout: timeout)
    }

    /// The CLI in embedded mode over the server's own home.
    func embedded(_ args: [String], timeout: Double = 240) async throws -> ProcessResult {
        try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": dir.path, "TMPDIR": tmp], timeout: timeout)
    }

    /// Nothing was written to the client's home.
    var clientHomeUntouched: Bool { ((try? FileManager.default.contentsOfDirectory(atPath: clientHome.path)) ?? []).isEmpty }

    /// A job folder with a workdir (relative, so it is uploaded) whose command prints a file of
    /// it, a metrics line, and writes one checkpoint.
    func writeJob(_ name: String, run: String? = nil, maxRestarts: Int = 0) -> String {
        dir.write("\(name)/marker.txt", "carried-by-the-upload\n")
        let command = run ?? #"'cat marker.txt; echo "{\"step\": 1, \"loss\": 0.5}"; d=$CAPSTAN_CHECKPOINT_DIR; mkdir -p $d/step-1 && echo one > $d/step-1/state.txt && touch $d/step-1/.done && echo wrote'"#
        return dir.write("\(name)/job.yaml", """
            name: \(name)
            resources: {nodes: 1, providers: [local]}
            workdir: .
            run: \(command)
            checkpoint: {keep: 5}
            maxRestarts: \(maxRestarts)
            storage: file://\(dir.file("bucket"))
            """)
    }

    static func jobID(_ r: ProcessResult) -> String? {
        guard let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return nil }
        return o["id"] as? String
    }
}

@Suite("the CLI against `capstan serve` (CAPSTAN_SERVER)", .serialized)
struct ServerClientTests {
    // MARK: Without a server

    @Test("an unreachable server is a clear error (exit 1), never a fall-back to this machine; --server '' is embedded mode")
    func unreachable() async throws {
        let home = TempDir("capstan-noserver"); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        let url = "http://127.0.0.1:\(try FakeHTTPServer.closedPort())"
        let env = ["CAPSTAN_HOME": home.path, "CAPSTAN_SERVER": url, "CAPSTAN_TOKEN": "tok-unreachable-123456"]
        for verb in [["status"], ["jobs"], ["offers"], ["logs", "j-1"], ["down", "c1"]] {
            let r = try await runProcess(BuildProducts.capstan, verb, environment: env)
            #expect(r.status == 1, "\(verb): \(r.status) \(r.stdout) \(r.stderr)")
            #expect(r.stderr.contains(url) && r.stderr.contains("capstan serve") && r.stderr.contains("CAPSTAN_SERVER"), "\(verb): \(r.stderr)")
            #expect(!r.stderr.contains("tok-unreachable-123456"))
            #expect(r.stdout.isEmpty, "\(verb) printed: \(r.stdout)")
        }
        #expect(!FileManager.default.fileExists(atPath: home.file("state")), "a verb ran on this machine")

        // --server wins: '' forces embedded mode, whatever CAPSTAN_SERVER says.
        let local = try await runProcess(BuildProducts.capstan, ["status", "--server", ""], environment: env)
        #expect(local.status == 0 && local.stdout.contains("No clusters running"), "\(local.stdout) \(local.stderr)")
        // Verbs with no place on a server work here and say nothing of it.
        let plugins = try await runProcess(BuildProducts.capstan, ["plugins"], environment: env)
        #expect(plugins.status == 0 && !plugins.stderr.contains(url), "\(plugins.stderr)")
    }

    @Test("a bad --server or token file is a clear error", arguments: [
        (["status", "--server", "localhost:8080"], "not an http or https URL"),
        (["status", "--server", "http://user:pw-secret@h.example"], "never takes credentials"),
        (["jobs", "--server", "http://127.0.0.1:9", "--token-file", "/nonexistent/token"], "Cannot read the token file /nonexistent/token"),
    ])
    func badSettings(_ args: [String], _ says: String) async throws {
        let home = TempDir("capstan-badserver"); defer { home.cleanup() }
        let r = try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": home.path])
        #expect(r.status == 1 && r.stderr.contains(says), "\(r.status) \(r.stderr)")
        #expect(!r.stderr.contains("pw-secret"))
    }

    @Test("a 401's message never carries the token, from CAPSTAN_TOKEN or --token-file; without a token it says how to give one")
    func unauthorized() async throws {
        let secret = "tok-\(UUID().uuidString)"
        // A server that echoes what it was sent, the worst case.
        let server = try FakeHTTPServer { request in
            let sent = request.headers["authorization"] ?? "nothing"
            let body = #"{"error":{"code":"auth","message":"Refused \#(sent)."}}"#
            return [FakeHTTPServer.response(401, "Unauthorized", body: body)]
        }
        defer { server.stop() }
        let home = TempDir("capstan-401"); defer { home.cleanup() }
        let tokenFile = home.write("token", secret + "\n")
        for (args, env) in [(["jobs"], ["CAPSTAN_TOKEN": secret]), (["jobs", "--token-file", tokenFile], [:])] {
            let r = try await runProcess(BuildProducts.capstan, args, environment: env.merging(["CAPSTAN_HOME": home.path, "CAPSTAN_SERVER": server.url]) { $1 })
            #expect(r.status == 1 && r.stderr.contains("Refused Bearer <token>."), "\(r.stderr)")
            #expect(!r.stderr.contains(secret) && !r.stdout.contains(secret))
        }
        #expect(server.requests.allSatisfy { $0.headers["authorization"] == "Bearer \(secret)" })
        let none = try await runProcess(BuildProducts.capstan, ["jobs"], environment: ["CAPSTAN_HOME": home.path, "CAPSTAN_SERVER": server.url])
        #expect(none.status == 1 && none.stderr.contains("No token was sent") && none.stderr.contains("CAPSTAN_TOKEN"), "\(none.stderr)")
    }

    // MARK: With `capstan serve`

    @Test("up, status, down through the server: the same output and exit codes as embedded; a failing up exits 1 both ways")
    func clusterVerbs() async throws {
        let home = try ServedHome(slots: 2)
        defer { home.stop() }
        try await home.start()

        let up = try await home.remote(["up", "c1", "--nodes", "1", "--provider", "local", "--idle-minutes", "30"])
        #expect(up.status == 0, "\(up.stdout) \(up.stderr)")
        #expect(up.stdout.contains("Provisioning c1…") && up.stdout.contains("Cluster c1 is running: 1 node(s) on local"), "\(up.stdout)")
        let status = try await home.remote(["status", "--no-reconcile"])
        #expect(status.status == 0 && status.stdout.contains("c1") && status.stdout.contains("running") && status.stdout.contains("idle 30m"), "\(status.stdout) \(status.stderr)")

        let down = try await home.remote(["down", "c1"])
        #expect(down.status == 0 && down.stdout == "Cluster c1 is terminated.\n", "\(down.stdout) \(down.stderr)")
        // A terminated cluster's row is fixed: the same JSON and table from either side.
        for args in [["status", "--all", "--no-reconcile", "--json"], ["status", "--all", "--no-reconcile"]] {
            let remote = try await home.remote(args)
            let local = try await home.embedded(args)
            #expect(remote.status == 0 && local.status == 0, "\(remote.stderr) \(local.stderr)")
            #expect(remote.stdout == local.stdout, "\(args)\n--- server\n\(remote.stdout)\n--- embedded\n\(local.stdout)")
        }

        // More nodes than the machine has slots: exit 1 and the same words both ways.
        let failedRemote = try await home.remote(["up", "big", "--nodes", "5", "--provider", "local"])
        let failedLocal = try await home.embeddedElsewhere(["up", "big", "--nodes", "5", "--provider", "local"])
        #expect(failedRemote.status == 1 && failedLocal.status == 1, "\(failedRemote.stderr) \(failedLocal.stderr)")
        #expect(failedRemote.stderr.contains("error: cluster big could not be provisioned"), "\(failedRemote.stderr)")

        let unknown = try await home.remote(["down", "no-such-cluster"])
        let unknownLocal = try await home.embedded(["down", "no-such-cluster"])
        #expect(unknown.status == 1 && unknownLocal.status == 1 && unknown.stderr == unknownLocal.stderr, "\(unknown.stderr) \(unknownLocal.stderr)")
        #expect(home.clientHomeUntouched)
    }

    @Test("launch --detach, logs -f, jobs, checkpoints, metrics through the server; the same JSON as embedded over the same home")
    func jobVerbs() async throws {
        let home = try ServedHome()
        defer { home.stop() }
        try await home.start()
        let spec = home.writeJob("tiny")

        let launched = try await home.remote(["launch", spec, "--detach", "--json"] + SmallJobHome.fast)
        #expect(launched.status == 0, "\(launched.stdout) \(launched.stderr)")
        let id = try #require(ServedHome.jobID(launched), "\(launched.stdout)")

        let followed = try await home.remote(["logs", id, "-f"])
        #expect(followed.status == 0, "\(followed.stderr)")
        #expect(followed.stdout.contains("carried-by-the-upload"), "the workdir did not travel: \(followed.stdout)")
        #expect(followed.stdout.hasSuffix("capstan: job \(id) succeeded\n"), "\(followed.stdout)")

        for args in [["jobs", "--json"], ["jobs", "--running"], ["checkpoints", id, "--json"], ["checkpoints", id], ["checkpoints", id, "--verify"], ["metrics", id, "--json"], ["metrics", id], ["logs", id], ["cancel", id, "--json"]] {
            let remote = try await home.remote(args)
            let local = try await home.embedded(args)
            #expect(remote.status == local.status, "\(args): \(remote.status) vs \(local.status): \(remote.stderr) \(local.stderr)")
            #expect(remote.stdout == local.stdout, "\(args)\n--- server\n\(remote.stdout)\n--- embedded\n\(local.stdout)")
        }
        let checkpoints = try await home.remote(["checkpoints", id])
        #expect(checkpoints.stdout.contains("step-1") || checkpoints.stdout.contains("1 "), "\(checkpoints.stdout)")
        let missing = try await home.remote(["logs", "no-such-job"])
        #expect(missing.status == 1 && missing.stderr.contains("no-such-job"), "\(missing.stderr)")
        #expect(home.clientHomeUntouched)
    }

    @Test("launch without --detach follows the job through the stream: the embedded follower's lines, its summary and exit codes")
    func launchFollows() async throws {
        let home = try ServedHome()
        defer { home.stop() }
        try await home.start()
        let spec = home.writeJob("tiny")

        let remote = try await home.remote(["launch", spec] + SmallJobHome.fast)
        let local = try await home.embeddedElsewhere(["launch", spec] + SmallJobHome.fast)
        #expect(remote.status == 0 && local.status == 0, "\(remote.stdout) \(remote.stderr)\n\(local.stdout) \(local.stderr)")
        // Job ids differ; otherwise the same node lines and the same `capstan:` lines, each in
        // the same order (how the two kinds interleave depends on when each was read).
        func lines(_ r: ProcessResult, _ prefix: String) -> [String] {
            r.stdout.replacingOccurrences(of: #"tiny-[0-9a-f]{6}"#, with: "JOB", options: .regularExpression)
                .replacingOccurrences(of: #"MASTER_ADDR=[0-9.]+:[0-9]+"#, with: "MASTER_ADDR=ADDR", options: .regularExpression)
                .replacingOccurrences(of: #" in [0-9.]+ s\b"#, with: " in N s", options: .regularExpression)
                .replacingOccurrences(of: #""seconds": [0-9.]+"#, with: #""seconds": N"#, options: .regularExpression)
                .split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
        }
        for prefix in ["[node ", "capstan: ", "Job "] {
            let (r, l) = (lines(remote, prefix), lines(local, prefix))
            if prefix == "[node " {
                // The agent uploads a checkpoint while the command runs on, so its upload lines
                // and "command ended" come in either order: the same lines, the command's own in
                // the same order, the agent's start first and its end last.
                func own(_ ls: [String]) -> [String] { ls.filter { !$0.hasPrefix("[node 0] [capstan-agent") && !$0.contains("\"checkpoint_uploaded\"") } }
                #expect(r.sorted() == l.sorted() && own(r) == own(l) && r.first == l.first && r.last == l.last, "\(prefix)\n--- server\n\(remote.stdout)\n--- embedded\n\(local.stdout)")
            } else {
                #expect(r == l, "\(prefix)\n--- server\n\(remote.stdout)\n--- embedded\n\(local.stdout)")
            }
        }
        #expect(remote.stdout.contains("[node 0] carried-by-the-upload") && remote.stdout.contains("capstan: checkpoint step 1 committed"), "\(remote.stdout)")
        #expect(remote.stdout.contains("succeeded after 1 attempt(s), 0 restart(s); latest checkpoint step 1"), "\(remote.stdout)")

        let failing = home.writeJob("broken", run: "'echo about-to-fail; exit 3'")
        let failedRemote = try await home.remote(["launch", failing] + SmallJobHome.fast)
        let failedLocal = try await home.embeddedElsewhere(["launch", failing] + SmallJobHome.fast)
        #expect(failedRemote.status == 1 && failedLocal.status == 1, "\(failedRemote.stderr) \(failedLocal.stderr)")
        #expect(failedRemote.stdout.contains("[node 0] about-to-fail"), "\(failedRemote.stdout)")
        #expect(home.clientHomeUntouched)
    }

    @Test("a workdir larger than the server takes: its 413 is the error, said as the server says it")
    func uploadTooLarge() async throws {
        let home = try ServedHome()
        defer { home.stop() }
        try await home.start(["--max-upload-mb", "1"])
        let spec = home.writeJob("big")
        try Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) }).write(to: URL(fileURLWithPath: home.dir.file("big/blob.bin")))
        let r = try await home.remote(["launch", spec, "--detach"])
        #expect(r.status == 1 && r.stderr.contains("larger than this server takes"), "\(r.stdout) \(r.stderr)")
        let jobs = try await home.remote(["jobs", "--json"])
        #expect((try? JSONSerialization.jsonObject(with: Data(jobs.stdout.utf8)) as? [Any])?.isEmpty == true, "no job was made: \(jobs.stdout)")
    }

    @Test("https: the server's certificate is trusted through CAPSTAN_SERVER_CA; without it the TLS failure says what to set")
    func tls() async throws {
        let home = try ServedHome()
        defer { home.stop() }
        let cert = home.dir.file("cert.pem"), key = home.dir.file("key.pem")
        try LambdaEmulator.makeCertificate(cert, key: key)
        try await home.start(["--tls-cert", cert, "--tls-key", key])
        let https = home.url.replacingOccurrences(of: "http://", with: "https://")

        let trusted = try await home.remote(["jobs"], env: ["CAPSTAN_SERVER": https, "CAPSTAN_SERVER_CA": cert])
        #expect(trusted.status == 0 && trusted.stdout.contains("No jobs"), "\(trusted.stdout) \(trusted.stderr)")
        let untrusted = try await home.remote(["jobs"], env: ["CAPSTAN_SERVER": https])
        #expect(untrusted.status == 1 && untrusted.stderr.contains(https) && untrusted.stderr.contains("TLS") && untrusted.stderr.contains("CAPSTAN_SERVER_CA"), "\(untrusted.stderr)")
        #expect(!untrusted.stderr.contains(home.token))
        let notPEM = home.dir.write("not.pem", "hello\n")
        let bad = try await home.remote(["jobs"], env: ["CAPSTAN_SERVER": https, "CAPSTAN_SERVER_CA": notPEM])
        #expect(bad.status == 1 && bad.stderr.contains("Cannot read CA certificates from \(notPEM)"), "\(bad.stderr)")
    }

    @Test("with the real server: no token, or a wrong one, is refused, and the refusal never shows the token")
    func realServerAuth() async throws {
        let home = try ServedHome()
        defer { home.stop() }
        try await home.start()
        let none = try await home.remote(["jobs"], env: ["CAPSTAN_TOKEN": ""])
        #expect(none.status == 1 && none.stderr.contains("No token was sent"), "\(none.stderr)")
        let wrong = "wrong-\(UUID().uuidString)"
        let refused = try await home.remote(["jobs"], env: ["CAPSTAN_TOKEN": wrong])
        #expect(refused.status == 1 && !refused.stderr.contains(wrong), "\(refused.stderr)")
        let fine = try await home.remote(["jobs"])
        #expect(fine.status == 0 && fine.stdout.contains("No jobs"), "\(fine.stdout) \(fine.stderr)")
        #expect(!home.serveLog.contains(home.token) && !home.serveLog.contains(wrong), "the server logged a token")
    }
}
