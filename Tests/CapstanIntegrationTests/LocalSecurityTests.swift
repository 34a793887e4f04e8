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

/// What other users of the machine can see of Capstan's home, what a plain-HTTP endpoint gets,
/// and the test hooks, through the built `capstan` and the Lambda C plugin.
@Suite("Local security: the home's permissions, plain HTTP, test hooks", .serialized)
struct LocalSecurityTests {
    /// `capstan args` under umask 022 (files would be 0644 unless Capstan says otherwise).
    func capstan(_ args: [String], home: TempDir, env: [String: String] = [:], timeout: Double = 120) async throws -> ProcessResult {
        try await runProcess("/bin/sh", ["-c", "umask 022 && exec \"$@\"", "sh", BuildProducts.capstan] + args,
                             environment: env.merging(["CAPSTAN_HOME": home.path]) { $1 }, timeout: timeout)
    }

    /// Every file and folder under `root` (not following links), with its mode.
    static func walk(_ root: String) -> [(path: String, mode: mode_t, isDir: Bool)] {
        var out: [(String, mode_t, Bool)] = []
        guard let e = FileManager.default.enumerator(atPath: root) else { return [] }
        while let rel = e.nextObject() as? String {
            var st = stat()
            guard lstat(root + "/" + rel, &st) == 0 else { continue }
            let kind = st.st_mode & S_IFMT
            if kind == S_IFREG || kind == S_IFDIR { out.append((rel, st.st_mode & 0o7777, kind == S_IFDIR)) }
        }
        return out
    }

    static func mode(_ path: String) -> mode_t {
        var st = stat()
        return stat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
    }

    @Test("a 0755 home is made 0700, and after up, a job and down no file in it is readable by group or others")
    func homePermissions() async throws {
        let home = TempDir("capstan-perm-home"), outside = TempDir("capstan-perm-bucket")
        defer { home.cleanup(); outside.cleanup() }
        chmod(home.path, 0o755)
        outside.write("job/job.yaml", """
            name: perm
            run: echo "hello from $CAPSTAN_NODE_RANK"
            env:
              API_TOKEN: "tok-3f9a-not-for-others"
            storage: file://\(outside.file("bucket"))
            """)
        let up = try await capstan(["up", "warm"], home: home)
        #expect(up.status == 0, "\(up.stdout)\n\(up.stderr)")
        #expect(up.stderr.contains("warning: Capstan's home \(home.path) was open to every user (mode 0755); it is now 0700"), "\(up.stderr)")
        #expect(Self.mode(home.path) == 0o700)
        let run = try await capstan(["launch", outside.file("job/job.yaml"), "--cluster", "warm", "--quiet"], home: home)
        #expect(run.status == 0, "\(run.stdout)\n\(run.stderr)")

        // While the cluster is up: the node's agent.json holds the spec's env: values.
        let entries = Self.walk(home.path)
        let files = entries.filter { !$0.isDir }
        let names = Set(files.map { ($0.path as NSString).lastPathComponent })
        for expected in ["capstan.db", "owner-id", "agent.json", "instance.json", "node-0.log", "status.json"] {
            #expect(names.contains(expected), "no \(expected) under the home: \(files.map(\.path))")
        }
        let agentJSON = try #require(files.first { $0.path.hasSuffix("/agent.json") })
        #expect(try String(contentsOfFile: home.file(agentJSON.path), encoding: .utf8).contains("tok-3f9a-not-for-others"))
        let open = files.filter { $0.mode & 0o077 != 0 }
        #expect(open.isEmpty, "readable by group or others: \(open.map { "\($0.path) \(String(format: "%04o", $0.mode))" })")
        // The node folders are the owner's only too (the job's own files follow its umask inside).
        for node in entries where node.isDir && node.path.hasPrefix("local/nodes/") && node.path.split(separator: "/").count == 3 {
            #expect(node.mode == 0o700, "\(node.path) \(String(format: "%04o", node.mode))")
        }

        let down = try await capstan(["down", "warm"], home: home)
        #expect(down.status == 0, "\(down.stderr)")
        let after = Self.walk(home.path).filter { !$0.isDir && $0.mode & 0o077 != 0 }
        #expect(after.isEmpty, "after down: \(after.map { "\($0.path) \(String(format: "%04o", $0.mode))" })")
        // Said once: the home stays 0700, so the next command has nothing to say.
        let again = try await capstan(["status"], home: home)
        #expect(again.status == 0 && !again.stderr.contains("warning: Capstan's home"), "\(again.stderr)")
    }

    @Test("a database an older Capstan left 0644 (with its -wal and -shm) is made 0600 when opened")
    func oldDatabaseTightened() async throws {
        let home = TempDir(); defer { home.cleanup() }
        chmod(home.path, 0o700)
        #expect(try await capstan(["status"], home: home).status == 0)
        for f in ["state/capstan.db", "state/capstan.db-wal", "state/capstan.db-shm"] where FileManager.default.fileExists(atPath: home.file(f)) {
            chmod(home.file(f), 0o644)
        }
        chmod(home.file("owner-id"), 0o600)
        #expect(try await capstan(["status"], home: home).status == 0)
        for f in ["state/capstan.db", "state/capstan.db-wal", "state/capstan.db-shm"] where FileManager.default.fileExists(atPath: home.file(f)) {
            #expect(Self.mode(home.file(f)) == 0o600, "\(f) \(String(format: "%04o", Self.mode(home.file(f))))")
        }
    }

    // MARK: Test hooks

    @Test("this (debug) build honours CAPSTAN_TEST_CRASH_AT: capstan up dies at the point asked for")
    func crashHookInDebug() async throws {
        let home = TempDir(); defer { home.cleanup() }
        let r = try await capstan(["up", "c1"], home: home, env: ["CAPSTAN_TEST_CRASH_AT": "up.created"])
        #expect(r.status == SIGKILL, "\(r.status) \(r.stdout) \(r.stderr)")
        // Without the hook the same command works.
        let ok = try await capstan(["up", "c1"], home: home)
        #expect(ok.status == 0, "\(ok.stderr)")
        _ = try await capstan(["down", "c1"], home: home)
    }

    // MARK: Plain HTTP to another machine (the Lambda C plugin)

    @Test("the Lambda plugin refuses a plain-HTTP endpoint on another machine, naming it and the fix, never the key")
    func lambdaRefusesPlainHTTP() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = "secret_lambda_key_3f9a0c"
        dir.write("lambda-key", "api_key = \(key)\n")
        let lib = try PluginLibrary.load(path: await LambdaPlugin.build())
        func create(_ endpoint: String, allow: JSONValue? = nil) -> CapstanError? {
            var o: [String: JSONValue] = ["endpoint": .string(endpoint), "apiKeyFile": .string(dir.file("lambda-key"))]
            if let allow { o["allowInsecureHTTP"] = allow }
            do { _ = try lib.instantiate(config: .object(o), timeout: .seconds(10)); return nil } catch { return error as? CapstanError ?? CapstanError(.internalError, "\(error)") }
        }
        for endpoint in ["http://10.255.255.1:8080/api/v1", "http://lambda.example.com/api/v1", "http://203.0.113.7/api/v1", "http://127.0.0.1.example.com/api/v1", "http://user@192.0.2.1/api/v1"] {
            let e = create(endpoint)
            #expect(e?.code == .config && e?.message.contains("providers.lambda.endpoint is plain HTTP to") == true && e?.message.contains("API key unencrypted") == true, "\(endpoint): \(String(describing: e))")
            #expect(e?.hint?.contains("providers.lambda.allowInsecureHTTP: true") == true, "\(String(describing: e))")
            #expect(e.map { !"\($0)".contains(key) } ?? true)
        }
        #expect(create("http://10.255.255.1:8080/api/v1")?.message.contains("plain HTTP to 10.255.255.1,") == true)
        // An upper-case scheme is not taken for HTTPS either (the plugin accepts lower case only).
        #expect(create("HTTP://203.0.113.7/api/v1")?.code == .config)
        // Allowed: this machine, HTTPS anywhere, or the user's explicit choice.
        for endpoint in ["http://127.0.0.1:1/api/v1", "http://127.3.4.5:8080/api/v1", "http://localhost:1/api/v1", "http://LOCALHOST./api/v1", "http://[::1]:1/api/v1", "https://10.255.255.1/api/v1"] {
            #expect(create(endpoint) == nil, "\(endpoint): \(String(describing: create(endpoint)))")
        }
        #expect(create("http://10.255.255.1:8080/api/v1", allow: .bool(true)) == nil)
        #expect(create("http://10.255.255.1:8080/api/v1", allow: .bool(false))?.code == .config)
        #expect(create("http://127.0.0.1:1/api/v1", allow: .string("yes"))?.message.contains("providers.lambda.allowInsecureHTTP must be true or false") == true)
    }
}
