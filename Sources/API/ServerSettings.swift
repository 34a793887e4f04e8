import CapstanCore
public import Foundation

/// Which control plane a client talks to, and how it authenticates: `--server` /
/// `CAPSTAN_SERVER`, `--token-file` / `CAPSTAN_TOKEN` and `CAPSTAN_SERVER_CA`, resolved and
/// checked. The token is kept out of ``description`` and every error this type throws.
public struct ServerSettings: Sendable, Hashable, CustomStringConvertible {
    /// The server's base URL (`http://host:port` or `https://host[:port][/prefix]`), without a
    /// trailing slash.
    public var server: URL
    /// The bearer token, if any.
    public var token: String?
    /// A PEM file of extra CA certificates trusted for `https` (besides the system's).
    public var caFile: String?

    public init(server: URL, token: String?, caFile: String? = nil) {
        self.server = server
        self.token = token
        self.caFile = caFile
    }

    public var description: String {
        "\(server.absoluteString) (token \(token == nil ? "none" : "set")\(caFile.map { ", CA \($0)" } ?? ""))"
    }

    /// The environment variables read.
    public static let serverVariable = "CAPSTAN_SERVER"
    public static let tokenVariable = "CAPSTAN_TOKEN"
    public static let caVariable = "CAPSTAN_SERVER_CA"

    /// The settings `--server`, `--token-file` and the environment give; nil for embedded mode
    /// (no server: the option and `CAPSTAN_SERVER` unset or empty). The option wins over the
    /// variable, so `--server ''` forces embedded mode; `--token-file` wins over `CAPSTAN_TOKEN`.
    public static func resolve(serverOption: String?, tokenFile: String?, environment: [String: String]) throws -> ServerSettings? {
        let raw: String
        let source: String
        if let serverOption {
            raw = serverOption
            source = "--server"
        } else {
            raw = environment[serverVariable] ?? ""
            source = serverVariable
        }
        let trimmed = raw.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else {
            if tokenFile != nil {
                throw CapstanError(.invalidRequest, "--token-file was given but no server: the token is for a Capstan server.", hint: "Set CAPSTAN_SERVER (or --server URL) to the server's URL, or leave out --token-file.")
            }
            return nil
        }
        let url = try parseServerURL(trimmed, source: source)
        var token: String?
        if let tokenFile {
            token = try readTokenFile(tokenFile)
        } else if let t = environment[tokenVariable]?.trimmingCharacters(in: .whitespacesAndNewlines), !t.isEmpty {
            try checkToken(t, source: tokenVariable)
            token = t
        }
        let ca = environment[caVariable].flatMap { $0.isEmpty ? nil : $0 }
        if let ca, !FileManager.default.isReadableFile(atPath: ca) {
            throw CapstanError(.config, "\(caVariable) names \(ca), which cannot be read.", hint: "Point \(caVariable) at a PEM file of the CA certificate(s) that signed the server's certificate, or unset it to use the system's trust store alone.")
        }
        return ServerSettings(server: url, token: token, caFile: ca)
    }

    /// Checks a server URL (`source` names where it came from, for the message): `http` or
    /// `https`, a host, no user or password (a token goes in `CAPSTAN_TOKEN`), no query or
    /// fragment. A path is kept as the prefix routes go under; a trailing `/` is dropped.
    public static func parseServerURL(_ text: String, source: String = "the server URL") throws -> URL {
        let shown = String(text.prefix(200))
        guard let c = URLComponents(string: text), let scheme = c.scheme?.lowercased() else {
            throw CapstanError(.invalidRequest, "\(source) '\(shown)' is not a URL.", hint: "Write the server's URL with its scheme, e.g. http://127.0.0.1:8080 or https://capstan.example.com.")
        }
        guard scheme == "http" || scheme == "https" else {
            let hint = c.host == nil && c.path.allSatisfy(\.isNumber)
                ? "Write the scheme too: http://\(shown)."
                : "Use http:// or https://, e.g. http://127.0.0.1:8080."
            throw CapstanError(.invalidRequest, "\(source) '\(shown)' is not an http or https URL.", hint: hint)
        }
        guard let host = c.host, !host.isEmpty else {
            throw CapstanError(.invalidRequest, "\(source) '\(shown)' has no host.", hint: "Write it as \(scheme)://HOST[:PORT].")
        }
        if c.user != nil || c.password != nil {
            // Never repeat it: the part before @ may be a secret.
            throw CapstanError(.invalidRequest, "\(source) carries a user name or password (before '@'); Capstan never takes credentials in a URL.", hint: "Put the API token in CAPSTAN_TOKEN or a file named by --token-file, and write the URL as \(scheme)://\(host)\(c.port.map { ":\($0)" } ?? "").")
        }
        if c.query != nil || c.fragment != nil {
            throw CapstanError(.invalidRequest, "\(source) '\(shown)' has a query or fragment.", hint: "Write only the server's base URL, e.g. \(scheme)://\(host)\(c.port.map { ":\($0)" } ?? "").")
        }
        var base = c
        while base.path.hasSuffix("/") { base.path.removeLast() }
        if base.path.hasSuffix(CapstanAPI.prefix) { base.path.removeLast(CapstanAPI.prefix.count) }
        base.scheme = scheme
        guard let url = base.url else {
            throw CapstanError(.invalidRequest, "\(source) '\(shown)' is not a URL.", hint: "Write it as http://HOST:PORT.")
        }
        return url
    }

    /// The token in `path` (surrounding whitespace and newlines dropped).
    public static func readTokenFile(_ path: String) throws -> String {
        let expanded = (path as NSString).expandingTildeInPath
        guard let data = FileManager.default.contents(atPath: expanded) else {
            throw CapstanError(.io, "Cannot read the token file \(path).", hint: "Check the path and its permissions; the file holds the token `capstan serve token create` printed.")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else {
            throw CapstanError(.invalidRequest, "The token file \(path) is empty.", hint: "Write the token `capstan serve token create NAME` printed into it.")
        }
        try checkToken(token, source: "the token file \(path)")
        return token
    }

    /// A token goes into a header: no whitespace or control characters. The message never
    /// includes the token.
    static func checkToken(_ token: String, source: String) throws {
        if token.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value > 0x7E }) {
            throw CapstanError(.invalidRequest, "The API token in \(source) has spaces, line breaks or other characters a token cannot have (\(token.count) characters; not shown).", hint: "It should be the single word `capstan serve token create` printed.")
        }
    }
}
