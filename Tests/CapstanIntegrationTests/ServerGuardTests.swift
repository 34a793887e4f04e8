import CapstanCore
import CapstanTestSupport
import Foundation
import Testing

/// What `capstan serve` refuses a token holder: `file://` inputs (the server's own files) unless
/// --allow-server-paths, and taking down a cluster a job runs on unless `force`.
@Suite("capstan serve: server paths in inputs, down of a busy cluster")
struct ServerGuardTests {
    func launch(_ serve: ServeProcess, token: String, spec: String) async throws -> ServeProcess.Answer {
        let settings = ["heartbeatTimeoutSeconds": 4, "exitGraceSeconds": 30, "stopGraceSeconds": 3]
        return try await serve.request("POST", "/v1/jobs", token: token, body: try JSONSerialization.data(withJSONObject: ["spec": spec, "settings": settings]))
    }

    func job(_ serve: ServeProcess, token: String, _ id: String) async throws -> [String: Any] {
        let r = try await serve.request("GET", "/v1/jobs/\(id)", token: token)
        #expect(r.status == 200, "\(r.text)")
        return try #require(try r.json() as? [String: Any])
    }

    /// Polls job `id` until `done` holds (generous deadline); returns its last state.
    func wait(_ serve: ServeProcess, token: String, _ id: String, until done: ([String: Any]) -> Bool) async throws -> [String: Any] {
        let end = Date().addingTimeInterval(180)
        var last: [String: Any] = [:]
        while Date() < end {
            last = try await job(serve, token: token, id)
            if done(last) { return last }
            try await Task.sleep(for: .milliseconds(200))
        }
        Issue.record("job \(id) never got there: \(last)\n\(serve.logText.suffix(3000))")
        return last
    }

    static let finished: Set<String> = ["succeeded", "failed", "cancelled"]

    @Test("a file:// input is refused (400, naming the input and --allow-server-paths) unless the server allows server paths; then the job reads it")
    func fileInputs() async throws {
        let dir = TempDir("capstan-serve-inputs")
        defer { dir.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        dir.write("outside/a.txt", "from-the-servers-disk")
        let token = try await createToken(home: dir.path, name: "t")
        let spec = "name: reader\ninputs: {data: file://\(dir.file("outside"))/}\nrun: cat $CAPSTAN_INPUT_DATA/a.txt\nmaxRestarts: 0\n"

        let strict = try await ServeProcess(home: dir.path, log: "strict.log")
        let refused = try await launch(strict, token: token, spec: spec)
        await strict.stop()
        #expect(refused.status == 400, "\(refused.text)")
        #expect(refused.text.contains("The spec's input 'data' (file://\(dir.file("outside"))/) is a path on the server's machine") && refused.text.contains("--allow-server-paths"), "\(refused.text)")

        let open = try await ServeProcess(home: dir.path, extraArgs: ["--allow-server-paths"], log: "open.log")
        defer { open.terminate() }
        let accepted = try await launch(open, token: token, spec: spec)
        #expect(accepted.status == 201, "\(accepted.text)")
        let id = try #require((try accepted.json() as? [String: Any])?["id"] as? String)
        let end = try await wait(open, token: token, id) { Self.finished.contains($0["status"] as? String ?? "") }
        #expect(end["status"] as? String == "succeeded", "\(end)")
        let logs = try await open.request("GET", "/v1/jobs/\(id)/logs", token: token)
        #expect(logs.text.contains("from-the-servers-disk"), "\(logs.text.suffix(2000))")
    }

    @Test("DELETE /v1/clusters/{name} while a job runs on it: 409 naming the job and --force; ?force=true takes it down; CapstanClient.down(force:) sends it")
    func busyDown() async throws {
        let dir = TempDir("capstan-serve-busy")
        defer { dir.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        let token = try await createToken(home: dir.path, name: "t")
        let serve = try await ServeProcess(home: dir.path)
        defer { serve.terminate() }
        let launched = try await launch(serve, token: token, spec: "name: busy\nrun: sleep 600\nmaxRestarts: 0\n")
        #expect(launched.status == 201, "\(launched.text)")
        let id = try #require((try launched.json() as? [String: Any])?["id"] as? String)
        let running = try await wait(serve, token: token, id) { $0["status"] as? String == "running" }
        let cluster = try #require(running["clusterName"] as? String)

        let refused = try await serve.request("DELETE", "/v1/clusters/\(cluster)", token: token)
        #expect(refused.status == 409, "\(refused.status) \(refused.text)")
        let error = try #require((try refused.json() as? [String: Any])?["error"] as? [String: Any])
        #expect(error["message"] as? String == "Cluster \(cluster) is not taken down: job \(id) (running) runs on it.", "\(error)")
        #expect((error["hint"] as? String)?.contains("`capstan down \(cluster) --force`") == true, "\(error)")
        #expect(try await job(serve, token: token, id)["status"] as? String == "running", "the job kept its nodes")
        // The CLI against the server: the same refusal, exit 1.
        let env = ["CAPSTAN_HOME": dir.file("client"), "CAPSTAN_SERVER": serve.url, "CAPSTAN_TOKEN": token]
        let cli = try await runProcess(BuildProducts.capstan, ["down", cluster], environment: env)
        #expect(cli.status == 1 && cli.stderr.contains("error: Cluster \(cluster) is not taken down: job \(id) (running) runs on it."), "\(cli.stderr)")

        let forced = try await runProcess(BuildProducts.capstan, ["down", cluster, "--force", "--json"], environment: env, timeout: 180)
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect((try JSONSerialization.jsonObject(with: Data(forced.stdout.utf8)) as? [String: Any])?["status"] as? String == "terminated", "\(forced.stdout)")
        // The job lost its nodes; no restarts left, it ends.
        _ = try await serve.request("POST", "/v1/jobs/\(id)/cancel", token: token)
        _ = try await wait(serve, token: token, id) { Self.finished.contains($0["status"] as? String ?? "") }
    }
}
