import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 14, "every bad input a clear error": the built `capstan`, fed bad URIs, bad plugin
/// files, bad config and bad numbers, says what happened, to what, and what to do — and loses
/// nothing on the way.
@Suite("bad input")
struct BadInputTests {
    func capstan(_ args: [String], home: TempDir, env: [String: String] = [:], timeout: Double = 60) async throws -> ProcessResult {
        try await runProcess(BuildProducts.capstan, args, environment: env.merging(["CAPSTAN_HOME": home.path]) { $1 }, timeout: timeout)
    }

    // MARK: 6. `..` in bucket URIs

    @Test("`..` in a file:// URI is refused before any I/O by every storage verb; nothing outside the bucket is touched", arguments: [
        ["storage", "rm", "file://$T/bucket/../victim.txt"],
        ["storage", "rm", "file://$T/bucket/sub/../../victim.txt"],
        ["storage", "rm", "file://$T/nobucket/../victim.txt"],
        ["storage", "cp", "$T/src.txt", "file://$T/bucket/../escape.txt"],
        ["storage", "cp", "$T/src.txt", "file://$T/bucket/./escape.txt"],
        ["storage", "cp", "file://$T/bucket/../victim.txt", "$T/escape.txt"],
        ["storage", "ls", "file://$T/bucket/.."],
        ["storage", "ls", "file://$T/bucket/../"],
    ])
    func dotDotURIs(args: [String]) async throws {
        let home = TempDir(), t = TempDir(); defer { home.cleanup(); t.cleanup() }
        _ = t.write("victim.txt", "keep me")
        _ = t.write("src.txt", "payload")
        let made = try await capstan(["storage", "cp", t.file("src.txt"), "file://\(t.path)/bucket/a.txt"], home: home)
        #expect(made.status == 0, "\(made.stderr)")

        let r = try await capstan(args.map { $0.replacingOccurrences(of: "$T", with: t.path) }, home: home)
        #expect(r.status == 1, "\(r.status) \(r.stdout) \(r.stderr)")
        #expect(r.stderr.contains("Invalid bucket URI"), "\(r.stderr)")
        #expect(r.stderr.contains("segment"), "\(r.stderr)")
        #expect(!r.stdout.contains("victim"), "\(r.stdout)")
        #expect(try String(contentsOfFile: t.file("victim.txt"), encoding: .utf8) == "keep me")
        #expect(!FileManager.default.fileExists(atPath: t.file("escape.txt")))
        #expect(try String(contentsOfFile: t.file("bucket/a.txt"), encoding: .utf8) == "payload")
    }

    @Test("a symbolic link inside a file bucket cannot carry a copy or a delete out of it")
    func symlinkEscape() async throws {
        let home = TempDir(), t = TempDir(); defer { home.cleanup(); t.cleanup() }
        _ = t.write("src.txt", "payload")
        _ = t.write("outside/secret.txt", "keep me")
        #expect(try await capstan(["storage", "cp", t.file("src.txt"), "file://\(t.path)/bucket/a.txt"], home: home).status == 0)
        try FileManager.default.createSymbolicLink(atPath: t.file("bucket/link"), withDestinationPath: t.file("outside"))

        let put = try await capstan(["storage", "cp", t.file("src.txt"), "file://\(t.path)/bucket/link/new.txt"], home: home)
        #expect(put.status == 1)
        #expect(put.stderr.contains("outside the bucket"), "\(put.stderr)")
        #expect(!FileManager.default.fileExists(atPath: t.file("outside/new.txt")))
        let rm = try await capstan(["storage", "rm", "file://\(t.path)/bucket/link/secret.txt"], home: home)
        #expect(rm.status == 1)
        #expect(rm.stderr.contains("outside the bucket"), "\(rm.stderr)")
        #expect(try String(contentsOfFile: t.file("outside/secret.txt"), encoding: .utf8) == "keep me")
    }

    @Test("a one-character key or destination works (Foundation's path helper used to crash on it)")
    func oneCharacterPaths() async throws {
        let home = TempDir(), t = TempDir(); defer { home.cleanup(); t.cleanup() }
        _ = t.write("src.txt", "payload")
        #expect(try await capstan(["storage", "cp", t.file("src.txt"), "file://\(t.path)/bucket/a.txt"], home: home).status == 0)
        #expect(try await capstan(["storage", "cp", t.file("src.txt"), "file://\(t.path)/bucket/y"], home: home).status == 0)
        // Download to a bare file name, in the current folder.
        let get = try await runProcess("/bin/sh", ["-c", "cd \"$0\" && exec \"$1\" storage cp \"file://$0/bucket/y\" z", t.path, BuildProducts.capstan], environment: ["CAPSTAN_HOME": home.path])
        #expect(get.status == 0, "\(get.status) \(get.stderr)")
        #expect(try String(contentsOfFile: t.file("z"), encoding: .utf8) == "payload")
        let rm = try await capstan(["storage", "rm", "file://\(t.path)/bucket/y"], home: home)
        #expect(rm.status == 0, "\(rm.status) \(rm.stderr)")
        #expect(!FileManager.default.fileExists(atPath: t.file("bucket/y")))
        #expect(FileManager.default.fileExists(atPath: t.file("bucket/a.txt")))
    }

    // MARK: 7. Non-regular files on the plugin path

    @Test("a FIFO named *.so (or a link to one) on the plugin path is a failed plugin, not a hang")
    func fifoPlugin() async throws {
        let home = TempDir(), plugins = TempDir(); defer { home.cleanup(); plugins.cleanup() }
        #expect(mkfifo(plugins.file("x.so"), 0o644) == 0)
        #expect(mkfifo(plugins.file("pipe"), 0o644) == 0)
        try FileManager.default.createSymbolicLink(atPath: plugins.file("y.so"), withDestinationPath: plugins.file("pipe"))
        let env = ["CAPSTAN_PLUGIN_PATH": plugins.path]

        // A hang is killed at the timeout (status 15) instead of blocking the suite.
        let list = try await capstan(["plugins", "list"], home: home, env: env, timeout: 120)
        #expect(list.status == 0, "\(list.status) \(list.stderr)")
        #expect(list.stdout.contains("x.so") && list.stdout.contains("failed to load"), "\(list.stdout)")
        #expect(list.stderr.contains("\(plugins.file("x.so")): it is a FIFO (named pipe), not a shared library"), "\(list.stderr)")
        #expect(list.stderr.contains("symbolic link to \(plugins.file("pipe")), which is a FIFO (named pipe), not a shared library"), "\(list.stderr)")
        #expect(list.stderr.contains("Remove it from the plugin folder"), "\(list.stderr)")

        let offers = try await capstan(["offers"], home: home, env: env, timeout: 120)
        #expect(offers.status == 0, "\(offers.status) \(offers.stderr)")
        #expect(offers.stdout.contains("Cheapest: local"), "\(offers.stdout)")
    }

    // MARK: 8. Provider settings in config.yaml

    @Test("a bad provider setting, built-in or plugin, is an error naming the file, the line and the fix", arguments: [
        ("providers:\n  local:\n    slotz: 4\n", "config.yaml:3: unknown key 'providers.local.slotz' (did you mean 'slots'?)"),
        ("providers:\n  local:\n    slots: four\n", "config.yaml:3: providers.local.slots: expected an integer, got 'four'"),
        ("providers:\n  local:\n    slots: 0\n", "config.yaml:3: providers.local.slots: must be at least 1, got 0"),
        ("providers:\n  local:\n    enabled: false\n  sim:\n    bootSecs: 2\n", "config.yaml:5: unknown key 'providers.sim.bootSecs' (did you mean 'bootSeconds'?)"),
        ("providers:\n  sim:\n    capacityFailures: two\n", "config.yaml:3: providers.sim.capacityFailures: expected an integer, got 'two'"),
        ("providers:\n  local: {}\n  simm:\n    bootSeconds: 1\n", "config.yaml:3: providers.simm: there is no provider or plugin named 'simm' (did you mean 'sim'?)"),
        ("providers:\n  ssh:\n    hosts:\n      - address: 127.0.0.1\n        port: twenty-two\n", "config.yaml:5: providers.ssh.hosts[0].port: expected an integer, got 'twenty-two'"),
        ("providers:\n  local:\n    preemptAfterSeconds: -3\n", "config.yaml:3: providers.local.preemptAfterSeconds: must be at least 0, got -3"),
        ("providers:\n  sim:\n    preemptNodes: [one]\n", "config.yaml:3: providers.sim.preemptNodes[0]: expected an integer, got 'one'"),
        ("providers:\n  sim:\n    preemptAfterSeconds: -1\n", "config.yaml:3: providers.sim.preemptAfterSeconds: must be at least 0, got -1"),
    ] as [(String, String)])
    func badProviderSettings(config: String, message: String) async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", config)
        for command in [["offers"], ["up", "demo"]] {
            let r = try await capstan(command, home: home)
            #expect(r.status == 1, "\(command) \(r.status) \(r.stderr)")
            #expect(r.stderr.contains(message), "\(command) \(r.stderr)")
            #expect(!r.stderr.contains("DecodingError"), "\(r.stderr)")
        }
        // `up` stopped before writing anything: with the config fixed, no cluster row is there.
        home.write("config.yaml", "")
        let status = try await capstan(["status", "--all", "--json"], home: home)
        #expect(status.status == 0, "\(status.stderr)")
        #expect(!status.stdout.contains("demo"), "\(status.stdout)")
    }

    @Test("`up` names a configured provider it could not use before saying no offer matches")
    func upNamesDroppedProviders() async throws {
        let home = TempDir(); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  local:\n    enabled: false\n  lambda:\n    apiKeyFile: ~/.lambda-key\n")
        let r = try await capstan(["up", "demo"], home: home)
        #expect(r.status == 1)
        #expect(r.stderr.contains("warning: provider lambda is not in use: providers.lambda is configured, but no plugin named 'lambda' was found"), "\(r.stderr)")
        #expect(r.stderr.contains("could not be provisioned"), "\(r.stderr)")
    }

    // MARK: 9. Numbers on the command line

    @Test("negative and zero counts are clear usage errors", arguments: [
        (["up", "demo", "--nodes", "-1"], "--nodes must be at least 1, got -1"),
        (["up", "demo", "--nodes", "0"], "--nodes must be at least 1, got 0"),
        (["up", "demo", "--gpus-per-node", "0"], "--gpus-per-node must be at least 1, got 0"),
        (["up", "demo", "--gpu", "H100", "--gpus-per-node", "-8"], "--gpus-per-node must be at least 1, got -8"),
        (["up", "demo", "--max-price", "-5"], "--max-price must be a positive $/h figure, got -5"),
        (["up", "demo", "--nodes", "5000"], "Nodes must be between 1 and 1024, got 5000"),
        (["offers", "--nodes", "-1"], "--nodes must be at least 1, got -1"),
        (["offers", "--gpus-per-node", "0"], "--gpus-per-node must be at least 1, got 0"),
        (["offers", "--limit", "-1"], "--limit must be 0 (all) or more, got -1"),
    ] as [([String], String)])
    func badNumbers(args: [String], message: String) async throws {
        let home = TempDir(); defer { home.cleanup() }
        let r = try await capstan(args, home: home)
        #expect(r.status == 64, "\(r.status) \(r.stderr)")
        #expect(r.stderr.contains(message), "\(r.stderr)")
        #expect(!r.stderr.contains("Missing value"), "\(r.stderr)")
        // Refused before anything was written: no cluster row, failed or otherwise.
        let status = try await capstan(["status", "--all", "--json"], home: home)
        #expect(status.status == 0, "\(status.stderr)")
        #expect(!status.stdout.contains("demo"), "\(status.stdout)")
    }
}
