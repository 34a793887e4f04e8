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
    let status: LockedBox<AgentStatus>
    let stopping = LockedBox<Bool>(false)
    let filesUploaded = LockedBox<Int>(0)
    /// Pids already written to the pids files.
    let recorded = LockedBox<Set<pid_t>>([])
    /// This process is the agent and nothing else (`run(asAgentProcess:)`).
    let ownsDescendants = LockedBox<Bool>(false)
    /// Set by the Python environment (`PATH`, `VIRTUAL_ENV`, `CAPSTAN_PYTHON`), over the
    /// config's environment for setup and the command.
    let preparedEnvironment = LockedBox<[String: String]>([:])

    /// What the controller handed over on stdin: only used here to keep its secrets out of
    /// every line and status this agent writes.
    let secrets: AgentSecrets

    public init(config: AgentConfig, bucket: any ObjectStore, secrets: AgentSecrets = AgentSecrets(), faults: FaultPoints = .none, logger: Logger = Logger(label: "capstan.agent", factory: { _ in SwiftLogNoOpLogHandler() })) {
        self.config = config
        self.bucket = bucket
        self.secrets = secrets
        self.faults = faults
        self.logger = logger
        self.status = LockedBox(AgentStatus(job: config.job, attempt: config.attempt, node: config.node, agentPID: getpid()))
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
        update { _ in }
        ownsDescendants.withLock { $0 = asAgentProcess }
        if asAgentProcess { Spawn.becomeSubreaper() }
        recordPID(getpid())
        say("agent started: job \(config.job), attempt \(config.attempt), node \(config.node) of \(config.nodes)")
        let beats = Task { [self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(config.heartbeatSeconds))
                beat()
                recordDescendants()
            }
        }
        defer { beats.cancel() }
        let signals = asAgentProcess ? installStopHandler() : []
        defer { signals.forEach { $0.cancel() } }

        // The bucket must take a write with these credentials before anything starts: a wrong
        // or read-only key, a missing bucket or an unreachable endpoint is the attempt's
        // start-up error, said at once (not a checkpoint upload retried forever).
        do { try await probeBucket() } catch {
            update { $0.failure = "cannot write to the bucket \(bucket.location): \(error)" }
            say("cannot write to the bucket \(bucket.location): \(error)")
            return finish(endedIn: AgentStatus.startPhase, exit: nil)
        }
        if !(await restore()) { return finish(endedIn: "restore", exit: nil) }
        if !writeFiles() { return finish(endedIn: "setup", exit: nil) }
        if let python = config.python, !isStopping {
            update { $0.phase = .setup }
            do {
                let env = try await preparePython(python)
                preparedEnvironment.withLock { $0 = env }
            } catch {
                // The job's own setup failed (a bad requirement, no index): like a failing
                // setup command, retried once and then reported as the job's error.
                say("python env failed: \(error)")
                return finish(endedIn: "setup", exit: .exited(1))
            }
        }
        for (i, command) in config.setup.enumerated() where !isStopping {
            update { $0.phase = .setup }
            say("setup \(i + 1)/\(config.setup.count): \(command)")
            let exit = await runCommand(command)
            if !exit.succeeded { return finish(endedIn: "setup", exit: exit) }
        }
        guard !isStopping else { return finish(endedIn: "setup", exit: .signaled(SIGTERM)) }

        update { $0.phase = .running }
        let watcher = CheckpointWatcher(
            folder: config.checkpointDir, checkpoints: checkpoints, job: config.job, attempt: config.attempt, node: config.node,
            nodes: config.nodes, keep: config.keep, logger: logger, afterFile: { [self] _ in afterFileUploaded() },
            beforeCommit: { [self] _ in if config.attempt == 1 { faults.hit("agent-commit") } })
        let uploads = Task { [self] in
            while !Task.isCancelled {
                // A pass runs in a task of its own, which the cancel below (the command ended)
                // does not reach: it only cuts the sleep short. Cancelled, an upload in flight
                // failed with CancellationError() (the HTTP client's), to be redone from the start.
                await Task { await checkpointPass(watcher) }.value
                try? await Task.sleep(for: .seconds(config.checkpointPollSeconds))
            }
        }
        let exit = await runCommand(config.run)
        uploads.cancel()
        _ = await uploads.value
        let workerSignal = exit.succeeded ? nil : Self.workerSignal(inLogTail: logTail())
        update {
            $0.phase = .finishing
            $0.endedAt = Date()
            $0.exit = exit
            $0.endedIn = "run"
            $0.workerSignal = workerSignal
        }
        say("command ended: \(exit)" + (workerSignal.map { "; a worker was killed by signal \($0)" } ?? ""))
        await finalUploads(watcher, succeeded: exit.succeeded)
        return finish(endedIn: "run", exit: exit)
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

    /// Restores this node's part of the chosen checkpoint. False (with `failure` set) when it
    /// cannot: the controller then picks another checkpoint or gives up.
    func restore() async -> Bool {
        guard let step = config.resumeStep, let dir = config.resumeDir else { return true }
        update { $0.phase = .restoring }
        let start = ContinuousClock.now
        do {
            guard let manifest = try await checkpoints.verified(step: step) else {
                throw CapstanError(.notFound, "Checkpoint step \(step) is missing or does not verify in \(bucket.location).")
            }
            try? FileManager.default.removeItem(atPath: dir)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try await checkpoints.restore(manifest, node: config.node, into: dir)
            say("restored checkpoint step \(step) (\(manifest.totalBytes) bytes in all nodes' parts) in \(String(format: "%.2f", (ContinuousClock.now - start).seconds)) s")
            return true
        } catch let bad as CorruptCheckpoint {
            update {
                $0.corruptCheckpoint = bad
                $0.failure = "restoring checkpoint step \(step) failed: \(bad)"
            }
            say("restoring checkpoint step \(step) failed: \(bad)")
            return false
        } catch {
            update { $0.failure = "restoring checkpoint step \(step) failed: \(error)" }
            say("restoring checkpoint step \(step) failed: \(error)")
            return false
        }
    }

    /// Runs `/bin/sh -c command` in the workdir, output appended to the node log.
    func runCommand(_ command: String) async -> ExitStatus {
        // Only the base environment of the agent's own (never its credentials), then the env
        // contract and the spec's `env:`.
        var env = BaseEnvironment.filter(ProcessInfo.processInfo.environment)
        for (k, v) in config.environment { env[k] = v }
        for (k, v) in preparedEnvironment.withLock({ $0 }) { env[k] = v }
        if env["CAPSTAN_PYTHON"] == nil { env["CAPSTAN_PYTHON"] = "python3" }
        let pid: pid_t
        do {
            pid = try Spawn.start(["/bin/sh", "-c", command], environment: env, cwd: config.workdir, output: config.logFile)
        } catch {
            say("cannot start the command: \(error)")
            return .exited(127)
        }
        recordPID(pid)
        update { $0.commandPID = pid }
        // A stop that arrived while it was starting.
        if isStopping { Spawn.signalGroup(pid, SIGTERM) }
        let exit = await Spawn.wait(pid)
        // Anything the command left running goes with it: its process group, and (as the
        // agent process) every descendant, wherever it moved to.
        Spawn.signalGroup(pid, SIGKILL)
        killDescendants()
        update { $0.commandPID = nil }
        return exit
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
        } catch {
            say("checkpoint upload failed, will retry: \(error)")
        }
        let uploaded = await watcher.uploadedSteps
        let committed = await watcher.committed
        update {
            $0.uploadedSteps = Array(uploaded.suffix(20))
            $0.committedSteps = Array(committed.suffix(20))
        }
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
            if isStopping {
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
            update { $0.outputsUploaded = true }
            if n > 0 { say("uploaded \(n) output file(s) to \(bucket.location)/\(outputPrefix)") }
        } catch {
            update { $0.failure = "uploading outputs failed: \(error)" }
            say("uploading outputs failed: \(error)")
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

    func finish(endedIn: String, exit: ExitStatus?) -> AgentStatus {
        update {
            $0.phase = .exited
            if $0.endedIn == nil { $0.endedIn = endedIn }
            if $0.exit == nil { $0.exit = exit }
            if $0.endedAt == nil { $0.endedAt = Date() }
        }
        let s = status.withLock { $0 }
        say("agent done: \(s.exit.map { "\($0)" } ?? "no command result")\(s.failure.map { "; \($0)" } ?? "")")
        return s
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

    var isStopping: Bool { stopping.withLock { $0 } }

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

    public func requestStop() {
        let first = stopping.withLock { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        update { $0.stopRequested = true }
        say("stop requested")
        guard let pid = status.withLock({ $0.commandPID }) else { return }
        Spawn.signalGroup(pid, SIGTERM)
        DispatchQueue.global().asyncAfter(deadline: .now() + config.stopGraceSeconds) { [self] in
            if let still = status.withLock({ $0.commandPID }), still == pid {
                say("command did not stop within \(config.stopGraceSeconds) s; killing it")
                Spawn.signalGroup(pid, SIGKILL)
            }
        }
    }

    // MARK: - Files

    /// Rewrites status.json atomically after applying `change`.
    func update(_ change: (inout AgentStatus) -> Void) {
        status.withLock { s in
            change(&s)
            s.updatedAt = Date()
            writeStatus(s)
        }
    }

    /// One heartbeat; none after the final status.
    func beat() {
        status.withLock { s in
            guard s.phase != .exited else { return }
            s.heartbeat += 1
            s.updatedAt = Date()
            writeStatus(s)
        }
    }

    private func writeStatus(_ s: AgentStatus) {
        var s = s
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
        guard ownsDescendants.withLock({ $0 }) else { return }
        for pid in NodeProcesses.descendants(of: getpid()) { recordPID(pid) }
    }

    /// Kills every descendant (as the agent process) and reaps them.
    func killDescendants() {
        guard ownsDescendants.withLock({ $0 }) else { return }
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
