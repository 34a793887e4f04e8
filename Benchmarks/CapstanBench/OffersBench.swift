// capstan-bench offers: 100,000 offers from the sim plugin (dlopen'd, release build), end to end.
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanTesting
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The median of `runs` timings of `body`, in milliseconds (each run's result is kept alive
/// until it is timed, so nothing is optimized away).
func medianMs<T>(runs: Int, _ body: () async throws -> T) async rethrows -> (ms: Double, last: T) {
    var times: [Double] = []
    var last: T?
    for _ in 0..<runs {
        let start = ContinuousClock.now
        let value = try await body()
        times.append((ContinuousClock.now - start).seconds * 1000)
        last = value
    }
    times.sort()
    return (times[times.count / 2], last!)
}

/// p50 and p99 of `runs` timings of `body`, in milliseconds.
func percentilesMs(runs: Int, _ body: () async throws -> Void) async rethrows -> (p50: Double, p99: Double) {
    var times: [Double] = []
    for _ in 0..<runs {
        let start = ContinuousClock.now
        try await body()
        times.append((ContinuousClock.now - start).seconds * 1000)
    }
    times.sort()
    let p99 = times[min(times.count - 1, Int((Double(times.count) * 0.99).rounded(.up)) - 1)]
    return (times[times.count / 2], p99)
}

/// What `capstan offers` prints for the top `limit` ranked offers (the same columns), so the
/// end-to-end figure includes the output.
func renderTop(_ result: OfferSearchResult, limit: Int = 20) -> String {
    renderTop(result.ranked, rejected: result.rejected.count, limit: limit)
}

func renderTop(_ ranked: [RankedOffer], rejected: Int, limit: Int = 20) -> String {
    var out = ""
    for r in ranked.prefix(limit) {
        let o = r.offer
        out += [o.provider, o.instanceType, o.zone ?? o.region, o.gpu ?? o.gpuName ?? "-", "\(o.gpusPerNode)",
                o.vcpus.map(String.init) ?? "-", o.memoryGiB.map { String(format: "%.0f", $0) } ?? "-",
                String(format: "%.2f", r.pricePerNode), String(format: "%.2f", r.clusterPricePerHour),
                r.spot ? "spot" : "on-demand", o.availability.rawValue].joined(separator: "  ") + "\n"
    }
    out += "\(rejected) offer(s) filtered out\n"
    return out
}

/// The sim plugin, loaded with dlopen from the release build, answers `CAPSTAN_BENCH_OFFERS`
/// (default 100,000) generated offers; timed: the plugin call alone, the host's decoding, an
/// uncached search (plugin → C ABI JSON → decode → normalize → offer cache write → rank → top
/// 20 rendered) and a cached one (cache read → rank → render), each the median of 5, against a
/// plain Foundation `JSONDecoder` decode of the same payload as the floor. With a release
/// `capstan` next to this binary, also `capstan offers` as a process.
func offersBench() async throws {
    let env = ProcessInfo.processInfo.environment
    let n = Int(env["CAPSTAN_BENCH_OFFERS"] ?? "") ?? 100_000
    let runs = 5
    print("Offers: \(n) offers from the sim plugin (dlopen'd .so), medians of \(runs)")
    let lib = try PluginLibrary.load(path: pluginPath())
    let instance = try lib.instantiate(config: .object(["generatedOffers": .number(Double(n))]), timeout: .seconds(600))
    let sim = try PluginComputeProvider(instance)
    let dir = try scratchFolder("offers")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let store = try SQLiteStateStore(path: dir + "/capstan.db")
    // `capstan offers` with no options, and a typical filtered search.
    let everything = ResourceRequest()
    let filtered = ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2, spot: .allowed)
    let requestJSON = try PluginWire.encoder.encode(everything)

    let payload = try await instance.invoke(PluginWire.Method.offers, request: requestJSON)
    let floor = try await medianMs(runs: runs) { try PluginWire.decoder.decode(PluginWire.OffersResponse.self, from: payload).offers.count }
    let call = try await medianMs(runs: runs) { try await instance.invoke(PluginWire.Method.offers, request: requestJSON).count }
    let decode = try await medianMs(runs: runs) { OfferJSON.decodeResponse(payload)!.count }
    let provider = try await medianMs(runs: runs) { try await sim.offers(for: everything).count }
    let uncached = try await medianMs(runs: runs) {
        renderTop(try await OfferSearch(providers: [sim], cache: store, refresh: true).run(everything))
    }
    let cached = try await medianMs(runs: runs) {
        renderTop(try await OfferSearch(providers: [sim], cache: store).run(everything))
    }
    let uncachedFiltered = try await medianMs(runs: runs) {
        renderTop(try await OfferSearch(providers: [sim], cache: store, refresh: true).run(filtered))
    }
    // The path before OfferJSON, in this process and without the C ABI: the plugin kit's
    // JSONEncoder, the host's JSONDecoder, the offer cache's JSONEncoder (GRDB's, for its JSON
    // column), then the same ranking and output.
    let catalog = SimulatedCloud.generatedCatalog(count: n).map { $0.normalized() }
    let oldPath = try await medianMs(runs: 3) {
        let wire = try PluginWire.encoder.encode(PluginWire.OffersResponse(offers: catalog))
        var offers = try PluginWire.decoder.decode(PluginWire.OffersResponse.self, from: wire).offers.map { $0.normalized() }
        for k in offers.indices { offers[k].provider = "sim" }
        let cacheColumn = try JSONEncoder().encode(offers)
        let (ranked, rejected) = try OfferRanking.rank(offers, for: everything)
        return renderTop(ranked, rejected: rejected.count).count + cacheColumn.count
    }
    let oldCached = try await medianMs(runs: 3) {
        let column = try JSONEncoder().encode(catalog)
        let offers = try JSONDecoder().decode([Offer].self, from: column)
        let (ranked, rejected) = try OfferRanking.rank(offers, for: everything)
        return renderTop(ranked, rejected: rejected.count).count
    }
    let result = try await OfferSearch(providers: [sim], cache: store).run(everything)
    print(String(format: "  payload: %.1f MB of JSON; ranked %d, filtered out %d", Double(payload.count) / 1e6, result.ranked.count, result.rejected.count))
    print(String(format: "  floor: Foundation JSONDecoder of the payload:           %8.1f ms", floor.ms))
    print(String(format: "  plugin call through the C ABI (plugin encodes):         %8.1f ms", call.ms))
    print(String(format: "  host decode of the payload (OfferJSON):                 %8.1f ms  (%.2f× the floor)", decode.ms, decode.ms / floor.ms))
    print(String(format: "  PluginComputeProvider.offers (call + decode + names):   %8.1f ms", provider.ms))
    print(String(format: "  end to end, uncached (search + cache write + rank + top 20): %6.1f ms  (%.2f× the floor)", uncached.ms, uncached.ms / floor.ms))
    print(String(format: "  end to end, uncached, --gpu H100 -g 8 --nodes 2 --spot:  %7.1f ms", uncachedFiltered.ms))
    print(String(format: "  end to end, cached (cache read + rank + top 20):        %8.1f ms  (%.2f× the floor)", cached.ms, cached.ms / floor.ms))
    print(String(format: "  baseline, the old coders in process (no C ABI): uncached %7.1f ms (%.1f× slower than now), cached %7.1f ms (%.1f× slower; the encode not timed)",
                 oldPath.ms, oldPath.ms / uncached.ms, oldCached.ms, oldCached.ms / cached.ms))
    try offersCLIBench(n: n)
}

/// `capstan offers` as a process on a home whose sim plugin answers `n` offers: uncached
/// (`--refresh`) and cached, medians of 3, against `capstan --version`.
func offersCLIBench(n: Int) throws {
    let dir = Bundle.main.executableURL!.resolvingSymlinksInPath().deletingLastPathComponent().path
    let capstan = dir + "/capstan"
    guard FileManager.default.isExecutableFile(atPath: capstan) else {
        print("  (capstan offers as a process: build capstan in the same configuration first; scripts/bench.sh does)")
        return
    }
    let home = try scratchFolder("offers-home")
    defer { try? FileManager.default.removeItem(atPath: home) }
    try Data("providers:\n  sim:\n    generatedOffers: \(n)\n".utf8).write(to: URL(fileURLWithPath: home + "/config.yaml"))
    _ = try runCapstan(capstan, ["offers"], home: home)  // creates the database, fills the cache
    func median(_ args: [String]) throws -> Double {
        try (0..<3).map { _ in try runCapstan(capstan, args, home: home) }.sorted()[1]
    }
    let version = try median(["--version"])
    let refresh = try median(["offers", "--refresh"])
    let cached = try median(["offers"])
    print(String(format: "  capstan offers --refresh (process):   %7.1f ms   cached: %7.1f ms   (capstan --version: %.1f ms)", refresh, cached, version))

    // The same catalog written out in config.yaml (providers.sim.offers, one flow mapping per
    // offer): what a large catalog costs when it travels as configuration (YAML parse, the
    // plugin's JSON config) rather than from the plugin itself. Once: it is slow.
    let yamlHome = try scratchFolder("offers-yaml")
    defer { try? FileManager.default.removeItem(atPath: yamlHome) }
    var yaml = "providers:\n  sim:\n    offers:\n"
    for o in SimulatedCloud.generatedCatalog(count: n) {
        yaml += "      - " + String(decoding: try PluginWire.encoder.encode(o), as: UTF8.self) + "\n"
    }
    try Data(yaml.utf8).write(to: URL(fileURLWithPath: yamlHome + "/config.yaml"))
    let fromYAML = try runCapstan(capstan, ["offers", "--refresh"], home: yamlHome)
    let fromYAMLCached = try runCapstan(capstan, ["offers"], home: yamlHome)
    print(String(format: "  capstan offers --refresh, the %d offers in config.yaml (%.1f MB): %7.1f ms   cached: %7.1f ms", n, Double(yaml.utf8.count) / 1e6, fromYAML, fromYAMLCached))
}

/// Runs the `capstan` binary with `args` in `home` (stdout and stderr to /dev/null) and
/// returns its wall time in milliseconds. posix_spawn + waitpid: Foundation's Process polls in
/// 50 ms steps on Linux.
func runCapstan(_ capstan: String, _ args: [String], home: String, env extra: [String: String] = [:]) throws -> Double {
    let env = ProcessInfo.processInfo.environment.merging(["CAPSTAN_HOME": home]) { $1 }.merging(extra) { $1 }.map { "\($0.key)=\($0.value)" }
    let argv = ([capstan] + args).map { strdup($0) } + [nil]
    let envp = env.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    var pid: pid_t = 0
    let start = ContinuousClock.now
    guard posix_spawn(&pid, capstan, &actions, nil, argv, envp) == 0 else { throw CapstanError(.internalError, "spawn failed") }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    let ms = (ContinuousClock.now - start).seconds * 1000
    guard status == 0 else { throw CapstanError(.internalError, "capstan \(args) exited \(status)") }
    return ms
}
