import Foundation
import Testing

/// The module graph of docs/architecture.md, checked against the sources: which module may
/// import which, and that CapstanCore stays pure (no GRDB, no Yams, no POSIX or process APIs).
@Suite("module graph")
struct ModuleGraphTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// Module → (its source folder, the modules its files may import).
    static let allowed: [(module: String, folder: String, imports: Set<String>)] = [
        ("CapstanCore", "Sources/Core", ["Foundation", "Logging"]),
        ("CapstanPluginKit", "Sources/PluginKit", ["CapstanCore", "CapstanPluginABI", "Foundation", "Logging"]),
        ("CapstanStorage", "Sources/Providers/Storage", ["CapstanCore", "Crypto", "Foundation", "Glibc", "Darwin"]),
        ("CapstanTesting", "Sources/Testing", ["CapstanCore", "CapstanPluginKit", "CapstanStorage", "Foundation", "Logging", "Glibc", "Darwin"]),
        ("CapstanRuntime", "Sources/Runtime", ["CapstanCore", "CapstanPluginABI", "Foundation", "Logging", "Yams", "Crypto", "Glibc", "Darwin"]),
        ("CapstanSQLite", "Sources/SQLite", ["CapstanCore", "CapstanRuntime", "GRDB", "Foundation", "Glibc", "Darwin"]),
        // The control plane's wire types and client: never the server, a store or a provider's module.
        // NIOSSL: the client's TLS settings (CAPSTAN_SERVER_CA), AsyncHTTPClient's own TLS module.
        ("CapstanAPI", "Sources/API", ["CapstanCore", "CapstanTrainer", "Foundation", "FoundationNetworking", "Logging", "AsyncHTTPClient", "NIOCore", "NIOFoundationCompat", "NIOHTTP1", "NIOSSL", "Glibc", "Darwin"]),
        // The server reaches state only through CapstanCore's protocols: no store module here.
        ("CapstanServer", "Sources/Server", ["CapstanAPI", "CapstanCore", "CapstanRuntime", "CapstanProviders", "CapstanTrainer", "Foundation", "Logging", "Crypto", "Hummingbird", "HummingbirdCore", "HummingbirdTLS", "NIOCore", "NIOSSL", "ServiceLifecycle", "UnixSignals", "CoreMetrics", "Prometheus", "Synchronization", "Glibc", "Darwin"]),
        ("CapstanPostgres", "Sources/Postgres", ["CapstanCore", "PostgresNIO", "Logging", "Foundation"]),
        ("CapstanPluginSim", "plugins/sim", ["CapstanPluginABI", "CapstanPluginKit", "CapstanTesting"]),
        ("CapstanPluginAWS", "plugins/aws", ["CapstanPluginABI", "CapstanPluginKit", "CapstanAWS"]),
    ]

    /// What CapstanCore must not call: process, file-system, locking and dynamic-loading APIs
    /// belong to CapstanRuntime.
    static let forbiddenInCore = [
        "posix_spawn", "Process(", "dlopen", "dlsym", "flock(", "FileManager", "FileHandle", "kill(", "getpid(", "usleep(",
        "fork(", "execv", "waitpid", "DatabasePool", "DatabaseQueue", "Yams.", "contentsOfFile", ".write(to:", "Data(contentsOf",
    ]

    static func swiftFiles(_ folder: String) -> [String] {
        let base = root + "/" + folder
        guard let e = FileManager.default.enumerator(atPath: base) else { return [] }
        return e.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }.map { base + "/" + $0 }.sorted()
    }

    /// The modules a file imports (`import X`, `public import X`, `@testable import X`, …).
    static func imports(_ file: String) throws -> Set<String> {
        let text = try String(contentsOfFile: file, encoding: .utf8)
        var out = Set<String>()
        for line in text.split(separator: "\n") {
            let words = line.trimmingCharacters(in: .whitespaces).split(separator: " ")
            guard let i = words.firstIndex(of: "import"), i + 1 < words.count,
                  words[..<i].allSatisfy({ ["public", "package", "internal", "private", "fileprivate", "@testable", "@preconcurrency", "@_exported"].contains($0) })
            else { continue }
            out.insert(String(words[i + 1].split(separator: ".")[0]))
        }
        return out
    }

    @Test("each module imports only what the graph allows", arguments: allowed.map(\.module))
    func layering(module: String) throws {
        let entry = try #require(Self.allowed.first { $0.module == module })
        let files = Self.swiftFiles(entry.folder)
        #expect(!files.isEmpty, "no sources in \(entry.folder)")
        for file in files {
            let extra = try Self.imports(file).subtracting(entry.imports)
            #expect(extra.isEmpty, "\(file.dropFirst(Self.root.count + 1)) imports \(extra.sorted()), which \(module) may not")
        }
    }

    @Test("CapstanCore calls no POSIX, process, file or database API")
    func corePure() throws {
        for file in Self.swiftFiles("Sources/Core") {
            let lines = try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            for (n, line) in lines.enumerated() where !line.trimmingCharacters(in: .whitespaces).hasPrefix("//") {
                for word in Self.forbiddenInCore where line.contains(word) {
                    Issue.record("\(file.dropFirst(Self.root.count + 1)):\(n + 1) uses \(word) — that belongs in CapstanRuntime")
                }
            }
        }
    }

    /// The package manifest agrees: CapstanCore and CapstanPluginKit depend on nothing heavy.
    @Test("Package.swift: the core and the plugin kit link only what they may")
    func manifest() throws {
        let text = try String(contentsOfFile: Self.root + "/Package.swift", encoding: .utf8)
        func dependencies(of target: String) throws -> Set<String> {
            let start = try #require(text.range(of: "name: \"\(target)\",\n"), "no target \(target) in Package.swift")
            let rest = text[start.upperBound...]
            let end = try #require(rest.range(of: "path:"))
            let block = rest[..<end.lowerBound]
            let regex = try NSRegularExpression(pattern: "\"([A-Za-z.-]+)\"")
            let s = String(block)
            var names = Set<String>()
            for m in regex.matches(in: s, range: NSRange(s.startIndex..., in: s)) {
                names.insert(String(s[Range(m.range(at: 1), in: s)!]))
            }
            return names
        }
        #expect(try dependencies(of: "CapstanCore") == ["Logging", "swift-log"])
        #expect(try dependencies(of: "CapstanPluginKit") == ["CapstanCore", "CapstanPluginABI", "Logging", "swift-log"])
        #expect(try dependencies(of: "CapstanPluginSim") == ["CapstanPluginKit", "CapstanTesting", "CapstanPluginABI"])
        #expect(try dependencies(of: "CapstanTesting") == ["CapstanCore", "CapstanPluginKit", "CapstanStorage", "Logging", "swift-log"])
    }

    /// The check above would pass on an empty folder list: prove it finds a forbidden call.
    @Test("the purity check catches a forbidden call")
    func checkerBites() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-graph-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("Bad.swift").path
        try "import Foundation\nimport GRDB\nlet x = FileManager.default\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try Self.imports(file) == ["Foundation", "GRDB"])
        let text = try String(contentsOfFile: file, encoding: .utf8)
        #expect(Self.forbiddenInCore.contains { text.contains($0) })
    }
}
