import ArgumentParser
import CapstanCore
import CapstanSDK
import CapstanPostgres
import CapstanRuntime
import CapstanSQLite
import CapstanProviders
import Foundation
import Logging

/// The `capstan` command (named apart from CapstanSDK's ``Capstan``, which it is built on).
@main
struct CapstanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capstan",
        abstract: "Provision the cheapest GPU capacity across clouds and run fine-tunes on it.",
        discussion: """
            State and configuration live in CAPSTAN_HOME (default ~/.capstan); see docs/configuration.md.
            Plugins are found on CAPSTAN_PLUGIN_PATH (absolute paths), in $CAPSTAN_HOME/plugins and next to
            this binary, and loaded only when config.yaml enables them (providers.<name>).
            With CAPSTAN_SERVER (or --server URL) set, the cluster and job verbs run on that Capstan server
            (`capstan serve`), authenticated by CAPSTAN_TOKEN (or --token-file PATH); see docs/sdk-client.md.
            """,
        version: CapstanVersion.string,
        subcommands: [
            OffersCommand.self, UpCommand.self, DownCommand.self, MoveCommand.self, StatusCommand.self, ReconcileCommand.self,
            LaunchCommand.self, JobsCommand.self, LogsCommand.self, EventsCommand.self, MetricsCommand.self, CancelCommand.self, CheckpointsCommand.self,
            StorageCommand.self, PluginsCommand.self, ServeCommand.self, AgentCommand.self, JobControllerCommand.self,
            TopCommand.self, NotifyCommand.self, CheckCommand.self,
        ])

    /// ArgumentParser's entry point, with its error messages in Capstan's style (``ErrorStyle``).
    static func main() async {
        do {
            var command = try await asyncParseAsRoot(nil)
            if var asyncCommand = command as? any AsyncParsableCommand { try await asyncCommand.run() } else { try command.run() }
        } catch {
            let code = exitCode(for: error)
            guard code != .success, !(error is ExitCode) else { exit(withError: error) }
            let message = fullMessage(for: error)
            if !message.isEmpty { printError(ErrorStyle.message(message)) }
            Foundation.exit(code.rawValue)
        }
    }
}

enum CapstanVersion {
    static let string = "0.1.0"
}

/// Flags every verb accepts.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .long, help: "Print data as JSON (stable field names) instead of tables.")
    var json = false

    @Option(name: .long, help: "Capstan's home folder (default: $CAPSTAN_HOME or ~/.capstan).")
    var home: String?

    @Flag(name: [.short, .long], help: "Log what Capstan and its plugins do, to stderr.")
    var verbose = false

    var capstanHome: CapstanHome { home.map(CapstanHome.init(root:)) ?? .fromEnvironment() }

    var logger: Logger {
        var l = Logger(label: "capstan") { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = .debug
            return h
        }
        l.logLevel = verbose ? .debug : .warning
        return l
    }

    func loadRegistry() throws -> ProviderRegistry {
        let registry = try ProviderRegistry.load(home: capstanHome, logger: logger)
        for notice in registry.homeNotices { printError("warning: \(notice)") }
        return registry
    }

    /// Everything a provisioning verb needs: providers, the configured state and its locks,
    /// fault hooks.
    func provisioner(_ registry: ProviderRegistry, progress: (@Sendable (String) -> Void)? = nil) async throws -> Provisioner {
        provisioner(registry, state: try await openState(registry), progress: progress)
    }

    func offerSearch(_ registry: ProviderRegistry, store: (any StateStore)?, refresh: Bool = false) -> OfferSearch {
        CapstanWiring.offerSearch(registry, store: store, refresh: refresh)
    }
}

/// Formats dollars.
func dollars(_ v: Double) -> String { String(format: "$%.2f", v) }

/// Formats a duration in seconds as `3h12m`, `4m05s`, `12s`.
func humanDuration(_ seconds: Double) -> String { ProgressText.duration(seconds) }

/// Prints a value as pretty JSON to stdout.
func printJSON<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    e.dateEncodingStrategy = .iso8601
    print(String(decoding: try e.encode(value), as: UTF8.self))
}

/// Writes a line to stderr.
func printError(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

/// Runs `body`, turning a ``CapstanError`` into a readable message and exit code 1.
/// Before returning, waits for the leases this process released to be released in the
/// database (PostgreSQL state), so the next `capstan` finds them free.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
        await PostgresLeases.finishReleases()
    } catch let e as CapstanError {
        await PostgresLeases.finishReleases()
        printError(ErrorStyle.message("error: \(e)"))
        throw ExitCode(1)
    } catch {
        await PostgresLeases.finishReleases()
        throw error
    }
}

/// A plain text table, columns padded to their widest cell.
struct TextTable {
    var header: [String]
    var rows: [[String]] = []
    /// Columns aligned right (numbers).
    var rightAligned: Set<Int> = []

    func render() -> String {
        let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                let pad = String(repeating: " ", count: widths[i] - c.count)
                return rightAligned.contains(i) ? pad + c : c + pad
            }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}
