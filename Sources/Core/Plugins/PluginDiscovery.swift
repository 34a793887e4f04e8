import Foundation

/// Finds plugin libraries on the search path, in order:
/// 1. `CAPSTAN_PLUGIN_PATH` (`:`-separated folders or `.so` files),
/// 2. `$CAPSTAN_HOME/plugins` (default `~/.capstan/plugins`),
/// 3. extra folders from the config file (`plugins.paths`),
/// 4. the folder holding the running executable (the build folder, where SwiftPM puts the
///    package's own plugins as `libCapstanPlugin*.so`).
/// The first plugin of a name wins; later ones are reported as shadowed.
public struct PluginDiscovery: Sendable {
    /// One candidate file and what came of loading it.
    public struct Entry: Sendable {
        public var path: String
        /// Which search-path element found it.
        public var source: String
        public var result: Result<PluginLibrary, CapstanError>
        /// Set when an earlier plugin of the same name wins.
        public var shadowedBy: String?

        public var library: PluginLibrary? { try? result.get() }
    }

    public var searchPath: [(folder: String, source: String)]

    public init(searchPath: [(folder: String, source: String)]) {
        self.searchPath = searchPath
    }

    /// The standard search path for `home` and `environment`.
    public static func standard(home: CapstanHome, extraFolders: [String] = [], environment: [String: String] = ProcessInfo.processInfo.environment) -> PluginDiscovery {
        var path: [(String, String)] = []
        if let env = environment["CAPSTAN_PLUGIN_PATH"], !env.isEmpty {
            for p in env.split(separator: ":") where !p.isEmpty { path.append((String(p), "CAPSTAN_PLUGIN_PATH")) }
        }
        path.append((home.pluginsFolder, "CAPSTAN_HOME/plugins"))
        for f in extraFolders { path.append((f, "config plugins.paths")) }
        if let exe = Bundle.main.executableURL?.resolvingSymlinksInPath().deletingLastPathComponent().path {
            path.append((exe, "build folder"))
        }
        return PluginDiscovery(searchPath: path)
    }

    /// Loads every candidate (a failure is recorded, never thrown) and marks shadowed names.
    public func discover() -> [Entry] {
        var entries: [Entry] = []
        var seenPaths = Set<String>()
        var winner: [String: String] = [:]
        for (folder, source) in searchPath {
            for file in candidates(in: folder, buildFolder: source == "build folder") {
                let resolved = URL(fileURLWithPath: file).resolvingSymlinksInPath().path
                guard seenPaths.insert(resolved).inserted else { continue }
                var entry = Entry(path: file, source: source, result: Result { try PluginLibrary.load(path: file) }.mapError { $0 as? CapstanError ?? CapstanError(.pluginFailure, "\($0)") })
                if let lib = entry.library {
                    if let first = winner[lib.name] { entry.shadowedBy = first } else { winner[lib.name] = file }
                }
                entries.append(entry)
            }
        }
        return entries
    }

    func candidates(in folderOrFile: String, buildFolder: Bool) -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folderOrFile, isDirectory: &isDir) else { return [] }
        if !isDir.boolValue { return [folderOrFile] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folderOrFile)) ?? []
        return names.sorted().filter { name in
            let isLib = name.hasSuffix(".so") || name.hasSuffix(".dylib")
            // In the build folder only the package's own plugin products are candidates.
            return isLib && (!buildFolder || name.hasPrefix("libCapstanPlugin"))
        }.map { (folderOrFile as NSString).appendingPathComponent($0) }
    }
}
