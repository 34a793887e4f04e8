import CapstanCore
import Foundation
import PostgresNIO

/// A parsed `postgres://user[:password]@host[:port]/database[?sslmode=…]` URL.
///
/// The password comes from the URL, else from `CAPSTAN_POSTGRES_PASSWORD`. Nothing this type
/// prints (``redacted``, errors) ever holds it.
struct PostgresURL: Sendable {
    /// `sslmode` as libpq reads it.
    enum SSLMode: String, Sendable, CaseIterable {
        /// Plain TCP.
        case disable
        /// TLS when the server offers it (certificate not verified); plain otherwise. The default.
        case allow, prefer
        /// TLS or nothing; the certificate is not verified (libpq's `require`).
        case require
        /// TLS, the certificate checked against the system's roots (not the host name).
        case verifyCA = "verify-ca"
        /// TLS, certificate and host name checked.
        case verifyFull = "verify-full"
    }

    /// The environment variable read for the password when the URL has none.
    static let passwordVariable = "CAPSTAN_POSTGRES_PASSWORD"
    static let knownParameters = ["sslmode", "application_name", "connect_timeout"]

    var host: String
    var port: Int
    var user: String
    var password: String?
    var database: String
    var sslMode: SSLMode
    var applicationName: String
    var connectTimeout: Duration

    /// The URL without its password (what `location`, messages and logs show).
    var redacted: String {
        var s = "postgres://\(Self.encode(user))@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(Self.encode(database))"
        var query: [String] = []
        if sslMode != .prefer { query.append("sslmode=\(sslMode.rawValue)") }
        if applicationName != "capstan" { query.append("application_name=\(Self.encode(applicationName))") }
        if connectTimeout != .seconds(10) { query.append("connect_timeout=\(Int(connectTimeout.seconds))") }
        if !query.isEmpty { s += "?" + query.joined(separator: "&") }
        return s
    }

    /// "database `db` as user `u` at host:port", for messages.
    var what: String { "database '\(database)' as user '\(user)' at \(host):\(port)" }

    static func encode(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .urlUserAllowed.subtracting(CharacterSet(charactersIn: ":@/?#[]"))) ?? s
    }

    /// `url` with any `user:password@` part's password, and any `password=` parameter's value,
    /// replaced by `***` (for messages about a URL that could not be used).
    static func redact(_ url: String) -> String {
        var out = url
        if let scheme = out.range(of: "://") {
            let rest = out[scheme.upperBound...]
            let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
            if let at = rest[..<authorityEnd].lastIndex(of: "@"), let colon = rest[..<at].firstIndex(of: ":") {
                out = String(out[..<colon]) + ":***" + out[at...]
            }
        }
        if let regex = try? NSRegularExpression(pattern: "([?&]password=)[^&#]*", options: [.caseInsensitive]) {
            out = regex.stringByReplacingMatches(in: out, range: NSRange(out.startIndex..., in: out), withTemplate: "$1***")
        }
        return out
    }

    init(_ url: String, environment: [String: String]) throws {
        func bad(_ why: String) -> CapstanError {
            CapstanError(
                .config, "Cannot use the state database URL '\(Self.redact(url))': \(why).",
                hint: "Write it as postgres://USER@HOST:PORT/DATABASE?sslmode=disable|prefer|require|verify-full; put the password in \(Self.passwordVariable) (or in the URL as USER:PASSWORD@).")
        }
        guard let c = URLComponents(string: url) else { throw bad("it is not a URL (is the port a number?)") }
        guard let scheme = c.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql" else {
            throw bad("the scheme must be postgres:// or postgresql://")
        }
        guard var host = c.host, !host.isEmpty else { throw bad("it names no host") }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.host = host
        if let p = c.port {
            guard (1...65535).contains(p) else { throw bad("port \(p) is out of range") }
            port = p
        } else {
            port = 5432
        }
        guard let user = c.user, !user.isEmpty else { throw bad("it names no user (postgres://USER@HOST/DATABASE)") }
        self.user = user
        if let p = c.password, !p.isEmpty {
            password = p
        } else if let p = environment[Self.passwordVariable], !p.isEmpty {
            password = p
        } else {
            password = nil
        }
        let path = c.path.hasPrefix("/") ? String(c.path.dropFirst()) : c.path
        guard !path.contains("/") else { throw bad("the database name '\(path)' holds a '/'") }
        database = path.isEmpty ? user : path
        sslMode = .prefer
        applicationName = "capstan"
        connectTimeout = .seconds(10)
        for item in c.queryItems ?? [] {
            let value = item.value ?? ""
            switch item.name {
            case "sslmode":
                guard let m = SSLMode(rawValue: value) else {
                    throw bad("sslmode '\(value)' is not one of \(SSLMode.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                sslMode = m
            case "application_name":
                applicationName = value
            case "connect_timeout":
                guard let s = Int(value), s > 0 else { throw bad("connect_timeout must be a whole number of seconds") }
                connectTimeout = .seconds(s)
            case "password":
                throw bad("a password in the query string is not read (it would show wherever the URL does)")
            default:
                throw bad("unknown parameter '\(item.name)' (known: \(Self.knownParameters.joined(separator: ", ")))")
            }
        }
    }

    /// The TLS settings for `sslmode` (nil: plain TCP), and whether TLS is required.
    var tls: (configuration: TLSConfiguration, required: Bool)? {
        var t = TLSConfiguration.makeClientConfiguration()
        switch sslMode {
        case .disable: return nil
        case .allow, .prefer:
            t.certificateVerification = .none
            return (t, false)
        case .require:
            t.certificateVerification = .none
        case .verifyCA:
            t.certificateVerification = .noHostnameVerification
        case .verifyFull:
            break
        }
        return (t, true)
    }

    /// The pool's configuration. `statementTimeout`: the server ends a statement that runs
    /// longer (and a transaction left idle twice as long), so work a client gave up on does
    /// not linger holding locks.
    func clientConfiguration(statementTimeout: Duration? = nil) -> PostgresClient.Configuration {
        let mode: PostgresClient.Configuration.TLS = tls.map { $0.required ? .require($0.configuration) : .prefer($0.configuration) } ?? .disable
        var config = PostgresClient.Configuration(host: host, port: port, username: user, password: password, database: database, tls: mode)
        config.options.connectTimeout = connectTimeout
        config.options.additionalStartupParameters = [("application_name", applicationName)]
        if let statementTimeout {
            let ms = Int(statementTimeout.seconds * 1000)
            config.options.additionalStartupParameters += [("statement_timeout", "\(ms)"), ("idle_in_transaction_session_timeout", "\(2 * ms)")]
        }
        return config
    }

    /// One connection's configuration (the probe at connect).
    func connectionConfiguration() throws -> PostgresConnection.Configuration {
        var mode: PostgresConnection.Configuration.TLS = .disable
        if let tls {
            let context = try NIOSSLContext(configuration: tls.configuration)
            mode = tls.required ? .require(context) : .prefer(context)
        }
        var config = PostgresConnection.Configuration(host: host, port: port, username: user, password: password, database: database, tls: mode)
        config.options.connectTimeout = .nanoseconds(Int64(connectTimeout.seconds * 1e9))
        config.options.additionalStartupParameters = [("application_name", applicationName)]
        return config
    }
}

/// Turns what postgres-nio threw into a ``CapstanError`` that says what failed, why, and what
/// to do, and never holds the password.
enum PostgresErrors {
    /// PostgreSQL's own SQLSTATE and message, when the server answered.
    static func server(_ error: any Error) -> (state: String, message: String)? {
        guard let e = error as? PSQLError, let info = e.serverInfo, let state = info[.sqlState] else { return nil }
        var message = info[.message] ?? "error \(state)"
        if let detail = info[.detail] { message += " (\(detail))" }
        return (state, message)
    }

    /// Why, in words, without postgres-nio's generic description (which hides everything).
    static func why(_ error: any Error) -> String {
        if case let (_, message)? = server(error) { return message }
        if let e = error as? PSQLError {
            if let u = e.underlying { return "\(e.code): \(describe(u))" }
            return "\(e.code)"
        }
        if let e = error as? PostgresDecodingError {
            return "column \(e.columnName) could not be read as \(e.targetType) (\(e.code))"
        }
        return describe(error)
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? NIOConnectionError {
            let reasons = e.connectionErrors.map { "\($0.target): \($0.error)" }
            if !reasons.isEmpty { return reasons.joined(separator: "; ") }
            if let dns = e.dnsAError ?? e.dnsAAAAError { return "cannot resolve \(e.host): \(dns)" }
        }
        return String(describing: error)
    }

    /// A failure to connect (at ``PostgresStateStore/connect(url:logger:)``).
    static func connecting(_ error: any Error, _ url: PostgresURL) -> CapstanError {
        if let e = error as? CapstanError { return scrub(e, url.password) }
        let e: CapstanError
        if case let (state, message)? = server(error) {
            switch state {
            case "28P01", "28000":
                e = CapstanError(
                    .auth, "PostgreSQL refused \(url.what): \(message).",
                    hint: url.password == nil
                        ? "No password was given: put it in \(PostgresURL.passwordVariable) (or the URL), and check the role's pg_hba.conf entry."
                        : "Check the password (\(PostgresURL.passwordVariable) or the URL) and the role's pg_hba.conf entry.")
            case "3D000":
                e = CapstanError(.config, "PostgreSQL at \(url.host):\(url.port) has no database '\(url.database)': \(message).", hint: "Create it (CREATE DATABASE \(url.database) OWNER \(url.user)) or fix the `state:` URL.")
            case "42501":
                e = CapstanError(.auth, "PostgreSQL refused \(url.what): \(message).", hint: "Grant the role CONNECT on the database and CREATE on its schema (Capstan creates its own tables).")
            case "53300":
                e = CapstanError(.transient, "PostgreSQL at \(url.host):\(url.port) has no free connection: \(message).", hint: "Retry later, or raise max_connections.")
            default:
                e = CapstanError(.io, "Cannot open the state database (\(url.what)): \(message) [SQLSTATE \(state)].", hint: "Check the `state:` URL and the server's log.")
            }
        } else if let p = error as? PSQLError, p.code == .authMechanismRequiresPassword {
            e = CapstanError(.auth, "PostgreSQL asks for a password for \(url.what), and none was given.", hint: "Put it in \(PostgresURL.passwordVariable) (or in the URL as USER:PASSWORD@).")
        } else if let p = error as? PSQLError, p.code == .sslUnsupported {
            e = CapstanError(.config, "PostgreSQL at \(url.host):\(url.port) does not speak TLS, and sslmode=\(url.sslMode.rawValue) requires it.", hint: "Enable ssl on the server, or use sslmode=disable on a trusted network.")
        } else {
            e = CapstanError(
                .io, "Cannot connect to the state database (\(url.what)): \(why(error)).",
                hint: "Check that PostgreSQL is running and reachable from this machine at \(url.host):\(url.port) (listen_addresses, firewall), and the `state:` URL.")
        }
        return scrub(e, url.password)
    }

    /// Removes `password` from every text of `e`.
    static func scrub(_ e: CapstanError, _ password: String?) -> CapstanError {
        guard let password, !password.isEmpty else { return e }
        var e = e
        e.message = e.message.replacingOccurrences(of: password, with: "***")
        e.hint = e.hint?.replacingOccurrences(of: password, with: "***")
        e.cloudMessage = e.cloudMessage?.replacingOccurrences(of: password, with: "***")
        return e
    }
}
