import CapstanCore
import CapstanSQLite
import CapstanTestSupport
import Foundation
import Testing

/// A fake `nvidia-smi` (first on the `PATH` the agents inherit): two GPUs, the second with
/// `[N/A]` fields, answering only the documented query.
func writeFakeNvidiaSMI(_ dir: TempDir) throws -> String {
    dir.write("bin/nvidia-smi", """
        #!/bin/sh
        [ "$1" = "--query-gpu=index,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw" ] || { echo "unexpected query: $*" >&2; exit 6; }
        echo "0, Fake H100 80GB HBM3, 97, 71680, 81920, 64, 612.25"
        echo "1, Fake H100 80GB HBM3, [N/A], 1024, 81920, 41, [N/A]"

        """)
    try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.file("bin/nvidia-smi"))
    return dir.file("bin")
}

@Suite("Telemetry of a real 2-node job (local provider, torch.distributed)", .serialized)
struct TelemetryJobTests {
    init() throws {
        guard torchAvailable() else {
            throw CapstanError(.config, "python3 cannot import torch.", hint: "pip install torch (CPU wheel); .ci/run installs it.")
        }
    }

    @Test("both nodes' samples (CPU, memory, a fake nvidia-smi's GPUs) reach the store, `capstan top --once` and `capstan jobs`")
    func twoNodes() async throws {
        var home = try JobHome(steps: 4000, every: 1000, pause: 0.05)
        defer { home.dir.cleanup() }
        let bin = try writeFakeNvidiaSMI(home.dir)
        home.env["PATH"] = bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let r = try await home.capstan(["launch", home.spec, "--detach", "--telemetry-interval", "1"] + JobHome.fast)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        let job = try #require(try await home.job())
        defer { _ = try? runProcessBlocking(BuildProducts.capstan, ["cancel", job.id], environment: home.env.merging(["CAPSTAN_HOME": home.dir.path, "TMPDIR": home.tmp]) { $1 }, timeout: 300) }

        // Polled with a generous deadline: nothing here is timed.
        let seen = try await home.wait(timeout: 300) {
            let t = try await home.store().telemetry(job: job.id)
            let j = try await home.job()
            return j?.status == .running && t.map(\.node) == [0, 1] && t.allSatisfy { $0.gpus.count == 2 }
        }
        let samples = try await home.store().telemetry(job: job.id)
        #expect(seen, "telemetry: \(samples)\n\(home.logTail(job: job.id))")
        for (rank, t) in samples.enumerated() {
            #expect(t.job == job.id && t.node == rank && t.attempt == 1)
            #expect(t.memoryTotalBytes > 0 && t.memoryUsedBytes > 0 && t.cpuPercent >= 0 && t.cpuPercent <= 100)
            #expect(t.gpus.first == GPUSample(index: 0, name: "Fake H100 80GB HBM3", utilizationPercent: 97, memoryUsedMiB: 71680, memoryTotalMiB: 81920, temperatureC: 64, powerW: 612.25))
            #expect(t.gpus.last?.utilizationPercent == nil && t.gpus.last?.powerW == nil && t.gpus.last?.temperatureC == 41)
        }
        // The samples go on: a newer one replaces each node's.
        let first = samples.map(\.sampledAt)
        let newer = try await home.wait(timeout: 300) {
            let t = try await home.store().telemetry(job: job.id)
            return t.count == 2 && zip(t.map(\.sampledAt), first).allSatisfy { $0 > $1 }
        }
        #expect(newer)

        let top = try await home.capstan(["top", job.id, "--once"])
        #expect(top.status == 0, "\(top.stderr)")
        let lines = top.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("\(job.id)  running  attempt 1") == true, "\(top.stdout)")
        #expect(lines.contains { $0.hasPrefix("NODE") && $0.contains("GPU MEMORY") && $0.contains("POWER") }, "\(top.stdout)")
        for node in ["0", "1"] {
            #expect(lines.contains { $0.hasPrefix(node + " ") && $0.contains("0 Fake H100 80GB HBM3") && $0.contains("97%") && $0.contains("70.0/80.0 GiB") && $0.contains("64°C") && $0.contains("612 W") }, "node \(node): \(top.stdout)")
        }
        #expect(lines.contains { $0.contains("1 Fake H100 80GB HBM3") && $0.contains("n/a") && $0.contains("41°C") }, "\(top.stdout)")
        let json = try await home.capstan(["top", job.id, "--once", "--json"])
        #expect(json.status == 0 && json.stdout.contains("\"utilizationPercent\" : 97"), "\(json.stdout)")

        let jobs = try await home.capstan(["jobs"])
        #expect(jobs.stdout.contains("USAGE") && jobs.stdout.contains("gpu 97% 142/320G"), "\(jobs.stdout)")
    }
}

/// The route and the remote `top` over a store seeded with samples (no job runs).
@Suite("Telemetry through the server")
struct TelemetryServerTests {
    @Test("GET /v1/jobs/{id}/telemetry answers the samples by node (401 without a token, 404 for no job); `top --once` from the server prints what it prints here")
    func route() async throws {
        let dir = TempDir("capstan-tele-served")
        let clientHome = TempDir("capstan-tele-client")
        defer { dir.cleanup(); clientHome.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        let stateDir = dir.file("state")
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        let store = try SQLiteStateStore(path: stateDir + "/capstan.db")
        var job = JobRecord(id: "tele-abc123", name: "tele", spec: "name: tele\nrun: 'true'\n", specFolder: "/tmp", settings: "{}", clusterName: "tele-abc123", ownsCluster: true, storage: "file:///tmp/none")
        job.status = .succeeded
        job.attempt = 2
        job.metrics = #"{"step": 120, "loss": 2.5, "tokens_per_s": 6100}"#
        try await store.insert(job)
        let then = Date().addingTimeInterval(-7230)
        try await store.saveTelemetry(NodeTelemetry(job: job.id, node: 1, attempt: 2, sampledAt: then, cpuPercent: 42, memoryUsedBytes: 8 << 30, memoryTotalBytes: 32 << 30))
        try await store.saveTelemetry(NodeTelemetry(job: job.id, node: 0, attempt: 2, sampledAt: then, cpuPercent: 12.4, memoryUsedBytes: 4 << 30, memoryTotalBytes: 32 << 30, gpus: [
            GPUSample(index: 0, name: "NVIDIA H100 80GB HBM3", utilizationPercent: 99, memoryUsedMiB: 40960, memoryTotalMiB: 81920, temperatureC: 70, powerW: 650),
        ]))
        let token = try await createToken(home: dir.path, name: "tele")
        let serve = try await ServeProcess(home: dir.path)
        defer { serve.terminate() }
        func remote(_ args: [String]) async throws -> ProcessResult {
            try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": clientHome.path, "CAPSTAN_SERVER": serve.url, "CAPSTAN_TOKEN": token])
        }
        func embedded(_ args: [String]) async throws -> ProcessResult {
            try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": dir.path, "CAPSTAN_SERVER": ""])
        }
        let ok = try await serve.request("GET", "/v1/jobs/tele/telemetry", token: token)
        #expect(ok.status == 200, "\(ok.text)")
        let nodes = try #require((try ok.json() as? [String: Any])?["nodes"] as? [[String: Any]])
        #expect(nodes.map { $0["node"] as? Int } == [0, 1])
        #expect(((nodes[0]["gpus"] as? [[String: Any]])?.first?["name"] as? String) == "NVIDIA H100 80GB HBM3")
        #expect((nodes[1]["gpus"] as? [Any])?.isEmpty == true && nodes[1]["cpuPercent"] as? Double == 42)
        let anonymous = try await serve.request("GET", "/v1/jobs/tele/telemetry", token: nil)
        #expect(anonymous.status == 401)
        let missing = try await serve.request("GET", "/v1/jobs/no-such-job/telemetry", token: token)
        #expect(missing.status == 404 && missing.text.contains("no-such-job"), "\(missing.text)")

        // The same frame either way (the sample's age masked: the two runs are a moment apart).
        func masked(_ s: String) -> String { s.replacingOccurrences(of: #"[0-9]+h[0-9]+m ago"#, with: "AGE", options: .regularExpression) }
        let viaServer = try await remote(["top", "tele", "--once"])
        let here = try await embedded(["top", "tele", "--once"])
        #expect(viaServer.status == 0 && here.status == 0, "\(viaServer.stderr) \(here.stderr)")
        #expect(masked(viaServer.stdout) == masked(here.stdout), "--- server\n\(viaServer.stdout)\n--- embedded\n\(here.stdout)")
        #expect(viaServer.stdout.hasPrefix("tele-abc123  succeeded  attempt 2  restarts 0  step 120  loss 2.5  tokens/s 6.1k\n"), "\(viaServer.stdout)")
        #expect(viaServer.stdout.contains("0 NVIDIA H100 80GB HBM3") && viaServer.stdout.contains("99%") && viaServer.stdout.contains("40.0/80.0 GiB") && viaServer.stdout.range(of: #"2h[0-5][0-9]m ago"#, options: .regularExpression) != nil, "\(viaServer.stdout)")
        #expect(viaServer.stdout.contains("12%") && viaServer.stdout.contains("4.0/32.0 GiB") && viaServer.stdout.contains("8.0/32.0 GiB"), "\(viaServer.stdout)")

        // Bad input: a job that is not there, an interval out of range.
        let none = try await remote(["top", "no-such-job", "--once"])
        #expect(none.status == 1 && none.stderr.contains("No job 'no-such-job'"), "\(none.stderr)")
        let fast = try await embedded(["top", "tele", "--interval", "0"])
        #expect(fast.status != 0 && fast.stderr.contains("--interval 0.0 is out of range: give seconds between 0.2 and 3600"), "\(fast.stderr)")
        let badLaunch = try await embedded(["launch", "/nonexistent/job.yaml", "--telemetry-interval=-1"])
        #expect(badLaunch.status != 0 && badLaunch.stderr.contains("--telemetry-interval -1.0 is out of range"), "\(badLaunch.stderr)")
    }
}
