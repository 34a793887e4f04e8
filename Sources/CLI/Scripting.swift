import ArgumentParser
import CapstanAPI
import CapstanCore
import CapstanSQLite
import CapstanRuntime
import Foundation

// What makes `capstan` script well: exit codes that say how a job ended, `--json` with nested
// objects, one error style, and shell completion of job and cluster names (docs/cli.md).

/// The exit status of a verb that waits for a job to end (`launch` without `--detach`,
/// `logs -f`): 0 succeeded, 1 failed, 2 cancelled. (1 is also any error of capstan's own, said
/// on stderr after `error:`.)
enum JobExit {
    static func code(_ status: JobStatus) -> Int32 {
        switch status {
        case .succeeded: 0
        case .cancelled: 2
        default: 1
        }
    }

    /// Throws the exit code of a job that did not succeed.
    static func finish(_ job: JobRecord) throws {
        let code = code(job.status)
        if code != 0 { throw ExitCode(code) }
    }
}

/// A job as `--json` prints it: the record's fields, with `settings` and `metrics` as objects
/// (the record keeps them as JSON text). `jobs`, `launch`, `cancel`, `logs -f` and `top` print
/// this shape.
struct JobJSON: Encodable {
    var job: JobRecord

    func encode(to encoder: any Encoder) throws {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        guard case .object(var fields) = try JSONDecoder().decode(JSONValue.self, from: e.encode(job)) else {
            try job.encode(to: encoder)
            return
        }
        for key in ["settings", "metrics"] {
            if let text = fields[key]?.stringValue, let parsed = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) {
                fields[key] = parsed
            }
        }
        try JSONValue.object(fields).encode(to: encoder)
    }

    static func list(_ jobs: [JobRecord]) -> [JobJSON] { jobs.map(JobJSON.init) }
}

/// One line of `logs --json`: which node printed it, when this capstan read it, and the line.
/// The last object of `logs -f --json` is `{"end": <job>}` instead.
struct LogLineJSON: Encodable {
    var node: Int
    var time: Date
    var line: String
}

/// `{"end": <job>}`: how the job ended, last line of `logs -f --json`.
struct LogEndJSON: Encodable {
    var end: JobJSON
}

/// Prints one compact JSON object on a line of its own (NDJSON), dates with milliseconds as
/// `events --json` and the API write them.
func printJSONLine<T: Encodable>(_ value: T) throws {
    print(String(decoding: try CapstanAPI.encoder.encode(value), as: UTF8.self))
}

/// The error style every verb shares: `error: what happened` on stderr, the hint on its own line
/// (`  → what to do`). ArgumentParser's own messages (`Error: …`, usage) are brought into it.
enum ErrorStyle {
    static func message(_ text: String) -> String {
        var s = text
        if s.hasPrefix("Error: ") { s = "error: " + s.dropFirst("Error: ".count) }
        else if !s.hasPrefix("error: "), !s.isEmpty { s = "error: " + s }
        let style = TerminalStyle.stderr
        if style.enabled, s.hasPrefix("error:") { s = style.red("error:") + s.dropFirst("error:".count) }
        return s
    }
}

/// Shell completion of the names a verb takes, from this home's state (SQLite; nothing when
/// the home has none yet or keeps its state in PostgreSQL — completion never connects anywhere).
enum NameCompletion {
    static func jobs(_ words: [String], _ index: Int, _ prefix: String) async -> [String] {
        guard let store = openStore(words) else { return [] }
        let ids = ((try? await store.jobs(includeFinished: true, limit: 200)) ?? []).map(\.id)
        return ids.filter { $0.hasPrefix(prefix) }
    }

    static func clusters(_ words: [String], _ index: Int, _ prefix: String) async -> [String] {
        guard let store = openStore(words) else { return [] }
        let names = ((try? await store.clusters(includeFinished: false)) ?? []).map(\.name)
        return names.filter { $0.hasPrefix(prefix) }
    }

    /// The home's SQLite store, when it has one (`--home` on the line being completed wins).
    static func openStore(_ words: [String]) -> SQLiteStateStore? {
        var home = CapstanHome.fromEnvironment()
        if let i = words.firstIndex(of: "--home"), i + 1 < words.count { home = CapstanHome(root: words[i + 1]) }
        let db = home.stateFolder + "/capstan.db"
        guard FileManager.default.fileExists(atPath: db) else { return nil }
        return try? SQLiteStateStore(path: db)
    }
}

/// How `up` and `move` say each step of provisioning: one line per step; on a terminal (see
/// ``ProgressMode``) the wait for nodes to boot also shows its elapsed time on the live line
/// (``ProgressLine``), redrawn every second until the next step, and outcomes are coloured.
/// Piped, nothing is redrawn.
final class StepPrinter: Sendable {
    static let tag = "steps"
    private let out: ProgressLine

    init(out: ProgressLine = .stdout) { self.out = out }

    /// The provisioner's progress callback.
    var callback: @Sendable (String) -> Void { { [self] line in self.step(line) } }

    func step(_ line: String) {
        let style = out.style
        let text = line.hasPrefix("ready:") || line.hasPrefix("moved:") ? style.green(line) : line.hasPrefix("failed:") ? style.red(line) : line
        out.clear(tag: Self.tag)
        out.print("  " + text)
        flushStdout()
        if line.contains("waiting") {
            let since = ContinuousClock.now
            out.show(tag: Self.tag, force: true) { ProgressSnapshot(label: "  … waiting", fraction: nil, elapsed: (ContinuousClock.now - since).seconds) }
        }
    }

    /// Ends a live elapsed-time line, before the verb prints its result.
    func finish() { out.clear(tag: Self.tag) }
}
