import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanTestSupport
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A real Prometheus (Debian's `prometheus`; `.ci/run` installs it), started by the test on
/// loopback with a scrape config of the test's making.
final class PrometheusProcess: @unchecked Sendable {
    /// The binary, when installed.
    static let binary: String? = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].first { FileManager.default.isExecutableFile(atPath: $0) }
    /// CI sets this: there a missing binary is a failure, not a skip.
    static var required: Bool { ProcessInfo.processInfo.environment["CAPSTAN_TEST_REQUIRE_PROMETHEUS"] == "1" }

    let process = Process()
    let folder: String
    let port: Int

    /// Scrapes `target` (host:port) every second with the bearer token in `credentialsFile`.
    init(folder: String, target: String, credentialsFile: String) throws {
        guard let binary = Self.binary else { throw CapstanError(.unsupported, "prometheus is not installed", hint: "apt-get install -y prometheus") }
        self.folder = folder
        port = try freeLoopbackPort()
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let config = """
            global: {scrape_interval: 1s, evaluation_interval: 1s}
            scrape_configs:
              - job_name: capstan
                authorization: {type: Bearer, credentials_file: '\(credentialsFile)'}
                static_configs: [{targets: ['\(target)']}]
            """
        try config.write(toFile: folder + "/prometheus.yml", atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config.file=\(folder)/prometheus.yml", "--storage.tsdb.path=\(folder)/data", "--web.listen-address=127.0.0.1:\(port)"]
        _ = FileManager.default.createFile(atPath: folder + "/prometheus.log", contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: folder + "/prometheus.log"))
        process.standardOutput = out
        process.standardError = out
        try process.run()
    }

    var logText: String { (try? String(contentsOfFile: folder + "/prometheus.log", encoding: .utf8)) ?? "" }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
        }
    }

    /// `GET /api/v1/<path>` with `query` (URL-encoded here); the decoded JSON body.
    func api(_ path: String, _ query: [String: String] = [:]) async throws -> [String: Any] {
        var c = URLComponents(string: "http://127.0.0.1:\(port)/api/v1/" + path)!
        c.queryItems = query.map { URLQueryItem(name: $0.key, value: $0.value) }
        let (data, _) = try await URLSession.shared.data(from: c.url!)
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// An instant PromQL query: each result's labels and value.
    func query(_ promql: String) async throws -> [(labels: [String: String], value: Double)] {
        let body = try await api("query", ["query": promql])
        guard body["status"] as? String == "success", let data = body["data"] as? [String: Any], let result = data["result"] as? [[String: Any]] else {
            throw CapstanError(.internalError, "PromQL \(promql) failed: \(body)")
        }
        return result.compactMap { r in
            guard let labels = r["metric"] as? [String: String], let pair = r["value"] as? [Any], pair.count == 2, let s = pair[1] as? String, let v = Double(s) else { return nil }
            return (labels, v)
        }
    }

    /// The scrape target's health and last error (for failure messages).
    func targets() async -> String {
        guard let body = try? await api("targets", ["state": "active"]), let data = body["data"] as? [String: Any], let active = data["activeTargets"] as? [[String: Any]] else { return "?" }
        return active.map { "\($0["scrapeUrl"] ?? "?"): \($0["health"] ?? "?") \($0["lastError"] ?? "")" }.joined(separator: "; ")
    }
}

@Suite("capstan serve: /metrics", .serialized)
struct MetricsEndpointTests {
    @Test("GET /metrics takes the API's tokens (401 without); --metrics-without-token opens it and nothing else; no token or its hash is ever in it")
    func auth() async throws {
        let dir = TempDir("capstan-metrics-auth")
        defer { dir.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        let token = try await createToken(home: dir.path, name: "prometheus")
        var serve = try await ServeProcess(home: dir.path)
        defer { serve.terminate() }
        let refused = try await serve.request("GET", "/metrics", token: nil)
        #expect(refused.status == 401 && refused.text.contains("\"auth\""), "\(refused.status) \(refused.text)")
        #expect(try await serve.request("GET", "/metrics", token: "cap_" + String(repeating: "y", count: 43)).status == 401)
        let ok = try await serve.request("GET", "/metrics", token: token)
        #expect(ok.status == 200, "\(ok.text)")
        #expect(ok.text.contains("# TYPE capstan_server_info gauge") && ok.text.contains("capstan_server_info{version="), "\(ok.text)")
        // A provider call (offers from the local provider) is timed.
        let offers = try await serve.request("POST", "/v1/offers", token: token, body: Data(#"{"request": {"nodes": 1, "regions": [], "spot": "never", "providers": []}, "refresh": true}"#.utf8))
        #expect(offers.status == 200, "\(offers.text)")
        let after = try await serve.request("GET", "/metrics", token: token)
        #expect(after.text.contains("capstan_provider_request_duration_seconds_count{provider=\"local\",operation=\"offers\"}"), "\(after.text)")
        #expect(!after.text.contains(token) && !after.text.contains(Self.sha256(token)))
        await serve.stop()

        serve = try await ServeProcess(home: dir.path, extraArgs: ["--metrics-without-token"], log: "serve-open.log")
        let open = try await serve.request("GET", "/metrics", token: nil)
        #expect(open.status == 200 && open.text.contains("capstan_server_info"), "\(open.status) \(open.text)")
        #expect(try await serve.request("GET", "/v1/jobs", token: nil).status == 401, "only /metrics is opened")
    }

    static func sha256(_ s: String) -> String {
        let r = try? runProcessBlocking("/usr/bin/env", ["sh", "-c", "printf %s \"$0\" | sha256sum", s], timeout: 30)
        return String((r?.stdout ?? "").prefix(64))
    }

    @Test(
        "a real Prometheus scrapes /metrics with a bearer credentials file: a 2-node job's step, its restart after a kill -9 of a worker, its checkpoint uploads, node telemetry and cost come back from PromQL",
        .enabled(if: PrometheusProcess.binary != nil || PrometheusProcess.required, "Prometheus is not installed (apt-get install -y prometheus; .ci/run installs it)"))
    func realPrometheus() async throws {
        // Attempt 1 holds at step 230: the worker is killed mid-attempt however late the test looks.
        let home = try JobHome(steps: 240, every: 10, hold: [(1, 230)])
        defer { home.dir.cleanup() }
        let token = try await createToken(home: home.dir.path, name: "prometheus")
        let serve = try await ServeProcess(home: home.dir.path, env: ["TMPDIR": home.tmp])
        defer { serve.terminate() }
        // The token in a file only its owner reads, as Prometheus' credentials_file wants it.
        let credentials = home.dir.file("prometheus/token")
        try FileManager.default.createDirectory(atPath: home.dir.file("prometheus"), withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: credentials, contents: Data(token.utf8), attributes: [.posixPermissions: 0o600])
        let prometheus = try PrometheusProcess(folder: home.dir.file("prometheus"), target: "127.0.0.1:\(serve.port)", credentialsFile: credentials)
        defer { prometheus.stop() }

        let id = try await ServerJobTests().launch(home, serve, token: token)
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 }, "no checkpoint came: \(serve.logText)")
        let pid = try #require(home.workerPID(job: id, attempt: 1, rank: 1))
        kill(pid, SIGKILL)
        #expect(try await home.wait { (try await home.job()?.attempt ?? 0) >= 2 }, "no second attempt: \(serve.logText)")

        // Prometheus needs ~6 s for its first scrape; then a sample a second. Generous deadlines;
        // what may have passed by the time it is asked (the running status, the live cluster) is
        // asked over the last hour.
        func value(_ promql: String) async -> Double? { try? await prometheus.query(promql).first?.value }
        let restarted = try await home.wait(timeout: 180) { (await value("capstan_job_restarts{job_id=\"\(id)\"}") ?? 0) >= 1 }
        let targets = await prometheus.targets()
        #expect(restarted, "PromQL never showed the restart; targets: \(targets)\n\(prometheus.logText.suffix(2000))")
        #expect(try await home.wait(timeout: 180) { (await value("capstan_job_step{job_id=\"\(id)\"}") ?? 0) > 0 }, "no step in PromQL")
        #expect(try await home.wait(timeout: 180) { (await value("max_over_time(capstan_job_status{job_id=\"\(id)\",status=\"running\"}[1h])") ?? 0) == 1 }, "the job was never running in PromQL")
        #expect(try await home.wait(timeout: 180) { (await value("sum(capstan_checkpoint_upload_seconds_count{job_id=\"\(id)\"})") ?? 0) > 0 }, "no checkpoint upload durations in PromQL")
        #expect(try await home.wait(timeout: 180) { (await value("max(max_over_time(capstan_cluster_nodes[1h]))") ?? 0) == 2 }, "the job's 2-node cluster never showed in PromQL")
        // Each node's telemetry (CPU and memory here; GPUs where nvidia-smi is) and the job's cost.
        #expect(try await home.wait(timeout: 180) { (await value("count(max_over_time(capstan_node_memory_total_bytes{job_id=\"\(id)\"}[1h]))") ?? 0) == 2 }, "no telemetry of both nodes in PromQL")
        #expect(try await home.wait(timeout: 180) { await value("capstan_job_cost_dollars{job_id=\"\(id)\"}") != nil }, "no cost in PromQL")

        // To its end: the final step and the one restart are what Prometheus has last.
        #expect(try await home.wait(timeout: 300) { try await home.job()?.status.isFinished == true }, "\(serve.logText)")
        let final = try #require(try await home.job())
        #expect(final.status == .succeeded, "\(final.lastError ?? "")\n\(home.logTail(job: id))")
        let lastStep = try await home.wait(timeout: 180) { await value("capstan_job_step{job_id=\"\(id)\"}") == 240 }
        let seen = await value("capstan_job_step{job_id=\"\(id)\"}") ?? -1
        #expect(lastStep, "PromQL's last step is not the job's last: \(seen)")
        let restarts = try #require(await value("capstan_job_restarts{job_id=\"\(id)\",name=\"ddp\"}"))
        #expect(restarts == Double(final.restarts) && restarts >= 1)
        #expect(try await home.wait(timeout: 180) { (await value("capstan_job_status{job_id=\"\(id)\",status=\"succeeded\"}") ?? 0) == 1 })
        prometheus.stop()
        #expect(prometheus.process.terminationStatus == 0, "prometheus: \(prometheus.logText.suffix(1000))")
        // The scrape's token is in the credentials file only: never in Prometheus' log or the server's.
        #expect(!prometheus.logText.contains(token) && !serve.logText.contains(token))
    }
}
