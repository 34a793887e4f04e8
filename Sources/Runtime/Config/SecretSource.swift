import CapstanCore
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a job's `secrets:` get their values: an environment, then the secrets file config.yaml
/// names (`secrets: {file: ~/.capstan/secrets.env}`). Values are read when asked for (the
/// launch checks them; each controller reads them when it starts) and are only ever kept in
/// memory and handed to agents on their stdin.
///
/// A `capstan` on a workstation reads its own environment (the launching shell's) by the
/// variables' names. `capstan serve` reads its environment only under ``environmentPrefix``
/// (`CAPSTAN_SECRET_WANDB_API_KEY` for `WANDB_API_KEY`): a spec sent through the API must not be
/// able to name the server's own credentials (its database password, its cloud keys) and
/// read them back through the job.
public struct SecretSource: Sendable, Hashable {
    /// The environment read; nil: this process's, as it is when a value is asked for.
    public var environment: [String: String]?
    /// Read a secret `NAME` from the variable `<prefix>NAME`; nil: from `NAME` itself.
    public var environmentPrefix: String?
    /// The secrets file (`NAME=value` lines), read after the environment; nil: none.
    public var file: String?
    /// Whose environment it is, for messages: "the launching environment".
    public var place: String

    public init(environment: [String: String]? = nil, environmentPrefix: String? = nil, file: String? = nil, place: String = "the launching environment") {
        self.environment = environment
        self.environmentPrefix = environmentPrefix
        self.file = file
        self.place = place
    }

    /// The prefix `capstan serve` reads its environment under.
    public static let serverPrefix = "CAPSTAN_SECRET_"

    /// The source a control plane uses: its environment under ``serverPrefix`` and its secrets file.
    public static func server(file: String?) -> SecretSource {
        SecretSource(environmentPrefix: serverPrefix, file: file, place: "the server's environment")
    }

    /// The fewest characters a secret's value may have: every value is replaced by `<redacted>`
    /// wherever Capstan shows a job's output, so a short one (`abc`, `1234`) would blank out
    /// ordinary text everywhere.
    public static let minimumLength = 8

    /// The value of every name in `names`. Throws `.config` naming the first secret that is
    /// missing (or empty, or shorter than ``minimumLength``) and every place looked in; never
    /// a value.
    public func resolve(_ names: [String]) throws -> [String: String] {
        let out = try lookUp(names)
        if let name = names.first(where: { (out[$0]?.count ?? Self.minimumLength) < Self.minimumLength }) {
            throw CapstanError(
                .config, "The job's secret \(name) is shorter than \(Self.minimumLength) characters; Capstan refuses it: every secret's value is replaced by <redacted> in the job's logs and events, and one this short would mask ordinary text too.",
                hint: "Give \(name) its real value (API keys and tokens are longer), or pass a value that is not secret with `env:` or `launch --env` instead.")
        }
        return out
    }

    func lookUp(_ names: [String]) throws -> [String: String] {
        guard !names.isEmpty else { return [:] }
        let env = environment ?? ProcessInfo.processInfo.environment
        var out: [String: String] = [:]
        var fileValues: [String: String]?
        for name in names {
            let variable = (environmentPrefix ?? "") + name
            if let v = env[variable], !v.isEmpty {
                out[name] = v
                continue
            }
            if let file {
                if fileValues == nil { fileValues = try SecretsFile.read(file) }
                if let v = fileValues?[name], !v.isEmpty {
                    out[name] = v
                    continue
                }
            }
            let looked = "\(variable) in \(place)" + (file.map { " and \(name) in the secrets file \($0)" } ?? " (config.yaml names no secrets file)")
            let empty = env[variable] != nil || fileValues?[name] != nil
            throw CapstanError(
                .config, "The job's secret \(name) is \(empty ? "empty" : "not set"): looked for \(looked).",
                hint: environmentPrefix == nil
                    ? "Export \(name) before `capstan launch`, or add `\(name)=…` to a secrets file (mode 0600) named in config.yaml as `secrets: {file: PATH}` (docs/jobs.md, Secrets)."
                    : "Set \(variable) in the server's environment, or add `\(name)=…` to the server's secrets file (config.yaml `secrets: {file: PATH}`), then launch again (docs/jobs.md, Secrets).")
        }
        return out
    }
}

/// A secrets file: `NAME=value` lines (`export NAME=value` too), `#` comments and blank lines;
/// a value may be wrapped in single or double quotes, taken literally. It must belong to this
/// user and be readable by no one else (mode 0600 or 0400): a file others can read is refused.
public enum SecretsFile {
    /// Reads and checks `path` (`~` expanded).
    public static func read(_ path: String) throws -> [String: String] {
        let path = (path as NSString).expandingTildeInPath
        var st = stat()
        guard stat(path, &st) == 0 else {
            let why = errno == ENOENT ? "does not exist" : "cannot be read (\(String(cString: strerror(errno))))"
            throw CapstanError(.config, "The secrets file \(path) (config.yaml secrets.file) \(why).", hint: "Create it with `install -m 600 /dev/null \(path)` and add NAME=value lines, or change secrets.file in config.yaml.")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw CapstanError(.config, "The secrets file \(path) (config.yaml secrets.file) is not a regular file.", hint: "Point secrets.file at a file of NAME=value lines.")
        }
        guard st.st_uid == getuid() else {
            throw CapstanError(.config, "The secrets file \(path) belongs to another user (uid \(st.st_uid)); refusing to read secrets from it.", hint: "Use a file of your own, mode 0600.")
        }
        let mode = st.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw CapstanError(.config, "The secrets file \(path) can be read or written by others (mode \(String(mode, radix: 8))); refusing to read secrets from it.", hint: "Run `chmod 600 \(path)`.")
        }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CapstanError(.config, "The secrets file \(path) cannot be read as UTF-8 text.", hint: "Write it as NAME=value lines.")
        }
        return try parse(text, source: path)
    }

    /// Parses a secrets file's `text`. Errors name the file and the line, never a value.
    public static func parse(_ text: String, source: String = "secrets file") throws -> [String: String] {
        var out: [String: String] = [:]
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw.hasSuffix("\r") ? raw.dropLast() : raw)
            line = line.drop { $0 == " " || $0 == "\t" }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("export ") { line = line.dropFirst(7).drop { $0 == " " } }
            func bad(_ what: String) -> CapstanError {
                CapstanError(.config, "The secrets file \(source), line \(i + 1): \(what).", hint: "Each line is NAME=value (or export NAME=value); # starts a comment.")
            }
            guard let eq = line.firstIndex(of: "=") else { throw bad("no '=' (expected NAME=value)") }
            let name = String(line[..<eq]).trimmingCharacters(in: .whitespaces)
            guard name.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil else {
                throw bad("the name before '=' is not a valid variable name")
            }
            var value = Substring(line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces))
            if value.count >= 2, let q = value.first, q == "\"" || q == "'", value.last == q {
                value = value.dropFirst().dropLast()
            }
            guard out[name] == nil else { throw bad("\(name) is set twice") }
            out[name] = String(value)
        }
        return out
    }
}
