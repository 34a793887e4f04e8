import CapstanCore
import CapstanRuntime
public import Foundation

/// The `capstan` executable a process runs its jobs with. `capstan` is also the node agent
/// (`capstan agent`, one per node of an attempt) and the detached job controller
/// (`capstan job-controller`), so a program that embeds Capstan must ship it.
public struct AgentBinary: Sendable, Hashable {
    /// Runs local nodes' agents and detached controllers on this machine.
    public var local: String
    /// Shipped to remote (SSH) nodes as their agent; a `--static-swift-stdlib` build runs on
    /// nodes without Swift.
    public var remote: String

    public init(local: String, remote: String? = nil) {
        self.local = local
        self.remote = remote ?? local
    }

    /// The file a release ships beside `capstan` for remote nodes: `capstan` with the Swift
    /// runtime linked in (the release's `capstan` uses the shared runtime in its `lib/`, which a
    /// node would not have). See scripts/release.sh.
    public static let remoteAgentFileName = "capstan-agent"

    /// The running `capstan` itself (what the CLI uses). Its remote agent is
    /// `$CAPSTAN_AGENT_BINARY` when set, else `capstan-agent` beside it when there is one (a
    /// release), else itself.
    public static func currentExecutable(environment: [String: String] = ProcessInfo.processInfo.environment) -> AgentBinary {
        let exe = Spawn.currentExecutable
        if let given = environment["CAPSTAN_AGENT_BINARY"], !given.isEmpty { return AgentBinary(local: exe, remote: given) }
        return beside(exe)
    }

    /// `executable`, with the release's `capstan-agent` beside it as the remote agent when
    /// that file is there and executable.
    public static func beside(_ executable: String) -> AgentBinary {
        let agent = URL(fileURLWithPath: executable).deletingLastPathComponent().appendingPathComponent(remoteAgentFileName).path
        return AgentBinary(local: executable, remote: FileManager.default.isExecutableFile(atPath: agent) ? agent : nil)
    }

    /// Finds `capstan` for a program that embeds Capstan, first found wins:
    /// 1. `$CAPSTAN_AGENT_BINARY`;
    /// 2. `capstan` next to the running executable (how a host app ships it; with a release's
    ///    `capstan-agent` beside it, that is what remote nodes receive);
    /// 3. this package's build folder (`.build/debug/capstan` or `.build/release/capstan` of
    ///    the Capstan checkout the program was built from, e.g. a `.package(path:)` dependency
    ///    after `swift build --product capstan` there).
    ///
    /// Throws `notFound`, saying where it looked and what to ship, when none is there.
    /// `executableFolder`: the running program's folder (default: the real one).
    public static func locate(
        environment: [String: String] = ProcessInfo.processInfo.environment, executableFolder: String? = nil, buildFolders: [String] = defaultBuildFolders
    ) throws -> AgentBinary {
        var looked: [String] = []
        if let given = environment["CAPSTAN_AGENT_BINARY"], !given.isEmpty {
            // Absolute: local agents start in the job's workdir, where a relative path means another file.
            let path = URL(fileURLWithPath: given).standardizedFileURL.path
            var isFolder: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), !isFolder.boolValue, FileManager.default.isExecutableFile(atPath: path) else {
                throw CapstanError(.notFound, "CAPSTAN_AGENT_BINARY is \(path), which is not an executable file.", hint: "Point it at a `capstan` binary (a release's, or `swift build --product capstan`'s), or unset it to use the one next to this program.")
            }
            return AgentBinary(local: path)
        }
        let folder = executableFolder ?? URL(fileURLWithPath: Spawn.currentExecutable).deletingLastPathComponent().path
        let next = folder + "/capstan"
        looked.append(next)
        if FileManager.default.isExecutableFile(atPath: next) { return beside(next) }
        for folder in buildFolders {
            let path = folder + "/capstan"
            looked.append(path)
            if FileManager.default.isExecutableFile(atPath: path) { return beside(path) }
        }
        throw CapstanError(
            .notFound, "No `capstan` executable to run this program's jobs with (it is their node agent and detached controller); looked at \(looked.joined(separator: ", ")).",
            hint: "Ship `capstan` next to this program's executable (from a release tarball, or `swift build -c release --product capstan` in the Capstan package), or set CAPSTAN_AGENT_BINARY to its path. See docs/public-api.md.")
    }

    /// The build folders of the Capstan checkout this module was compiled from: this build's
    /// configuration first.
    public static var defaultBuildFolders: [String] {
        // Sources/SDK/AgentBinary.swift → the package root.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        #if DEBUG
        let configs = ["debug", "release"]
        #else
        let configs = ["release", "debug"]
        #endif
        return configs.map { "\(root)/.build/\($0)" }
    }
}
