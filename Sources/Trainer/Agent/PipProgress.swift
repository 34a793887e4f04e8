import Foundation

/// How far a `pip install` is, read from its output (the agent sends pip's output to
/// `<state>/python-env.log`, not the node log): packages collected, then the count it installs
/// and, once done, the count it installed. Pure: lines in, counts out.
public struct PipProgress: Sendable, Hashable {
    /// `Collecting …` and `Processing …` lines: distributions pip has found so far.
    public var collected = 0
    /// From `Installing collected packages: a, b, c`: what pip installs now.
    public var toInstall: Int?
    /// From `Successfully installed a-1.0 b-2.0`.
    public var installed: Int?
    /// The package collected last (a name only: never a URL, which may carry a token); nil
    /// once pip installs.
    public var latest: String?
    /// pip's `ERROR:` lines.
    public var errors: [String] = []

    public init() {}

    /// Reads one line of pip's output.
    public mutating func feed(_ raw: some StringProtocol) {
        let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
        if line.hasPrefix("Collecting ") {
            collected += 1
            latest = Self.name(requirement: line.dropFirst("Collecting ".count))
        } else if line.hasPrefix("Processing ") {
            collected += 1
            // `Processing ./alpha-1.0-py3-none-any.whl (from -r req.txt (line 1))`
            let path = line.dropFirst("Processing ".count).split(separator: " ").first.map(String.init) ?? ""
            let file = (path as NSString).lastPathComponent
            latest = Self.name(requirement: file.split(separator: "-", maxSplits: 1).first ?? "")
        } else if line.hasPrefix("Installing collected packages:") {
            let names = line.dropFirst("Installing collected packages:".count).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            toInstall = names.count
            latest = nil  // pip says nothing as it goes from one to the next
        } else if line.hasPrefix("Successfully installed") {
            installed = line.dropFirst("Successfully installed".count).split(separator: " ").count
        } else if line.hasPrefix("ERROR:") {
            errors.append(line)
        }
    }

    /// Reads every whole line of `text`.
    public mutating func feed(text: String) {
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) { feed(line) }
    }

    /// A requirement's project name (`numpy>=1.0 (from -r …)` → `numpy`); nil when it is not
    /// a plain name (a URL, a path).
    static func name(requirement: some StringProtocol) -> String? {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        let name = requirement.prefix { allowed.contains($0) }
        guard !name.isEmpty, name.count <= 100 else { return nil }
        let rest = requirement.dropFirst(name.count)
        guard rest.isEmpty || " <>=!~[;(@,".contains(rest.first!) else { return nil }
        return String(name)
    }

    /// The progress event for this state, `seconds` into the build; `installedNow` is the
    /// count of packages already unpacked into the venv (its new `*.dist-info` folders) while
    /// pip installs.
    public func event(node: Int, seconds: Double, installedNow: Int) -> PythonEnvProgress {
        if let toInstall {
            return PythonEnvProgress(node: node, phase: .installing, done: min(max(0, installed ?? installedNow), toInstall), total: toInstall, seconds: seconds, package: latest)
        }
        return PythonEnvProgress(node: node, phase: .collecting, done: collected, total: nil, seconds: seconds, package: latest)
    }
}

/// The agent's progress line for a Python environment build, written to the node log as one
/// JSON line (the CLI draws it as a live bar on a terminal, a plain line elsewhere;
/// docs/cli.md, "Progress"):
///
///     {"event": "python_env", "node": 0, "phase": "collecting", "done": 7, "seconds": 3.2, "package": "numpy"}
///     {"event": "python_env", "node": 0, "phase": "installing", "done": 12, "total": 34, "seconds": 8.1}
///
/// `phase` is `collecting` (`done`: packages found so far, no `total`), `installing` (`done`
/// of `total` unpacked), then `ready` (`done` = `total` = packages installed) or `failed`.
public struct PythonEnvProgress: Codable, Sendable, Hashable {
    public enum Phase: String, Codable, Sendable {
        case collecting, installing, ready, failed
    }

    public var event = "python_env"
    public var node: Int
    public var phase: Phase
    public var done: Int
    public var total: Int?
    public var seconds: Double
    public var package: String?

    public init(node: Int, phase: Phase, done: Int, total: Int?, seconds: Double, package: String? = nil) {
        self.node = node
        self.phase = phase
        self.done = done
        self.total = total
        self.seconds = seconds
        self.package = package
    }

    /// The event in a node log line; nil for any other line.
    public static func parse(_ line: some StringProtocol) -> PythonEnvProgress? {
        guard line.hasPrefix("{"), line.contains("\"python_env\"") else { return nil }
        guard let p = try? JSONDecoder().decode(PythonEnvProgress.self, from: Data(line.utf8)), p.event == "python_env" else { return nil }
        return p
    }

    /// The JSON line (no newline).
    public var line: String {
        var s = "{\"event\": \"python_env\", \"node\": \(node), \"phase\": \"\(phase.rawValue)\", \"done\": \(done)"
        if let total { s += ", \"total\": \(total)" }
        s += ", \"seconds\": " + String(format: "%.1f", seconds)
        if let package, let quoted = try? JSONEncoder().encode(package) { s += ", \"package\": " + String(decoding: quoted, as: UTF8.self) }
        return s + "}"
    }

    /// The same state without the clock: a new line is worth writing when this changes.
    public var state: String { "\(phase.rawValue) \(done) \(total ?? -1)" }
}
