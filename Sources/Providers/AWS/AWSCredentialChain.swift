public import CapstanCore
public import Foundation

/// Finds AWS credentials and region the way the AWS CLI does: environment variables first
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
/// `AWS_DEFAULT_REGION`), then the profile (`AWS_PROFILE`, default `default`) in the shared
/// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, sections
/// `[name]`) and the config file (`AWS_CONFIG_FILE`, default `~/.aws/config`, sections
/// `[profile name]`, or `[default]`).
public struct AWSCredentialChain: Sendable {
    public var environment: [String: String]
    /// Overrides `AWS_PROFILE`.
    public var profile: String?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment, profile: String? = nil) {
        self.environment = environment
        self.profile = profile
    }

    var home: String { environment["HOME"] ?? NSHomeDirectory() }
    var profileName: String { profile ?? environment["AWS_PROFILE"] ?? "default" }
    var credentialsFile: String { environment["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials" }
    var configFile: String { environment["AWS_CONFIG_FILE"] ?? home + "/.aws/config" }

    /// The credentials, or a `.auth` error that says where Capstan looked.
    public func credentials() throws -> AWSCredentials {
        if profile == nil, let id = environment["AWS_ACCESS_KEY_ID"], !id.isEmpty,
           let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty {
            return AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 })
        }
        let name = profileName
        for (file, section) in [(credentialsFile, name), (configFile, name == "default" ? "default" : "profile \(name)")] {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            let values = Self.parseINI(text)[section] ?? [:]
            if let id = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] {
                return AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: values["aws_session_token"])
            }
        }
        throw CapstanError(
            .auth, "No AWS credentials found for profile '\(name)'.",
            hint: "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add the profile to \(credentialsFile) (`aws configure --profile \(name)`).",
            provider: "aws")
    }

    /// The region from the environment or the profile's config, if any.
    public func region() -> String? {
        if let r = environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"], !r.isEmpty { return r }
        let name = profileName
        guard let text = try? String(contentsOfFile: configFile, encoding: .utf8) else { return nil }
        return Self.parseINI(text)[name == "default" ? "default" : "profile \(name)"]?["region"]
    }

    /// `[section]` → key → value; `#`/`;` comments; keys lower-cased; values trimmed.
    static func parseINI(_ text: String) -> [String: [String: String]] {
        var out: [String: [String: String]] = [:]
        var section: String?
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("["), line.hasSuffix("]") {
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                continue
            }
            guard let section, let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            out[section, default: [:]][key] = value
        }
        return out
    }
}
