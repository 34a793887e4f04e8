import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Which plugin files Capstan finds, which it loads, and which it refuses — with the C fixture
/// plugin (Fixtures/ctest_plugin.c), whose constructor appends to `$CTEST_LOAD_MARKER` the moment
/// anything `dlopen`s it: an empty marker proves its code never ran.
@Suite("Plugin discovery: search order, shadowing, what is loaded and what is refused", .serialized)
struct PluginDiscoveryTests {
    /// The fixture plugin built under `name` (its manifest's and table's name).
    static func fixture(named name: String) async throws -> String {
        try await CFixtures.plugin(["-DPLUGIN_NAME=\"\(name)\""])
    }

    /// A private folder (0700) holding copies of fixture plugins, as `file name → plugin name`.
    static func folder(_ files: [String: String]) async throws -> TempDir {
        let dir = TempDir("capstan-plugdir")
        chmod(dir.path, 0o700)
        for (file, name) in files {
            try FileManager.default.copyItem(atPath: try await fixture(named: name), toPath: dir.file(file))
            chmod(dir.file(file), 0o755)
        }
        return dir
    }

    static func marker(_ dir: TempDir) -> String {
        (try? String(contentsOfFile: dir.file("loaded.txt"), encoding: .utf8)) ?? ""
    }

    /// The marker's lines for libraries loaded from `folders`: the in-process tests set the
    /// marker for the whole process, where other suites load their own copies meanwhile.
    static func marker(_ dir: TempDir, from folders: [String]) -> String {
        marker(dir).split(separator: "\n").filter { line in folders.contains { line.contains(" from " + $0 + "/") } }.joined(separator: "\n")
    }

    func capstan(_ args: [String], home: TempDir, env: [String: String] = [:], binary: String = BuildProducts.capstan) async throws -> ProcessResult {
        try await runProcess(binary, args, environment: env.merging(["CAPSTAN_HOME": home.path]) { $1 }, timeout: 60)
    }

    // MARK: Names and search order (no plugin code runs)

    @Test("a plugin's name comes from its file name", arguments: [
        ("libcapstan-lambda.so", "lambda"), ("libCapstanPluginAWS.so", "aws"), ("libCapstanPluginSim.dylib", "sim"),
        ("libCapstanPluginMyCloud.so", "mycloud"), ("libfoo.so", "foo"), ("bar-2.so", "bar-2"),
    ] as [(String, String)])
    func names(file: String, name: String) {
        #expect(PluginDiscovery.pluginName(fileName: file) == name)
    }

    @Test("a file name that gives no plugin name gives nil", arguments: ["lib.so", "libcapstan-.so", "x y.so", "libcapstan-a_b.so", "notes.txt", "libcapstan-x.so.1"])
    func noName(file: String) {
        #expect(PluginDiscovery.pluginName(fileName: file) == nil)
    }

    @Test("search order: CAPSTAN_PLUGIN_PATH, then $CAPSTAN_HOME/plugins, then plugins.paths, then the binary's folder")
    func searchOrder() async throws {
        let home = CapstanHome(root: "/h")
        let d = try PluginDiscovery.standard(home: home, extraFolders: ["/opt/p"], environment: ["CAPSTAN_PLUGIN_PATH": "/a:/b/x.so::/c"], executableFolder: "/bin/capstan-dir")
        #expect(d.searchPath.map(\.folder) == ["/a", "/b/x.so", "/c", "/h/plugins", "/opt/p", "/bin/capstan-dir"])
        #expect(d.searchPath.map(\.source) == ["CAPSTAN_PLUGIN_PATH", "CAPSTAN_PLUGIN_PATH", "CAPSTAN_PLUGIN_PATH", "CAPSTAN_HOME/plugins", "config plugins.paths", "build folder"])
    }

    @Test("a relative CAPSTAN_PLUGIN_PATH entry or plugins.paths folder is refused, naming it and the fix")
    func relativeRefused() async throws {
        let home = CapstanHome(root: "/h")
        for env in ["build", "/abs:plugins/lambda/build", "./x.so"] {
            let e = #expect(throws: CapstanError.self) { try PluginDiscovery.standard(home: home, environment: ["CAPSTAN_PLUGIN_PATH": env]) }
            #expect(e?.code == .config && e?.message.contains("CAPSTAN_PLUGIN_PATH has the relative entry") == true, "\(String(describing: e))")
            #expect(e?.hint?.contains("$PWD/") == true)
        }
        let e = #expect(throws: CapstanError.self) { try PluginDiscovery.standard(home: home, extraFolders: ["rel/plugins"], environment: [:]) }
        #expect(e?.message.contains("plugins.paths") == true && e?.message.contains("'rel/plugins'") == true)
    }

    @Test("the first file of a name wins, later ones are shadowed; finding them runs none of their code")
    func shadowing() async throws {
        let a = try await Self.folder(["libcapstan-ctest.so": "ctest", "libcapstan-other.so": "other"]), b = try await Self.folder(["libcapstan-ctest.so": "ctest"])
        let log = TempDir(); defer { a.cleanup(); b.cleanup(); log.cleanup() }
        setenv("CTEST_LOAD_MARKER", log.file("loaded.txt"), 1)
        defer { unsetenv("CTEST_LOAD_MARKER") }
        let d = PluginDiscovery(searchPath: [(a.path, "CAPSTAN_PLUGIN_PATH"), (b.path, "CAPSTAN_HOME/plugins")])
        let found = d.candidates()
        #expect(found.map(\.path) == [a.file("libcapstan-ctest.so"), a.file("libcapstan-other.so"), b.file("libcapstan-ctest.so")])
        #expect(found.map(\.name) == ["ctest", "other", "ctest"])
        #expect(found.map(\.shadowedBy) == [nil, nil, a.file("libcapstan-ctest.so")])
        #expect(found.allSatisfy { $0.problem == nil })
        #expect(d.winner(named: "ctest", in: found)?.path == a.file("libcapstan-ctest.so"))
        #expect(Self.marker(log, from: [a.path, b.path]).isEmpty, "finding plugins loaded one: \(Self.marker(log))")
    }

    @Test("a folder or file others can write, or another user owns, is refused before anything loads it")
    func unsafeRefused() async throws {
        let dir = try await Self.folder(["libcapstan-ctest.so": "ctest"])
        let log = TempDir(); defer { dir.cleanup(); log.cleanup() }
        func only() -> PluginDiscovery.Candidate? { PluginDiscovery(searchPath: [(dir.path, "CAPSTAN_PLUGIN_PATH")]).candidates().first }

        chmod(dir.path, 0o777)
        var c = only()
        #expect(c?.unsafe == true && c?.problem?.message.contains("is writable by anyone (mode 0777)") == true, "\(String(describing: c?.problem))")
        #expect(c?.problem?.hint?.contains("chmod go-w") == true)
        chmod(dir.path, 0o775)
        #expect(only()?.problem?.message.contains("writable by its group (mode 0775)") == true)
        chmod(dir.path, 0o700)
        #expect(only()?.problem == nil)

        chmod(dir.file("libcapstan-ctest.so"), 0o666)
        c = only()
        #expect(c?.unsafe == true && c?.problem?.message.contains("plugin file \(dir.file("libcapstan-ctest.so")) is writable by anyone") == true, "\(String(describing: c?.problem))")
        chmod(dir.file("libcapstan-ctest.so"), 0o755)
        // Loading it anyway goes through the same refusal: its code never runs.
        setenv("CTEST_LOAD_MARKER", log.file("loaded.txt"), 1)
        defer { unsetenv("CTEST_LOAD_MARKER") }
        chmod(dir.path, 0o777)
        let entry = PluginDiscovery.load(try #require(only()))
        #expect(entry.library == nil && Self.marker(log, from: [dir.path]).isEmpty, "\(Self.marker(log))")
        chmod(dir.path, 0o700)

        if geteuid() == 0 {
            // Owned by another user (root can make one): refused too.
            #expect(chown(dir.file("libcapstan-ctest.so"), 65534, 65534) == 0)
            c = only()
            #expect(c?.unsafe == true && c?.problem?.message.contains("neither root nor you") == true, "\(String(describing: c?.problem))")
        }
    }

    @Test("a symbolic link is judged by its target: a target in a folder anyone can write is refused")
    func symlinkTarget() async throws {
        let open = try await Self.folder(["libcapstan-ctest.so": "ctest"]), mine = TempDir()
        defer { open.cleanup(); mine.cleanup() }
        chmod(mine.path, 0o700)
        try FileManager.default.createSymbolicLink(atPath: mine.file("libcapstan-ctest.so"), withDestinationPath: open.file("libcapstan-ctest.so"))
        chmod(open.path, 0o777)
        let c = PluginDiscovery(searchPath: [(mine.path, "CAPSTAN_HOME/plugins")]).candidates().first
        #expect(c?.unsafe == true && c?.problem?.message.contains("folder holding the plugin \(open.path) is writable by anyone") == true, "\(String(describing: c?.problem))")
    }

    @Test("a plugin whose manifest name is not its file name's is refused when loaded")
    func nameMismatch() async throws {
        let dir = try await Self.folder(["libcapstan-foo.so": "ctest"]); defer { dir.cleanup() }
        let c = try #require(PluginDiscovery(searchPath: [(dir.path, "x")]).candidates().first)
        let e = #expect(throws: CapstanError.self) { try PluginDiscovery.load(c).result.get() }
        #expect(e?.message.contains("calls itself 'ctest', but its file name makes it 'foo'") == true && e?.hint?.contains("libcapstan-ctest.so") == true, "\(String(describing: e))")
    }

    // MARK: The CLI

    @Test("a plugin planted next to a copied capstan never runs on status, offers or plugins list; enabled in config.yaml, it does")
    func plantedNextToBinary() async throws {
        let bin = TempDir("capstan-bin"), home = TempDir(), log = TempDir()
        defer { bin.cleanup(); home.cleanup(); log.cleanup() }
        chmod(bin.path, 0o755)
        // A hard link: the copy's folder is its own, as after `cp capstan ~/bin/`.
        #expect(link(BuildProducts.capstan, bin.file("capstan")) == 0 || (try? FileManager.default.copyItem(atPath: BuildProducts.capstan, toPath: bin.file("capstan"))) != nil)
        try FileManager.default.copyItem(atPath: try await Self.fixture(named: "evil"), toPath: bin.file("libCapstanPluginEvil.so"))
        let env = ["CTEST_LOAD_MARKER": log.file("loaded.txt")]
        for args in [["status"], ["offers"], ["plugins", "list"], ["status", "--all", "--json"]] {
            let r = try await capstan(args, home: home, env: env, binary: bin.file("capstan"))
            #expect(r.status == 0, "\(args): \(r.stderr)")
            #expect(Self.marker(log).isEmpty, "`capstan \(args.joined(separator: " "))` ran the planted plugin: \(Self.marker(log))")
            if args == ["plugins", "list"] {
                #expect(r.stdout.contains("evil") && r.stdout.contains("not loaded (add providers.evil to config.yaml to use it)"), "\(r.stdout)")
            }
        }
        // Enabled on purpose, it loads (the fixture's marker works) and is listed as a provider.
        home.write("config.yaml", "providers:\n  evil: {}\n")
        let list = try await capstan(["plugins", "list"], home: home, env: env, binary: bin.file("capstan"))
        #expect(list.status == 0 && list.stdout.contains("enabled"), "\(list.stdout)\n\(list.stderr)")
        #expect(Self.marker(log).contains("evil loaded"))
    }

    @Test("`plugins inspect NAME` loads the one asked for, and only it; `plugins list --load` loads all on request")
    func inspectLoadsOnlyWhatIsAsked() async throws {
        let dir = try await Self.folder(["libcapstan-ctest.so": "ctest", "libcapstan-other.so": "other"])
        let home = TempDir(), log = TempDir()
        defer { dir.cleanup(); home.cleanup(); log.cleanup() }
        let env = ["CAPSTAN_PLUGIN_PATH": dir.path, "CTEST_LOAD_MARKER": log.file("loaded.txt")]
        let inspect = try await capstan(["plugins", "inspect", "other"], home: home, env: env)
        #expect(inspect.status == 0 && inspect.stdout.contains("name:          other"), "\(inspect.stdout)\n\(inspect.stderr)")
        #expect(Self.marker(log).contains("other loaded") && !Self.marker(log).contains("ctest loaded"), "\(Self.marker(log))")
        let all = try await capstan(["plugins", "list", "--load", "--json"], home: home, env: env)
        #expect(all.status == 0, "\(all.stderr)")
        #expect(Self.marker(log).contains("ctest loaded"))
        struct Row: Decodable { var name: String; var version: String? }
        let rows = try JSONDecoder().decode([Row].self, from: Data(all.stdout.utf8))
        #expect(rows.first { $0.name == "ctest" }?.version == "0.0.1")
    }

    @Test("shadowed: the first folder's file wins for a name; the list says which shadows which")
    func shadowedInList() async throws {
        let a = try await Self.folder(["libcapstan-ctest.so": "ctest"]), b = try await Self.folder(["libcapstan-ctest.so": "ctest"])
        let home = TempDir(); defer { a.cleanup(); b.cleanup(); home.cleanup() }
        home.write("config.yaml", "providers:\n  local: {enabled: false}\n  ctest: {}\n")
        let r = try await capstan(["plugins", "list", "--json"], home: home, env: ["CAPSTAN_PLUGIN_PATH": "\(a.path):\(b.path)"])
        #expect(r.status == 0, "\(r.stderr)")
        struct Row: Decodable { var name: String; var path: String; var status: String }
        let rows = try JSONDecoder().decode([Row].self, from: Data(r.stdout.utf8)).filter { $0.name == "ctest" }
        #expect(rows.map(\.path) == [a.file("libcapstan-ctest.so"), b.file("libcapstan-ctest.so")])
        #expect(rows.map(\.status) == ["enabled", "shadowed by \(a.file("libcapstan-ctest.so"))"], "\(rows)")
    }

    @Test("capstan refuses a relative CAPSTAN_PLUGIN_PATH with the fix, before loading anything")
    func relativeInCLI() async throws {
        let home = TempDir(), work = try await Self.folder(["libcapstan-ctest.so": "ctest"]), log = TempDir()
        defer { home.cleanup(); work.cleanup(); log.cleanup() }
        home.write("config.yaml", "providers:\n  ctest: {}\n")
        // From inside the folder, `CAPSTAN_PLUGIN_PATH=.` would name it.
        let r = try await runProcess("/bin/sh", ["-c", "cd \"$0\" && exec \"$1\" offers", work.path, BuildProducts.capstan],
                                     environment: ["CAPSTAN_HOME": home.path, "CAPSTAN_PLUGIN_PATH": ".", "CTEST_LOAD_MARKER": log.file("loaded.txt")])
        #expect(r.status == 1, "\(r.status) \(r.stdout)")
        #expect(r.stderr.contains("CAPSTAN_PLUGIN_PATH has the relative entry '.'") && r.stderr.contains("CAPSTAN_PLUGIN_PATH=\"$PWD/.\""), "\(r.stderr)")
        #expect(Self.marker(log).isEmpty)
    }

    @Test("a configured plugin in a folder anyone can write is refused and reported, never loaded")
    func writableFolderInCLI() async throws {
        let dir = try await Self.folder(["libcapstan-ctest.so": "ctest"]), home = TempDir(), log = TempDir()
        defer { dir.cleanup(); home.cleanup(); log.cleanup() }
        chmod(dir.path, 0o777)
        home.write("config.yaml", "providers:\n  ctest: {}\n")
        let env = ["CAPSTAN_PLUGIN_PATH": dir.path, "CTEST_LOAD_MARKER": log.file("loaded.txt")]
        let offers = try await capstan(["offers"], home: home, env: env)
        #expect(offers.status == 0 && offers.stdout.contains("Cheapest: local"), "\(offers.stderr)")
        #expect(offers.stderr.contains("plugin folder \(dir.path) is writable by anyone (mode 0777)"), "\(offers.stderr)")
        let list = try await capstan(["plugins", "list"], home: home, env: env)
        #expect(list.stdout.contains("refused: unsafe permissions"), "\(list.stdout)")
        let inspect = try await capstan(["plugins", "inspect", "ctest"], home: home, env: env)
        #expect(inspect.status == 1 && inspect.stderr.contains("was not loaded"), "\(inspect.stderr)")
        #expect(Self.marker(log).isEmpty, "\(Self.marker(log))")
    }
}
