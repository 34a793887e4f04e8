import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The Lambda Cloud plugin (plugins/lambda, C with libcurl and jansson), built the way a vendor
/// builds it — its own Makefile, outside Capstan's tree, against a copy of the public header —
/// and run against the Lambda API emulator (plugins/lambda/emulator). The `capstan` CLI runs load
/// the AddressSanitizer build with libasan preloaded; any ASan or LeakSanitizer report fails them.
enum LambdaPlugin {
    static let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/plugins/lambda"
    static let emulatorScript = source + "/emulator/lambda_cloud.py"
    private static let lock = NSLock()
    nonisolated(unsafe) private static var built: [String: String] = [:]
    private static let dir = TempDir("capstan-lambda-build")

    /// Builds the plugin out of tree, as a vendor with only the `capstan` binary would:
    /// plugins/lambda's Makefile and sources are copied into a fresh folder, `capstan plugins
    /// sdk` writes `capstan_plugin.h` beside them (its ABI version then set to `abi` when given,
    /// to forge a plugin built for another Capstan), and `make` runs there.
    /// Built on a thread of its own: `make` (and waiting for another test's) must not hold one
    /// of Swift concurrency's cooperative threads (two on a 2-core machine) for tens of seconds.
    static func build(asan: Bool = false, abi: Int? = nil) async throws -> String {
        try await Spawn.onThread { try buildBlocking(asan: asan, abi: abi) }
    }

    private static func buildBlocking(asan: Bool, abi: Int?) throws -> String {
        let key = "\(asan)-\(abi.map(String.init) ?? "cur")"
        lock.lock(); defer { lock.unlock() }
        if let p = built[key] { return p }
        let tree = dir.file("tree-\(key)")
        let fm = FileManager.default
        try fm.createDirectory(atPath: tree, withIntermediateDirectories: true)
        try fm.copyItem(atPath: source + "/Makefile", toPath: tree + "/Makefile")
        try fm.copyItem(atPath: source + "/src", toPath: tree + "/src")
        let sdk = try runProcessBlocking(BuildProducts.capstan, ["plugins", "sdk", tree + "/include"])
        guard sdk.status == 0 else { throw CapstanError(.internalError, "capstan plugins sdk failed: \(sdk.stderr)") }
        var header = try String(contentsOfFile: tree + "/include/capstan_plugin.h", encoding: .utf8)
        if let abi {
            header = header.replacingOccurrences(of: "#define CAPSTAN_PLUGIN_ABI_VERSION 1u", with: "#define CAPSTAN_PLUGIN_ABI_VERSION \(abi)u")
        }
        try header.write(toFile: tree + "/include/capstan_plugin.h", atomically: true, encoding: .utf8)
        var args = ["-C", tree, "CAPSTAN_INCLUDE=\(tree)/include"]
        if asan { args.append("SANITIZE=address") }
        let r = try runProcessBlocking("/usr/bin/make", args, timeout: 180)
        guard r.status == 0 else { throw CapstanError(.internalError, "make in \(tree) failed:\n\(r.stdout)\n\(r.stderr)") }
        let so = tree + (asan ? "/build-asan" : "/build") + "/libcapstan-lambda.so"
        built[key] = so
        return so
    }

    /// libasan, to preload into `capstan` (a Swift binary without ASan) for the ASan build.
    static let libasan: String = {
        let r = try? runProcessBlocking("/usr/bin/cc", ["-print-file-name=libasan.so"])
        return r?.stdout.trimmingCharacters(in: .whitespacesAndNewlines) ?? "libasan.so"
    }()
}

/// One Lambda API emulator process on 127.0.0.1, killed on ``stop()``.
final class LambdaEmulator: @unchecked Sendable {
    static let apiKey = "secret_lambda_test_key_8f2c"
    let dir = TempDir("capstan-lambda-emu")
    let process = Process()
    let port: Int
    /// The plain-HTTP port of the `/_emulator/` switches (the API port itself unless TLS).
    let adminPort: Int
    /// With TLS: the emulator's self-signed certificate, for `caBundle`.
    let certificate: String?

    var endpoint: String { "\(certificate == nil ? "http" : "https")://127.0.0.1:\(port)/api/v1" }

    /// Waits for the emulator's port without blocking a thread (a blocking wait holds one of
    /// Swift concurrency's few threads, stalling every other test's timers and I/O meanwhile).
    init(faults: [String: Any] = [:], tls: Bool = false) async throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let faultsJSON = String(decoding: try JSONSerialization.data(withJSONObject: faults), as: UTF8.self)
        var args = ["python3", LambdaPlugin.emulatorScript, "--port-file", dir.file("port"), "--api-key", Self.apiKey, "--faults", faultsJSON]
        if tls {
            try Self.makeCertificate(dir.file("cert.pem"), key: dir.file("key.pem"))
            args += ["--tls-cert", dir.file("cert.pem"), "--tls-key", dir.file("key.pem")]
            certificate = dir.file("cert.pem")
        } else {
            certificate = nil
        }
        process.arguments = args
        // Never the test's own stdout/stderr: `swift test` waits for every holder of its pipes.
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        var found: (Int, Int)?
        for _ in 0..<200 {
            if let text = try? String(contentsOfFile: dir.file("port"), encoding: .utf8), let p = Int(text) {
                let admin = tls ? (try? String(contentsOfFile: dir.file("port.admin"), encoding: .utf8)).flatMap { Int($0) } : p
                if let admin { found = (p, admin); break }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        guard let found else {
            kill(process.processIdentifier, SIGKILL)
            throw CapstanError(.internalError, "The Lambda emulator did not start within 10 s.")
        }
        (port, adminPort) = found
    }

    /// A self-signed certificate for 127.0.0.1.
    static func makeCertificate(_ cert: String, key: String) throws {
        let r = try runProcessBlocking("/usr/bin/env", [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert,
        ])
        guard r.status == 0 else { throw CapstanError(.internalError, "openssl req failed: \(r.stderr)") }
    }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        dir.cleanup()
    }

    private func admin(_ path: String, _ body: [String: Any]? = nil) throws -> [String: Any] {
        var req = URLRequest(url: URL(string: "http://127.0.0.1:\(adminPort)/_emulator/\(path)")!)
        if let body {
            req.httpMethod = "POST"
            req.httpBody = try JSONSerialization.data(withJSONObject: body)
        }
        let box = LockedBox<Result<Data, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        URLSession.shared.dataTask(with: req) { data, _, error in
            let result: Result<Data, any Error> = data.map { .success($0) } ?? .failure(error ?? CapstanError(.io, "no answer"))
            box.withLock { $0 = result }
            done.signal()
        }.resume()
        done.wait()
        let data = try box.withLock { $0! }.get()
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    /// Merges fault switches (see the emulator's docstring).
    func set(_ faults: [String: Any]) throws { _ = try admin("faults", faults) }
    /// Counters, SSH keys and every instance the emulator holds.
    func state() throws -> [String: Any] { try admin("state") }
    func counter(_ name: String) throws -> Int { ((try state()["counters"] as? [String: Any])?[name] as? Int) ?? -1 }
    func instances() throws -> [[String: Any]] { try state()["instances"] as? [[String: Any]] ?? [] }
}

// Nested in JobTests (serialized): the ASan runs and plugin builds are heavy enough, on 2 cores,
// to starve the timing-sensitive job tests if they ran beside them.
extension JobTests {
    @Suite("Lambda plugin (C, libcurl + jansson) on the Lambda API emulator", .serialized)
    struct LambdaPluginTests {
        static func config(_ emulator: LambdaEmulator, dir: TempDir, extra: [String: JSONValue] = [:]) -> JSONValue {
            dir.write("lambda-key", "# Lambda Cloud\napi_key = \(LambdaEmulator.apiKey)\n")
            var o: [String: JSONValue] = ["endpoint": .string(emulator.endpoint), "apiKeyFile": .string(dir.file("lambda-key"))]
            for (k, v) in extra { o[k] = v }
            return .object(o)
        }

        static func provider(_ emulator: LambdaEmulator, dir: TempDir, extra: [String: JSONValue] = [:]) async throws -> PluginComputeProvider {
            try PluginComputeProvider(PluginLibrary.load(path: await LambdaPlugin.build()).instantiate(config: config(emulator, dir: dir, extra: extra), timeout: .seconds(30)))
        }

        @Test("built out of tree by its own Makefile; exports only the entry symbol; the manifest loads")
        func buildsAndLoads() async throws {
            let so = try await LambdaPlugin.build()
            let lib = try PluginLibrary.load(path: so)
            #expect(lib.name == "lambda" && lib.abiVersion == 1 && lib.manifest.capabilities == [.compute] && lib.manifest.autoEnable == nil)
            let nm = try await runProcess("/usr/bin/nm", ["-D", "--defined-only", so])
            let exported = nm.stdout.split(separator: "\n").filter { $0.contains(" T ") }.map { $0.split(separator: " ").last.map(String.init) ?? "" }
            #expect(exported == ["capstan_plugin_entry"], "\(nm.stdout)")
            let inspect = try await runProcess(BuildProducts.capstan, ["plugins", "inspect", so])
            #expect(inspect.status == 0 && inspect.stdout.contains("maxRateLimitWaitSeconds"), "\(inspect.stderr)")
        }

        @Test("a plugin built against a newer or older ABI header is refused with both versions named")
        func abiMismatch() async throws {
            for (abi, hint) in [(2, "Upgrade Capstan"), (0, "Rebuild the plugin")] {
                let so = try await LambdaPlugin.build(abi: abi)
                let r = try await runProcess(BuildProducts.capstan, ["plugins", "inspect", so])
                #expect(r.status != 0)
                #expect(r.stderr.contains("built for plugin ABI version \(abi), and this Capstan supports 1–1"), "\(r.stderr)")
                #expect(r.stderr.contains(hint), "\(r.stderr)")
                // Enabled and on the search path, it is listed as failed, and the rest of Capstan works.
                let home = TempDir("capstan-lambda-abi"); defer { home.cleanup() }
                home.write("config.yaml", "providers:\n  lambda: {}\n")
                let list = try await runProcess(BuildProducts.capstan, ["plugins", "list"], environment: ["CAPSTAN_HOME": home.path, "CAPSTAN_PLUGIN_PATH": so])
                #expect(list.status == 0 && list.stdout.contains("failed to load"), "\(list.stdout)\n\(list.stderr)")
            }
        }

        @Test("offers: one per type and region, priced from cents, GPUs normalized, no-capacity regions unavailable")
        func offers() async throws {
            let emu = try await LambdaEmulator(); defer { emu.stop() }
            let dir = TempDir(); defer { dir.cleanup() }
            let lambda = try await Self.provider(emu, dir: dir)
            let offers = try await lambda.offers(for: ResourceRequest())
            let h100x8 = offers.filter { $0.instanceType == "gpu_8x_h100_sxm5" }
            #expect(Set(h100x8.filter { $0.availability == .available }.map(\.region)) == ["us-east-1", "us-south-1", "us-west-1"])
            #expect(h100x8.contains { $0.region == "us-midwest-1" && $0.availability == .unavailable })
            #expect(h100x8.allSatisfy { $0.gpu == "H100-SXM" && $0.gpusPerNode == 8 && $0.onDemandPricePerHour == 23.92 && $0.vcpus == 208 && $0.spotPricePerHour == nil })
            #expect(offers.contains { $0.instanceType == "gpu_1x_h100_pcie" && $0.gpu == "H100-PCIe" })
            #expect(offers.contains { $0.instanceType == "gpu_1x_a100_sxm4" && $0.gpu == "A100-40GB-SXM" })
            #expect(offers.contains { $0.instanceType == "gpu_8x_a100_80gb_sxm4" && $0.gpu == "A100-80GB-SXM" })
            #expect(offers.contains { $0.instanceType == "gpu_1x_gh200" && $0.gpu == "GH200" })
            // B200 has no capacity anywhere: still listed, so --explain can say why it is not used.
            #expect(offers.filter { $0.instanceType == "gpu_8x_b200_sxm6" }.allSatisfy { $0.availability == .unavailable && $0.gpu == "B200" })
            let ranked = try OfferRanking.rank(offers, for: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2)).ranked
            #expect(ranked.first?.offer.instanceType == "gpu_8x_h100_sxm5" && ranked.first?.clusterPricePerHour == 47.84)

            // Settings narrow it; the request's regions too.
            let narrow = try await Self.provider(emu, dir: dir, extra: ["regions": .array([.string("us-west-1")]), "instanceTypes": .array([.string("gpu_8x_*")])])
            let few = try await narrow.offers(for: ResourceRequest())
            #expect(!few.isEmpty && few.allSatisfy { $0.region == "us-west-1" && $0.instanceType.hasPrefix("gpu_8x_") })
            let south = try await lambda.offers(for: ResourceRequest(regions: ["us-south-1"]))
            #expect(!south.isEmpty && south.allSatisfy { $0.region == "us-south-1" })
            try emu.set(["no_capacity": true])
            let none = try await lambda.offers(for: ResourceRequest())
            #expect(!none.isEmpty && none.allSatisfy { $0.availability == .unavailable })
        }

        @Test("launch registers the SSH key once, tags every instance, is idempotent per intent; describe and terminate")
        func lifecycle() async throws {
            // Terminating lasts until the test says, booting 5 s (a loaded machine may take seconds
            // between the launch request and the plugin's listing, which must still say booting).
            let emu = try await LambdaEmulator(faults: ["boot_seconds": 5, "terminate_seconds": 3600]); defer { emu.stop() }
            let dir = TempDir(); defer { dir.cleanup() }
            let lambda = try await Self.provider(emu, dir: dir)
            let offer = try #require(try await lambda.offers(for: ResourceRequest(gpu: "H100")).first { $0.instanceType == "gpu_8x_h100_sxm5" && $0.availability == .available })
            let key = "cap-" + UUID().uuidString.lowercased()
            let tags = [CapstanTags.managed: "true", CapstanTags.intent: key, "test": key]
            let request = LaunchRequest(offer: offer, count: 2, idempotencyKey: key, tags: tags, sshPublicKey: try await sshPublicKey(in: dir), userData: "#!/bin/sh\necho hi\n", name: "capstan-lifecycle")
            let launched = try await lambda.launch(request)
            #expect(launched.count == 2)
            #expect(launched.allSatisfy { $0.state == .pending && $0.providerState == "booting" && $0.region == offer.region && $0.tags["test"] == key && $0.pricePerHour == 23.92 && $0.sshUser == "ubuntu" })
            // Lambda has no idempotency token: the same intent again finds the instances by tag.
            let again = try await lambda.launch(request)
            #expect(Set(again.map(\.id)) == Set(launched.map(\.id)))
            #expect(try emu.counter("launch_requests") == 1 && emu.counter("ssh_keys_created") == 1)
            let held = try emu.instances()
            #expect(held.allSatisfy { ($0["user_data"] as? String) == "#!/bin/sh\necho hi\n" && ($0["name"] as? String) == "capstan-lifecycle" })
            #expect(held.allSatisfy { ($0["ssh_key_names"] as? [String])?.first?.hasPrefix("capstan-") == true })

            // Another launch with the same key reuses the registered key.
            let other = try await lambda.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: key + "-b", tags: [CapstanTags.intent: key + "-b"], sshPublicKey: request.sshPublicKey))
            #expect(try emu.counter("ssh_keys_created") == 1)

            // Booted (5 s): wait for the state, not for a time.
            var running: [Instance] = []
            let booted = Date().addingTimeInterval(30)
            repeat {
                running = try await lambda.describe(InstanceQuery(tags: ["test": key]))
                if running.count == 2 && running.allSatisfy({ $0.state == .running }) { break }
                try await Task.sleep(for: .milliseconds(100))
            } while Date() < booted
            #expect(Set(running.map(\.id)) == Set(launched.map(\.id)))
            #expect(running.allSatisfy { $0.state == .running && $0.providerState == "active" && $0.publicAddress?.hasPrefix("127.") == true && $0.privateAddress != nil })

            let gone = try await lambda.terminate(ids: launched.map(\.id) + ["0000000000000000000000000000dead"])
            #expect(gone.count == 3)
            #expect(gone.filter { $0.id.hasSuffix("dead") }.allSatisfy { $0.state == .terminated && $0.providerState == "not-found" })
            #expect(gone.filter { !$0.id.hasSuffix("dead") }.allSatisfy { $0.state == .terminating })
            // The cluster key stays registered while `other` still uses it.
            #expect((try emu.state()["ssh_keys"] as? [Any])?.count == 1)
            // Terminating again is not an error, and sends nothing for what is already going.
            let requests = try emu.counter("terminate_requests")
            _ = try await lambda.terminate(ids: launched.map(\.id))
            #expect(try emu.counter("terminate_requests") == requests)
            // Still billed while terminating, so still listed; then gone.
            #expect(try await lambda.describe(InstanceQuery(tags: ["test": key])).allSatisfy { $0.state == .terminating })
            try emu.set(["terminate_seconds": 0])
            let ended = try await lambda.describe(InstanceQuery(ids: launched.map(\.id), includeTerminated: true))
            #expect(ended.count == 2 && ended.allSatisfy { $0.state == .terminated })
            // Once Lambda forgets them, asking by id still answers: gone.
            try emu.set(["forget_terminated_seconds": 0])
            let forgotten = try await lambda.describe(InstanceQuery(ids: launched.map(\.id), includeTerminated: true))
            #expect(forgotten.count == 2 && forgotten.allSatisfy { $0.state == .terminated && $0.providerState == "not-found" })
            _ = try await lambda.terminate(ids: other.map(\.id))
            // Its last user gone, the capstan-made key is deleted (Lambda allows 1,024).
            #expect((try emu.state()["ssh_keys"] as? [Any])?.count == 0)
        }

        @Test("Lambda's errors become Capstan's: bad key, no key, typo, no capacity, quota, spot, 502s")
        func errors() async throws {
            let emu = try await LambdaEmulator(); defer { emu.stop() }
            let dir = TempDir(); defer { dir.cleanup() }
            let lib = try PluginLibrary.load(path: await LambdaPlugin.build())

            // A wrong key: auth, Lambda's code, and never the key itself.
            dir.write("wrong-key", "secret_wrong_key_0000\n")
            let wrong = try PluginComputeProvider(lib.instantiate(config: .object(["endpoint": .string(emu.endpoint), "apiKeyFile": .string(dir.file("wrong-key"))])))
            let auth = await #expect(throws: CapstanError.self) { try await wrong.offers(for: ResourceRequest()) }
            #expect(auth?.code == .auth && auth?.cloudCode == "global/invalid-api-key" && auth?.provider == "lambda")
            #expect(auth?.hint?.contains("LAMBDA_API_KEY") == true)
            #expect(!"\(String(describing: auth))".contains("secret_wrong_key_0000"))

            // No key anywhere: a clear auth error at create, naming the places looked in.
            let noKey = #expect(throws: CapstanError.self) {
                try lib.instantiate(config: .object(["endpoint": .string(emu.endpoint), "apiKeyFile": .string(dir.file("absent"))]))
            }
            #expect(noKey?.code == .auth && noKey?.message.contains("Cannot read the Lambda Cloud API key file \(dir.file("absent"))") == true)
            let home = ProcessInfo.processInfo.environment["HOME"] ?? ""
            let tilde = #expect(throws: CapstanError.self) {
                try lib.instantiate(config: .object(["endpoint": .string(emu.endpoint), "apiKeyFile": .string("~/.capstan-no-such-key")]))
            }
            #expect(tilde?.message.contains("\(home)/.capstan-no-such-key") == true, "\(String(describing: tilde))")
            let typo = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["endpiont": .string("x")])) }
            #expect(typo?.code == .config && typo?.message.contains("providers.lambda.endpiont") == true && typo?.hint?.contains("Did you mean providers.lambda.endpoint?") == true)
            let badURL = #expect(throws: CapstanError.self) { try lib.instantiate(config: Self.config(emu, dir: dir, extra: ["endpoint": .string("cloud.lambda.ai")])) }
            #expect(badURL?.code == .config && badURL?.message.contains("is not an http(s) URL") == true)

            let lambda = try await Self.provider(emu, dir: dir)
            let pub = try await sshPublicKey(in: dir)
            let offers = try await lambda.offers(for: ResourceRequest(gpu: "A10"))
            let a10 = try #require(offers.first { $0.availability == .available })
            func launch(_ count: Int = 1, spot: Bool = false) async -> CapstanError? {
                await #expect(throws: CapstanError.self) {
                    try await lambda.launch(LaunchRequest(offer: a10, count: count, idempotencyKey: "k-\(UUID())", tags: [:], sshPublicKey: pub, spot: spot))
                }
            }
            try emu.set(["launch_capacity_failures": 1])
            let capacity = await launch()
            #expect(capacity?.code == .capacity && capacity?.cloudCode == "instance-operations/launch/insufficient-capacity")
            #expect(capacity?.message.contains("Not enough capacity to fulfill launch request.") == true)
            let spot = await launch(spot: true)
            #expect(spot?.code == .unsupported)

            // Quota, met half-way through a gang that Lambda starts one by one: what started is stopped.
            try emu.set(["honor_quantity": false, "max_instances": 2])
            let quota = await launch(3)
            #expect(quota?.code == .quota && quota?.cloudCode == "global/quota-exceeded")
            #expect(quota?.message.contains("2 of 3 instance(s) had started and were terminated") == true, "\(String(describing: quota))")
            #expect(try emu.instances().allSatisfy { ($0["status"] as? String) == "terminating" || ($0["status"] as? String) == "terminated" })
            // Where Lambda ignores quantity, a 2-node launch still gets 2 instances.
            try emu.set(["max_instances": 100])
            let two = try await lambda.launch(LaunchRequest(offer: a10, count: 2, idempotencyKey: "k-\(UUID())", tags: [:], sshPublicKey: pub))
            #expect(two.count == 2 && Set(two.map(\.id)).count == 2)
            _ = try await lambda.terminate(ids: two.map(\.id))

            // A proxy's 502 page twice: reads are repeated; a persistent one is transient.
            try emu.set(["server_errors": 2])
            #expect(try await lambda.offers(for: ResourceRequest()).count > 0)
            try emu.set(["server_errors": 100])
            let down = await #expect(throws: CapstanError.self) { try await lambda.describe(InstanceQuery()) }
            #expect(down?.code == .transient && down?.message.contains("HTTP 502") == true)
            try emu.set(["server_errors": 0])
        }

        @Test("HTTP 429: waited out inside a call (Retry-After or backoff), else rateLimited with a retry time")
        func rateLimits() async throws {
            let emu = try await LambdaEmulator(faults: ["rate_limit": ["requests_per_second": 5, "burst": 2, "launch_interval_seconds": 10], "retry_after_header": true])
            defer { emu.stop() }
            let dir = TempDir(); defer { dir.cleanup() }
            let lambda = try await Self.provider(emu, dir: dir)
            // Twelve concurrent reads at 5/s: Lambda refuses some, the plugin waits them out.
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<12 { group.addTask { try await lambda.describe(InstanceQuery()).count } }
                for try await n in group { #expect(n == 0) }
            }
            #expect(try emu.counter("rate_limited") > 0)
            // Without Retry-After the plugin backs off on its own, at random, so the six do not
            // come back in step (in step, only the bucket's burst of 2 would pass each round).
            // A 30 s budget: the default 12 s is rarely but sometimes too little for six at once,
            // and then the call answers rateLimited (checked below), which is not what this checks.
            let patient = try await Self.provider(emu, dir: dir, extra: ["maxRateLimitWaitSeconds": .number(30)])
            try emu.set(["retry_after_header": false])
            let limitedBefore = try emu.counter("rate_limited")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<6 { group.addTask { _ = try await patient.offers(for: ResourceRequest()) } }
                try await group.waitForAll()
            }
            #expect(try emu.counter("rate_limited") > limitedBefore)
            // A plugin told not to wait answers rateLimited, with when to retry, for the broker.
            var impatient = try await Self.provider(emu, dir: dir, extra: ["maxRateLimitWaitSeconds": .number(0)])
            // The host would retry it (PluginRetry): here the plugin's own answer is checked.
            impatient.retry.maxRetries = 0
            try emu.set(["rate_limit": ["requests_per_second": 0.2, "burst": 1, "launch_interval_seconds": 10], "retry_after_header": true])
            _ = try? await impatient.describe(InstanceQuery())
            let limited = await #expect(throws: CapstanError.self) { try await impatient.describe(InstanceQuery()) }
            #expect(limited?.code == .rateLimited && (limited?.retryAfterSeconds ?? 0) >= 1, "\(String(describing: limited))")
        }

        @Test("slow boot stays pending; an instance Lambda reports unhealthy is failed")
        func bootStates() async throws {
            let emu = try await LambdaEmulator(faults: ["boot_seconds": 3600]); defer { emu.stop() }
            let dir = TempDir(); defer { dir.cleanup() }
            let lambda = try await Self.provider(emu, dir: dir)
            let offer = try #require(try await lambda.offers(for: ResourceRequest(gpu: "GH200")).first { $0.availability == .available })
            let slow = try await lambda.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k-\(UUID())", sshPublicKey: try await sshPublicKey(in: dir)))
            let seen = try await lambda.describe(InstanceQuery(ids: slow.map(\.id)))
            #expect(seen.count == 1 && seen[0].state == .pending && seen[0].publicAddress == nil)
            try emu.set(["boot_seconds": 0, "unhealthy_on_boot": true])
            let sick = try await lambda.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k-\(UUID())", sshPublicKey: try String(contentsOfFile: dir.file("id.pub"), encoding: .utf8)))
            let state = try await lambda.describe(InstanceQuery(ids: sick.map(\.id), includeTerminated: true))
            #expect(state.first?.state == .failed && state.first?.providerState == "unhealthy" && state.first?.stateReason != nil)
            _ = try await lambda.terminate(ids: slow.map(\.id) + sick.map(\.id))
        }

        @Test("fifty concurrent calls on one instance, served by at most eight plugin workers")
        func concurrentCalls() async throws {
            let emu = try await LambdaEmulator(); defer { emu.stop() }
            let dir = TempDir(); defer { dir.cleanup() }
            // Between the plugin and the emulator, a proxy that holds every request 0.3 s and
            // counts how many are in flight at once: the plugin's workers, each in one request.
            let proxy = try await HTTPScript(upstream: "http://127.0.0.1:\(emu.port)", hold: 0.3)
            defer { proxy.stop() }
            let lambda = try await Self.provider(emu, dir: dir, extra: ["endpoint": .string(proxy.url + "/api/v1")])
            let before = try await proxy.log().requests.count
            let answers = try await withThrowingTaskGroup(of: (Int, Int).self) { group in
                for i in 0..<50 {
                    group.addTask { (i, i % 2 == 0 ? try await lambda.offers(for: ResourceRequest(gpu: "H100")).count : try await lambda.describe(InstanceQuery()).count) }
                }
                return try await group.reduce(into: [Int: Int]()) { $0[$1.0] = $1.1 }
            }
            // Every call got its own answer: the offers (the emulator has no instances).
            let wrong: [Int: Int] = answers.filter { (call: Int, count: Int) -> Bool in call % 2 == 0 ? count == 0 : count != 0 }
            #expect(answers.count == 50 && wrong.isEmpty, "\(answers.count) answers; wrong: \(wrong)")
            let log = try await proxy.log()
            #expect(log.requests.count - before >= 25, "\(log.requests.count - before) requests for 50 calls")
            // At most eight at once, and the eight were used (50 calls, each held 0.3 s).
            #expect(log.max_in_flight == 8, "\(log.max_in_flight) requests in flight at once")
        }
    }

    /// `capstan` itself, with the ASan build of the plugin on its search path and libasan preloaded.
    @Suite("capstan on Lambda (emulator), plugin under AddressSanitizer", .serialized)
    struct LambdaCLITests {
        struct Run {
            var home: TempDir
            var emulator: LambdaEmulator
            var asanLogs: TempDir
            var environment: [String: String]

            func capstan(_ args: [String], extra: [String: String] = [:]) async throws -> ProcessResult {
                let r = try await runProcess(BuildProducts.capstan, args, environment: environment.merging(extra) { $1 }, timeout: 120)
                let reports = (try? FileManager.default.contentsOfDirectory(atPath: asanLogs.path)) ?? []
                for f in reports {
                    let text = (try? String(contentsOfFile: asanLogs.file(f), encoding: .utf8)) ?? ""
                    Issue.record("AddressSanitizer report from `capstan \(args.joined(separator: " "))`:\n\(text.prefix(4000))")
                    try? FileManager.default.removeItem(atPath: asanLogs.file(f))
                }
                return r
            }

            func cleanup() {
                emulator.stop()
                home.cleanup()
                asanLogs.cleanup()
            }
        }

        /// A home whose config enables Lambda (the emulator) and, when given, AWS (moto) next to it.
        static func start(faults: [String: Any] = [:], aws: String? = nil, tls: Bool = false) async throws -> Run {
            let emulator = try await LambdaEmulator(faults: faults, tls: tls)
            let home = TempDir("capstan-lambda-cli")
            let logs = TempDir("capstan-lambda-asan")
            home.write("lambda-key", "api_key = \(LambdaEmulator.apiKey)\n")
            var config = """
                providers:
                  local:
                    enabled: false
                  lambda:
                    endpoint: \(emulator.endpoint)
                    apiKeyFile: \(home.file("lambda-key"))
                \(emulator.certificate.map { "    caBundle: \($0)\n" } ?? "")
                """
            if let aws { config += AWSProvisioningTests.providerSection(home, endpoint: aws) }
            home.write("config.yaml", config)
            let so = try await LambdaPlugin.build(asan: true)
            // The suppressions `capstan plugins sdk` wrote beside the header, as a vendor uses them.
            let supp = URL(fileURLWithPath: so).deletingLastPathComponent().deletingLastPathComponent().path + "/include/lsan-capstan-host.supp"
            let env = [
                "CAPSTAN_HOME": home.path, "CAPSTAN_PLUGIN_PATH": so,
                "LD_PRELOAD": LambdaPlugin.libasan,
                "ASAN_OPTIONS": "detect_leaks=1:log_path=\(logs.path)/asan:exitcode=66",
                // Known leaks of the host's Swift runtime, not the plugin's (see the file).
                "LSAN_OPTIONS": "suppressions=\(supp):print_suppressions=0",
            ]
            return Run(home: home, emulator: emulator, asanLogs: logs, environment: env)
        }

        @Test("capstan offers --gpu H100 lists Lambda's offers next to AWS's")
        func offersNextToAWS() async throws {
            let run = try await Self.start(aws: try TestServers.moto); defer { run.cleanup() }
            let r = try await run.capstan(["offers", "--gpu", "H100", "--json", "--limit", "0"])
            #expect(r.status == 0, "\(r.stderr)")
            let offers = try JSONDecoder.iso.decode(OffersOutput.self, from: Data(r.stdout.utf8)).offers.map(\.offer)
            #expect(offers.contains { $0.provider == "lambda" && $0.instanceType == "gpu_8x_h100_sxm5" && $0.gpu == "H100-SXM" })
            #expect(offers.contains { $0.provider == "lambda" && $0.instanceType == "gpu_1x_h100_pcie" && $0.gpu == "H100-PCIe" })
            #expect(offers.contains { $0.provider == "aws" && $0.instanceType == "p5.48xlarge" })
            let table = try await run.capstan(["offers", "--gpu", "H100", "--gpus-per-node", "8"])
            #expect(table.status == 0 && table.stdout.contains("lambda") && table.stdout.contains("aws"), "\(table.stdout)\n\(table.stderr)")
            // The cheaper 8×H100 box wins: Lambda's $23.92/h against p5's $98.32/h.
            #expect(table.stdout.contains("Cheapest: lambda gpu_8x_h100_sxm5"), "\(table.stdout)")
        }

        @Test("capstan up fails over on insufficient capacity, then capstan down terminates everything")
        func upFailoverDown() async throws {
            let run = try await Self.start(faults: ["launch_capacity_failures": 2, "boot_seconds": 0.5]); defer { run.cleanup() }
            let r = try await run.capstan(["up", "train", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2", "--json"])
            #expect(r.status == 0, "\(r.stderr)\n\(r.stdout)")
            let report = try JSONDecoder.iso.decode(ProvisionReport.self, from: Data(r.stdout.utf8))
            #expect(report.attempts.map(\.outcome) == ["capacity", "capacity", "ready"])
            #expect(report.attempts.prefix(2).allSatisfy { $0.error?.cloudCode == "instance-operations/launch/insufficient-capacity" })
            #expect(Set(report.attempts.map(\.offer.region)).count == 3)
            #expect(report.instances.count == 2 && report.instances.allSatisfy { $0.state == .running && $0.provider == "lambda" })
            #expect(report.cluster.offer?.instanceType == "gpu_8x_h100_sxm5")
            // Each cluster's own SSH key was registered with Lambda and named on the instances.
            let held = try run.emulator.instances()
            #expect(held.count == 2 && held.allSatisfy { ($0["ssh_key_names"] as? [String])?.count == 1 })
            let status = try await run.capstan(["status"])
            #expect(status.status == 0 && status.stdout.contains("lambda") && status.stdout.contains("8xH100-SXM"), "\(status.stdout)\n\(status.stderr)")

            let down = try await run.capstan(["down", "train"])
            #expect(down.status == 0, "\(down.stderr)")
            #expect(try run.emulator.instances().allSatisfy { ["terminating", "terminated"].contains($0["status"] as? String ?? "") })
            #expect((try run.emulator.state()["ssh_keys"] as? [Any])?.isEmpty == true)
        }

        @Test("no capacity anywhere, a rejected key, a rate-limited API: capstan up says so and leaves nothing running")
        func upFailures() async throws {
            let run = try await Self.start(faults: ["no_capacity": true]); defer { run.cleanup() }
            let none = try await run.capstan(["up", "c1", "--gpu", "H100"])
            #expect(none.status != 0)
            #expect((none.stdout + none.stderr).contains("no capacity reported"), "\(none.stdout)\n\(none.stderr)")

            // Capacity listed, but every launch refused: all offers tried, then a clear failure.
            try run.emulator.set(["no_capacity": false, "launch_capacity_failures": 50])
            let refused = try await run.capstan(["up", "c2", "--gpu", "H100", "--gpus-per-node", "8", "--json"])
            #expect(refused.status != 0)
            let report = try JSONDecoder.iso.decode(ProvisionReport.self, from: Data(refused.stdout.utf8))
            #expect(report.attempts.count == 3 && report.attempts.allSatisfy { $0.outcome == "capacity" })
            #expect(try run.emulator.counter("launched") == 0)

            // A wrong key: auth, named, and the rest of Lambda's offers are not tried.
            try run.emulator.set(["launch_capacity_failures": 0])
            run.home.write("lambda-key", "api_key = secret_revoked_key_1234\n")
            let auth = try await run.capstan(["offers", "--gpu", "H100", "--refresh"])
            #expect((auth.stdout + auth.stderr).contains("API key was invalid, expired, or deleted."), "\(auth.stdout)\n\(auth.stderr)")
            #expect(!(auth.stdout + auth.stderr).contains("secret_revoked_key_1234"))

            // Rate limited at Lambda's documented pace (scaled down): up still succeeds.
            run.home.write("lambda-key", "api_key = \(LambdaEmulator.apiKey)\n")
            try run.emulator.set(["rate_limit": ["requests_per_second": 3, "burst": 2, "launch_interval_seconds": 2], "boot_seconds": 0.3])
            let paced = try await run.capstan(["up", "c3", "--gpu", "GH200"])
            #expect(paced.status == 0, "\(paced.stdout)\n\(paced.stderr)")
            #expect(try run.emulator.counter("rate_limited") > 0)
            let down = try await run.capstan(["down", "c3"])
            #expect(down.status == 0, "\(down.stderr)")
        }

        @Test("every method and fault path through `capstan plugins call`, over HTTPS, under ASan")
        func everyPathUnderASan() async throws {
            let run = try await Self.start(faults: ["boot_seconds": 0.2], tls: true); defer { run.cleanup() }
            let dir = TempDir(); defer { dir.cleanup() }
            let pub = try await sshPublicKey(in: dir)
            func config(_ extra: [String: Any] = [:], ca: Bool = true) throws -> String {
                var c: [String: Any] = ["endpoint": run.emulator.endpoint, "apiKeyFile": run.home.file("lambda-key")]
                if ca { c["caBundle"] = run.emulator.certificate }
                for (k, v) in extra { c[k] = v }
                return String(decoding: try JSONSerialization.data(withJSONObject: c), as: UTF8.self)
            }
            func call(_ method: String, _ request: Any, config: String? = nil) async throws -> (ok: Bool, json: [String: Any], text: String) {
                let body = String(decoding: try JSONSerialization.data(withJSONObject: request, options: .fragmentsAllowed), as: UTF8.self)
                var args = ["plugins", "call", "lambda", method, body]
                if let config { args += ["--config", config] }
                let r = try await run.capstan(args)
                let json = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any] ?? [:]
                return (r.status == 0, json, r.stdout + r.stderr)
            }
            func ids(_ answer: [String: Any]) -> [String] { (answer["instances"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String } }
            let everything: [String: Any] = ["nodes": 1, "regions": [String](), "spot": "never", "providers": [String]()]

            // HTTPS with the emulator's certificate as the CA; without it, a clear TLS error.
            let offers = try await call("compute.offers", everything)
            #expect(offers.ok && (offers.json["offers"] as? [Any])?.isEmpty == false, "\(offers.text)")
            let a10 = try #require((offers.json["offers"] as? [[String: Any]])?.first { $0["instanceType"] as? String == "gpu_1x_a10" && $0["availability"] as? String == "available" })
            let noCA = try await call("compute.offers", everything, config: try config(ca: false))
            #expect(!noCA.ok && noCA.text.contains("TLS to https://127.0.0.1"), "\(noCA.text)")

            func launch(_ count: Int) async throws -> (ok: Bool, json: [String: Any], text: String) {
                try await call("compute.launch", ["offer": a10, "count": count, "idempotencyKey": "k-\(UUID())", "tags": ["t": "x"], "sshPublicKey": pub, "spot": false])
            }
            // Lambda starting one instance per request, and the quota cutting a gang short.
            try run.emulator.set(["honor_quantity": false, "max_instances": 2])
            let quota = try await launch(3)
            #expect(!quota.ok && quota.text.contains("2 of 3 instance(s) had started and were terminated"), "\(quota.text)")
            try run.emulator.set(["max_instances": 100])
            let two = try await launch(2)
            #expect(two.ok && ids(two.json).count == 2, "\(two.text)")

            // Describe by id, one of them unknown to Lambda; terminate, twice.
            let seen = try await call("compute.describe", ["ids": ids(two.json) + ["feedface"], "tags": [String: String](), "includeTerminated": true])
            #expect(seen.ok && ids(seen.json).count == 3 && seen.text.contains("not-found"), "\(seen.text)")
            for _ in 0..<2 {
                let gone = try await call("compute.terminate", ["ids": ids(two.json) + ["feedface"]])
                #expect(gone.ok && ids(gone.json).count == 3, "\(gone.text)")
            }

            // 502s: repeated, then reported transient.
            let list: [String: Any] = ["tags": [String: String](), "includeTerminated": false]
            try run.emulator.set(["server_errors": 2])
            #expect(try await call("compute.describe", list).ok)
            try run.emulator.set(["server_errors": 100])
            let broken = try await call("compute.describe", list)
            #expect(!broken.ok && broken.text.contains("HTTP 502"), "\(broken.text)")
            try run.emulator.set(["server_errors": 0])

            // 429 with no patience: rateLimited, with when to retry.
            try run.emulator.set(["rate_limit": ["requests_per_second": 0.1, "burst": 1], "retry_after_header": true])
            let impatient = try config(["maxRateLimitWaitSeconds": 0])
            _ = try await call("compute.describe", list, config: impatient)
            let limited = try await call("compute.describe", list, config: impatient)
            #expect(!limited.ok && limited.text.contains("Retry after"), "\(limited.text)")
            try run.emulator.set(["rate_limit": NSNull()])

            // A wrong key, a settings typo, a request that is not an object, a method it lacks.
            run.home.write("wrong-key", "secret_wrong_key_4242\n")
            let auth = try await call("compute.describe", list, config: try config(["apiKeyFile": run.home.file("wrong-key")]))
            #expect(!auth.ok && auth.text.contains("API key was invalid") && !auth.text.contains("secret_wrong_key_4242"), "\(auth.text)")
            let typo = try await call("plugin.ping", [String: String](), config: #"{"endpiont": "x"}"#)
            #expect(!typo.ok && typo.text.contains("Did you mean providers.lambda.endpoint?"), "\(typo.text)")
            let array = try await call("compute.offers", [1])
            #expect(!array.ok && array.text.contains("is not a JSON object"), "\(array.text)")
            let unknown = try await call("compute.resize", [String: String]())
            #expect(!unknown.ok && unknown.text.contains("does not implement 'compute.resize'"), "\(unknown.text)")
        }

        @Test("kill -9 during capstan up on Lambda leaves no instance that no cluster owns")
        func crashes() async throws {
            for point in ["up.before-launch", "up.after-launch", "up.waiting"] {
                let run = try await Self.start(faults: ["boot_seconds": 0.3]); defer { run.cleanup() }
                let r = try await run.capstan(["up", "c1", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2"], extra: ["CAPSTAN_TEST_CRASH_AT": point])
                #expect(r.status == 9, "\(point): \(r.stderr)")
                // The next command reconciles; down then leaves nothing live.
                let status = try await run.capstan(["status", "--all"])
                #expect(status.status == 0, "\(status.stderr)")
                let live = try run.emulator.instances().filter { !["terminating", "terminated"].contains($0["status"] as? String ?? "") }
                #expect(live.count == (point == "up.before-launch" ? 0 : 2), "\(point): \(live.count) live")
                _ = try await run.capstan(["down", "c1"])
                let after = try run.emulator.instances().filter { !["terminating", "terminated"].contains($0["status"] as? String ?? "") }
                #expect(after.isEmpty, "\(point): \(after.map { $0["id"] ?? "" })")
            }
        }
    }
}

/// The JSON of `capstan offers --json` (what these tests read of it).
struct OffersOutput: Decodable {
    struct Ranked: Decodable { var offer: Offer }
    var offers: [Ranked]
}
