import ArgumentParser
import CapstanAPI
import CapstanCore
import CapstanTrainer
import Foundation

/// `capstan events JOB`: a job's whole history from the state store — its attempts, failures,
/// restarts, node replacements, checkpoints, the controllers that took it — page by page, and
/// with `-f` as it happens.
struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Print a job's whole history (attempts, failures, restarts, replacements, checkpoints, controllers); -f follows until it ends.",
        discussion: "One line per event: its time (UTC), its kind and what happened. --json prints one JSON object per line (id, time, kind, message).")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Job id or name.", completion: .custom(NameCompletion.jobs)) var job: String
    @Flag(name: [.short, .long], help: "Follow until the job ends.") var follow = false
    @Option(help: "Only these kinds (comma-separated, e.g. attempt,restarting,failed).") var kind: String?

    /// Where the events come from: the store here, or a server.
    struct Source {
        var job: () async throws -> JobRecord
        var page: (_ after: Int64) async throws -> [StateEvent]
    }

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in
                let j = try await client.job(job)
                try await show(Source(job: { try await client.job(j.id) }, page: { try await client.events(job: j.id, after: $0, limit: Self.pageSize) }), job: j)
            }) { return }
            let service = try await global.jobs()
            let j = try await requireJob(service, job)
            if follow, !j.status.isFinished { try await service.ensureController(j.id) }
            let store = service.context.store
            try await show(Source(job: { try await requireJob(service, j.id) }, page: { try await store.events(job: j.id, after: $0, limit: Self.pageSize) }), job: j)
        }
    }

    static let pageSize = 1000

    func show(_ source: Source, job j: JobRecord) async throws {
        let kinds = try Self.kinds(kind)
        var last: Int64 = 0
        var printed = 0
        /// Prints every event after `last`, page by page.
        func drain() async throws {
            while true {
                let page = try await source.page(last)
                // (Ids at or below the last seen are skipped: a server that ignores `after`
                // answers its newest events again.)
                var fresh = 0
                for e in page where (e.id ?? 0) > last {
                    fresh += 1
                    last = max(last, e.id ?? last)
                    if let kinds, !kinds.contains(e.kind) { continue }
                    print(try Self.line(e, json: global.json))
                    printed += 1
                }
                flushStdout()
                if page.count < Self.pageSize || fresh == 0 { break }
            }
        }
        try await drain()
        if follow {
            var current = j
            while !current.status.isFinished {
                try await Task.sleep(for: .milliseconds(500))
                current = try await source.job()
                try await drain()
            }
            try await drain()
        }
        if printed == 0, !global.json { print("No events\(kinds == nil ? "" : " of those kinds") for job \(j.id) yet.") }
    }

    /// The `--kind` filter, nil for every kind.
    static func kinds(_ raw: String?) throws -> Set<String>? {
        guard let raw else { return nil }
        let kinds = Set(raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        guard !kinds.isEmpty else {
            throw CapstanError(.invalidRequest, "--kind '\(raw)' names no kind.", hint: "Pass kinds separated by commas, e.g. --kind attempt,restarting,failed.")
        }
        return kinds
    }

    static let time: DateFormatter = {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd HH:mm:ss.SSS"
        return f
    }()

    /// One event as printed: `2026-11-30 10:18:29.474  checkpoint  Checkpoint step 130 …`, or
    /// a JSON object.
    static func line(_ e: StateEvent, json: Bool) throws -> String {
        if json { return String(decoding: try CapstanAPI.encoder.encode(e), as: UTF8.self) }
        let kind = e.kind.padding(toLength: max(e.kind.count, 12), withPad: " ", startingAt: 0)
        return "\(time.string(from: e.time))  \(kind)  \(e.message)"
    }
}
