public import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Finds plugin libraries on the search path, in order:
/// 1. `CAPSTAN_PLUGIN_PATH` (`:`-separated absolute folders or `.so` files),
/// 2. `$CAPSTAN_HOME/plugins` (default `~/.capstan/plugins`),
/// 3. extra folders from the config file (`plugins.paths`, absolute),
/// 4. the folder holding the running executable (the build folder, where SwiftPM puts the
///    package's own plugins as `libCapstanPlugin*.so`; only those names there).
///
/// Finding runs no plugin code: a candidate's name comes from its file name
/// (``pluginName(fileName:)``: `libcapstan-<name>.so`, `libCapstanPlugin<Name>.so`), and its file
/// and folder are checked with `stat` alone. Only ``load(_:)`` opens a library (`dlopen`, which
/// runs its initialisers), and callers load only what the user configured or asked for.
///
/// The first candidate of a name wins; later ones are reported as shadowed. A folder or file that
/// someone else could change — writable by group or others, or owned by neither root nor this
/// user — is refused (``Candidate/problem``), and so is everything in such a folder.
public struct PluginDiscovery: Sendable {
    /// One plugin file on the search path, before anything loads it.
    public struct Candidate: Sendable {
        public var path: String
        /// Which search-path element found it.
        public var source: String
        /// The plugin name its file name gives; nil when it gives none (see ``problem``).
        public var name: String?
        /// Why it can never be loaded from here (unsafe permissions, not a regular file, no
        /// name): found with `stat` alone. Nil when it may be loaded.
        public var problem: CapstanError?
        /// Whether ``problem`` is that someone other than root and this user could change the
        /// file or its folder.
        public var unsafe = false
        /// Set when an earlier candidate of the same name wins.
        public var shadowedBy: String?

        public init(path: String, source: String, name: String?, problem: CapstanError? = nil, shadowedBy: String? = nil) {
            self.path = path
            self.source = source
            self.name = name
            self.problem = problem
            self.shadowedBy = shadowedBy
        }
    }

    /// A loaded (or failed) candidate.
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

    public static let environmentSource = "CAPSTAN_PLUGIN_PATH"
    public static let homeSource = "CAPSTAN_HOME/plugins"
    public static let configSource = "config plugins.paths"
    public static let buildSource = "build folder"

    /// The standard search path for `home` and `environment`. Throws a `.config` error for a
    /// relative entry in `CAPSTAN_PLUGIN_PATH` or `extraFolders`: it would name a different folder
    /// in every working directory (a plugin planted in a checked-out repository would run).
    public static func standard(
        home: CapstanHome, extraFolders: [String] = [], environment: [String: String] = ProcessInfo.processInfo.environment,
        executableFolder: String? = Bundle.main.executableURL?.resolvingSymlinksInPath().deletingLastPathComponent().path
    ) throws -> PluginDiscovery {
        var path: [(String, String)] = []
        if let env = environment["CAPSTAN_PLUGIN_PATH"], !env.isEmpty {
            for p in env.split(separator: ":") where !p.isEmpty {
                let entry = (String(p) as NSString).expandingTildeInPath
                guard entry.hasPrefix("/") else {
                    throw CapstanError(
                        .config, "CAPSTAN_PLUGIN_PATH has the relative entry '\(p)': plugins are only loaded from absolute paths, so that the folder searched does not change with the current directory.",
                        hint: "Write it as an absolute path, e.g. CAPSTAN_PLUGIN_PATH=\"$PWD/\(p)\", or unset CAPSTAN_PLUGIN_PATH.")
                }
                path.append((entry, environmentSource))
            }
        }
        path.append((home.pluginsFolder, homeSource))
        for f in extraFolders {
            let folder = (f as NSString).expandingTildeInPath
            guard folder.hasPrefix("/") else {
                throw CapstanError(
                    .config, "plugins.paths in \(home.configFile) has the relative entry '\(f)': plugins are only loaded from absolute paths.",
                    hint: "Write it as an absolute path (e.g. /opt/capstan/plugins).")
            }
            path.append((folder, configSource))
        }
        if let executableFolder { path.append((executableFolder, buildSource)) }
        return PluginDiscovery(searchPath: path)
    }

    /// The plugin name a file name gives: `libcapstan-<name>.so` and `libCapstanPlugin<Name>.so`
    /// (SwiftPM's name for a `CapstanPlugin<Name>` product) are the conventions; any other
    /// `lib<name>.so` or `<name>.so` gives `<name>`. Lower-cased; `.dylib` too. Nil when what is
    /// left is not a plugin name (lower-case letters, digits, dashes).
    public static func pluginName(fileName: String) -> String? {
        var base = Substring(fileName)
        if base.hasSuffix(".so") { base = base.dropLast(3) } else if base.hasSuffix(".dylib") { base = base.dropLast(6) } else { return nil }
        for prefix in ["libCapstanPlugin", "libcapstan-", "lib"] where base.hasPrefix(prefix) {
            base = base.dropFirst(prefix.count)
            break
        }
        let name = base.lowercased()
        return name.range(of: "^[a-z0-9][a-z0-9-]*$", options: .regularExpression) != nil ? name : nil
    }

    /// Every candidate on the search path, in search order, checked with `stat` alone (no
    /// plugin code runs), shadowed names marked.
    public func candidates() -> [Candidate] {
        var out: [Candidate] = []
        var seenPaths = Set<String>()
        var winner: [String: String] = [:]
        for (folder, source) in searchPath {
            for var candidate in candidates(in: folder, source: source) {
                let resolved = URL(fileURLWithPath: candidate.path).resolvingSymlinksInPath().path
                guard seenPaths.insert(resolved).inserted else { continue }
                if let name = candidate.name {
                    if let first = winner[name] { candidate.shadowedBy = first } else { winner[name] = candidate.path }
                }
                out.append(candidate)
            }
        }
        return out
    }

    /// The candidate that wins for `name`, if any.
    public func winner(named name: String, in candidates: [Candidate]) -> Candidate? {
        candidates.first { $0.name == name && $0.shadowedBy == nil }
    }

    /// Loads `candidate` (`dlopen`: its initialisers run) and checks that the plugin's manifest
    /// gives the name its file name promised. Never throws: a failure is the entry's result.
    public static func load(_ candidate: Candidate) -> Entry {
        let result: Result<PluginLibrary, CapstanError> = Result {
            if let problem = candidate.problem { throw problem }
            let library = try PluginLibrary.load(path: candidate.path)
            if let name = candidate.name, library.name != name {
                throw CapstanError(
                    .pluginFailure, "Plugin \(candidate.path) calls itself '\(library.name)', but its file name makes it '\(name)'.",
                    hint: "Rename the file to libcapstan-\(library.name).so: Capstan picks which plugins to load by file name.")
            }
            return library
        }.mapError { $0 as? CapstanError ?? CapstanError(.pluginFailure, "\($0)") }
        return Entry(path: candidate.path, source: candidate.source, result: result, shadowedBy: candidate.shadowedBy)
    }

    func candidates(in folderOrFile: String, source: String) -> [Candidate] {
        let buildFolder = source == Self.buildSource
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folderOrFile, isDirectory: &isDir) else { return [] }
        if !isDir.boolValue {
            // A file named on CAPSTAN_PLUGIN_PATH: it and the folder it is in must be safe.
            let name = Self.pluginName(fileName: (folderOrFile as NSString).lastPathComponent)
            var c = Candidate(path: folderOrFile, source: source, name: name)
            (c.problem, c.unsafe) = Self.fileProblem(folderOrFile, name: name)
            return [c]
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folderOrFile)) ?? []
        let files = names.sorted().filter { name in
            let isLib = name.hasSuffix(".so") || name.hasSuffix(".dylib")
            // In the build folder only the package's own plugin products are candidates.
            return isLib && (!buildFolder || name.hasPrefix("libCapstanPlugin"))
        }
        guard !files.isEmpty else { return [] }
        let folderProblem = Self.ownershipProblem(folderOrFile, what: "plugin folder")
        return files.map { file in
            let path = (folderOrFile as NSString).appendingPathComponent(file)
            let name = Self.pluginName(fileName: file)
            var c = Candidate(path: path, source: source, name: name)
            if let folderProblem {
                c.problem = CapstanError(.pluginFailure, "Plugin \(path) was not loaded: \(folderProblem.what).", hint: folderProblem.hint)
                c.unsafe = true
            } else {
                (c.problem, c.unsafe) = Self.fileProblem(path, name: name)
            }
            return c
        }
    }

    /// What keeps the file at `path` from being loaded, from `stat` alone, and whether that is
    /// its permissions (someone else could change it).
    static func fileProblem(_ path: String, name: String?) -> (CapstanError?, Bool) {
        if let type = PluginFile.typeProblem(path: path) {
            return (CapstanError(.pluginFailure, "Cannot load plugin \(path): \(type.what).", hint: type.hint), false)
        }
        guard name != nil else {
            return (CapstanError(
                .pluginFailure, "Plugin file \(path) has a name that gives no plugin name (lower-case letters, digits and dashes).",
                hint: "Name it libcapstan-<name>.so, where <name> is the plugin's own name."), false)
        }
        // A symbolic link is judged by its target and the folder holding the target.
        let target = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        let targetFolder = (target as NSString).deletingLastPathComponent
        for (p, what) in [(target, "plugin file"), (targetFolder, "folder holding the plugin")] {
            if let problem = ownershipProblem(p, what: what) {
                return (CapstanError(.pluginFailure, "Plugin \(path) was not loaded: \(problem.what).", hint: problem.hint), true)
            }
        }
        return (nil, false)
    }

    /// Whether someone other than root and this user could change `path` (writable by group or
    /// others, or owned by another user): what, and what to do; nil when it is safe.
    public static func ownershipProblem(_ path: String, what: String) -> (what: String, hint: String)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }  // gone: the load reports it
        let mode = st.st_mode & 0o7777
        let me = geteuid()
        if st.st_uid != 0, st.st_uid != me {
            let owner = getpwuid(st.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "uid \(st.st_uid)"
            return ("the \(what) \(path) is owned by \(owner), neither root nor you, so its owner could swap the code Capstan runs",
                    "Move the plugin into a folder you own (e.g. ~/.capstan/plugins), or have root own it.")
        }
        if mode & 0o022 != 0 {
            let who = mode & 0o002 != 0 ? "anyone" : "its group"
            return ("the \(what) \(path) is writable by \(who) (mode \(String(format: "%04o", mode))), so others could swap the code Capstan runs",
                    "Run `chmod go-w \(path)` if you trust its contents, or move the plugin into a folder only you can write to.")
        }
        return nil
    }
}
