public import CapstanCore
public import CapstanRuntime
public import CapstanProviders
public import Crypto
public import Foundation

/// The Python environment a job's command runs in (`python:` in a job spec; implied by a
/// recipe). The agent builds it once per node and requirements hash, as a venv in the node's
/// cache, and runs setup and the command with it first on `PATH` and in `$CAPSTAN_PYTHON`.
///
/// ```yaml
/// python:
///   requirements: [transformers>=4.46, peft]   # or a requirements file in the workdir
///   wheels: /opt/wheels                        # install offline from here when it has them all
///   index: https://pypi.org/simple             # else from this index (default: pip's own)
///   systemPackages: true                       # see the interpreter's packages (a GPU image's torch)
/// ```
public struct PythonEnvironment: Sendable, Hashable, Codable {
    /// Requirement lines (pip syntax).
    public var requirements: [String]
    /// A requirements file, relative to the workdir (read on the node).
    public var requirementsFile: String?
    /// A folder of wheels on the node.
    public var wheels: String?
    /// A package index URL.
    public var index: String?
    /// The venv sees the interpreter's own packages, so a preinstalled torch (with the node's
    /// CUDA) is kept rather than downloaded again. Default true.
    public var systemPackages: Bool
    /// The interpreter the venv is made from.
    public var interpreter: String

    public init(requirements: [String] = [], requirementsFile: String? = nil, wheels: String? = nil, index: String? = nil, systemPackages: Bool = true, interpreter: String = "python3") {
        self.requirements = requirements
        self.requirementsFile = requirementsFile
        self.wheels = wheels
        self.index = index
        self.systemPackages = systemPackages
        self.interpreter = interpreter
    }

    /// The environment's identity: the same inputs on the same interpreter share one venv.
    /// `fileContents` is the requirements file's text, `pythonVersion` the interpreter's.
    public func hash(fileContents: String?, pythonVersion: String) -> String {
        let lines = (requirements + (fileContents.map(Self.lines) ?? [])).sorted()
        let identity = ["v1", pythonVersion, interpreter, systemPackages ? "system" : "isolated", wheels ?? "", index ?? ""] + lines
        return SHA256.hash(data: Data(identity.joined(separator: "\n").utf8)).hex
    }

    /// Requirement lines of a requirements file (comments and blank lines dropped).
    static func lines(_ text: String) -> [String] {
        text.split(whereSeparator: \.isNewline).compactMap { raw in
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)?
                .trimmingCharacters(in: .whitespaces) ?? ""
            return line.isEmpty ? nil : line
        }
    }

    /// Where venvs live on a node: `$CAPSTAN_PYTHON_CACHE`, else `~/.cache/capstan/python`.
    public static func cacheRoot(environment: [String: String]) -> String {
        if let root = environment["CAPSTAN_PYTHON_CACHE"], !root.isEmpty { return root }
        let home = environment["HOME"] ?? NSHomeDirectory()
        return home + "/.cache/capstan/python"
    }
}
