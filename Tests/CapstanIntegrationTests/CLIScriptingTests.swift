import CapstanCore
import CapstanRuntime
import CapstanSQLite
import Foundation
import Testing

/// The built `capstan` as a script uses it (issue 20, "a CLI that scripts well"): exit codes
/// that say how a job ended, every `--json` output decoded with its objects nested, `down`
/// refusing a busy cluster, one error style, help that wraps, and shell completion of names.
@Suite("capstan in scripts: exit codes, --json, errors, help, completion", .serialized)
struct CLIScriptingTests {
    /// A job as `--json` prints it: `settings` and `metrics` are objects, not JSON text.
    struct JobOut: Decodable {
        var id: String
        var status: JobStatus
        var clusterName: String
        var settings: [String: JSONValue]
        var metrics: [String: JSONValue]?
        var attempt: Int
    }
    struct LogLine: Decodable { var node: Int; var time: String; var line: String }
    struct LogEnd: Decodable { var end: JobOut }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try JSONDecoder.iso.decode(T.self, from: Data(text.utf8))
    }
    /// The JSON lines of an NDJSON output.
    static func lines(_ text: String) -> [String] { text.split(separator: "\n").map(String.init) }

    /// Every string in `value` that is itself a JSON object or array (JSON inside a string),
    /// with its path; `skip` names keys whose strings are free text (a log line).
    static func jsonInStrings(_ value: JSONValue, path: String = "$", skip: Set<String> = []) -> [String] {
        switch value {
        case .string(let s):
            let t = s.trimmingCharacters(in: .whitespaces)
            guard t.hasPrefix("{") || t.hasPrefix("["), (try? JSONDecoder().decode(JSONValue.self, from: Data(t.utf8))) != nil else { return [] }
            return ["\(path): \(s.prefix(60))"]
        case .array(let a): return a.enumerated().flatMap { jsonInStrings($1, path: "\(path)[\($0)]", skip: skip) }
        case .object(let o): return o.filter { !skip.contains($0.key) }.flatMap { jsonInStrings($0.value, path: "\(path).\($0.key)", skip: skip) }
        default: return []
        }
    }

    /// Decodes `text` (one JSON document, or NDJSON with `ndjson`) and checks no string in it
    /// holds JSON.
    static func checkNested(_ verb: String, _ text: String, ndjson: Bool = false, skip: Set<String> = []) throws {
        let docs = ndjson ? lines(text) : [text]
        #expect(!docs.isEmpty, "\(verb): no output")
        for doc in docs {
            let value = try JSONDecoder().decode(JSONValue.self, from: Data(doc.utf8))
            let found = jsonInStrings(value, skip: skip)
            #expect(found.isEmpty, "\(verb): JSON inside strings: \(found)")
        }
    }

    static let metricsJob = "import json\nprint('hello from the job', flush=True)\nprint(json.dumps({'step': 1, 'loss': 0.5}), flush=True)\n"

    @Test("every verb's --json decodes with nested objects (jobs' settings and metrics are objects); logs --json is one object per line")
    func jsonShapes() async throws {
        let home = SmallJobHome(run: "python3 train.py", files: ["train.py": Self.metricsJob])
        defer { home.dir.cleanup() }
        let launched = try await home.capstan(["launch", home.spec, "--json"] + SmallJobHome.fast)
        #expect(launched.status == 0, "\(launched.stdout)\n\(launched.stderr)")
        let job = try Self.decode(JobOut.self, launched.stdout)
        #expect(job.status == .succeeded && job.settings["heartbeatTimeoutSeconds"]?.doubleValue == 10, "\(launched.stdout)")
        #expect(job.metrics?["step"]?.intValue == 1 && job.metrics?["loss"]?.doubleValue == 0.5, "\(launched.stdout)")
        try Self.checkNested("launch --json", launched.stdout)

        let jobs = try await home.capstan(["jobs", "--json"])
        #expect(jobs.status == 0, "\(jobs.stderr)")
        let listed = try Self.decode([JobOut].self, jobs.stdout)
        #expect(listed.map(\.id) == [job.id] && listed[0].metrics?["step"]?.intValue == 1 && listed[0].settings["stopGraceSeconds"]?.doubleValue == 3)
        try Self.checkNested("jobs --json", jobs.stdout)

        // logs --json: one object per line, node, time and line.
        let logs = try await home.capstan(["logs", job.id, "--json"])
        #expect(logs.status == 0, "\(logs.stderr)")
        let lines = try Self.lines(logs.stdout).map { try Self.decode(LogLine.self, $0) }
        #expect(lines.contains { $0.node == 0 && $0.line == "hello from the job" }, "\(logs.stdout)")
        // ISO 8601 with milliseconds, as `events --json` writes its times.
        let iso = ISO8601DateFormatter()
        iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        #expect(lines.allSatisfy { iso.date(from: $0.time) != nil }, "\(lines.map(\.time))")
        try Self.checkNested("logs --json", logs.stdout, ndjson: true, skip: ["line"])
        // -f: the same lines, then {"end": job}.
        let followed = try await home.capstan(["logs", job.id, "-f", "--json"])
        #expect(followed.status == 0, "\(followed.stderr)")
        let all = Self.lines(followed.stdout)
        let end = try Self.decode(LogEnd.self, try #require(all.last))
        #expect(end.end.id == job.id && end.end.status == .succeeded && end.end.metrics?["step"]?.intValue == 1)
        #expect(try all.dropLast().map { try Self.decode(LogLine.self, $0).line } == lines.map(\.line))

        // The rest, each decoded and checked for JSON inside strings.
        let events = try await home.capstan(["events", job.id, "--json"])
        struct Event: Decodable { var id: Int64; var time: String; var kind: String; var message: String }
        let decodedEvents = try Self.lines(events.stdout).map { try Self.decode(Event.self, $0) }
        #expect(events.status == 0 && !decodedEvents.isEmpty, "\(events.stdout)")
        try Self.checkNested("events --json", events.stdout, ndjson: true)
        let metrics = try await home.capstan(["metrics", job.id, "--json"])
        struct Point: Decodable { var step: Int; var values: [String: Double] }
        #expect(try Self.decode([Point].self, metrics.stdout).first?.values["loss"] == 0.5, "\(metrics.stdout)")
        let top = try await home.capstan(["top", job.id, "--once", "--json"])
        struct Frame: Decodable { var job: JobOut; var nodes: [JSONValue] }
        #expect(try Self.decode(Frame.self, top.stdout).job.settings["exitGraceSeconds"]?.doubleValue == 20, "\(top.stdout)")
        try Self.checkNested("top --json", top.stdout)
        let cancelled = try await home.capstan(["cancel", job.id, "--json"])
        #expect(try Self.decode(JobOut.self, cancelled.stdout).id == job.id, "\(cancelled.stdout) \(cancelled.stderr)")
        try Self.checkNested("cancel --json", cancelled.stdout)
        let up = try await home.capstan(["up", "shapes", "--json"])
        struct Report: Decodable { var cluster: Cluster; var instances: [Instance] }
        #expect(up.status == 0, "\(up.stdout) \(up.stderr)")
        #expect(try Self.decode(Report.self, up.stdout).cluster.status == .running)
        try Self.checkNested("up --json", up.stdout)
        struct Status: Decodable { var clusters: [ClusterStatusRowOut]; var reconcile: ReconcileReport }
        struct ClusterStatusRowOut: Decodable { var cluster: Cluster; var instances: [JSONValue]; var uptimeSeconds: Double; var costSoFar: Double }
        let status = try await home.capstan(["status", "--json"])
        #expect(try Self.decode(Status.self, status.stdout).clusters.map(\.cluster.name) == ["shapes"], "\(status.stdout)")
        try Self.checkNested("status --json", status.stdout)
        let down = try await home.capstan(["down", "shapes", "--json"])
        #expect(try Self.decode(Cluster.self, down.stdout).status == .terminated, "\(down.stdout) \(down.stderr)")
        for args in [["checkpoints", job.id, "--json"], ["reconcile", "--json"], ["offers", "--json"], ["plugins", "list", "--json"], ["check", "--json"], ["storage", "ls", "file://" + home.dir.file("bucket"), "--json"]] {
            let r = try await home.capstan(args)
            #expect(r.status == 0, "\(args): \(r.stderr)")
            try Self.checkNested(args.joined(separator: " "), r.stdout)
        }
    }

    @Test("exit codes: launch and logs -f say how the job ended — 0 succeeded, 1 failed, 2 cancelled; logs of a finished job 0")
    func exitCodes() async throws {
        let failing = SmallJobHome(run: "'echo about to fail; exit 3'", maxRestarts: 0)
        defer { failing.dir.cleanup() }
        let launched = try await failing.capstan(["launch", failing.spec] + SmallJobHome.fast)
        #expect(launched.status == 1, "\(launched.stdout)\n\(launched.stderr)")
        let job = try #require(try await failing.job())
        #expect(job.status == .failed)
        let logs = try await failing.capstan(["logs", job.id, "-f"])
        #expect(logs.status == 1 && logs.stdout.contains("capstan: job \(job.id) failed"), "\(logs.status) \(logs.stdout)")
        let plain = try await failing.capstan(["logs", job.id])
        #expect(plain.status == 0 && plain.stdout.contains("about to fail"), "printing a finished job's logs is not an error: \(plain.status)")

        // Cancelled (after `down` refused to take its cluster from under it).
        let waiting = SmallJobHome(run: "'while [ ! -f \"$GO\" ]; do sleep 0.1; done'", env: ["GO": "GO_FILE"])
        defer { waiting.dir.cleanup() }
        let detached = try await waiting.capstan(["launch", waiting.spec, "--detach"] + SmallJobHome.fast)
        #expect(detached.status == 0, "\(detached.stderr)")
        let running = try await eventually { try await waiting.job()?.status == .running }
        let started = try #require(try await waiting.job())
        #expect(running, "\(started.status)")
        let refused = try await waiting.capstan(["down", started.clusterName])
        #expect(refused.status == 1, "\(refused.stdout) \(refused.stderr)")
        #expect(refused.stderr.contains("error: Cluster \(started.clusterName) is not taken down: job \(started.id) (running) runs on it.\n  → Cancel it first (`capstan cancel \(started.id)`), or run `capstan down \(started.clusterName) --force` to terminate the cluster under it.\n"), "\(refused.stderr)")
        await #expect(try waiting.store().cluster(named: started.clusterName)?.status == .running)
        let cancel = try await waiting.capstan(["cancel", started.id])
        #expect(cancel.status == 0, "\(cancel.stderr)")
        let cancelledLogs = try await waiting.capstan(["logs", started.id, "-f"])
        #expect(cancelledLogs.status == 2 && cancelledLogs.stdout.contains("capstan: job \(started.id) cancelled"), "\(cancelledLogs.status) \(cancelledLogs.stdout)")
    }

    @Test("down --force takes a cluster down under a running job; a cluster without a job goes without it")
    func downForce() async throws {
        let home = SmallJobHome(run: "'while [ ! -f \"$GO\" ]; do sleep 0.1; done'", env: ["GO": "GO_FILE"], maxRestarts: 0)
        defer { home.dir.cleanup() }
        #expect(try await home.capstan(["up", "idle"]).status == 0)
        let idle = try await home.capstan(["down", "idle"])
        #expect(idle.status == 0 && idle.stdout.contains("Cluster idle is terminated."), "\(idle.stderr)")
        #expect(try await home.capstan(["launch", home.spec, "--detach"] + SmallJobHome.fast).status == 0)
        #expect(try await eventually { try await home.job()?.status == .running })
        let job = try #require(try await home.job())
        let forced = try await home.capstan(["down", job.clusterName, "--force"])
        #expect(forced.status == 0 && forced.stdout.contains("Cluster \(job.clusterName) is terminated."), "\(forced.stdout) \(forced.stderr)")
        // Its nodes gone and no restarts left: the job fails, and says so.
        let logs = try await home.capstan(["logs", job.id, "-f"])
        #expect(logs.status == 1, "\(logs.stdout)")
        await #expect(try home.job()?.status == .failed)
    }

    @Test("one error style: `error: …` on stderr, the hint on its own line — for capstan's errors, ArgumentParser's and a verb's own checks; offers with no match exits 1")
    func errorStyle() async throws {
        let home = TempDir("capstan-errors"); defer { home.cleanup() }
        func capstan(_ args: [String]) async throws -> ProcessResult {
            try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": home.path])
        }
        for (args, status, start) in [
            (["offers", "--nodes", "0"], Int32(64), "error: --nodes must be at least 1, got 0."),
            (["offers", "--bogus"], 64, "error: Unknown option '--bogus'"),
            (["logs", "no-such-job"], 1, "error: No job 'no-such-job'.\n  → See `capstan jobs` for job ids."),
            (["storage", "rm", "not-a-uri"], 64, "error: 'not-a-uri' is not a bucket URI."),
            (["offers", "--gpu", "GB200"], 1, "error: No offer matches 1 node(s), GPU GB200, on demand.\n  → "),
        ] as [([String], Int32, String)] {
            let r = try await capstan(args)
            #expect(r.status == status, "\(args): \(r.status) \(r.stderr)")
            #expect(r.stderr.hasPrefix(start) || r.stderr.contains("\n" + start), "\(args): \(r.stderr)")
            #expect(!r.stderr.contains("Error:"), "\(args): \(r.stderr)")
        }
        // No match, as JSON: the (empty) answer on stdout, exit 1.
        let none = try await capstan(["offers", "--gpu", "GB200", "--json"])
        struct Offers: Decodable { var offers: [JSONValue]; var rejected: [JSONValue] }
        #expect(none.status == 1, "\(none.stdout) \(none.stderr)")
        #expect(try Self.decode(Offers.self, none.stdout).offers.isEmpty)
        let some = try await capstan(["offers"])
        #expect(some.status == 0, "\(some.stderr)")
    }

    @Test("help wraps to the terminal's width: launch --help (and every verb's) at 60, 80 and 120 columns")
    func helpWraps() async throws {
        let verbs = ["launch", "offers", "up", "down", "logs", "jobs", "check", "status", "storage cp", "events", "top", "checkpoints"]
        for columns in [60, 80, 120] {
            for verb in verbs {
                let r = try await runProcess(BuildProducts.capstan, verb.split(separator: " ").map(String.init) + ["--help"], environment: ["COLUMNS": "\(columns)"])
                #expect(r.status == 0, "\(verb): \(r.stderr)")
                // (ArgumentParser writes the USAGE synopsis on one line, whatever the width.)
                let long = r.stdout.split(separator: "\n").filter { $0.count > columns && !$0.hasPrefix("USAGE: ") }
                #expect(long.isEmpty, "\(verb) --help at \(columns) columns: \(long)")
            }
        }
        // The discussion reflows: its sentences are whole, whatever the width.
        let help = try await runProcess(BuildProducts.capstan, ["launch", "--help"], environment: ["COLUMNS": "80"])
        let flat = help.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        #expect(flat.contains("The job goes on if this command is interrupted (Ctrl-C, a closed terminal, kill -9): the next `capstan jobs` or `capstan logs` re-attaches a controller to it."), "\(help.stdout)")
        #expect(flat.contains("0 if the job succeeded, 1 if it failed, 2 if it was cancelled."))
        // No line of the discussion ends far short of the width unless its paragraph ends there.
        let lines = help.stdout.components(separatedBy: "\n")
        for (i, line) in lines.enumerated() where i + 1 < lines.count && !line.isEmpty && !lines[i + 1].isEmpty && !line.hasPrefix(" ") && !lines[i + 1].hasPrefix(" ") && !line.hasSuffix(":") {
            #expect(line.count > 50, "ragged line in launch --help: '\(line)'")
        }
    }

    @Test("shell completion: the bash script completes job ids and cluster names from the home's state; zsh and fish scripts are written")
    func completion() async throws {
        let home = TempDir("capstan-complete"); defer { home.cleanup() }
        let store = try SQLiteStateStore.open(home: CapstanHome(root: home.path))
        try await store.insert(Cluster(name: "gpu-box", request: ResourceRequest(nodes: 1)))
        try await store.insert(JobRecord(
            id: "train-a1b2c3", name: "train", spec: "name: train\nrun: 'true'\n", specFolder: home.path, settings: "{}",
            clusterName: "gpu-box", ownsCluster: false, storage: "file://" + home.file("bucket")))
        let script = try await runProcess(BuildProducts.capstan, ["--generate-completion-script", "bash"])
        #expect(script.status == 0, "\(script.stderr)")
        let file = home.write("capstan.bash", script.stdout)
        /// What bash offers on <TAB> after `words` (the last one being completed).
        func complete(_ words: [String]) async throws -> [String] {
            let line = ([BuildProducts.capstan] + words).joined(separator: " ")
            let body = """
                shopt -s extglob; source "$1"; shift
                COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$LINE"; COMP_POINT=${#COMP_LINE}
                _capstan "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; printf '%s\\n' "${COMPREPLY[@]}"
                """
            let r = try await runProcess("/bin/bash", ["-c", body, "bash", file, BuildProducts.capstan] + words, environment: ["CAPSTAN_HOME": home.path, "LINE": line])
            #expect(r.status == 0, "\(words): \(r.stderr)")
            return r.stdout.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        }
        #expect(try await complete(["logs", ""]).contains("train-a1b2c3"))
        #expect(try await complete(["cancel", "tr"]) == ["train-a1b2c3"])
        #expect(try await complete(["down", ""]).contains("gpu-box"))
        #expect(try await complete(["launch", "job.yaml", "--cluster", "g"]) == ["gpu-box"])
        #expect(try await complete(["logs", "zz"]).isEmpty)
        for shell in ["zsh", "fish"] {
            let r = try await runProcess(BuildProducts.capstan, ["--generate-completion-script", shell])
            #expect(r.status == 0 && r.stdout.contains("capstan") && r.stdout.contains("---completion"), "\(shell): \(r.stderr)")
        }
    }

    @Test("on a terminal: colour (NO_COLOR turns it off) and the boot wait's elapsed time redrawn in place; piped: one plain line per step")
    func terminal() async throws {
        let home = TempDir("capstan-tty"); defer { home.cleanup() }
        home.write("config.yaml", "providers:\n  local:\n    enabled: false\n  sim:\n    bootSeconds: 6\n    stateFile: \(home.file("cloud.json"))\n")
        /// Runs capstan under a pseudo-terminal (util-linux `script`).
        func tty(_ args: [String], env: [String: String] = [:]) async throws -> ProcessResult {
            let line = ([BuildProducts.capstan] + args).map { "'\($0)'" }.joined(separator: " ")
            return try await runProcess("/usr/bin/script", ["-qec", line, "/dev/null"], environment: ["CAPSTAN_HOME": home.path, "TERM": "xterm", "NO_COLOR": ""].merging(env) { $1 }, timeout: 120)
        }
        let coloured = try await tty(["check"])
        #expect(coloured.status == 0 && coloured.stdout.contains("\u{1B}[32mok"), "\(coloured.stdout)")
        let noColor = try await tty(["check"], env: ["NO_COLOR": "1"])
        #expect(noColor.status == 0 && noColor.stdout.contains("ok") && !noColor.stdout.contains("\u{1B}["), "\(noColor.stdout)")
        let piped = try await runProcess(BuildProducts.capstan, ["check"], environment: ["CAPSTAN_HOME": home.path])
        #expect(piped.status == 0 && !piped.stdout.contains("\u{1B}"), "\(piped.stdout)")

        let up = ["--gpu", "H100", "--gpus-per-node", "8"]
        let live = try await tty(["up", "tty"] + up)
        #expect(live.status == 0, "\(live.stdout)")
        #expect(live.stdout.contains("\r\u{1B}[K\u{1B}[1m  … waiting\u{1B}[0m  ") && (1...9).contains { live.stdout.contains("… waiting\u{1B}[0m  \($0)s") }, "no elapsed time while the nodes booted: \(live.stdout)")
        #expect(live.stdout.contains("\u{1B}[32mready:"), "\(live.stdout)")
        let plain = try await runProcess(BuildProducts.capstan, ["up", "pipe"] + up, environment: ["CAPSTAN_HOME": home.path], timeout: 120)
        #expect(plain.status == 0, "\(plain.stderr)")
        #expect(!plain.stdout.contains("\r") && !plain.stdout.contains("\u{1B}") && !plain.stdout.contains("… waiting"), "\(plain.stdout)")
        #expect(plain.stdout.contains("\n  launched ") && plain.stdout.contains("\n  ready: 1 node(s) on sim"), "\(plain.stdout)")
        for name in ["tty", "pipe"] {
            #expect(try await runProcess(BuildProducts.capstan, ["down", name], environment: ["CAPSTAN_HOME": home.path]).status == 0)
        }
    }
}
