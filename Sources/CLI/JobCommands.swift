import ArgumentParser
import CapstanAPI
import CapstanCore
import CapstanRuntime
import CapstanSDK
import CapstanSQLite
import CapstanProviders
import CapstanTrainer
import Foundation

extension GlobalOptions {
    /// Jobs over the configured providers, reaching local nodes through agents of this binary
    /// and remote ones over SSH, shipping this binary (or `$CAPSTAN_AGENT_BINARY`, e.g. a
    /// `--static-swift-stdlib` build for machines without Swift) as their agent.
    func jobService(_ registry: ProviderRegistry, provisioner: Provisioner, jobLocks: any LockService) -> JobService {
        CapstanWiring.jobService(registry, provisioner: provisioner, jobLocks: jobLocks, agents: .currentExecutable(), logger: logger)
    }

    /// The home wired as CapstanSDK's ``Capstan`` (the one wiring an embedding program gets too),
    /// this binary its agent.
    func capstan() async throws -> Capstan {
        try await Capstan(home: capstanHome, agent: .currentExecutable(), logger: logger, registry: try loadRegistry())
    }

    func jobs() async throws -> JobService {
        try await capstan().jobService
    }
}

func requireJob(_ service: JobService, _ id: String) async throws -> JobRecord {
    guard let job = try await service.context.store.job(id) else {
        throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs` for job ids.")
    }
    return job
}

struct LaunchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Run a job: acquire its cluster, start it on every node, checkpoint to the bucket, resume after failures.",
        // One line per paragraph: ArgumentParser wraps them to the terminal's width.
        discussion: """
            The job goes on if this command is interrupted (Ctrl-C, a closed terminal, kill -9): the next `capstan jobs` or `capstan logs` re-attaches a controller to it. Stop it with `capstan cancel JOB`. The job spec format is in docs/jobs.md.

            Exit status, when it follows the job (no --detach): 0 if the job succeeded, 1 if it failed, 2 if it was cancelled.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "The job spec (YAML).") var spec: String
    @Flag(help: "Start the job and return; follow it with `capstan logs JOB -f`.") var detach = false
    @Option(help: "Run on this running cluster (not terminated at the end) instead of provisioning one.", completion: .custom(NameCompletion.clusters)) var cluster: String?
    @Flag(help: "Print status and checkpoints only, not the nodes' output.") var quiet = false
    @Option(help: "Seconds without a heartbeat before a node counts as lost.") var heartbeatTimeout: Double?
    @Option(help: "Seconds the other ranks may take to exit after one finished.") var exitGrace: Double?
    @Option(help: "Seconds between asking a command to stop and killing it.") var stopGrace: Double?
    @Option(help: "Seconds between GPU/CPU/memory samples on each node (docs/telemetry.md); 0 turns them off. Default 5.") var telemetryInterval: Double?
    @Option(name: .customLong("env"), help: ArgumentHelp("Set a variable over the spec's env: (repeatable). Plain values, shown by `jobs --json`; secrets go in the spec's `secrets:`.", valueName: "NAME=VALUE")) var envs: [String] = []

    func validate() throws {
        _ = try launchEnv()
        if let t = telemetryInterval, !(t == 0 || (t.isFinite && t >= 1 && t <= 3600)) {
            throw ValidationError("--telemetry-interval \(t) is out of range: give 0 (no sampling) or seconds from 1 to 3600.")
        }
    }

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in try await launchRemote(client) }) { return }
            let service = try await global.jobs()
            let yaml: String
            do { yaml = try String(contentsOfFile: spec, encoding: .utf8) } catch {
                throw CapstanError(.invalidRequest, "Cannot read job spec \(spec): \(error.localizedDescription)", hint: "Check the path.")
            }
            _ = try JobSpec.parse(yaml, source: spec)
            _ = await service.context.provisioner.reconcile()
            var options = JobService.Options(cluster: cluster)
            if let heartbeatTimeout { options.settings.heartbeatTimeoutSeconds = heartbeatTimeout }
            if let exitGrace { options.settings.exitGraceSeconds = exitGrace }
            if let stopGrace { options.settings.stopGraceSeconds = stopGrace }
            if let telemetryInterval { options.settings.telemetrySeconds = telemetryInterval }
            options.settings.env = try launchEnv()
            // The spec's folder, absolute: its `workdir` is relative to it.
            let folder = URL(fileURLWithPath: (spec as NSString).expandingTildeInPath).deletingLastPathComponent().path
            let job = try await service.create(yaml: yaml, folder: folder, options: options)
            if detach {
                try await service.ensureController(job.id)
                try started(try await requireJob(service, job.id))
                return
            }
            if !global.json { print("Job \(job.id): checkpoints and outputs in \(job.storage)") }
            // Embedded: this process delivers the job's notifications while it runs it.
            let final = try await NotificationDeliverer.alongside(store: service.context.store, settings: service.notifyDelivery, logger: global.logger) {
                try await follow(service.attach(job.id), json: global.json, quiet: quiet)
            }
            try finished(final)
        }
    }

    /// On a server: the spec (and its workdir, packed) goes there; its controller runs the job,
    /// followed here through the job's log stream.
    func launchRemote(_ client: CapstanClient) async throws {
        var settings: JobSettings?
        if heartbeatTimeout != nil || exitGrace != nil || stopGrace != nil || telemetryInterval != nil || !envs.isEmpty {
            var s = JobSettings()
            if let heartbeatTimeout { s.heartbeatTimeoutSeconds = heartbeatTimeout }
            if let exitGrace { s.exitGraceSeconds = exitGrace }
            if let stopGrace { s.stopGraceSeconds = stopGrace }
            if let telemetryInterval { s.telemetrySeconds = telemetryInterval }
            s.env = try launchEnv()
            settings = s
        }
        let job = try await client.launch(specFile: spec, cluster: cluster, settings: settings)
        if detach { try started(job); return }
        if !global.json { print("Job \(job.id): checkpoints and outputs in \(job.storage)") }
        try finished(try await followRemote(client, job: job.id, json: global.json, quiet: quiet))
    }

    /// `--env NAME=VALUE` options as a map (nil: none); the last of a name wins.
    func launchEnv() throws -> [String: String]? {
        guard !envs.isEmpty else { return nil }
        var out: [String: String] = [:]
        for e in envs {
            guard let eq = e.firstIndex(of: "="), eq != e.startIndex else {
                throw ValidationError("--env \(e): expected NAME=VALUE (e.g. --env WANDB_MODE=offline; an empty value is --env NAME=).")
            }
            let name = String(e[..<eq])
            guard name.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil else {
                throw ValidationError("--env \(e): '\(name)' is not a valid variable name (letters, digits and _, not starting with a digit).")
            }
            out[name] = String(e[e.index(after: eq)...])
        }
        return out
    }

    /// What `launch --detach` prints.
    func started(_ job: JobRecord) throws {
        if global.json { try printJSON(JobJSON(job: job)); return }
        print("Job \(job.id) started. Follow it: capstan logs \(job.id) -f   Stop it: capstan cancel \(job.id)")
    }

    /// What `launch` prints and exits with once the job it followed has ended.
    func finished(_ job: JobRecord) throws {
        if global.json { try printJSON(JobJSON(job: job)) }
        try JobExit.finish(job)
    }
}

/// Prints a job's events as they come; returns its final record.
func follow(_ handle: JobHandle, json: Bool, quiet: Bool) async throws -> JobRecord {
    for await event in handle.events where !json {
        printJobEvent(event, quiet: quiet)
        flushStdout()
    }
    let job = try await handle.result()
    if !json { printJobSummary(job) }
    return job
}

struct JobsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "jobs", abstract: "List jobs (re-attaching a controller to any running job that lost its own).")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Flag(help: "Only unfinished jobs.") var running = false

    func run() async throws {
        try await reportingErrors {
            // The server's controllers run its jobs; its largest page is 1000 jobs.
            if try await remote.run({ client in
                let page = try await client.jobs(running: running, limit: 1000)
                // (A server older than the costs route: the COST column shows "-".)
                try render(page, costs: global.json ? [:] : (try? await client.jobCosts(running: running, limit: 1000)) ?? [:], usage: await Self.usage(of: page) { try await client.telemetry(job: $0) })
            }) { return }
            let service = try await global.jobs()
            // Every unfinished job, not only those on the page listed below.
            for j in try await service.context.store.unfinishedJobs() { try await service.ensureController(j.id) }
            let page = try await service.context.store.jobs(includeFinished: !running)
            let store = service.context.store
            try render(page, costs: global.json ? [:] : try await store.jobCosts(page), usage: await Self.usage(of: page) { try await store.telemetry(job: $0) })
        }
    }

    /// The USAGE column (`gpu 97% 70/80G`, `cpu 12%`) of each running job (docs/telemetry.md);
    /// a job whose telemetry cannot be read has none.
    static func usage(of jobs: [JobRecord], _ read: (String) async throws -> [NodeTelemetry]) async -> [String: String] {
        var out: [String: String] = [:]
        for j in jobs where j.status == .running {
            if let s = (try? await read(j.id)).flatMap(TelemetryView.usage) { out[j.id] = s }
        }
        return out
    }

    /// What `jobs` prints, here or from a server: `costs` by job id (``JobCost``), `usage` by job id.
    func render(_ fresh: [JobRecord], costs: [String: Double], usage: [String: String] = [:]) throws {
        if global.json { try printJSON(JobJSON.list(fresh)); return }
        if fresh.isEmpty { print("No jobs. Start one with: capstan launch job.yaml"); return }
        var table = TextTable(header: ["JOB", "STATUS", "ATTEMPT", "RESTARTS", "CHECKPOINT", "PROGRESS", "USAGE", "COST", "CLUSTER", "AGE"], rightAligned: [2, 3, 4, 7])
        let now = Date()
        for j in fresh {
            let progress = j.metrics.flatMap { MetricsPoint.parse($0) }?.summary ?? "-"
            let cost = costs[j.id].map { String(format: "$%.2f", $0) } ?? "-"
            table.rows.append([j.id, j.status.rawValue, "\(j.attempt)", "\(j.restarts)", j.latestCheckpoint.map { "step \($0)" } ?? "-", progress, usage[j.id] ?? "-", cost, j.clusterName, humanDuration(now.timeIntervalSince(j.createdAt))])
        }
        print(table.render())
        for j in fresh where j.status == .failed { if let e = j.lastError { print("\n\(j.id): \(e)") } }
    }
}

struct MetricsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics", abstract: "A job's metrics (loss, lr, tokens/s…) from its leader's JSON lines, as a chart and a table.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Job id or name.", completion: .custom(NameCompletion.jobs)) var job: String
    @Option(help: "The metric to chart.") var key = "loss"
    @Option(help: "Table rows (evenly spaced steps); 0 for none.") var rows = 10

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in
                let j = try await client.job(job)
                try render(try await client.metrics(j.id), of: j)
            }) { return }
            let service = try await global.jobs()
            let j = try await requireJob(service, job)
            if !j.status.isFinished { try await service.ensureController(j.id) }
            try render(MetricsPoint.read(log: service.context.logFile(job: j.id, node: 0)), of: j)
        }
    }

    /// What `metrics` prints, here or from a server.
    func render(_ points: [MetricsPoint], of j: JobRecord) throws {
        if global.json { try printJSON(points); return }
        guard !points.isEmpty else {
            print("No metrics yet for \(j.id): its leader has printed no JSON line with a `step` (status \(j.status.rawValue)).")
            return
        }
        if let chart = MetricsPoint.chart(points, key: key) { print(chart + "\n") }
        guard rows > 0 else { return }
        let keys = ["loss", "lr", "tokens_per_s", "step_time_s"].filter { k in points.contains { $0.values[k] != nil } }
        var table = TextTable(header: ["STEP", "ATTEMPT"] + keys.map { $0.uppercased() }, rightAligned: Set(0..<(2 + keys.count)))
        let stride = max(1, points.count / rows)
        var picked = Swift.stride(from: 0, to: points.count, by: stride).map { points[$0] }
        if picked.last != points.last, let last = points.last { picked.append(last) }
        for p in picked {
            table.rows.append(["\(p.step)", p.attempt.map(String.init) ?? "-"] + keys.map { k in p.values[k].map { MetricsPoint.short($0) } ?? "-" })
        }
        print(table.render())
    }
}

struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print a job's node logs (every attempt); -f follows until the job ends.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Job id or name.", completion: .custom(NameCompletion.jobs)) var job: String
    @Flag(name: [.short, .long], help: "Follow until the job ends; exit 0 if it succeeded, 1 if it failed, 2 if it was cancelled.") var follow = false
    @Option(help: "Only this node's log.") var node: Int?

    /// One log line as printed: `[node N] line`, or with `--json` a ``LogLineJSON`` object.
    /// A Python environment build's progress line is drawn as a live bar while following on
    /// a terminal, else as its one plain line (``PythonEnvView``).
    func emit(_ line: String, node n: Int, of nodes: [Int]) throws {
        if global.json { try printJSONLine(LogLineJSON(node: n, time: Date(), line: line)); return }
        let prefix = Self.prefix(node: n, of: nodes)
        if PythonEnvView.shared.handle(line, node: n, prefix: prefix, out: .stdout, live: follow) { return }
        ProgressLine.stdout.print(prefix + line)
    }

    /// How `logs -f` ends: the job's last line (or `{"end": job}`), and its exit status.
    func finishFollowing(_ job: JobRecord) throws {
        ProgressLine.stdout.clear()
        if global.json { try printJSONLine(LogEndJSON(end: JobJSON(job: job))) } else { Self.printEnd(job) }
        flushStdout()
        try JobExit.finish(job)
    }

    /// The nodes whose logs are printed: `--node`'s, else every node of the job.
    func nodes(_ j: JobRecord) -> [Int] {
        node.map { [$0] } ?? Array(0..<max(1, (try? JobSpec.parse(j.spec))?.resources.nodes ?? 1))
    }

    /// A line's prefix: the node, when more than one node's lines are printed.
    static func prefix(node: Int, of nodes: [Int]) -> String { nodes.count > 1 ? "[node \(node)] " : "" }

    /// The line that ends `logs -f`.
    static func printEnd(_ end: JobRecord) {
        print("capstan: job \(end.id) \(end.status.rawValue)\(end.lastError.map { ": \($0)" } ?? "")")
    }

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in try await logsRemote(client) }) { return }
            let service = try await global.jobs()
            let j = try await requireJob(service, job)
            if !j.status.isFinished { try await service.ensureController(j.id) }
            let nodes = nodes(j)
            var tail = NodeLogTail()
            func pump(final: Bool) {
                for n in nodes {
                    for line in tail.read(n, path: service.context.logFile(job: j.id, node: n), final: final) { try? emit(line, node: n, of: nodes) }
                }
                flushStdout()
            }
            pump(final: !follow)
            guard follow else { return }
            while true {
                let status = try await service.context.store.job(j.id)?.status ?? .failed
                pump(final: false)
                if status.isFinished { pump(final: true); break }
                if await !service.context.jobLocks.isHeld(j.id) { try await service.ensureController(j.id) }
                try await Task.sleep(for: .milliseconds(300))
            }
            try finishFollowing(try await requireJob(service, j.id))
        }
    }

    /// From a server: its log stream of the job, printed as it comes.
    func logsRemote(_ client: CapstanClient) async throws {
        let j = try await client.job(job)
        let nodes = nodes(j)
        var end: JobRecord?
        for try await item in client.logs(j.id, node: node, follow: follow) {
            if let line = item.line {
                try emit(line, node: item.node ?? 0, of: nodes)
                flushStdout()
            }
            if let e = item.end { end = e }
        }
        guard follow else { return }
        guard let end, end.status.isFinished else {
            throw CapstanError(.transient, "The server's log stream of job \(j.id) ended before the job did.", hint: "Follow it again with `capstan logs \(j.id) -f`; the job goes on on the server.")
        }
        try finishFollowing(end)
    }
}

struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Stop a job: its nodes upload what is complete, then its own cluster is terminated.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Job id or name.", completion: .custom(NameCompletion.jobs)) var job: String

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in try render(try await client.cancel(job)) }) { return }
            let service = try await global.jobs()
            // The `cancelled` notification, when this process ends the job, is delivered from here too.
            let id = try await requireJob(service, job).id
            try render(try await NotificationDeliverer.alongside(store: service.context.store, settings: service.notifyDelivery, logger: global.logger) {
                try await service.cancel(id)
            })
        }
    }

    func render(_ j: JobRecord) throws {
        if global.json { try printJSON(JobJSON(job: j)); return }
        print("Job \(j.id) is \(j.status.rawValue).")
    }
}

struct CheckpointsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoints", abstract: "List a job's checkpoints in its bucket, each checked against its manifest.",
        discussion: """
            VERIFIED compares each file's size and the SHA-256 the store recorded at upload with the
            manifest (cheap: no download). --verify downloads every file and hashes its bytes, and
            reports each checkpoint OK or CORRUPT; it exits 1 if any is corrupt.
            """)
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Job id or name.", completion: .custom(NameCompletion.jobs)) var job: String
    @Flag(help: "Download and re-hash every file of every checkpoint against its manifest.") var verify = false

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in
                let j = try await client.job(job)
                if verify { try render(try await client.verifyCheckpoints(j.id), of: j); return }
                try render(try await client.checkpoints(j.id), of: j)
            }) { return }
            let service = try await global.jobs()
            let j = try await requireJob(service, job)
            if verify { try render(try await service.verifyCheckpoints(j.id), of: j); return }
            try render(try await service.checkpoints(j.id), of: j)
        }
    }

    /// What `checkpoints` prints, here or from a server.
    func render(_ list: [CheckpointSummary], of j: JobRecord) throws {
        if global.json { try printJSON(list); return }
        if list.isEmpty { print("No committed checkpoints for \(j.id) in \(j.storage)/checkpoints."); return }
        var table = TextTable(header: ["STEP", "ATTEMPT", "SIZE", "CREATED", "VERIFIED", "LOCATION"], rightAligned: [0, 1, 2])
        let f = ISO8601DateFormatter()
        for c in list {
            let verified = c.corrupt != nil ? "CORRUPT (recorded; never used)" : c.verified ? "yes" : "NO (damaged; never used)"
            table.rows.append(["\(c.step)", c.attempt.map(String.init) ?? "-", c.bytes.map(humanBytes) ?? "-", c.createdAt.map { f.string(from: $0) } ?? "-", verified, c.location])
        }
        print(table.render())
        for c in list { if let why = c.corrupt { print("step \(c.step): \(why)") } }
    }

    /// What `checkpoints --verify` prints and exits with, here or from a server.
    func render(_ checks: [CheckpointCheck], of j: JobRecord) throws {
        if global.json {
            try printJSON(checks)
        } else if checks.isEmpty {
            print("No committed checkpoints for \(j.id) in \(j.storage)/checkpoints.")
        } else {
            var table = TextTable(header: ["STEP", "ATTEMPT", "SIZE", "RESULT"], rightAligned: [0, 1, 2])
            for c in checks {
                table.rows.append(["\(c.step)", c.attempt.map(String.init) ?? "-", c.bytes.map(humanBytes) ?? "-", c.ok ? "OK" : "CORRUPT: \(c.reason ?? "?")"])
            }
            print(table.render())
        }
        if checks.contains(where: { !$0.ok }) { throw ExitCode(1) }
    }
}

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent", abstract: "Run one node's part of a job attempt (the controller starts this on every node).",
        discussion: "Reads the attempt's config (JSON) and works until the command has ended and its uploads are done. Buckets are opened with the built-in clients (file://, s3://), so a bare node needs no plugins.")
    @Option(help: "The attempt's agent config (agent.json).") var config: String
    @Flag(help: "Read the bucket's access (credentials included) as JSON from stdin, as the controller sends it.") var secretsStdin = false

    func run() async throws {
        try await reportingErrors {
            guard let data = FileManager.default.contents(atPath: config) else {
                throw CapstanError(.invalidRequest, "Cannot read agent config \(config).")
            }
            let cfg = try PluginWire.decoder.decode(AgentConfig.self, from: data)
            var secrets = AgentSecrets()
            if secretsStdin {
                let input = FileHandle.standardInput.readDataToEndOfFile()
                if !input.isEmpty {
                    do { secrets = try PluginWire.decoder.decode(AgentSecrets.self, from: input) } catch {
                        NodeAgent.reportStartFailure(config: cfg, secrets: secrets, "the agent's stdin is not the controller's secrets (\(input.count) bytes): \(type(of: error))")
                        throw ExitCode(1)
                    }
                }
            }
            let home = CapstanHome.fromEnvironment()
            let bucket: any ObjectStore
            do {
                if let access = secrets.bucket {
                    bucket = try access.open(home: home)
                } else {
                    do { bucket = try ProviderRegistry.builtInStore(for: cfg.bucket, home: home) } catch let e as CapstanError where e.code == .unsupported {
                        bucket = try ProviderRegistry.load(home: home).store(for: cfg.bucket)
                    }
                }
            } catch {
                // Said where the controller reads it (status.json, node.log), then here.
                NodeAgent.reportStartFailure(config: cfg, secrets: secrets, "cannot open the bucket \(cfg.bucket): \(error)")
                throw error
            }
            _ = await NodeAgent(config: cfg, bucket: bucket, secrets: secrets, faults: .fromEnvironment()).run(asAgentProcess: true)
        }
    }
}

struct JobControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "job-controller", abstract: "Drive a job to its end (started detached by launch --detach, jobs and logs).", shouldDisplay: false)
    @OptionGroup var global: GlobalOptions
    @Argument var job: String

    func run() async throws {
        try await reportingErrors {
            let service = try await global.jobs()
            let final = try await NotificationDeliverer.alongside(store: service.context.store, settings: service.notifyDelivery, logger: global.logger) {
                try await JobController(jobID: job, context: service.context).run()
            }
            print("job \(final.id) \(final.status.rawValue)")
        }
    }
}

/// Flushes printed lines now (stdout is block-buffered when it is a pipe).
func flushStdout() { fflush(nil) }

/// `5.3 KiB`, `256.0 MiB`, `1.2 GiB`.
func humanBytes(_ n: Int64) -> String { ProgressText.bytes(n) }
