import ArgumentParser
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanPluginABI
import CapstanProviders
import Foundation

struct PluginsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List and inspect provider plugins.",
        subcommands: [List.self, Inspect.self, Call.self, SDK.self],
        defaultSubcommand: List.self)

    /// One row of `plugins list --json`.
    struct PluginRow: Encodable {
        var name: String
        var path: String
        var source: String
        var status: String
        var version: String?
        var abiVersion: UInt32?
        var capabilities: [String]
        var error: CapstanError?
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List plugins on the search path and whether each is enabled.",
            discussion: """
                Only the plugins config.yaml enables (providers.<name>) are loaded; the others are listed by
                file name, their files checked without running any of their code. --load loads every one
                found (running its code) to show its version and capabilities.
                """)
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Also load the plugins config.yaml does not enable (runs their code), to show versions and capabilities.")
        var load = false

        func run() async throws {
            try await reportingErrors {
                let registry = try global.loadRegistry()
                var rows: [PluginRow] = [PluginRow(
                    name: "local", path: "(built in)", source: "built in",
                    status: registry.compute.contains { $0.name == "local" } ? "enabled" : "disabled",
                    version: CapstanVersion.string, abiVersion: nil, capabilities: ["compute"], error: nil)]
                rows.append(PluginRow(name: "file", path: "(built in)", source: "built in", status: "enabled", version: CapstanVersion.string, abiVersion: nil, capabilities: ["storage"], error: nil))
                for candidate in registry.candidates {
                    let fileName = (candidate.path as NSString).lastPathComponent
                    var row = PluginRow(name: candidate.name ?? fileName, path: candidate.path, source: candidate.source, status: "", version: nil, abiVersion: nil, capabilities: [], error: nil)
                    func show(_ lib: PluginLibrary) {
                        row.version = lib.manifest.version
                        row.abiVersion = lib.abiVersion
                        row.capabilities = lib.manifest.capabilities.map(\.name)
                    }
                    let loaded = registry.plugins.first { $0.path == candidate.path }
                    if let problem = candidate.problem {
                        row.status = candidate.unsafe ? "refused: unsafe permissions" : "failed to load"
                        row.error = problem
                    } else if let winner = candidate.shadowedBy {
                        row.status = "shadowed by \(winner)"
                    } else if let name = candidate.name, ProviderRegistry.builtInNames.contains(name) {
                        row.status = "ignored: '\(name)' is a built-in provider's name"
                    } else if let loaded {
                        switch loaded.result {
                        case .success(let lib):
                            show(lib)
                            if registry.instances[lib.name] != nil { row.status = "enabled" }
                            else if let p = registry.problems.first(where: { $0.provider == lib.name }) { row.status = "error: \(p.error.message)" }
                            else { row.status = "loaded" }
                        case .failure(let e):
                            row.status = "failed to load"
                            row.error = e
                        }
                    } else if let name = candidate.name, registry.config.providers[name] != nil, !registry.config.isEnabled(name, defaultOn: false) {
                        row.status = "disabled (providers.\(name).enabled: false)"
                    } else {
                        // Not asked for: its file is checked by reading it, its code never runs.
                        do {
                            try PluginLibrary.checkFile(path: candidate.path)
                            row.status = "not loaded (add providers.\(candidate.name ?? fileName) to config.yaml to use it)"
                            if load {
                                let entry = PluginDiscovery.load(candidate)
                                switch entry.result {
                                case .success(let lib): show(lib)
                                case .failure(let e):
                                    row.status = "failed to load"
                                    row.error = e
                                }
                            }
                        } catch let e as CapstanError {
                            row.status = "failed to load"
                            row.error = e
                        }
                    }
                    rows.append(row)
                }
                if global.json { try printJSON(rows); return }
                var table = TextTable(header: ["NAME", "VERSION", "ABI", "CAPABILITIES", "STATUS", "PATH"])
                for r in rows {
                    table.rows.append([r.name, r.version ?? "-", r.abiVersion.map(String.init) ?? "-", r.capabilities.joined(separator: ","), r.status, r.path])
                }
                print(table.render())
                for r in rows { if let e = r.error { printError("\n\(r.path):\n  \(e)") } }
            }
        }
    }

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a plugin's manifest and config schema (by name or by .so path).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Plugin name (as in `plugins list`; loaded even when config.yaml does not enable it) or a path to a plugin file.")
        var plugin: String

        struct Output: Encodable {
            var path: String
            var abiVersion: UInt32
            var manifest: PluginManifest
        }

        func run() async throws {
            try await reportingErrors {
                let library: PluginLibrary
                if plugin.contains("/") {
                    library = try PluginLibrary.load(path: plugin)
                } else {
                    library = try global.loadRegistry().loadPlugin(named: plugin)
                }
                let out = Output(path: library.path, abiVersion: library.abiVersion, manifest: library.manifest)
                if global.json { try printJSON(out); return }
                let m = library.manifest
                print("name:          \(m.name)")
                print("version:       \(m.version)")
                print("abi version:   \(library.abiVersion)")
                print("path:          \(library.path)")
                print("capabilities:  \(m.capabilities.map(\.name).joined(separator: ", "))")
                if let schemes = m.storageSchemes { print("bucket URIs:   \(schemes.map { "\($0)://" }.joined(separator: ", "))") }
                print("enable with:   a providers.\(m.name) section in config.yaml")
                if let d = m.description { print("description:   \(d)") }
                if let schema = m.configSchema {
                    let e = JSONEncoder()
                    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                    print("config schema (providers.\(m.name) in config.yaml):")
                    print(String(decoding: try e.encode(schema), as: UTF8.self))
                }
            }
        }
    }

    struct Call: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Call one plugin method with a JSON request and print the raw JSON answer (for plugin authors).",
            discussion: """
                The call goes through the same loader, ABI checks and JSON bridge as every other command.
                A plugin named as on `plugins list` gets its providers.<name> settings from config.yaml;
                a path to a .so gets --config (default {}). Methods: docs/plugin-abi.md.
                Examples:
                  capstan plugins call lambda compute.offers '{"nodes":1,"regions":[],"spot":"never","providers":[]}'
                  capstan plugins call ./build/libcapstan-mycloud.so plugin.ping --config '{"endpoint":"http://127.0.0.1:8080"}'
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Plugin name (as in `plugins list`) or a path to a plugin file.")
        var plugin: String
        @Argument(help: "Method, e.g. plugin.ping, compute.offers, compute.describe.")
        var method: String
        @Argument(help: "The request document (JSON).")
        var request: String = "{}"
        @Option(help: "The plugin's configuration document (JSON), instead of config.yaml's providers.<name>.")
        var config: String?
        @Option(help: "Seconds to wait for the answer.")
        var timeout: Double = 120

        func run() async throws {
            try await reportingErrors {
                func parse(_ text: String, _ what: String) throws -> JSONValue {
                    do { return try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) } catch {
                        throw CapstanError(.invalidRequest, "The \(what) is not JSON: \(text.prefix(80))", hint: "Quote it for the shell: '{\"key\": \"value\"}'.")
                    }
                }
                let requestJSON = try parse(request, "request")
                let instance: PluginInstance
                let limit = Duration.milliseconds(Int64(timeout * 1000))
                if plugin.contains("/") {
                    instance = try PluginLibrary.load(path: plugin).instantiate(config: try config.map { try parse($0, "--config") } ?? .object([:]), timeout: limit)
                } else {
                    let registry = try global.loadRegistry()
                    let library = try registry.loadPlugin(named: plugin)
                    let settings = try config.map { try parse($0, "--config") } ?? registry.config.providerConfig(plugin)
                    instance = try library.instantiate(config: settings, timeout: limit)
                }
                let answer = try await instance.invoke(method, request: Data(requestJSON.jsonString.utf8))
                let pretty = try JSONDecoder().decode(JSONValue.self, from: answer)
                try printJSON(pretty)
            }
        }
    }

    struct SDK: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "sdk",
            abstract: "Write the plugin ABI header (capstan_plugin.h) this capstan speaks, and the LeakSanitizer suppressions for checking a plugin inside it, into a folder.",
            discussion: """
                Example: capstan plugins sdk ./include && make CAPSTAN_INCLUDE=./include
                Writes capstan_plugin.h and lsan-capstan-host.supp (the Swift host's own leaks, for
                LSAN_OPTIONS=suppressions=… when an ASan-built plugin runs inside capstan).
                The guide: docs/writing-a-plugin.md; the Lambda plugin (plugins/lambda) is its worked example.
                """)
        @Argument(help: "Folder to write capstan_plugin.h and lsan-capstan-host.supp into (created if missing).")
        var folder: String

        func run() async throws {
            try await reportingErrors {
                let path = (folder as NSString).appendingPathComponent("capstan_plugin.h")
                let supp = (folder as NSString).appendingPathComponent("lsan-capstan-host.supp")
                do {
                    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                    try Data(PackageResources.capstan_plugin_h).write(to: URL(fileURLWithPath: path))
                    try Data(PackageResources.lsan_swift_host_supp).write(to: URL(fileURLWithPath: supp))
                } catch {
                    throw CapstanError(.io, "Cannot write the plugin SDK into \(folder): \(error.localizedDescription)", hint: "Pick a folder you can write to.")
                }
                print("\(path): plugin ABI \(capstan_host_abi_version())")
                print("\(supp): LeakSanitizer suppressions for the capstan host (docs/writing-a-plugin.md, Memory safety)")
            }
        }
    }
}
