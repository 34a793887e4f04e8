import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import Foundation
@_exported import CapstanTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Where the package's build products are (the built `capstan`, the plugin `.so` files): next to
/// the test bundle, or `CAPSTAN_TEST_BUILD_DIR`.
enum BuildProducts {
    static let folder: String = {
        if let dir = ProcessInfo.processInfo.environment["CAPSTAN_TEST_BUILD_DIR"] { return dir }
        var candidates = [Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent()]
        if let exe = Bundle.main.executableURL { candidates.append(exe.deletingLastPathComponent()) }
        candidates.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent())
        for c in candidates where FileManager.default.fileExists(atPath: c.path + "/libCapstanPluginSim.so") || FileManager.default.fileExists(atPath: c.path + "/libCapstanPluginSim.dylib") {
            return c.path
        }
        return candidates[0].path
    }()

    static var simPlugin: String {
        let so = folder + "/libCapstanPluginSim.so"
        return FileManager.default.fileExists(atPath: so) ? so : folder + "/libCapstanPluginSim.dylib"
    }
    static var capstan: String { folder + "/capstan" }
    /// The public ABI header's folder.
    static let abiInclude = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/Sources/PluginABI/include"
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures"
}

/// How a child ended: `status` is the exit code, or the number of the signal that killed it.
struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion (killed after `timeout` seconds) on a thread of its own, so
/// the wait never blocks Swift concurrency's few cooperative threads (which would stall every
/// other test's timers on a 2-core machine), nor Dispatch's.
func runProcess(_ exe: String, _ args: [String], environment: [String: String] = [:], timeout: Double = 60) async throws -> ProcessResult {
    try await Spawn.onThread { try runProcessBlocking(exe, args, environment: environment, timeout: timeout) }
}

/// The blocking form, for the few synchronous callers (compiling fixtures under a lock).
/// Through `Spawn`, not Foundation's `Process` (see Spawn: one child that closes its inherited
/// descriptors, as ssh and sshd do, would hold up every other test's process exits).
func runProcessBlocking(_ exe: String, _ args: [String], environment: [String: String] = [:], timeout: Double = 60) throws -> ProcessResult {
    var env = ProcessInfo.processInfo.environment
    env["CAPSTAN_PLUGIN_PATH"] = nil
    env["CAPSTAN_HOME"] = nil
    for (k, v) in environment { env[k] = v }
    let r = try Spawn.runCapturing([exe] + args, environment: env, timeout: timeout)
    // As Foundation's terminationStatus: the exit code, or the signal's number.
    let code: Int32 = switch r.status { case .exited(let c): c; case .signaled(let sig): sig }
    return ProcessResult(status: code, stdout: String(decoding: r.stdout, as: UTF8.self), stderr: String(decoding: r.stderr, as: UTF8.self))
}

/// Makes an ed25519 key pair `id`/`id.pub` in `dir` and returns the public key line.
func sshPublicKey(in dir: TempDir) async throws -> String {
    let r = try await runProcess("/usr/bin/ssh-keygen", ["-t", "ed25519", "-N", "", "-q", "-C", "capstan-test", "-f", dir.file("id")])
    guard r.status == 0 else { throw CapstanError(.internalError, "ssh-keygen failed: \(r.stderr)") }
    return try String(contentsOfFile: dir.file("id.pub"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Compiles the C fixture plugin with `flags` into a `.so` (cached per flag set).
enum CFixtures {
    private static let cache = NSLock()
    nonisolated(unsafe) private static var built: [String: String] = [:]
    private static let dir = TempDir("capstan-cplugins")

    /// Compiled on a thread of its own (see `LambdaPlugin.build`).
    static func plugin(_ flags: [String]) async throws -> String {
        try await Spawn.onThread { try pluginBlocking(flags) }
    }

    private static func pluginBlocking(_ flags: [String]) throws -> String {
        let key = flags.joined(separator: " ")
        cache.lock(); defer { cache.unlock() }
        if let p = built[key] { return p }
        let out = dir.file("ctest-\(built.count).so")
        let cc = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/cc"
        let r = try runProcessBlocking(cc, ["-shared", "-fPIC", "-O1", "-I", BuildProducts.abiInclude] + flags + ["-o", out, BuildProducts.fixtures + "/ctest_plugin.c", "-lpthread"])
        guard r.status == 0 else { throw CapstanError(.internalError, "cc failed: \(r.stderr)") }
        built[key] = out
        return out
    }
}

/// The one secret-leak scan every test uses: the raw bytes of every regular file under `roots`
/// (no decoding, so the SQLite database, its WAL and binary files are searched as well as text;
/// links and special files are not followed or opened).
struct SecretScan {
    /// Every regular file looked at (`root/relative`), to check the scan covered what it should.
    var scanned: [String] = []
    /// Files whose bytes contain the secret.
    var hits: [String] = []

    init(_ roots: [String], for secret: String, skip: (String) -> Bool = { _ in false }) {
        let needle = Data(secret.utf8)
        precondition(!needle.isEmpty, "an empty secret matches everything")
        var seen = Set<String>()
        for root in roots {
            let base = URL(fileURLWithPath: root).standardizedFileURL.path
            for f in (try? FileManager.default.subpathsOfDirectory(atPath: base)) ?? [] {
                let path = base + "/" + f
                guard seen.insert(path).inserted, !skip(path) else { continue }
                var st = stat()
                guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
                // A file that went away between the listing and the read holds nothing.
                guard let data = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else { continue }
                scanned.append(path)
                if data.range(of: needle) != nil { hits.append(path) }
            }
        }
    }

    /// Whether a file whose path ends with `suffix` was scanned.
    func covered(_ suffix: String) -> Bool { scanned.contains { $0.hasSuffix(suffix) } }
}

/// Polls `condition` every `interval` until it holds; false once `timeout` seconds have passed.
/// It looks once more after the deadline, so a test task that was not run for a while (a loaded
/// 2-core machine) does not give up on a condition that has come true meanwhile.
func eventually(timeout: Double = 120, every interval: Duration = .milliseconds(100), _ condition: () async throws -> Bool) async throws -> Bool {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if (try? await condition()) == true { return true }
        try await Task.sleep(for: interval)
    }
    return (try? await condition()) == true
}
