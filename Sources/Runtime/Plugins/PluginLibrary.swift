public import CapstanCore
public import CapstanPluginABI
public import Foundation
public import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A plugin shared library loaded into this process, with its checked function table and
/// manifest. Loading never unloads: Swift images cannot be `dlclose`d safely, so the library is
/// opened with `RTLD_NODELETE` and stays for the life of the process.
public final class PluginLibrary: Sendable {
    /// The ABI versions this host accepts.
    public static let supportedABIVersions: ClosedRange<UInt32> = 1...capstan_host_abi_version()

    public let path: String
    public let manifest: PluginManifest
    public let abiVersion: UInt32
    /// The plugin's exported table; lives as long as the process.
    nonisolated(unsafe) let table: UnsafePointer<capstan_plugin>

    public var name: String { manifest.name }

    private init(path: String, manifest: PluginManifest, abiVersion: UInt32, table: UnsafePointer<capstan_plugin>) {
        self.path = path
        self.manifest = manifest
        self.abiVersion = abiVersion
        self.table = table
    }

    /// Loads and checks the plugin at `path`. Every failure is a ``CapstanError`` with code
    /// `.pluginFailure` that names the file and what to do; none crashes the host.
    public static func load(path: String) throws -> PluginLibrary {
        func fail(_ what: String, hint: String) -> CapstanError {
            CapstanError(.pluginFailure, CapstanError.sentence("Cannot load plugin \(path): \(what)"), hint: hint)
        }
        // The file type first, from stat alone: opening a FIFO or a device could block forever.
        if let problem = PluginFile.typeProblem(path: path) { throw fail(problem.what, hint: problem.hint) }
        if let cached = loaded.withLock({ $0[path] }) { return cached }
        try checkFile(path: path)

        dlerror()
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) else {
            let why = dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
            throw fail("the dynamic loader refused it (\(why))", hint: "Rebuild the plugin for this platform and Capstan version; check its library dependencies with `ldd \(path)`.")
        }
        // RTLD_NODELETE keeps the image; the handle itself is intentionally never closed.
        guard let symbol = dlsym(handle, "capstan_plugin_entry") else {
            throw fail("it does not export the entry symbol 'capstan_plugin_entry'", hint: "It is not a Capstan plugin, or was built without the plugin kit; see docs/writing-a-plugin.md.")
        }
        let entry = unsafeBitCast(symbol, to: capstan_plugin_entry_fn.self)
        guard let table = entry() else {
            throw fail("its entry function returned no function table", hint: "This is a bug in the plugin; report it to its author.")
        }
        let version = table.pointee.abi_version
        guard supportedABIVersions.contains(version) else {
            let newer = version > supportedABIVersions.upperBound
            throw fail(
                "it was built for plugin ABI version \(version), and this Capstan supports \(supportedABIVersions.lowerBound)–\(supportedABIVersions.upperBound)",
                hint: newer ? "Upgrade Capstan, or use a plugin release built for ABI \(supportedABIVersions.upperBound)." : "Rebuild the plugin against the current capstan_plugin.h (ABI \(supportedABIVersions.upperBound)).")
        }
        let minSize = UInt32(MemoryLayout<capstan_plugin>.size)
        guard table.pointee.struct_size >= minSize else {
            throw fail("its function table is \(table.pointee.struct_size) bytes, smaller than the \(minSize) that ABI \(version) requires", hint: "Rebuild the plugin against the current capstan_plugin.h.")
        }
        guard let namePtr = table.pointee.name, table.pointee.manifest_json != nil, table.pointee.create != nil,
              table.pointee.invoke != nil, table.pointee.destroy != nil, table.pointee.free_string != nil
        else {
            throw fail("its function table has a NULL name or function", hint: "This is a bug in the plugin; every field of capstan_plugin must be set.")
        }
        let tableName = String(cString: namePtr)
        guard let manifestPtr = table.pointee.manifest_json?() else {
            throw fail("its manifest_json() returned NULL", hint: "This is a bug in the plugin.")
        }
        let manifestText = String(cString: manifestPtr)
        let manifest: PluginManifest
        do {
            manifest = try PluginWire.decoder.decode(PluginManifest.self, from: Data(manifestText.utf8))
        } catch {
            throw fail("its manifest is not valid (\(PluginWire.describe(error)))", hint: "The manifest must be JSON with name, version and capabilities; see docs/plugin-abi.md.")
        }
        guard manifest.name == tableName else {
            throw fail("its table says name '\(tableName)' but its manifest says '\(manifest.name)'", hint: "This is a bug in the plugin.")
        }
        guard manifest.name.range(of: "^[a-z0-9][a-z0-9-]*$", options: .regularExpression) != nil else {
            throw fail("its name '\(manifest.name)' is not lower-case letters, digits and dashes", hint: "This is a bug in the plugin.")
        }
        let library = PluginLibrary(path: path, manifest: manifest, abiVersion: version, table: table)
        return loaded.withLock { cache in
            if let existing = cache[path] { return existing }
            cache[path] = library
            return library
        }
    }

    /// The checks on the file at `path` that come before `dlopen`, by reading it (no code of it
    /// runs): a regular file (from `stat` first: opening a FIFO or a device could block
    /// forever), a shared library's header, an ELF image for this CPU that is not truncated.
    /// Throws the `.pluginFailure` that ``load(path:)`` would.
    public static func checkFile(path: String) throws {
        func fail(_ what: String, hint: String) -> CapstanError {
            CapstanError(.pluginFailure, CapstanError.sentence("Cannot load plugin \(path): \(what)"), hint: hint)
        }
        if let problem = PluginFile.typeProblem(path: path) { throw fail(problem.what, hint: problem.hint) }
        // Read the first bytes ourselves: dlopen on a non-library gives a terse message, and on
        // some systems a text file is interpreted as a linker script.
        if let handle = PluginFile.openForReading(path: path) {
            let magic = (try? handle.read(upToCount: 4)) ?? Data()
            try? handle.close()
            let elf = Data([0x7F, 0x45, 0x4C, 0x46])
            let machO: [Data] = [Data([0xCF, 0xFA, 0xED, 0xFE]), Data([0xCE, 0xFA, 0xED, 0xFE]), Data([0xCA, 0xFE, 0xBA, 0xBE])]
            if magic != elf, !machO.contains(magic) {
                throw fail("it is not a shared library (no ELF or Mach-O header)", hint: "Remove it from the plugin folder, or rebuild the plugin.")
            }
        }
        if let problem = ELFCheck.problem(path: path) {
            throw fail(problem, hint: "Rebuild or re-download the plugin for this machine.")
        }
    }

    /// Creates an instance of the plugin with its configuration (`{}` when none).
    /// `timeout` limits each call that names no limit of its own.
    public func instantiate(config: JSONValue = .object([:]), logger: Logger? = nil, timeout: Duration = .seconds(60)) throws -> PluginInstance {
        try PluginInstance(
            library: self, config: config, logger: logger ?? Logger(label: "capstan.plugin.\(name)", factory: { _ in SwiftLogNoOpLogHandler() }),
            defaultTimeout: timeout)
    }

    private static let loaded = LockedBox<[String: PluginLibrary]>([:])
}
