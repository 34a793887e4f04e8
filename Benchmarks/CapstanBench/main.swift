// capstan-bench: figures for the closing notes, each against a baseline run in the same process.
//   swift build -c release --product capstan-bench --product CapstanPluginSim
//   .build/release/capstan-bench [plugin-call|ranking|cold-start|s3|lambda|offers|scale|status|up|jobs|metrics|telemetry|all]
import CapstanAWS
import CapstanCore
import CapstanPluginKit
import CapstanProviders
import CapstanRuntime
import CapstanSQLite
import CapstanTesting
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
#if canImport(Glibc)
import Glibc
#endif

func measure(_ label: String, iterations: Int, _ body: () async throws -> Void) async rethrows -> Double {
    let start = ContinuousClock.now
    try await body()
    let seconds = (ContinuousClock.now - start).seconds
    let perCall = seconds / Double(iterations) * 1e6
    let padded = label.padding(toLength: 52, withPad: " ", startingAt: 0)
    print("  " + padded + String(format: " %9.1f ms total  %8.2f µs/call", seconds * 1000, perCall))
    return perCall
}

/// A fresh temporary folder for one benchmark; the caller removes it.
func scratchFolder(_ name: String) throws -> String {
    let dir = NSTemporaryDirectory() + "capstan-\(name)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

func pluginPath() -> String {
    if let p = ProcessInfo.processInfo.environment["CAPSTAN_BENCH_PLUGIN"] { return p }
    let dir = Bundle.main.executableURL!.resolvingSymlinksInPath().deletingLastPathComponent().path
    return dir + "/libCapstanPluginSim.so"
}

func pluginCallBench() async throws {
    let n = 10_000
    print("Plugin-call overhead: \(n) calls each, sequential unless noted")
    let direct = SimulatedCloud()
    let kit = PluginKitInstance(name: "sim", services: try SimulatedCloud.pluginDefinition.make(.object([:]), Logger(label: "bench")))
    let lib = try PluginLibrary.load(path: pluginPath())
    let instance = try lib.instantiate()
    let viaABI = try PluginComputeProvider(instance)
    let request = ResourceRequest()
    let requestJSON = try PluginWire.encoder.encode(request)
    // Warm up every path.
    _ = try await direct.offers(for: request)
    _ = try await viaABI.offers(for: request)
    _ = try await instance.invoke(PluginWire.Method.ping, request: Data("{}".utf8))

    let tDirect = try await measure("offers(9 offers), direct Swift call", iterations: n) {
        for _ in 0..<n { _ = try await direct.offers(for: request) }
    }
    let tJSON = try await measure("offers, JSON encode+decode in process (no C)", iterations: n) {
        for _ in 0..<n {
            let data = try await kit.handle(method: PluginWire.Method.offers, request: requestJSON, progress: nil)
            _ = try PluginWire.decoder.decode(PluginWire.OffersResponse.self, from: data)
        }
    }
    let tABI = try await measure("offers through the C ABI (dlopen'd .so)", iterations: n) {
        for _ in 0..<n { _ = try await viaABI.offers(for: request) }
    }
    let tPing = try await measure("ping through the C ABI (empty JSON)", iterations: n) {
        for _ in 0..<n { _ = try await instance.invoke(PluginWire.Method.ping, request: Data("{}".utf8)) }
    }
    let tConcurrent = try await measure("ping through the C ABI, \(n) concurrent", iterations: n) {
        try await withThrowingTaskGroup(of: Void.self) { g in
            for _ in 0..<n { g.addTask { _ = try await instance.invoke(PluginWire.Method.ping, request: Data("{}".utf8)) } }
            try await g.waitForAll()
        }
    }
    print(String(format: "  ratio ABI/direct for offers: %.1f×; ABI-only cost over in-process JSON: %.2f µs/call", tABI / tDirect, tABI - tJSON))
    print(String(format: "  crossing floor (ping): %.2f µs/call sequential, %.2f µs/call amortised concurrent", tPing, tConcurrent))
}

func rankingBench() throws {
    print("Ranking: 100,000 offers from 10 providers")
    var rng = SystemRandomNumberGenerator()
    let gpus = ["H100", "nvidia-a100-80gb", "NVIDIA L4", "gpu_8x_h100_sxm5", "NVIDIA H100 80GB HBM3", "L40S", "A10G", "nvidia-h200-141gb"]
    var offers: [Offer] = []
    offers.reserveCapacity(100_000)
    for i in 0..<100_000 {
        let count = [1, 2, 4, 8][i % 4]
        offers.append(Offer(
            provider: "p\(i % 10)", instanceType: "t\(i % 97)", region: "r\(i % 23)", zone: "r\(i % 23)\(["a", "b", "c"][i % 3])",
            gpuName: gpus[i % gpus.count], gpusPerNode: count,
            onDemandPricePerHour: Double.random(in: 0.5...100, using: &rng), spotPricePerHour: i % 3 == 0 ? nil : Double.random(in: 0.2...50, using: &rng),
            availability: [.available, .limited, .unknown][i % 3]))
    }
    let normStart = ContinuousClock.now
    let normalized = offers.map { $0.normalized() }
    let normMs = (ContinuousClock.now - normStart).seconds * 1000
    let request = ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2, spot: .allowed, maxPricePerHour: 120)
    var best = Double.infinity
    var kept = 0
    for _ in 0..<5 {
        let start = ContinuousClock.now
        let (ranked, _) = try OfferRanking.rank(normalized, for: request)
        best = min(best, (ContinuousClock.now - start).seconds * 1000)
        kept = ranked.count
    }
    let sortStart = ContinuousClock.now
    _ = normalized.sorted { ($0.onDemandPricePerHour ?? 0) < ($1.onDemandPricePerHour ?? 0) }
    let sortMs = (ContinuousClock.now - sortStart).seconds * 1000
    print(String(format: "  normalize GPU names: %.1f ms; rank (filter+price+sort), best of 5: %.1f ms (%d kept); baseline plain sort by price: %.1f ms; ratio %.1f×", normMs, best, kept, sortMs, best / sortMs))
}

/// Wall time of `capstan offers` on a warm offer cache, against process start-up
/// (`capstan --version`) and an uncached run (`--refresh`), medians of 20 runs each.
func coldStartBench() throws {
    let dir = Bundle.main.executableURL!.resolvingSymlinksInPath().deletingLastPathComponent().path
    let capstan = dir + "/capstan"
    guard FileManager.default.isExecutableFile(atPath: capstan) else {
        print("Cold start: build capstan in the same configuration first (scripts/bench.sh does)")
        return
    }
    let home = NSTemporaryDirectory() + "capstan-bench-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: home) }
    try Data("providers:\n  sim: {}\n".utf8).write(to: URL(fileURLWithPath: home + "/config.yaml"))
    func run(_ args: [String]) throws -> Double { try runCapstan(capstan, args, home: home) }
    func median(_ args: [String]) throws -> Double {
        let times = try (0..<20).map { _ in try run(args) }.sorted()
        return times[times.count / 2]
    }
    _ = try run(["offers"])  // fills the offer cache (sim) and the state database
    let version = try median(["--version"])
    let cached = try median(["offers"])
    let refresh = try median(["offers", "--refresh"])
    print("Cold start (median of 20 processes; local + sim plugin enabled):")
    print(String(format: "  capstan --version (process start-up baseline): %6.1f ms", version))
    print(String(format: "  capstan offers, cached catalog:                %6.1f ms  (%.1f× start-up)", cached, cached / version))
    print(String(format: "  capstan offers --refresh:                      %6.1f ms", refresh))
}

/// 1 GiB up and down a SeaweedFS server: Capstan's S3 client against `aws s3 cp` on the same
/// server, same file, same process run. Needs CAPSTAN_TEST_S3_ENDPOINT/KEY/SECRET (bench.sh s3
/// starts SeaweedFS).
func s3Bench() async throws {
    let env = ProcessInfo.processInfo.environment
    guard let endpoint = env["CAPSTAN_TEST_S3_ENDPOINT"], let key = env["CAPSTAN_TEST_S3_KEY"], let secret = env["CAPSTAN_TEST_S3_SECRET"] else {
        print("S3: set CAPSTAN_TEST_S3_ENDPOINT/KEY/SECRET (scripts/bench.sh s3 starts SeaweedFS)")
        return
    }
    let dir = try scratchFolder("s3bench")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let size = (Int(env["CAPSTAN_BENCH_S3_MIB"] ?? "") ?? 1024) << 20
    let file = dir + "/payload.bin"
    FileManager.default.createFile(atPath: file, contents: nil)
    let h = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
    let random = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
    for _ in 0..<(size >> 20) { h.write(try random.read(upToCount: 1 << 20) ?? Data()) }
    try h.close()
    try random.close()
    let creds = AWSCredentials(accessKeyID: key, secretAccessKey: secret)
    var config = S3Configuration(endpoint: endpoint, uploadStateFolder: dir + "/uploads")
    config.partSize = (Int(env["CAPSTAN_BENCH_S3_PART_MIB"] ?? "") ?? 16) << 20
    config.concurrency = Int(env["CAPSTAN_BENCH_S3_CONCURRENCY"] ?? "") ?? 8
    let store = try S3ObjectStore(location: "s3://capstan-bench", credentials: creds, configuration: config)
    try await store.createBucket()
    func aws(_ args: [String]) throws -> Double {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["aws", "--endpoint-url", endpoint, "--region", "us-east-1"] + args
        p.environment = env.merging(["AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret]) { $1 }
        p.standardOutput = FileHandle.nullDevice
        let start = ContinuousClock.now
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CapstanError(.internalError, "aws \(args) failed") }
        return (ContinuousClock.now - start).seconds
    }
    let mib = Double(size) / 1_048_576
    var rows: [(String, Double, Double)] = []
    for round in 0..<2 {
        var t = ContinuousClock.now
        _ = try await store.put(file: file, key: "capstan-\(round).bin", options: PutOptions())
        let up = (ContinuousClock.now - t).seconds
        t = ContinuousClock.now
        _ = try await store.get(key: "capstan-\(round).bin", to: dir + "/back-capstan.bin")
        let down = (ContinuousClock.now - t).seconds
        let awsUp = try aws(["s3", "cp", file, "s3://capstan-bench/aws-\(round).bin"])
        let awsDown = try aws(["s3", "cp", "s3://capstan-bench/aws-\(round).bin", dir + "/back-aws.bin"])
        rows.append(("round \(round + 1)", mib / up, mib / awsUp))
        rows.append(("round \(round + 1) down", mib / down, mib / awsDown))
        try? FileManager.default.removeItem(atPath: dir + "/back-capstan.bin")
        try? FileManager.default.removeItem(atPath: dir + "/back-aws.bin")
    }
    print("S3 on SeaweedFS, \(Int(mib)) MiB, \(config.partSize >> 20) MiB parts × \(config.concurrency) in flight (capstan) vs aws s3 cp (awscli defaults):")
    for (label, capstan, awscli) in rows {
        let dir = label.hasSuffix("down") ? "download" : "upload  "
        print(String(format: "  %@ %@: capstan %6.1f MiB/s   aws s3 cp %6.1f MiB/s   ratio %.2f×", label.replacingOccurrences(of: " down", with: ""), dir, capstan, awscli, capstan / awscli))
    }
    print("  (capstan's upload includes hashing the whole file for its SHA-256 before sending; its download includes verifying it)")
}

/// The C Lambda plugin against the Lambda API emulator: each call through the plugin (C ABI,
/// libcurl, jansson, the mapping to Capstan's shapes, Swift decoding) against the same HTTP
/// requests made directly from Swift with URLSession (libcurl underneath on Linux) and parsed
/// with JSONSerialization, in this process, on the same server. Needs CAPSTAN_BENCH_LAMBDA_PLUGIN,
/// CAPSTAN_BENCH_LAMBDA_ENDPOINT and CAPSTAN_BENCH_LAMBDA_KEY (bench.sh lambda sets them).
func lambdaBench() async throws {
    let env = ProcessInfo.processInfo.environment
    guard let so = env["CAPSTAN_BENCH_LAMBDA_PLUGIN"], let endpoint = env["CAPSTAN_BENCH_LAMBDA_ENDPOINT"], let key = env["CAPSTAN_BENCH_LAMBDA_KEY"] else {
        print("Lambda: set CAPSTAN_BENCH_LAMBDA_PLUGIN/ENDPOINT/KEY (scripts/bench.sh lambda builds the plugin and starts the emulator)")
        return
    }
    let dir = try scratchFolder("lambdabench")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try key.write(toFile: dir + "/key", atomically: true, encoding: .utf8)
    let session = URLSession(configuration: .ephemeral)
    func get(_ path: String) async throws -> Any {
        var req = URLRequest(url: URL(string: endpoint + path)!)
        req.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization")
        let (data, response) = try await session.data(for: req)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else { throw CapstanError(.transient, "GET \(path) failed") }
        return (try JSONSerialization.jsonObject(with: data) as? [String: Any])?["data"] as Any
    }
    // A key the plugin can launch with, and 20 instances to describe.
    var keyReq = URLRequest(url: URL(string: endpoint + "/ssh-keys")!)
    keyReq.httpMethod = "POST"
    keyReq.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization")
    keyReq.httpBody = Data(#"{"name":"bench","public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench bench"}"#.utf8)
    _ = try await session.data(for: keyReq)
    let lib = try PluginLibrary.load(path: so)
    let config: JSONValue = .object(["endpoint": .string(endpoint), "apiKeyFile": .string(dir + "/key"), "sshKeyName": .string("bench")])
    let lambda = try PluginComputeProvider(lib.instantiate(config: config, timeout: .seconds(120)))
    let offer = try await lambda.offers(for: ResourceRequest(gpu: "A10")).first { $0.availability == .available }!
    let launched = try await lambda.launch(LaunchRequest(offer: offer, count: 20, idempotencyKey: "bench-\(UUID())", tags: [CapstanTags.managed: "true"]))
    defer { Task { _ = try? await lambda.terminate(ids: launched.map(\.id)) } }

    let n = Int(env["CAPSTAN_BENCH_LAMBDA_CALLS"] ?? "") ?? 300
    print("Lambda plugin (C) vs the same requests from Swift (URLSession + JSONSerialization), emulator on loopback, \(n) calls each:")
    // Warm both paths (connections, caches).
    _ = try await lambda.describe(InstanceQuery())
    _ = try await get("/instances")
    var rows: [(String, Double, Double)] = []
    for round in 0..<2 {
        let direct = try await measure("round \(round + 1): GET /instances (20 instances), URLSession", iterations: n) {
            for _ in 0..<n { _ = try await get("/instances") }
        }
        let plugin = try await measure("round \(round + 1): compute.describe through the C plugin", iterations: n) {
            for _ in 0..<n { _ = try await lambda.describe(InstanceQuery()) }
        }
        rows.append(("describe, sequential", plugin, direct))
        let directOffers = try await measure("round \(round + 1): GET /instance-types + /images, URLSession", iterations: n) {
            for _ in 0..<n { _ = try await get("/instance-types"); _ = try await get("/images") }
        }
        let pluginOffers = try await measure("round \(round + 1): compute.offers through the C plugin", iterations: n) {
            for _ in 0..<n { _ = try await lambda.offers(for: ResourceRequest()) }
        }
        rows.append(("offers, sequential", pluginOffers, directOffers))
        let directConcurrent = try await measure("round \(round + 1): \(n) concurrent GET /instances, URLSession", iterations: n) {
            try await withThrowingTaskGroup(of: Void.self) { g in
                for _ in 0..<n { g.addTask { _ = try await get("/instances") } }
                try await g.waitForAll()
            }
        }
        let pluginConcurrent = try await measure("round \(round + 1): \(n) concurrent compute.describe, C plugin", iterations: n) {
            try await withThrowingTaskGroup(of: Void.self) { g in
                for _ in 0..<n { g.addTask { _ = try await lambda.describe(InstanceQuery()) } }
                try await g.waitForAll()
            }
        }
        rows.append(("describe, \(n) concurrent", pluginConcurrent, directConcurrent))
    }
    for (label, plugin, direct) in rows {
        print("  " + label.padding(toLength: 26, withPad: " ", startingAt: 0) + String(format: " plugin %8.1f µs/call   direct %8.1f µs/call   ratio %.2f×", plugin, direct, plugin / direct))
    }
    _ = try? await lambda.terminate(ids: launched.map(\.id))
}

let which = CommandLine.arguments.dropFirst().first ?? "all"
if which == "plugin-call" || which == "all" { try await pluginCallBench() }
if which == "ranking" || which == "all" { try rankingBench() }
if which == "cold-start" || which == "all" { try coldStartBench() }
if which == "s3" || which == "all" { try await s3Bench() }
if which == "lambda" || which == "all" { try await lambdaBench() }
// Not in "all": it seeds a large home and starts a server (scripts/bench-server.sh).
if which == "server" { try await serverBench(); try await submitBench() }
if which == "submit" { try await submitBench() }
if which == "offers" || which == "all" { try await offersBench() }
if which == "scale" || which == "all" { try await scaleBench() }
if which == "status" { try await statusBench() }
if which == "up" { try await upBench() }
if which == "jobs" { try await jobsBench() }
if which == "dashboard" { try await dashboardBench() }
// Not in "all": it starts a server (scripts/bench-metrics.sh).
if which == "metrics" { try await metricsBench() }
if which == "telemetry" { try await telemetryBench() }
