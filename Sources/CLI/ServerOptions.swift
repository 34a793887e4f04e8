import ArgumentParser
import CapstanAPI
import CapstanCore
import CapstanTrainer
import Foundation

/// `--server` and `--token-file`, on every verb docs/api.md lists: with a server (this option,
/// else `CAPSTAN_SERVER`), the verb runs there through ``CapstanClient``, printing what it
/// prints here; without one (`--server ''`, or neither set), on this machine. A server that
/// cannot be reached is an error, never a quiet fall-back to this machine.
struct ServerOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Run on this Capstan server (`capstan serve`), e.g. https://capstan.example.com (default: $CAPSTAN_SERVER; '' runs here).",
        valueName: "url"))
    var server: String?

    @Option(name: .long, help: ArgumentHelp("Read the server's API token from this file (default: $CAPSTAN_TOKEN). Never pass a token as an argument.", valueName: "path"))
    var tokenFile: String?

    /// The resolved settings; nil in embedded mode.
    func settings(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ServerSettings? {
        try ServerSettings.resolve(serverOption: server, tokenFile: tokenFile, environment: environment)
    }

    /// Runs `body` with a client of the server when one is set, and returns true; false (and
    /// nothing run) in embedded mode. A refusal for want of a token says how to give one.
    func run(_ body: (CapstanClient) async throws -> Void) async throws -> Bool {
        guard let settings = try settings() else { return false }
        let client = try CapstanClient(settings)
        do {
            try await body(client)
        } catch var e as CapstanError where e.code == .auth && !client.hasToken {
            e.hint = (e.hint.map { $0 + " " } ?? "") + "No token was sent: set CAPSTAN_TOKEN, or use --token-file PATH (a token from `capstan serve token create NAME` on the server's machine)."
            throw e
        }
        return true
    }
}

/// Prints a job's event as the follower of `launch` does (`[node N] line`, `capstan: …`).
/// On a terminal, provisioning's latest step and the agents' Python environment builds are
/// live lines (Sources/CLI/Progress.swift); piped, builds print one plain line each.
func printJobEvent(_ event: JobEvent, quiet: Bool, out: ProgressLine = .stdout) {
    if case .provisioning(let line) = event { ProvisioningView.step(line, out: out); return }
    if case .metrics = event { return }  // the metrics line is printed as the node's line
    ProvisioningView.end(out: out)
    switch event {
    case .log(let node, let line):
        guard !quiet, !PythonEnvView.shared.handle(line, node: node, prefix: "[node \(node)] ", out: out, live: true) else { return }
        out.print("[node \(node)] \(line)")
    case .status(_, let message): out.print("capstan: \(message)")
    case .checkpoint(let step, let bytes): out.print("capstan: checkpoint step \(step) committed (\(humanBytes(bytes)))")
    case .nodeReplaced(let node, let instance): out.print("capstan: node \(node) replaced by \(instance)")
    case .attemptStarted, .finished, .metrics, .provisioning: break
    case .failure: break  // the status line that follows says it, with what happens next
    }
}

/// The lines that end `launch`'s following of a job.
func printJobSummary(_ job: JobRecord) {
    ProgressLine.stdout.clear()
    print("capstan: job \(job.id) \(job.status.rawValue) after \(job.attempt) attempt(s), \(job.restarts) restart(s)" + (job.latestCheckpoint.map { "; latest checkpoint step \($0)" } ?? ""))
    if job.status == .succeeded { print("capstan: outputs in \(job.storage)/outputs") }
    if let e = job.lastError, job.status != .succeeded { printError("error: \(e)") }
}

/// Follows a job on the server through its logs stream (with events), printing what the
/// embedded follower prints; returns the job as it ended.
func followRemote(_ client: CapstanClient, job id: String, json: Bool, quiet: Bool) async throws -> JobRecord {
    var final: JobRecord?
    for try await item in client.logs(id, follow: true, events: true) {
        if let end = item.end { final = end; continue }
        guard !json, let event = item.jobEvent else { continue }
        // The controller writes a header into each node's log at every attempt (`logs` shows
        // it); the embedded follower never sees it as a line, so neither does this one.
        if case .log(_, let line) = event, isAttemptHeader(line) { continue }
        printJobEvent(event, quiet: quiet)
        flushStdout()
    }
    guard let final, final.status.isFinished else {
        throw CapstanError(.transient, "The server's log stream of job \(id) ended before the job did\(final.map { " (it is \($0.status.rawValue))" } ?? "").", hint: "The job goes on on the server: follow it again with `capstan logs \(id) -f`, stop it with `capstan cancel \(id)`.")
    }
    if !json { printJobSummary(final) }
    return final
}

/// `==== attempt 2 on node-1-abc (10.0.0.5), resuming from checkpoint step 40 ====`.
func isAttemptHeader(_ line: String) -> Bool {
    line.hasPrefix("==== attempt ") && line.hasSuffix(" ====") && line.contains(" on ")
}
