import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Loads the real `sim` plugin built by this package and the C fixture plugins, through dlopen.
@Suite("Plugin loading (real .so files)")
struct PluginLoadingTests {
    @Test("the sim plugin loads and its manifest lists name, version, capabilities and schema")
    func manifest() async throws {
        let lib = try PluginLibrary.load(path: BuildProducts.simPlugin)
        #expect(lib.name == "sim")
        #expect(lib.abiVersion == 1)
        #expect(lib.manifest.version == "1.0.0")
        #expect(lib.manifest.capabilities == [.compute, .storage])
        #expect(lib.manifest.configSchema?["properties"]?["capacityFailures"] != nil)
        #expect(lib.manifest.storageSchemes == ["simfile"])
        // Loading twice gives the same library (never unloaded, never reloaded).
        #expect(try PluginLibrary.load(path: BuildProducts.simPlugin) === lib)
    }

    @Test("1,000 concurrent invokes through the ABI each get their own correct answer")
    func concurrentInvokes() async throws {
        let lib = try PluginLibrary.load(path: BuildProducts.simPlugin)
        let provider = try PluginComputeProvider(lib.instantiate())
        let catalog = try await provider.offers(for: ResourceRequest())
        #expect(catalog.count == 9)
        #expect(catalog.allSatisfy { $0.provider == "sim" && $0.gpu != nil })
        let offer = catalog[0]
        let results = try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
            for i in 0..<1000 {
                group.addTask {
                    switch i % 3 {
                    case 0:
                        let offers = try await provider.offers(for: ResourceRequest())
                        return (i, offers.map(\.id) == catalog.map(\.id))
                    case 1:
                        let launched = try await provider.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "key-\(i)", tags: ["i": "\(i)"]))
                        return (i, launched.count == 1 && launched[0].tags["i"] == "\(i)" && launched[0].tags[CapstanTags.intent] == "key-\(i)")
                    default:
                        let none = try await provider.describe(InstanceQuery(tags: ["i": "none-\(i)"]))
                        return (i, none.isEmpty)
                    }
                }
            }
            return try await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
        }
        #expect(results.count == 1000)
        #expect(results.values.allSatisfy { $0 })
        let all = try await provider.describe(InstanceQuery())
        #expect(all.count == 333)
        let gone = try await provider.terminate(ids: all.map(\.id))
        #expect(gone.allSatisfy { $0.state == .terminated })
    }

    @Test("storage through the ABI: put, list, get, delete with progress")
    func storage() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let instance = try PluginLibrary.load(path: BuildProducts.simPlugin).instantiate()
        let store = try PluginObjectStore(instance, location: "simfile://" + tmp.file("bucket"))
        let src = tmp.write("src", String(repeating: "x", count: 100_000))
        let seen = Counter()
        let info = try await store.put(file: src, key: "ck/step-1/a.bin", options: PutOptions(), progress: { _ in seen.increment() })
        #expect(info.size == 100_000 && info.sha256?.count == 64)
        #expect(seen.value >= 1)
        #expect(try await store.list(prefix: "ck/").map(\.key) == ["ck/step-1/a.bin"])
        let back = try await store.get(key: "ck/step-1/a.bin", to: tmp.file("back"))
        #expect(back.sha256 == info.sha256)
        try await store.delete(key: "ck/step-1/a.bin")
        #expect(try await store.head(key: "ck/step-1/a.bin") == nil)
        let wrong = await #expect(throws: CapstanError.self) { try await PluginObjectStore(instance, location: "s3://x").list(prefix: "") }
        #expect(wrong?.code == .invalidRequest && wrong?.provider == "sim")
    }

    @Test("'..' never reaches a plugin's store: the host refuses it, and the plugin kit refuses it again")
    func storageDotDot() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let victim = tmp.write("victim.txt", "keep me")
        let instance = try PluginLibrary.load(path: BuildProducts.simPlugin).instantiate()
        // Host side: the store's location and every key and prefix.
        let badLocation = #expect(throws: CapstanError.self) { try PluginObjectStore(instance, location: "simfile://" + tmp.file("bucket/..")) }
        #expect(badLocation?.code == .invalidRequest && badLocation?.message.contains("'..' path segment") == true, "\(String(describing: badLocation))")
        let store = try PluginObjectStore(instance, location: "simfile://" + tmp.file("bucket"))
        let hostErrors: [CapstanError?] = [
            await #expect(throws: CapstanError.self) { try await store.list(prefix: "../") },
            await #expect(throws: CapstanError.self) { try await store.delete(key: "../victim.txt") },
            await #expect(throws: CapstanError.self) { try await store.put(file: victim, key: "../copy.txt") },
        ]
        #expect(hostErrors.allSatisfy { $0?.code == .invalidRequest }, "\(hostErrors)")
        // Plugin side: a request that skips the host's checks (another host, a bug) is refused
        // by the kit and the plugin's store too.
        let raw: [(String, String)] = [
            (PluginWire.Method.list, #"{"location": "simfile://\#(tmp.file("bucket/.."))", "prefix": ""}"#),
            (PluginWire.Method.delete, #"{"location": "simfile://\#(tmp.file("bucket"))", "key": "../victim.txt"}"#),
            (PluginWire.Method.list, #"{"location": "simfile://\#(tmp.file("bucket"))", "prefix": "../"}"#),
        ]
        for (method, request) in raw {
            let e = await #expect(throws: CapstanError.self) { try await instance.invoke(method, request: Data(request.utf8)) }
            #expect(e?.code == .invalidRequest && e?.message.contains("segment") == true, "\(method) \(request): \(String(describing: e))")
        }
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep me")
        #expect(!FileManager.default.fileExists(atPath: tmp.file("copy.txt")))
    }

    @Test("a plugin's errors arrive typed, and its logs go through the host")
    func errorsAndLogs() async throws {
        let lines = LogCapture()
        let logger = Logger(label: "test") { _ in lines.handler }
        let lib = try PluginLibrary.load(path: BuildProducts.simPlugin)
        let provider = try PluginComputeProvider(lib.instantiate(config: .object(["capacityFailures": .number(1)]), logger: logger))
        #expect(lines.messages.contains { $0.contains("simulated cloud created") })
        let offer = try await provider.offers(for: ResourceRequest())[0]
        let e = await #expect(throws: CapstanError.self) { try await provider.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "a")) }
        #expect(e?.code == .capacity)
        #expect(e?.cloudCode == "InsufficientInstanceCapacity")
        #expect(e?.provider == "sim")
        // A bad config is refused at create with the plugin's own message.
        let bad = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["capacityFailures": .string("lots")])) }
        #expect(bad?.code == .config)
        #expect(bad?.message.contains("providers.sim is invalid") == true)
    }
}

@Suite("Bad plugin files")
struct BadPluginTests {
    func loadError(_ path: String) -> CapstanError? {
        #expect(throws: CapstanError.self) { try PluginLibrary.load(path: path) }
    }

    @Test("a missing file")
    func missing() {
        let e = loadError("/nonexistent/libnothing.so")
        #expect(e?.code == .pluginFailure)
        #expect(e?.message.contains("/nonexistent/libnothing.so: no such file") == true)
    }

    @Test("a folder, a socket, or a link to one is named for what it is, before any open", arguments: ["folder.so", "socket.so", "link.so"])
    func notARegularFile(name: String) async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        try FileManager.default.createDirectory(atPath: tmp.file("folder.so"), withIntermediateDirectories: true)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let socketPath = tmp.file("socket.so")
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in _ = socketPath.utf8CString.withUnsafeBytes { memcpy(buf.baseAddress!, $0.baseAddress!, min(buf.count - 1, $0.count)) } }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(bound == 0)
        try FileManager.default.createSymbolicLink(atPath: tmp.file("link.so"), withDestinationPath: socketPath)
        let expected = ["folder.so": "it is a folder, not a shared library", "socket.so": "it is a socket, not a shared library",
                        "link.so": "it is a symbolic link to \(socketPath), which is a socket, not a shared library"][name]!
        let e = loadError(tmp.file(name))
        #expect(e?.code == .pluginFailure)
        #expect(e?.message == "Cannot load plugin \(tmp.file(name)): \(expected).", "\(e?.message ?? "")")
        #expect(e?.hint?.contains("a plugin must be a regular file") == true)
    }

    @Test("a file that is not a library")
    func notELF() {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let path = tmp.write("libfake.so", "#!/bin/sh\necho not a library\n")
        let e = loadError(path)
        #expect(e?.message.contains("not a shared library") == true)
        #expect(e?.hint != nil)
    }

    @Test("a truncated library")
    func truncated() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        let data = try Data(contentsOf: URL(fileURLWithPath: BuildProducts.simPlugin)).prefix(4096)
        let path = tmp.file("libtrunc.so")
        try data.write(to: URL(fileURLWithPath: path))
        let e = loadError(path)
        #expect(e?.message.contains("it is truncated") == true)
    }

    @Test("a library built for another CPU")
    func foreignArchitecture() async throws {
        let tmp = TempDir(); defer { tmp.cleanup() }
        var data = try Data(contentsOf: URL(fileURLWithPath: try await CFixtures.plugin([])))
        // e_machine (offset 18): 40 = 32-bit ARM, foreign to every 64-bit host.
        data[18] = 40; data[19] = 0
        let path = tmp.file("libforeign.so")
        try data.write(to: URL(fileURLWithPath: path))
        let e = loadError(path)
        #expect(e?.message.contains("it was built for arm") == true, "\(e?.message ?? "")")
    }

    @Test("a program instead of a library")
    func executable() async throws {
        let e = loadError("/bin/ls")
        #expect(e?.code == .pluginFailure)
        #expect(e?.message.contains("/bin/ls") == true)
    }

    @Test("a library without the entry symbol")
    func noEntry() async throws {
        let e = loadError(try await CFixtures.plugin(["-DNO_ENTRY"]))
        #expect(e?.message.contains("does not export the entry symbol 'capstan_plugin_entry'") == true)
    }

    @Test("a plugin built for a newer or older ABI", arguments: [(2, "Upgrade Capstan"), (0, "Rebuild the plugin")] as [(Int, String)])
    func wrongABI(version: Int, hint: String) async throws {
        let e = loadError(try await CFixtures.plugin(["-DABI=\(version)u"]))
        #expect(e?.message.contains("built for plugin ABI version \(version), and this Capstan supports 1–1") == true)
        #expect(e?.hint?.contains(hint) == true)
    }

    @Test("a function table smaller than the ABI requires")
    func shortTable() async throws {
        let e = loadError(try await CFixtures.plugin(["-DSIZE=16"]))
        #expect(e?.message.contains("function table is 16 bytes") == true)
    }

    @Test("a manifest that is not JSON, and an entry that returns NULL")
    func badManifest() async throws {
        #expect(loadError(try await CFixtures.plugin(["-DMODE=5"]))?.message.contains("manifest is not valid") == true)
        #expect(loadError(try await CFixtures.plugin(["-DMODE=6"]))?.message.contains("returned no function table") == true)
    }

    @Test("create failing with the plugin's own error")
    func createFails() async throws {
        let lib = try PluginLibrary.load(path: try await CFixtures.plugin(["-DMODE=4"]))
        let e = #expect(throws: CapstanError.self) { try lib.instantiate() }
        #expect(e?.code == .auth)
        #expect(e?.cloudCode == "global/invalid-api-key")
        #expect(e?.provider == "ctest")
    }

    @Test("an invoke that returns malformed JSON")
    func malformedJSON() async throws {
        let provider = try PluginComputeProvider(PluginLibrary.load(path: try await CFixtures.plugin(["-DMODE=1"])).instantiate())
        let e = await #expect(throws: CapstanError.self) { try await provider.offers(for: ResourceRequest()) }
        #expect(e?.code == .pluginFailure)
        #expect(e?.message.contains("returned malformed JSON for 'compute.offers'") == true)
        let bad = try PluginComputeProvider(PluginLibrary.load(path: try await CFixtures.plugin(["-DMODE=7"])).instantiate())
        let e2 = await #expect(throws: CapstanError.self) { try await bad.offers(for: ResourceRequest()) }
        #expect(e2?.message.contains("not a Capstan error document") == true)
    }

    @Test("an invoke that never calls back times out")
    func neverCallsBack() async throws {
        let lib = try PluginLibrary.load(path: try await CFixtures.plugin(["-DMODE=2"]))
        let provider = try PluginComputeProvider(lib.instantiate(timeout: .milliseconds(200)))
        let start = ContinuousClock.now
        let e = await #expect(throws: CapstanError.self) { try await provider.offers(for: ResourceRequest()) }
        #expect(e?.code == .timeout)
        #expect(e?.message.contains("did not answer 'compute.offers'") == true)
        // The plugin never answers: returning at all is the point (loose bound, no flake).
        #expect(ContinuousClock.now - start < .seconds(60))
    }

    @Test("a second completion for one call is ignored; answers from plugin threads work")
    func doubleCompletion() async throws {
        let twice = try PluginComputeProvider(PluginLibrary.load(path: try await CFixtures.plugin(["-DMODE=3"])).instantiate())
        for _ in 0..<50 { #expect(try await twice.offers(for: ResourceRequest()).isEmpty) }
        let threaded = try PluginComputeProvider(PluginLibrary.load(path: try await CFixtures.plugin(["-DMODE=8"])).instantiate())
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<200 { group.addTask { _ = try await threaded.offers(for: ResourceRequest()) } }
            try await group.waitForAll()
        }
    }

    @Test("an instance released inside a completion is destroyed on another thread (destroy may join the plugin's threads)")
    func destroyNotInsideCompletion() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        setenv("CTEST_DESTROY_MARKER", dir.file("marker"), 1)
        setenv("CTEST_DESTROY_LOG", dir.file("destroyed"), 1)
        // A build of its own that counts destroys (no other test loads it).
        let lib = try PluginLibrary.load(path: try await CFixtures.plugin(["-DMODE=8", "-DDESTROY_LOG"]))
        for _ in 0..<300 {
            // The caller drops its reference at once; the last one often goes with the call's
            // record, on the plugin's thread that is still inside its completion.
            let provider = try PluginComputeProvider(lib.instantiate())
            _ = try await provider.offers(for: ResourceRequest())
        }
        // Every instance is destroyed, some a moment later on another thread: wait for all 300.
        func destroyed() -> Int { ((try? String(contentsOfFile: dir.file("destroyed"), encoding: .utf8)) ?? "").split(separator: "\n").count }
        let end = Date().addingTimeInterval(30)
        while destroyed() < 300 && Date() < end { try await Task.sleep(for: .milliseconds(20)) }
        #expect(destroyed() == 300, "\(destroyed()) of 300 instances were destroyed")
        let marker = (try? String(contentsOfFile: dir.file("marker"), encoding: .utf8)) ?? ""
        #expect(marker.isEmpty, "\(marker.split(separator: "\n").count)× \(marker.split(separator: "\n").first ?? "")")
    }

    @Test("a cancelled call returns promptly even if the plugin never answers")
    func cancellation() async throws {
        let provider = try PluginComputeProvider(PluginLibrary.load(path: try await CFixtures.plugin(["-DMODE=2"])).instantiate(timeout: .seconds(600)))
        let task = Task { try await provider.offers(for: ResourceRequest()) }
        try await Task.sleep(for: .milliseconds(50))
        let start = ContinuousClock.now
        task.cancel()
        // Bounded: the call's own timeout is 600 s. Whichever comes first, the call's end or 120 s.
        let ended = LockedBox<CheckedContinuation<Result<[Offer], any Error>?, Never>?>(nil)
        let outcome: Result<[Offer], any Error>? = await withCheckedContinuation { c in
            ended.withLock { $0 = c }
            Task { let r = await task.result; ended.withLock { $0?.resume(returning: r); $0 = nil } }
            Task { try? await Task.sleep(for: .seconds(120)); ended.withLock { $0?.resume(returning: nil); $0 = nil } }
        }
        let waited = ContinuousClock.now - start
        let result = try #require(outcome, "the cancelled call had not returned after \(waited)")
        // Cancelled, not timed out: a tenth of the call's own timeout. (It returns in milliseconds
        // on an idle machine; a busy one's scheduler may add seconds, the timeout ten minutes.)
        #expect(waited < .seconds(60), "the cancelled call took \(waited) to return")
        #expect(throws: CancellationError.self) { try result.get() }
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func increment() { lock.withLock { n += 1 } }
    var value: Int { lock.withLock { n } }
}

final class LogCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    var messages: [String] { lock.withLock { lines } }
    var handler: Handler { Handler(capture: self) }
    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            capture.lock.withLock { capture.lines.append("\(event.message)") }
        }
    }
}
