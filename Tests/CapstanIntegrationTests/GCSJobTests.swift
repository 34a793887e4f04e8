import CapstanCore
import CapstanRuntime
import CapstanProviders
import CapstanTrainer
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension JobTests {
    @Test("a job whose bucket is gs:// checkpoints to Cloud Storage (gcp-storage-emulator); a killed worker resumes from there; the service-account key is never written down")
    func gcsBucket() async throws {
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let gcs = try await GCSEmulator.start(); defer { gcs.stop() }
        try await GCSEmulator.createBucket(gcs, "capstan-gcs")
        // Attempt 1 holds at step 140: the worker is killed mid-attempt however late the test looks.
        var home = try JobHome(steps: 150, every: 10, storage: "gs://capstan-gcs/runs", hold: [(1, 140)])
        defer { home.dir.cleanup() }
        // Local nodes; the gcp plugin enabled for the controller's bucket (the nodes use the
        // built-in gs:// client, with the key from the controller on their stdin).
        home.dir.write("config.yaml", "providers:\n  local:\n    slots: 6\n" + (try gcp.section(home: home.dir)) + "    storageEndpoint: \(gcs.base)\n")
        home.env = ["CAPSTAN_PLUGIN_PATH": GCPServer.pluginPath]
        let launch = try home.startLaunch(["--quiet"])
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 }, "no checkpoint came: \((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
        let job = try #require(try await home.job())
        #expect(job.storage == "gs://capstan-gcs/runs/\(job.id)")
        let pid = try #require(home.workerPID(job: job.id, attempt: 1, rank: 1))
        kill(pid, SIGKILL)
        await launch.exited()
        let final = try #require(try await home.job())
        #expect(final.status == .succeeded && final.attempt == 2, "\(final.lastError ?? "")\n\((try? String(contentsOfFile: home.dir.file("launch.out"), encoding: .utf8)) ?? "")")
        print("gs:// job: \(try await home.checkContinuity(job: final, total: 150))")
        // In the bucket, read back through the plugin: the newest checkpoint verifies.
        let instance = try PluginLibrary.load(path: GCPServer.pluginPath).instantiate(config: gcp.config(home.dir, storage: gcs.base))
        let bucket = try PluginObjectStore(instance, location: final.storage)
        let m = try #require(try await CheckpointStore(store: bucket, prefix: "checkpoints").latestVerified())
        #expect(m.step == 150 && m.parts.count == 2)
        // The key reaches the nodes only on their stdin: not in the home, its database, logs or temp files.
        let line = String(gcp.privateKey.split(separator: "\n")[3])
        let scan = SecretScan([home.dir.path, home.tmp], for: line, skip: { $0.hasSuffix("gcp-key.json") })
        #expect(scan.covered("/state/capstan.db") && scan.hits.isEmpty, "the key appears in \(scan.hits)")
    }

    @Test("a gs:// job without GCP credentials is refused before anything starts, saying what to set")
    func gcsBucketWithoutCredentials() async throws {
        let home = try JobHome(steps: 10, storage: "gs://capstan-gcs/runs")
        defer { home.dir.cleanup() }
        // No gcp section: nothing serves gs://.
        let none = try await home.capstan(["launch", home.spec, "--quiet"] + JobHome.fast, env: ["GOOGLE_APPLICATION_CREDENTIALS": ""])
        #expect(none.status != 0 && none.stderr.contains("No enabled storage plugin serves 'gs://' buckets"), "\(none.stderr)")
        // The plugin enabled without a key: it says which setting is missing.
        home.dir.write("config.yaml", "providers:\n  local:\n    slots: 6\n  gcp: {}\n")
        let noKey = try await home.capstan(["launch", home.spec, "--quiet"] + JobHome.fast, env: ["GOOGLE_APPLICATION_CREDENTIALS": "", "CAPSTAN_PLUGIN_PATH": GCPServer.pluginPath])
        #expect(noKey.status != 0 && noKey.stderr.contains("providers.gcp.credentialsFile"), "\(noKey.stderr)")
    }
}
