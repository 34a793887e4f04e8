public import CapstanCore
public import CapstanRuntime
public import CapstanProviders
public import Foundation
public import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The node agent (`capstan agent`): one per node per attempt. It restores the checkpoint the
/// controller chose, runs setup and the command with the env contract, appends their output to
/// `node.log`, beats in `status.json`, uploads every complete checkpoint in the background,
/// and, once the command ends, finishes the uploads and (on success) uploads the outputs.
///
/// It talks to the controller only through files in its state folder, so the same agent
/// serves local nodes and remote ones (where the transport reads the files over SSH), and a
/// controller that dies and comes back finds it still running.
public final class NodeAgent: Sendable {
    public let config: AgentConfig
    /// The job's bucket (`AgentConfig.bucket`).
    public let bucket: any ObjectStore
    let logger: Logger
    let faults: FaultPoints
    /// The agent's phases, stop and status (``AgentLifecycle``); ``send(_:)`` drives it.
    let lifecycle: LockedBox<AgentLifecycle>
    /// The lifecycle's clock starts here.
    let started = ContinuousClock.now
    let filesUploaded = LockedBox<Int>(0)
    /// Pids already written to the pids files.
    let recorded = LockedBox<Set<pid_t>>([])
    /// The newest telemetry sample, put on every status written (``sampleTelemetry()``).
    let latestTelemetry = LockedBox<NodeTelemetry?>(nil)
    /// The container runtime found for the job's `image:` (``ContainerRun``) at start-up.
    let containerRuntime = LockedBox<String?>(nil)

    /// What the controller handed over on stdin: only used here to keep its secrets out of
    /// every line and status this agent writes.
    let secrets: AgentSecrets

    public convenience init(config: AgentConfig, bucket: any ObjectStore, secrets: AgentSecrets = AgentSecrets(), logger: Logger = Logger(label: "capstan.agent", factory: { _ in SwiftLogNoOpLogHandler() })) {
        self.init(config: config, bucket: bucket, secrets: secrets, faults: .none, logger: logger)
    }

    /// With the test hooks of ``FaultPoints``.
    package init(config: AgentConfig, bucket: any ObjectStore, secrets: AgentSecrets = AgentSecrets(), faults: FaultPoints, logger: Logger = Logger(label: "capstan.agent", factory: { _ in SwiftLogNoOpLogHandler() })) {
        self.config = config
        self.bucket = bucket
        self.secrets = secrets
        self.faults = faults
        self.logger = logger
        self.lifecycle = LockedBox(AgentLifecycle(plan: AgentLifecycle.Plan(config), status: AgentStatus(job: config.job, attempt: config.attempt, node: config.node, agentPID: getpid())))
    }

    var checkpoints: CheckpointStore { CheckpointStore(store: bucket, prefix: "checkpoints") }

    /// Runs the attempt on this node to the end and returns the final status (also written).
    /// `asAgentProcess` (what `capstan agent` sets) means this process is the agent and nothing
    /// else: SIGTERM/SIGINT stop the command gracefully (``requestStop()``), and the process
    /// adopts its orphaned descendants (a child subreaper), records them for the node's
    /// provider, and kills whatever the command left behind when it ends — torchrun starts its
    /// workers in sessions of their own, out of reach of the command's process group.
    /// Embedders running an agent inside a bigger process leave it off and call
    /// `requestStop()` themselves.
    public func run(asAgentProcess: Bool = false) async -> AgentStatus {
        for dir in [config.stateDir, config.checkpointDir, config.outputDir, config.workdir] + (config.resumeDir.map { [$0] } ?? []) {
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        if asAgentProcess { Spawn.becomeSubreaper() }
        recordPID(getpid())
        var steps = send(.begin(ownsDescendants: asAgentProcess))
        let beats = Task { [self] in
            var mark = controllerMark()
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(config.heartbeatSeconds))
                // The controller rewrites its mark at every status read: a change is a sign of life.
                let seen = controllerMark()
                if seen != mark {
                    mark = seen
                    send(.controllerSeen)
                }
                send(.heartbeatTick)
            }
        }
        defer { beats.cancel() }
        // Sampling runs beside the heartbeat, never on its path: a slow nvidia-smi delays only
        // the next sample, and the beat carries whichever sample is newest.
        let sampling = Task { [self] in await sampleTelemetry() }
        defer { sampling.cancel() }
        let signals = asAgentProcess ? installStopHandler() : []
        defer { signals.forEach { $0.cancel() } }

        // The lifecycle says what comes next; each step's result is the next event.
        var watcher: CheckpointWatcher?
        var uploads: Task<Void, Never>?
        while !steps.isEmpty {
            let step = steps.removeFirst()
            var next: AgentLifecycle.Event?
            switch step {
            case .exit(let status):
                return status
            case .probeBucket:
                // The bucket must take a write with these credentials before anything starts:
                // a wrong or read-only key, a missing bucket or an unreachable endpoint is the
                // attempt's start-up error, said at once (not a checkpoint upload retried forever).
                do {
                    try await probeBucket()
                    next = .probeSucceeded
                } catch {
                    next = .probeFailed("cannot write to the bucket \(bucket.location): \(error)")
                }
            case .restore(let step):
                next = await restore(step: step)
            case .writeFiles:
                next = writeFiles()
            case .preparePython:
                do {
                    var env = [String: String]()
                    if let python = config.python { env = try await preparePython(python) }
                    for (k, v) in try await fetchRecipeSources() { env[k] = v }
                    for (k, v) in try await fetchInputs() { env[k] = v }
                    if let image = config.image {
                        containerRuntime.withLock { $0 = nil }
                        let runtime = try await ContainerRun.findRuntime(node: config.node, image: image, environment: ProcessInfo.processInfo.environment)
                        containerRuntime.withLock { $0 = runtime }
                        await removeStaleContainers(environment: ProcessInfo.processInfo.environment)
                        say("image \(image): running setup and the command in it with \(runtime)")
                    }
                    next = .pythonReady(env)
                } catch { next = .pythonFailed("\(error)") }
            case .spawn(let command, let environment):
                // Its end (or failure to start) was the event; what follows comes back here.
                steps += await runCommand(command, prepared: environment).next
            case .startCheckpointWatcher:
                let w = CheckpointWatcher(
                    folder: config.checkpointDir, checkpoints: checkpoints, job: config.job, attempt: config.attempt, node: config.node,
                    nodes: config.nodes, keep: config.keep, logger: logger, afterFile: { [self] _ in afterFileUploaded() },
                    beforeCommit: { [self] _ in if config.attempt == 1 { faults.hit("agent-commit") } })
                watcher = w
                uploads = Task { [self] in
                    while !Task.isCancelled {
                        // A pass runs in a task of its own, which the cancel below (the command
                        // ended) does not reach: it only cuts the sleep short. Cancelled, an upload
                        // in flight failed with CancellationError() (the HTTP client's), to be
                        // redone from the start.
                        await Task { await checkpointPass(w) }.value
                        try? await Task.sleep(for: .seconds(config.checkpointPollSeconds))
                    }
                }
            case .stopCheckpointWatcher(let commandFailed):
                uploads?.cancel()
                _ = await uploads?.value
                next = .watcherStopped(workerSignal: commandFailed ? Self.workerSignal(inLogTail: logTail()) : nil)
            case .finalUploads(let succeeded):
                if let watcher { await finalUploads(watcher, succeeded: succeeded) }
                next = .finalUploadsDone
            case .shutDownNode(let command):
                await shutDownNode(command)
            case .writeStatus, .log, .recordPID, .recordDescendants, .signalGroup, .killDescendants, .scheduleDeadline:
                // Done by send(_:) as they came.
                break
            }
            if let next { steps += send(next) }
        }
        // Not reached: every path through the lifecycle ends with .exit.
        return lifecycle.withLock { $0.status }
    }

    // MARK: - Lifecycle

    /// The lifecycle's time now.
    func now() -> AgentLifecycle.Now {
        AgentLifecycle.Now(uptime: ContinuousClock.now - started, date: Date())
    }

    /// Feeds `event` to the lifecycle and does the actions that take no time (status writes,
    /// log lines, signals, pid records) at once and in order, under its lock, so status writes
    /// never overtake each other. Returns the rest: the steps ``run(asAgentProcess:)`` runs.
    @discardableResult
    func send(_ event: AgentLifecycle.Event) -> [AgentLifecycle.Action] {
        lifecycle.withLock { machine in
            machine.receive(event, at: now()).filter { !performAtOnce($0) }
        }
    }

    /// Does `action` if it takes no time; false for the steps the driver runs.
    private func performAtOnce(_ action: AgentLifecycle.Action) -> Bool {
        switch action {
        case .writeStatus(let status): writeStatus(status)
        case .log(let line): say(line)
        case .recordPID(let pid): recordPID(pid)
        case .recordDescendants: recordDescendants()
        case .signalGroup(let pid, let signal): Spawn.signalGroup(pid, signal)
        case .killDescendants: killDescendants()
        case .scheduleDeadline(let at):
            Task { [self] in
                try? await Task.sleep(until: started + at, clock: .continuous)
                send(.deadlinePassed)
            }
        case .exit, .probeBucket, .restore, .writeFiles, .preparePython, .spawn, .startCheckpointWatcher, .stopCheckpointWatcher, .finalUploads, .shutDownNode:
            return false
        }
        return true
    }

    // MARK: - Phases

    /// Writes `checkpoints/.capstan-probe-node-R` (a few bytes no checkpoint listing reads,
    /// rewritten by every attempt). Not deleted: a file bucket's delete prunes the folders it
    /// empties, which races another node's probe being written into the same folder.
    func probeBucket() async throws {
        let file = config.stateDir + "/.bucket-probe"
        defer { try? FileManager.default.removeItem(atPath: file) }
        try PrivateFile.write(Data("capstan agent \(config.job) attempt \(config.attempt)\n".utf8), to: file)
        let key = "checkpoints/.capstan-probe-node-\(config.node)"
        _ = try await bucket.put(file: file, key: key, options: PutOptions(), progress: nil)
    }

    /// Restores this node's part of the chosen checkpoint into the resume folder. Failed (the
    /// status's `failure`) when it cannot: the controller then picks another checkpoint or
    /// gives up.
    func restore(step: Int) async -> AgentLifecycle.Event {
        guard let dir = config.resumeDir else { return .restored }
        let start = ContinuousClock.now
        do {
            guard let manifest = try await checkpoints.verified(step: step) else {
                throw CapstanError(.notFound, "Checkpoint step \(step) is missing or does not verify in \(bucket.location).")
            }
            try? FileManager.default.removeItem(atPath: dir)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try await checkpoints.restore(manifest, node: config.node, into: dir)
            say("restored checkpoint step \(step) (\(manifest.totalBytes) bytes in all nodes' parts) in \(String(format: "%.2f", (ContinuousClock.now - start).seconds)) s")
            return .restored
        } catch let bad as CorruptCheckpoint {
            return .restoreFailed("restoring checkpoint step \(step) failed: \(bad)", corrupt: bad)
        } catch {
            return .restoreFailed("restoring checkpoint step \(step) failed: \(error)", corrupt: nil)
        }
    }

    /// Runs `/bin/sh -c command` in the workdir, output appended to the node log: the
    /// lifecycle hears it start and end (and records it, signals it on a stop, and kills what
    /// it left behind). Returns how it ended and the steps the lifecycle took next.
    /// `output`: the file its output is appended to (default: the node log).
    func runCommand(_ command: String, prepared: [String: String], output logFile: String? = nil) async -> (exit: ExitStatus, next: [AgentLifecycle.Action]) {
        let logFile = logFile ?? config.logFile
        // Only the base environment of the agent's own (never its credentials), then the env
        // contract and the spec's `env:`, the spec's `secrets:` (from stdin), then the Python
        // environment's.
        var env = BaseEnvironment.filter(ProcessInfo.processInfo.environment)
        for (k, v) in config.environment { env[k] = v }
        for (k, v) in secrets.environment ?? [:] { env[k] = v }
        for (k, v) in prepared { env[k] = v }
        if env["CAPSTAN_PYTHON"] == nil { env["CAPSTAN_PYTHON"] = "python3" }
        let (argv, input) = await commandLine(command, environment: &env, prepared: prepared)
        let pid: pid_t
        // A job with `secrets:`: its output reaches the node log through the agent, which
        // redacts every value first (the controller may not have them to redact with).
        var output: RedactingPipe?
        do {
            if let values = secrets.environment, !values.isEmpty {
                let pipe = try RedactingPipe(secrets: secrets.secrets, appendingTo: logFile)
                output = pipe
                defer { pipe.closeWriteEnd() }
                pid = try Spawn.start(argv, environment: env, cwd: config.workdir, output: pipe, input: input)
            } else if let input {
                pid = try Spawn.start(argv, environment: env, cwd: config.workdir, output: logFile, input: input)
            } else {
                pid = try Spawn.start(argv, environment: env, cwd: config.workdir, output: logFile)
            }
        } catch {
            return (.exited(127), send(.spawnFailed("\(error)")))
        }
        send(.childStarted(pid: pid))
        let exit = await Spawn.wait(pid)
        await awaitGroupOnStop(pid)
        await removeContainer(environment: env)
        // Its last lines are in the log before the agent's own about its end (a daemon it left
        // holding the output keeps writing there, redacted).
        if let output { _ = await output.drained(within: 5) }
        return (exit, send(.childExited(pid: pid, exit)))
    }

    /// On a graceful stop the whole group got SIGTERM, and its leader (`sh -c`) may end at once
    /// while the program under it is still in its handler, writing a final checkpoint: the
    /// group gets what is left of the grace to end on its own (at the deadline the lifecycle
    /// SIGKILLs it) before the command counts as ended and what is left of it is killed.
    func awaitGroupOnStop(_ pgid: pid_t) async {
        guard case .terminating(let signalled, let deadline) = lifecycle.withLock({ $0.stop }), signalled == pgid else { return }
        while !NodeProcesses.groupMembers(pgid).isEmpty, ContinuousClock.now < started + deadline + .seconds(2) {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// A command of the Python environment's (venv, pip), before the environment exists.
    func runCommand(_ command: String, output: String? = nil) async -> ExitStatus {
        await runCommand(command, prepared: [:], output: output).exit
    }

    /// One upload pass; prunes local checkpoint folders that are safely in the bucket (all but
    /// the newest, so the disk does not fill over a long run).
    func checkpointPass(_ watcher: CheckpointWatcher) async {
        do {
            let start = ContinuousClock.now
            let steps = try await watcher.runOnce()
            if !steps.isEmpty {
                say("checkpoint step \(steps.map(String.init).joined(separator: ", ")) uploaded in \(String(format: "%.2f", (ContinuousClock.now - start).seconds)) s")
            }
            // One JSON line per part, for the controller (`capstan_checkpoint_upload_seconds`).
            let uploads = await watcher.uploads
            for step in steps {
                guard let u = uploads[step] else { continue }
                AppendFile.append("{\"event\": \"checkpoint_uploaded\", \"step\": \(step), \"node\": \(config.node), \"seconds\": \(String(format: "%.3f", u.seconds)), \"bytes\": \(u.bytes)}\n", to: config.logFile)
            }
        } catch {
            say("checkpoint upload failed, will retry: \(error)")
        }
        let uploaded = await watcher.uploadedSteps
        let committed = await watcher.committed
        send(.checkpointsSeen(uploaded: uploaded, committed: committed))
        for step in uploaded.dropLast() {
            let folder = "\(config.checkpointDir)/step-\(step)"
            if FileManager.default.fileExists(atPath: folder) { try? FileManager.default.removeItem(atPath: folder) }
        }
    }

    /// After the command: upload what is complete and not yet up, the leader commits (waiting
    /// a bounded time for other nodes' parts), then outputs on success.
    func finalUploads(_ watcher: CheckpointWatcher, succeeded: Bool) async {
        // Once the gang is being stopped (now or while this waits), a lost node's part may
        // never come: the leader stops waiting for parts; the controller commits every step
        // that is complete once all the agents are down (JobController's stop).
        let deadline = ContinuousClock.now + .seconds(config.commitWaitSeconds)
        while true {
            await checkpointPass(watcher)
            let pending = await watcher.pendingCommits
            let uploaded = Set(await watcher.uploadedSteps)
            let missing = CheckpointProtocol.completeSteps(in: config.checkpointDir).filter { !uploaded.contains($0) }
            if pending.isEmpty && missing.isEmpty { break }
            // A gang stopped by the controller may have lost a node, whose part never comes. A
            // dead-man stop has no controller to commit later, and every node of the gang stops
            // within seconds of the others (the controller went silent for all of them): the
            // leader waits for their parts, up to the commit wait.
            if isStopping && !deadManTripped {
                if !pending.isEmpty { say("stopping: step(s) \(pending.map(String.init).joined(separator: ", ")) left for the controller to commit if every part arrives") }
                break
            }
            if ContinuousClock.now >= deadline {
                if !pending.isEmpty { say("gave up waiting for other nodes' parts of step(s) \(pending.map(String.init).joined(separator: ", ")); they stay uncommitted") }
                break
            }
            try? await Task.sleep(for: .milliseconds(250))
        }
        guard succeeded else { return }
        do {
            let n = try await uploadOutputs()
            send(.outputsUploaded)
            if n > 0 { say("uploaded \(n) output file(s) to \(bucket.location)/\(outputPrefix)") }
        } catch {
            send(.outputsFailed("uploading outputs failed: \(error)"))
        }
    }

    var outputPrefix: String { config.node == 0 ? "outputs" : "outputs/node-\(config.node)" }

    /// Uploads `CAPSTAN_OUTPUT_DIR` (the leader's to `outputs/`, others' to
    /// `outputs/node-R/`), then a manifest of what went up, last.
    func uploadOutputs() async throws -> Int {
        guard let paths = CheckpointProtocol.regularFiles(in: config.outputDir), !paths.isEmpty else { return 0 }
        var files: [CheckpointFile] = []
        for rel in paths {
            let info = try await bucket.put(file: config.outputDir + "/" + rel, key: outputPrefix + "/" + rel, options: PutOptions(), progress: nil)
            files.append(CheckpointFile(path: rel, size: info.size, sha256: info.sha256 ?? ""))
        }
        try await checkpoints.putJSON(CheckpointPart(node: config.node, files: files), key: outputPrefix + "/manifest.json")
        return files.count
    }

    /// The last 64 KiB of the node log.
    func logTail() -> String {
        guard let h = FileHandle(forReadingAtPath: config.logFile) else { return "" }
        defer { try? h.close() }
        let end = (try? h.seekToEnd()) ?? 0
        try? h.seek(toOffset: end > 65536 ? end - 65536 : 0)
        return String(decoding: (try? h.readToEnd()) ?? Data(), as: UTF8.self)
    }

    /// torchrun ends with exit code 1 whatever killed a worker, but its failure summary says
    /// `exitcode  : -9 (pid: …)` for a worker killed by SIGKILL. Returns that signal.
    public static func workerSignal(inLogTail text: String) -> Int32? {
        guard let root = text.range(of: "Root Cause", options: .backwards) else { return nil }
        let after = text[root.upperBound...]
        guard let m = after.range(of: #"exitcode\s*:\s*-[0-9]+"#, options: .regularExpression) else { return nil }
        return Int32(after[m].split(separator: "-").last ?? "")
    }

    // MARK: - Stop

    var isStopping: Bool { lifecycle.withLock { $0.stopRequested } }
    var deadManTripped: Bool { lifecycle.withLock { $0.deadManTripped } }

    /// The controller's mark as it is now (nil: none yet).
    func controllerMark() -> Data? {
        FileManager.default.contents(atPath: config.controllerSeenFile)
    }

    /// The dead-man switch's last step, on a node whose provider says a guest shutdown stops
    /// its billing: runs the provider's shutdown command (output to the node log).
    func shutDownNode(_ command: String) async {
        do {
            let pid = try Spawn.start(["/bin/sh", "-c", command], environment: BaseEnvironment.filter(ProcessInfo.processInfo.environment), cwd: config.workdir, output: config.logFile)
            let exit = await Spawn.wait(pid)
            if !exit.succeeded { say("the shutdown command failed (\(exit)); the node stays up") }
        } catch {
            say("could not run the shutdown command: \(error); the node stays up")
        }
    }

    /// SIGTERM/SIGINT: pass SIGTERM to the command's group, SIGKILL it after the grace period;
    /// the agent itself goes on to finish its uploads.
    func installStopHandler() -> [any DispatchSourceSignal] {
        [SIGTERM, SIGINT].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in requestStop() }
            source.resume()
            return source
        }
    }

    /// Stops the command gracefully: SIGTERM to its process group (to one that starts later,
    /// when it starts), SIGKILL after the grace period; the agent itself goes on to finish its
    /// uploads. Only the first call counts.
    public func requestStop() {
        send(.stopRequested(force: false))
    }

    // MARK: - Files

    /// Samples the machine every ``AgentConfig/telemetrySeconds`` (off at 0) until cancelled;
    /// the next status written carries the newest sample.
    func sampleTelemetry() async {
        // At most hourly (a longer or non-finite interval would not make a Duration).
        let every = min(config.telemetrySeconds ?? AgentConfig.defaultTelemetrySeconds, 3600)
        guard every > 0 else { return }
        let sampler = TelemetrySampler(job: config.job, node: config.node, attempt: config.attempt)
        sampler.prime()
        while !Task.isCancelled {
            guard (try? await Task.sleep(for: .seconds(every))) != nil else { return }
            let sample = await sampler.sample()
            latestTelemetry.withLock { $0 = sample }
        }
    }

    private func writeStatus(_ s: AgentStatus) {
        var s = s
        s.telemetry = latestTelemetry.withLock { $0 }
        s.failure = s.failure.map(secrets.redact)
        Self.write(s, to: config.statusFile)
    }

    static func write(_ s: AgentStatus, to file: String) {
        guard let data = try? PluginWire.encoder.encode(s) else { return }
        try? PrivateFile.write(data, to: file)
    }

    /// Appends a line of the agent's own to the node log (secrets redacted).
    func say(_ line: String) {
        let line = secrets.redact(line)
        AppendFile.append("[capstan-agent node \(config.node)] \(line)\n", to: config.logFile)
        logger.info("\(line)", metadata: ["capstan.job": "\(config.job)", "capstan.node": "\(config.node)"])
    }

    /// An agent that cannot even open its bucket (no credentials, a bad endpoint): writes its
    /// final status (`endedIn: start`, the error as `failure`) and a log line, so the
    /// controller reports the reason at once instead of waiting for a heartbeat.
    public static func reportStartFailure(config: AgentConfig, secrets: AgentSecrets, _ message: String) {
        try? FileManager.default.createDirectory(atPath: config.stateDir, withIntermediateDirectories: true)
        let message = secrets.redact(message)
        var s = AgentStatus(job: config.job, attempt: config.attempt, node: config.node, agentPID: getpid())
        s.phase = .exited
        s.endedIn = AgentStatus.startPhase
        s.endedAt = Date()
        s.failure = message
        write(s, to: config.statusFile)
        AppendFile.append("[capstan-agent node \(config.node)] \(message)\n", to: config.logFile)
    }

    /// Records `pid` for the node's provider (killed when the node goes away) and for this
    /// attempt (killed by a forced stop, ``LocalTransport``).
    func recordPID(_ pid: pid_t) {
        let fresh = recorded.withLock { $0.insert(pid).inserted }
        guard fresh else { return }
        if let file = config.pidsFile { NodeProcesses.record(pid, in: file) }
        NodeProcesses.record(pid, in: config.attemptPidsFile)
    }

    /// Records every descendant not recorded yet (as the agent process: each heartbeat).
    func recordDescendants() {
        for pid in NodeProcesses.descendants(of: getpid()) { recordPID(pid) }
    }

    /// Kills every descendant (as the agent process) and reaps them.
    func killDescendants() {
        for pid in NodeProcesses.descendants(of: getpid()) {
            kill(pid, SIGKILL)
            Spawn.reapLater(pid)
        }
    }

    /// Test hook `CAPSTAN_TEST_CRASH_AT=agent-upload:N`: the agent dies (SIGKILL) right after
    /// the N-th checkpoint file it uploads in attempt 1 — a node lost mid-upload.
    func afterFileUploaded() {
        let n = filesUploaded.withLock { c -> Int in
            c += 1
            return c
        }
        if config.attempt == 1 { faults.hit("agent-upload", n) }
    }
}
