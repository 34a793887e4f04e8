import CapstanAWS
import CapstanCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where each provider Capstan knows takes its credentials from, looked up without reading a
/// value out: the same order the provider itself uses (docs/cli.md lists them). A plugin
/// Capstan does not know is reported by the `…File` settings of its section, if any.
enum CredentialProbe {
    typealias Credentials = CheckReport.Credentials

    static func lookup(_ name: String, settings: JSONValue, configured: Bool, environment: [String: String] = ProcessInfo.processInfo.environment) -> Credentials {
        let home = environment["HOME"] ?? NSHomeDirectory()
        func expand(_ path: String) -> String { path.hasPrefix("~/") ? home + path.dropFirst(1) : path }
        /// A key file named by a setting, else an environment variable, else default files.
        func keyFile(setting: String, variable: String?, defaults: [String] = []) -> Credentials {
            var searched: [String] = []
            if let file = settings[setting]?.stringValue {
                let path = expand(file)
                let place = "providers.\(name).\(setting): \(path)"
                if FileManager.default.isReadableFile(atPath: path) { return Credentials(status: "found", foundIn: place, searched: [place]) }
                return Credentials(status: "missing", foundIn: nil, searched: [place + (FileManager.default.fileExists(atPath: path) ? " (unreadable)" : " (no such file)")])
            }
            searched.append("providers.\(name).\(setting) (not set)")
            if let variable {
                if let v = environment[variable], !v.isEmpty {
                    let place = "environment: \(variable)"
                    return Credentials(status: "found", foundIn: place, searched: searched + [place])
                }
                searched.append("environment: \(variable) (not set)")
            }
            for d in defaults {
                let path = expand(d)
                if FileManager.default.isReadableFile(atPath: path) { return Credentials(status: "found", foundIn: path, searched: searched + [path]) }
                searched.append("\(path) (no such file)")
            }
            return Credentials(status: "missing", foundIn: nil, searched: searched)
        }
        switch name {
        case "local", "sim":
            return Credentials(status: "not needed", foundIn: nil, searched: [])
        case "ssh":
            // Keys named in the section (per host or shared); else ssh's own defaults.
            var keys = [settings["key"]?.stringValue].compactMap { $0 }
            for h in settings["hosts"]?.arrayValue ?? [] { if let k = h["key"]?.stringValue { keys.append(k) } }
            guard !keys.isEmpty else {
                return Credentials(status: configured ? "found" : "missing", foundIn: configured ? "ssh's own defaults (~/.ssh/config, ~/.ssh/id_*, ssh-agent)" : nil, searched: ["providers.ssh.key (not set)"])
            }
            let paths = Array(Set(keys.map(expand))).sorted()
            let missing = paths.filter { !FileManager.default.isReadableFile(atPath: $0) }
            if missing.isEmpty { return Credentials(status: "found", foundIn: "SSH key" + (paths.count == 1 ? " " : "s ") + paths.joined(separator: ", "), searched: paths) }
            return Credentials(status: "missing", foundIn: nil, searched: paths.map { missing.contains($0) ? "\($0) (no such file, or unreadable)" : $0 })
        case "aws":
            var aws = AWSSettings()
            if let decoded = try? settings.decode(AWSSettings.self) { aws = decoded }
            let lookup = aws.credentialChain(environment: environment).lookup()
            var searched = lookup.searched
            if let file = aws.credentialsFile { searched.insert("providers.aws.credentialsFile: \(expand(file))", at: 0) }
            return Credentials(status: lookup.foundIn == nil ? "missing" : "found", foundIn: lookup.foundIn, searched: searched)
        case "gcp":
            return keyFile(setting: "credentialsFile", variable: "GOOGLE_APPLICATION_CREDENTIALS")
        case "runpod":
            return keyFile(setting: "apiKeyFile", variable: "RUNPOD_API_KEY")
        case "lambda":
            return keyFile(setting: "apiKeyFile", variable: "LAMBDA_API_KEY", defaults: ["~/.lambda_cloud/lambda_keys"])
        default:
            // A plugin Capstan does not know: its section's file settings, if it names any.
            if case .object(let o) = settings {
                let files = o.filter { $0.key.hasSuffix("File") && $0.value.stringValue != nil }.keys.sorted()
                if let key = files.first { return keyFile(setting: key, variable: nil) }
            }
            return Credentials(status: "unknown", foundIn: nil, searched: [])
        }
    }
}

/// The config.yaml lines that turn a provider on (`capstan check` prints them for every
/// provider that is off). Each is valid as written against the provider's schema.
enum EnableSnippet {
    static func lines(for name: String, sectionExists: Bool) -> String {
        if sectionExists || name == "local" {
            // Its section is there with `enabled: false`: the rest of it stays as it is.
            return "providers:\n  \(name):\n    enabled: true        # was false; the section's other settings stay"
        }
        switch name {
        case "ssh":
            return """
                providers:
                  ssh:
                    user: ubuntu
                    key: ~/.ssh/id_ed25519
                    hosts:
                      - {address: 10.0.0.5, gpu: H100, gpus: 8}
                """
        case "aws":
            return """
                providers:
                  aws:
                    profile: default     # in ~/.aws/credentials (`aws configure`); leave out to use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
                    regions: [us-east-1]
                """
        case "gcp":
            return """
                providers:
                  gcp:
                    credentialsFile: ~/.config/capstan/gcp-key.json   # a service-account JSON key; or GOOGLE_APPLICATION_CREDENTIALS
                """
        case "runpod":
            return """
                providers:
                  runpod:
                    apiKeyFile: ~/.config/capstan/runpod-key   # the API key alone, mode 600; or RUNPOD_API_KEY
                """
        case "lambda":
            return """
                providers:
                  lambda:
                    apiKeyFile: ~/.lambda_cloud/lambda_keys    # or LAMBDA_API_KEY
                """
        default:
            return "providers:\n  \(name): {}            # its settings: capstan plugins inspect \(name)"
        }
    }
}

/// Colour and emphasis for a terminal: on only when the stream is a TTY, `NO_COLOR` is unset
/// or empty (no-color.org) and `TERM` is not `dumb`.
struct TerminalStyle {
    var enabled: Bool

    static func forStream(_ fd: Int32, environment: [String: String] = ProcessInfo.processInfo.environment) -> TerminalStyle {
        let noColor = !(environment["NO_COLOR"] ?? "").isEmpty
        return TerminalStyle(enabled: isatty(fd) == 1 && !noColor && environment["TERM"] != "dumb")
    }
    static var stdout: TerminalStyle { forStream(STDOUT_FILENO) }
    static var stderr: TerminalStyle { forStream(STDERR_FILENO) }

    func wrap(_ s: String, _ code: String) -> String { enabled ? "\u{1B}[\(code)m\(s)\u{1B}[0m" : s }
    func red(_ s: String) -> String { wrap(s, "1;31") }
    func green(_ s: String) -> String { wrap(s, "32") }
    func yellow(_ s: String) -> String { wrap(s, "33") }
    func dim(_ s: String) -> String { wrap(s, "2") }
    func bold(_ s: String) -> String { wrap(s, "1") }
}
