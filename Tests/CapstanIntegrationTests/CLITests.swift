import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import Foundation
import Testing

/// Runs the built `capstan` binary on a fresh CAPSTAN_HOME, as a user would.
@Suite("capstan CLI")
struct CLITests {
    func capstan(_ args: [String], home: TempDir, env: [String: String] = [:]) async throws -> ProcessResult {
        try await runProcess(BuildProducts.capstan, args, environment: env.merging(["CAPSTAN_HOME": home.path]) { $1 })
    }

    @Test("`capstan offers` on a fresh home prints the local offer")
    func freshOffers() async throws {
        let home = TempDir(); defer { home.cleanup() }
        let r = try await capstan(["offers"], home: home)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("PROVIDER"))
        #expect(r.stdout.contains("local"))
        #expect(r.stdout.contains("Cheapest: local local-"))
        #expect(FileManager.default.fileExists(atPath: home.path + "/local/nodes"))
    }

    @Test("`capstan offers --json` decodes, with stable field names")
    func json() async throws {
        let home = TempDir(); defer { home.cleanup() }
        let r = try await capstan(["offers", "--json"], home: home)
        #expect(r.status == 0, "\(r.stderr)")
        struct Output: Decodable {
            var request: ResourceRequest
            var offers: [RankedOffer]
            var providers: [ProviderReport]
        }
        let out = try JSONDecoder().decode(Output.self, from: Data(r.stdout.utf8))
        #expect(out.offers.first?.offer.provider == "local")
        #expect(out.offers.first?.clusterPricePerHour == 0)
        #expect(out.providers.map(\.provider) == ["local"])
        #expect(out.request.nodes == 1)
    }

    @Test("a configured plugin's offers rank next to local ones")
    func withPlugin() async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  sim: {}\n  local:\n    slots: 2\n")
        let r = try await capstan(["offers", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2", "--spot", "--explain"], home: home)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("sim.8xh100"))
        #expect(r.stdout.contains("Cheapest: sim sim.8xh100 in sim-east-1, $25.00/h for 2 node(s) on spot."))
        #expect(r.stdout.contains("local/local/local-"))
        let list = try await capstan(["plugins", "list", "--json"], home: home)
        #expect(list.status == 0)
        struct Row: Decodable { var name: String; var status: String }
        let rows = try JSONDecoder().decode([Row].self, from: Data(list.stdout.utf8))
        #expect(rows.contains { $0.name == "sim" && $0.status == "enabled" })
        #expect(rows.contains { $0.name == "local" && $0.status == "enabled" })
    }

    @Test("`plugins inspect` shows a manifest by name or path")
    func inspect() async throws {
        let home = TempDir(); defer { home.cleanup() }
        let byName = try await capstan(["plugins", "inspect", "sim", "--json"], home: home)
        #expect(byName.status == 0, "\(byName.stderr)")
        struct Out: Decodable { var abiVersion: Int; var manifest: PluginManifest }
        let out = try JSONDecoder().decode(Out.self, from: Data(byName.stdout.utf8))
        #expect(out.manifest.name == "sim" && out.abiVersion == 1)
        let byPath = try await capstan(["plugins", "inspect", BuildProducts.simPlugin], home: home)
        #expect(byPath.stdout.contains("config schema (providers.sim in config.yaml):"))
        let missing = try await capstan(["plugins", "inspect", "nope"], home: home)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("No plugin named 'nope'"))
    }

    @Test("a broken plugin on the search path is listed with its error, and the rest works")
    func brokenPlugin() async throws {
        let home = TempDir(); defer { home.cleanup() }
        let plugins = TempDir(); defer { plugins.cleanup() }
        plugins.write("libjunk.so", "not a library")
        let env = ["CAPSTAN_PLUGIN_PATH": plugins.path]
        let list = try await capstan(["plugins", "list"], home: home, env: env)
        #expect(list.status == 0)
        #expect(list.stdout.contains("failed to load"))
        #expect(list.stderr.contains("not a shared library"))
        let offers = try await capstan(["offers"], home: home, env: env)
        #expect(offers.status == 0)
        #expect(offers.stdout.contains("Cheapest: local"))
    }

    @Test("bad input is a clear error with a non-zero exit", arguments: [
        (["offers", "--gpu", "H1000"], "Unknown GPU 'H1000'", Int32(64)),
        (["offers", "--spot", "--spot-only"], "exclude each other", Int32(64)),
        (["offers", "--nodes", "0"], "--nodes must be at least 1", Int32(64)),
        (["offers", "--provider", "gcp"], "Provider 'gcp' is not enabled", Int32(1)),
    ] as [([String], String, Int32)])
    func badInput(args: [String], message: String, status: Int32) async throws {
        let home = TempDir(); defer { home.cleanup() }
        let r = try await capstan(args, home: home)
        #expect(r.status == status)
        #expect(r.stderr.contains(message), "\(r.stderr)")
    }

    @Test("a malformed config names the file and line")
    func badConfig() async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  local:\n    slots: 2\nstorage:\n  defualt: file:///x\n")
        let r = try await capstan(["offers"], home: home)
        #expect(r.status == 1)
        #expect(r.stderr.contains("config.yaml:5: unknown key 'storage.defualt'"), "\(r.stderr)")
    }

    @Test("a configured provider with no plugin is reported, not fatal")
    func missingPlugin() async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  lambda:\n    apiKeyFile: ~/.lambda-key\n")
        let r = try await capstan(["offers"], home: home)
        #expect(r.status == 0)
        #expect(r.stderr.contains("providers.lambda is configured, but no plugin named 'lambda' was found"))
        #expect(!r.stderr.contains(".lambda-key"))
    }
}

@Suite("capstan up/down/status")
struct ClusterCLITests {
    @Test("failover through the sim plugin: two capacity errors, then ready; the report lists all three")
    func failover() async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  local:\n    enabled: false\n  sim:\n    noCapacityRegions: [sim-east-1, sim-west-1]\n    stateFile: \(home.file("cloud.json"))\n")
        let env = ["CAPSTAN_HOME": home.path]
        let up = try await runProcess(BuildProducts.capstan, ["up", "train", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2", "--json"], environment: env)
        #expect(up.status == 0, "\(up.stderr)")
        let report = try JSONDecoder.iso.decode(ProvisionReport.self, from: Data(up.stdout.utf8))
        #expect(report.attempts.map(\.outcome) == ["capacity", "capacity", "ready"])
        #expect(report.attempts.map(\.offer.region) == ["sim-east-1", "sim-west-1", "sim-eu-1"])
        #expect(report.cluster.status == .running && report.instances.count == 2)

        let status = try await runProcess(BuildProducts.capstan, ["status"], environment: env)
        #expect(status.stdout.contains("train  running  sim"), "\(status.stdout)")
        let down = try await runProcess(BuildProducts.capstan, ["down", "train"], environment: env)
        #expect(down.stdout.contains("Cluster train is terminated."))
        #expect(try await runProcess(BuildProducts.capstan, ["status"], environment: env).stdout.contains("No clusters running"))
    }

    @Test("a second `capstan offers` is served from the offer cache; --refresh asks again")
    func offerCache() async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  sim: {}\n")
        let env = ["CAPSTAN_HOME": home.path]
        let first = try await runProcess(BuildProducts.capstan, ["offers"], environment: env)
        #expect(!first.stdout.contains("cached"))
        let second = try await runProcess(BuildProducts.capstan, ["offers"], environment: env)
        #expect(second.stdout.contains("Offers from sim are cached"), "\(second.stdout)")
        let refreshed = try await runProcess(BuildProducts.capstan, ["offers", "--refresh"], environment: env)
        #expect(!refreshed.stdout.contains("cached"))
    }

    @Test("a 5,000-offer catalog through the sim plugin ranks the same fresh, cached, and from config.yaml")
    func largeCatalog() async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  sim:\n    generatedOffers: 5000\n")
        let env = ["CAPSTAN_HOME": home.path]
        let args = ["offers", "--gpu", "H100", "--gpus-per-node", "8", "--spot", "--limit", "5"]
        let fresh = try await runProcess(BuildProducts.capstan, args + ["--refresh"], environment: env)
        #expect(fresh.status == 0, "\(fresh.stderr)")
        let cached = try await runProcess(BuildProducts.capstan, args, environment: env)
        #expect(cached.stdout.contains("Offers from sim are cached"), "\(cached.stdout)")
        // Same table, same counts, whichever way the offers came.
        func table(_ out: String) -> String { out.components(separatedBy: "\n").filter { !$0.contains("cached") }.joined(separator: "\n") }
        #expect(table(fresh.stdout) == table(cached.stdout))
        #expect(fresh.stdout.contains("more (use --limit 0 to see all)"))
        #expect(fresh.stdout.contains("offer(s) filtered out"))
        // The same catalog written out in config.yaml (read by the plugin from its config).
        let listed = TempDir(); defer { listed.cleanup() }
        var yaml = "providers:\n  sim:\n    offers:\n"
        for o in SimulatedCloud.generatedCatalog(count: 5000) { yaml += "      - " + String(decoding: try JSONEncoder().encode(o), as: UTF8.self) + "\n" }
        listed.write("config.yaml", yaml)
        let fromConfig = try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": listed.path])
        #expect(fromConfig.status == 0, "\(fromConfig.stderr)")
        #expect(table(fromConfig.stdout) == table(fresh.stdout))
    }

    @Test("no capacity anywhere: exit 1 with what was tried")
    func noCapacity() async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  local:\n    slots: 1\n")
        let r = try await runProcess(BuildProducts.capstan, ["up", "big", "--nodes", "3"], environment: ["CAPSTAN_HOME": home.path])
        #expect(r.status == 1)
        #expect(r.stderr.contains("only 1 node(s) available, 3 needed"), "\(r.stderr)")
    }
}

extension JSONDecoder {
    static var iso: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

@Suite("capstan storage on file buckets")
struct FileStorageCLITests {
    @Test("cp into a file bucket and back; later copies find the bucket root; ls lists by prefix")
    func roundTrip() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try makeFile(dir.file("model.bin"), size: 3 << 20)
        let env = ["CAPSTAN_HOME": dir.file("home")]
        let up = try await runProcess(BuildProducts.capstan, ["storage", "cp", dir.file("model.bin"), "file://" + dir.file("bucket/run1/model.bin")], environment: env)
        #expect(up.status == 0, "\(up.stderr)")
        let nested = try await runProcess(BuildProducts.capstan, ["storage", "cp", dir.file("model.bin"), "file://" + dir.file("bucket/run1/step-1/model.bin")], environment: env)
        #expect(nested.stdout.hasPrefix("step-1/model.bin"), "\(nested.stdout)")
        let ls = try await runProcess(BuildProducts.capstan, ["storage", "ls", "file://" + dir.file("bucket/run1"), "--json"], environment: env)
        let objects = try JSONDecoder.iso.decode([ObjectInfo].self, from: Data(ls.stdout.utf8))
        #expect(objects.map(\.key) == ["model.bin", "step-1/model.bin"])
        #expect(objects.allSatisfy { $0.sha256?.count == 64 })
        let down = try await runProcess(BuildProducts.capstan, ["storage", "cp", "file://" + dir.file("bucket/run1/step-1/model.bin"), dir.file("back.bin")], environment: env)
        #expect(down.status == 0, "\(down.stderr)")
        #expect(FileManager.default.contentsEqual(atPath: dir.file("model.bin"), andPath: dir.file("back.bin")))
    }
}
