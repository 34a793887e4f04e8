import CapstanCore
import CapstanRuntime
import CapstanSQLite
import Testing
import Foundation
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A test server process (the RunPod, Compute Engine or Cloud Storage one) on 127.0.0.1: started
/// with `--port-file`, waited for without blocking a thread, killed on ``stop()``.
final class TestServerProcess: @unchecked Sendable {
    let dir: TempDir
    let process = Process()
    let port: Int
    var base: String { "http://127.0.0.1:\(port)" }

    /// Runs `arguments` (the program first) with `--port-file F` appended, or, with `fixedPort`,
    /// as given (a server that takes its port as an argument), waiting until that port accepts.
    init(_ name: String, _ arguments: [String], fixedPort: Int? = nil) async throws {
        dir = TempDir("capstan-\(name)")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = fixedPort == nil ? arguments + ["--port-file", dir.file("port")] : arguments
        // Never the test's own stdout/stderr: `swift test` waits for every holder of its pipes.
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        FileManager.default.createFile(atPath: dir.file("stderr"), contents: nil)
        process.standardError = FileHandle(forWritingAtPath: dir.file("stderr"))
        try process.run()
        var found: Int?
        for _ in 0..<300 {
            if let fixedPort {
                if Self.accepts(fixedPort) { found = fixedPort; break }
            } else if let text = try? String(contentsOfFile: dir.file("port"), encoding: .utf8), let p = Int(text) {
                found = p
                break
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        guard let found else {
            kill(process.processIdentifier, SIGKILL)
            let err = (try? String(contentsOfFile: dir.file("stderr"), encoding: .utf8)) ?? ""
            throw CapstanError(.internalError, "The \(name) test server did not start within 15 s: \(err)")
        }
        port = found
    }

    /// Whether something listens on 127.0.0.1:`port`.
    static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
    }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        dir.cleanup()
    }

    /// GET (no body) or POST (a JSON body) to the server's `/_emulator/…` switches.
    @discardableResult
    func admin(_ path: String, _ body: [String: Any]? = nil) async throws -> [String: Any] {
        try await Self.json(base + "/_emulator/" + path, body: body)
    }

    /// One JSON request (URLSession, off the cooperative pool's threads by its own callbacks).
    static func json(_ url: String, method: String? = nil, body: [String: Any]? = nil) async throws -> [String: Any] {
        var req = URLRequest(url: URL(string: url)!)
        if let body {
            req.httpMethod = "POST"
            req.httpBody = try JSONSerialization.data(withJSONObject: body)
            req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        if let method { req.httpMethod = method }
        let (data, _) = try await URLSession.shared.data(for: req)
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
    }
}

/// The RunPod API test server (plugins/runpod/emulator/runpod_api.py).
enum RunPodServer {
    static let apiKey = "rp_test_key_5c1d9e"
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/plugins/runpod/emulator/runpod_api.py"
    static var pluginPath: String { BuildProducts.folder + "/libCapstanPluginRunPod.so" }

    static func start(faults: [String: Any] = [:]) async throws -> TestServerProcess {
        let f = String(decoding: try JSONSerialization.data(withJSONObject: faults), as: UTF8.self)
        return try await TestServerProcess("runpod", ["python3", script, "--api-key", apiKey, "--faults", f])
    }

    /// The plugin's config for `server`, its key written into `dir`.
    static func config(_ server: TestServerProcess, dir: TempDir) -> JSONValue {
        dir.write("runpod-key", apiKey + "\n")
        return .object(["endpoint": .string(server.base + "/graphql"), "apiKeyFile": .string(dir.file("runpod-key"))])
    }

    /// config.yaml's `providers.runpod`.
    static func section(_ server: TestServerProcess, home: TempDir) -> String {
        home.write("runpod-key", apiKey + "\n")
        return "  runpod:\n    endpoint: \(server.base)/graphql\n    apiKeyFile: \(home.file("runpod-key"))\n"
    }
}

/// The Compute Engine test server (plugins/gcp/emulator/compute_engine.py) with a fresh
/// service-account key: an RSA key made by openssl, its modulus given to the server, the JSON
/// key file written as a console download would be (token_uri pointing at the server).
final class GCPServer: @unchecked Sendable {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/plugins/gcp/emulator/compute_engine.py"
    static var pluginPath: String { BuildProducts.folder + "/libCapstanPluginGCP.so" }
    static let project = "capstan-test-project"
    static let email = "capstan@capstan-test-project.iam.gserviceaccount.com"
    let server: TestServerProcess
    let keyDir = TempDir("capstan-gcp-key")
    /// The PEM private key (for the secret-leak scans).
    let privateKey: String

    init(faults: [String: Any] = [:]) async throws {
        let pem = keyDir.file("key.pem")
        let gen = try await runProcess("/usr/bin/env", ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", pem])
        guard gen.status == 0 else { throw CapstanError(.internalError, "openssl genpkey: \(gen.stderr)") }
        let mod = try await runProcess("/usr/bin/env", ["openssl", "rsa", "-in", pem, "-noout", "-modulus"])
        guard mod.status == 0, let hex = mod.stdout.split(separator: "=").last?.trimmingCharacters(in: .whitespacesAndNewlines) else {
            throw CapstanError(.internalError, "openssl rsa -modulus: \(mod.stderr)")
        }
        privateKey = try String(contentsOfFile: pem, encoding: .utf8)
        let f = String(decoding: try JSONSerialization.data(withJSONObject: faults), as: UTF8.self)
        server = try await TestServerProcess("gcp", ["python3", Self.script, "--project", Self.project, "--client-email", Self.email, "--jwt-modulus", hex, "--faults", f])
    }

    var endpoint: String { server.base + "/compute/v1" }

    /// A service-account key file for this server in `dir` (the key another server's, for a
    /// refused signature, when `foreign`).
    func keyFile(in dir: TempDir, privateKey other: String? = nil) throws -> String {
        let doc: [String: Any] = [
            "type": "service_account", "project_id": Self.project, "private_key_id": "0123abcd", "private_key": other ?? privateKey,
            "client_email": Self.email, "client_id": "1234567890", "token_uri": server.base + "/token",
        ]
        let path = dir.file("gcp-key.json")
        try JSONSerialization.data(withJSONObject: doc).write(to: URL(fileURLWithPath: path))
        return path
    }

    func config(_ dir: TempDir, storage: String? = nil) throws -> JSONValue {
        var o: [String: JSONValue] = ["credentialsFile": .string(try keyFile(in: dir)), "endpoint": .string(endpoint)]
        if let storage { o["storageEndpoint"] = .string(storage) }
        return .object(o)
    }

    /// config.yaml's `providers.gcp`.
    func section(home: TempDir, zones: [String]? = nil) throws -> String {
        "  gcp:\n    credentialsFile: \(try keyFile(in: home))\n    endpoint: \(endpoint)\n" + (zones.map { "    zones: [\($0.joined(separator: ", "))]\n" } ?? "")
    }

    func stop() {
        server.stop()
        keyDir.cleanup()
    }
}

/// What a cloud holds for a Capstan home: the live instances carrying its owner tag (one already
/// terminating counts as gone), and those of them no running cluster of it claims (launch
/// intent included) — leaked.
func ownedInstances(_ compute: any ComputeProvider, home: TempDir) async throws -> (live: [Instance], leaked: [Instance]) {
    let store = try SQLiteStateStore(path: home.file("state/capstan.db"))
    let live = try await compute.describe(InstanceQuery(tags: [CapstanTags.owner: try await store.ownerID()])).filter { $0.state != .terminating }
    var leaked: [Instance] = []
    for i in live {
        let c = try await store.cluster(id: i.tags[CapstanTags.clusterID] ?? "")
        if !(c?.status == .running && c?.intentKey == i.tags[CapstanTags.intent]) { leaked.append(i) }
    }
    return (live, leaked)
}

/// kill -9 of `capstan up` and of `capstan down` at each crash point (a fresh home each), then
/// `capstan reconcile`: no live instance is left that no running cluster owns, and after a final
/// `down` none at all. `provider` names the offers `up` prints it is trying.
func killUpAndDownThenReconcile(
    provider: String, gpu: [String] = ["--gpu", "L4", "--gpus-per-node", "1"], makeHome: () throws -> TempDir, env: (TempDir) -> [String: String],
    owned: (TempDir) async throws -> (live: [Instance], leaked: [Instance])
) async throws {
    let upArgs = ["up", "c1"] + gpu + ["--nodes", "2"]
    for point in ["up.before-launch", "up.after-launch", "up.waiting", "down.listed", "down.terminated"] {
        let home = try makeHome(); defer { home.cleanup() }
        let isDown = point.hasPrefix("down.")
        if isDown {
            let up = try await runProcess(BuildProducts.capstan, upArgs, environment: env(home))
            #expect(up.status == 0, "\(point): \(up.stderr)")
        }
        let killed = try await runProcess(BuildProducts.capstan, isDown ? ["down", "c1"] : upArgs, environment: env(home).merging(["CAPSTAN_TEST_CRASH_AT": point]) { $1 })
        #expect(killed.status == 9, "\(point): \(killed.stderr)")
        if !isDown {
            // Flushed line by line into the pipe: what up said before the kill is there.
            #expect(killed.stdout.contains("Provisioning c1") && killed.stdout.contains("trying \(provider)/"), "\(point): \(killed.stdout)")
        }
        let reconcile = try await runProcess(BuildProducts.capstan, ["reconcile"], environment: env(home))
        #expect(reconcile.status == 0, "\(point): \(reconcile.stderr)")
        let (live, leaked) = try await owned(home)
        #expect(leaked.isEmpty, "\(point): leaked \(leaked.map(\.id))")
        if !live.isEmpty {
            let down = try await runProcess(BuildProducts.capstan, ["down", "c1"], environment: env(home))
            #expect(down.status == 0, "\(point): \(down.stderr)")
        }
        #expect(try await owned(home).live.isEmpty, "\(point): instances left")
    }
}
