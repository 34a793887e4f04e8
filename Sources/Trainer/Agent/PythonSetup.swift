public import CapstanCore
public import CapstanRuntime
public import CapstanProviders
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The agent's preparation before setup: the files it was given (a recipe) and the job's
/// Python environment.
extension NodeAgent {
    /// Writes `AgentConfig.files` under the state folder; failed (the status's `failure`) when it cannot.
    func writeFiles() -> AgentLifecycle.Event {
        for (rel, text) in config.files.sorted(by: { $0.key < $1.key }) {
            let path = config.stateDir + "/" + rel
            do {
                guard !rel.hasPrefix("/"), !rel.split(separator: "/").contains("..") else {
                    throw CapstanError(.invalidRequest, "file path \(rel) leaves the state folder")
                }
                try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
            } catch {
                return .filesFailed("writing \(path) failed: \(error)")
            }
        }
        return .filesWritten
    }

    /// Finds or builds the job's venv and returns the variables setup and the command run
    /// with (`PATH`, `VIRTUAL_ENV`, `CAPSTAN_PYTHON`). Each node and requirements hash gets
    /// one venv in the node's cache, built under a lock (local nodes share a machine) and
    /// marked ready last, so a build cut short is redone, never used. venv's and pip's output
    /// go to ``pythonLog``; the node log gets a line as the build starts, ``PythonEnvProgress``
    /// lines while it runs, a line when it is ready, and pip's last lines when it fails.
    /// Throws with what failed and what to do.
    func preparePython(_ python: PythonEnvironment) async throws -> [String: String] {
        let start = ContinuousClock.now
        var env = BaseEnvironment.filter(ProcessInfo.processInfo.environment)
        for (k, v) in config.environment { env[k] = v }
        var fileText: String?
        if let file = python.requirementsFile {
            let path = file.hasPrefix("/") ? file : config.workdir + "/" + file
            guard let data = FileManager.default.contents(atPath: path) else {
                throw CapstanError(.invalidRequest, "The requirements file \(file) is not in the job's workdir on node \(config.node).", hint: "python.requirements names a file relative to the workdir, or list the requirements inline.")
            }
            fileText = String(decoding: data, as: UTF8.self)
        }
        let version = try await output(of: [python.interpreter, "-c", "import sys; print(sys.version.split()[0])"], env: env)
        guard let version, !version.isEmpty else {
            throw CapstanError(.invalidRequest, "No Python interpreter '\(python.interpreter)' on node \(config.node).", hint: "Install Python 3 on the node's image, or set python.interpreter.")
        }
        let hash = python.hash(fileContents: fileText, pythonVersion: version)
        // The cache is the agent's setting (CAPSTAN_PYTHON_CACHE), not the job's.
        let root = PythonEnvironment.cacheRoot(environment: ProcessInfo.processInfo.environment.merging(config.environment) { $1 })
        let venv = "\(root)/\(hash.prefix(16))"
        let requirements = python.requirements + (fileText.map(PythonEnvironment.lines) ?? [])
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let lock = try await lockFile(venv + ".lock")
        defer { close(lock) }
        let ready = venv + "/.capstan-ready"
        if FileManager.default.fileExists(atPath: ready) {
            say("python env \(hash.prefix(12)): cached in \(venv) (python \(version), \(requirements.count) requirement(s))")
        } else {
            say("python env \(hash.prefix(12)): building in \(venv) (python \(version), \(requirements.joined(separator: " "))); pip's output goes to \(pythonLog)")
            try? FileManager.default.removeItem(atPath: venv)
            // venv's and pip's output go to a file of their own (0600, next to the node log):
            // the node log gets progress lines, and pip's last lines if it fails.
            try PrivateFile.write(Data("capstan: python env \(hash) in \(venv), \(ISO8601DateFormatter().string(from: Date()))\n".utf8), to: pythonLog)
            let made = await runLogged(shell([python.interpreter, "-m", "venv"] + (python.systemPackages ? ["--system-site-packages"] : []) + [venv]))
            guard made.succeeded else {
                sayTail(of: pythonLog, what: "python -m venv")
                throw CapstanError(.invalidRequest, "Creating the venv \(venv) failed (\(made)); its output is in the node log, all of it in \(pythonLog) on node \(config.node).", hint: "The node needs Python's venv module (Debian/Ubuntu: apt install python3-venv).")
            }
            var count = 0
            if !requirements.isEmpty {
                let reqFile = venv + "/capstan-requirements.txt"
                try Data((requirements.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: reqFile))
                let pip = [venv + "/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
                var installed: Int?
                if let wheels = python.wheels {
                    say("python env: installing from the wheel folder \(wheels) only (offline)")
                    let offline = await runPip(shell(pip + ["--no-index", "--find-links", wheels, "-r", reqFile]), venv: venv, start: start)
                    if offline.exit.succeeded { installed = offline.installed } else { say("python env: the wheel folder lacks some of them; installing from the index, wheels first") }
                }
                if installed == nil {
                    let sources = (python.wheels.map { ["--find-links", $0] } ?? []) + (python.index.map { ["--index-url", $0] } ?? [])
                    let online = await runPip(shell(pip + sources + ["-r", reqFile]), venv: venv, start: start)
                    guard online.exit.succeeded else {
                        sayTail(of: pythonLog, what: "pip")
                        progress(PythonEnvProgress(node: config.node, phase: .failed, done: 0, total: nil, seconds: (ContinuousClock.now - start).seconds))
                        throw CapstanError(.transient, "Installing the job's Python requirements into \(venv) failed (\(online.exit)); pip's last lines are in the node log, all of its output in \(pythonLog) on node \(config.node).", hint: "Check the requirement names and that the node reaches the package index, or set python.wheels to a folder holding the wheels.")
                    }
                    installed = online.installed
                }
                count = installed ?? 0
            }
            let info: [String: Any] = ["hash": hash, "python": version, "requirements": requirements, "built": ISO8601DateFormatter().string(from: Date())]
            try JSONSerialization.data(withJSONObject: info, options: [.sortedKeys]).write(to: URL(fileURLWithPath: ready))
            let seconds = (ContinuousClock.now - start).seconds
            progress(PythonEnvProgress(node: config.node, phase: .ready, done: count, total: count, seconds: seconds))
            say("python env \(hash.prefix(12)): ready in \(String(format: "%.1f", seconds)) s (\(count) package\(count == 1 ? "" : "s") installed)")
        }
        return ["PATH": venv + "/bin:" + (env["PATH"] ?? "/usr/bin:/bin"), "VIRTUAL_ENV": venv, "CAPSTAN_PYTHON": venv + "/bin/python"]
    }

    /// Where venv's and pip's output goes: next to the node log, 0600.
    var pythonLog: String { config.stateDir + "/python-env.log" }

    /// A command of the Python environment's, its output appended to ``pythonLog``.
    func runLogged(_ command: String) async -> ExitStatus {
        // Through the agent like the command's output: a job's secrets redacted on the way.
        await runCommand(command, output: pythonLog)
    }

    /// Runs a `pip install` (output to ``pythonLog``), writing ``PythonEnvProgress`` lines to
    /// the node log while it runs: at each phase, and as the count moves (at most once a
    /// second). Returns how pip ended and the count of packages it installed.
    func runPip(_ command: String, venv: String, start: ContinuousClock.Instant) async -> (exit: ExitStatus, installed: Int) {
        let log = pythonLog, node = config.node
        let from = (try? FileManager.default.attributesOfItem(atPath: log)[.size] as? NSNumber)?.uint64Value ?? 0
        let baseline = Self.packagesUnpacked(venv)
        let watcher = Task { [self] in
            var reader = PipLogReader(file: log, offset: from)
            var last = "", lastAt = ContinuousClock.now
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                reader.read()
                let e = reader.progress.event(node: node, seconds: (ContinuousClock.now - start).seconds, installedNow: Self.packagesUnpacked(venv) - baseline)
                let newPhase = !last.hasPrefix(e.phase.rawValue + " ")
                if e.state != last, newPhase || ContinuousClock.now - lastAt >= .seconds(1) {
                    progress(e)
                    last = e.state
                    lastAt = .now
                }
            }
            reader.read()
            // A short install may have ended between two looks: its one installing line still goes.
            if let n = reader.progress.toInstall, !last.hasPrefix(PythonEnvProgress.Phase.installing.rawValue + " ") {
                progress(PythonEnvProgress(node: node, phase: .installing, done: reader.progress.installed ?? n, total: n, seconds: (ContinuousClock.now - start).seconds, package: reader.progress.latest))
            }
            return reader.progress
        }
        let exit = await runLogged(command)
        watcher.cancel()
        let seen = await watcher.value
        return (exit, seen.installed ?? 0)
    }

    /// Writes a progress line to the node log.
    func progress(_ event: PythonEnvProgress) {
        AppendFile.append(event.line + "\n", to: config.logFile)
    }

    /// Packages unpacked into `venv` (its `*.dist-info` folders): how far pip's install phase is.
    static func packagesUnpacked(_ venv: String) -> Int {
        let lib = venv + "/lib"
        var n = 0
        for py in (try? FileManager.default.contentsOfDirectory(atPath: lib)) ?? [] where py.hasPrefix("python") {
            n += ((try? FileManager.default.contentsOfDirectory(atPath: "\(lib)/\(py)/site-packages")) ?? []).count(where: { $0.hasSuffix(".dist-info") })
        }
        return n
    }

    /// Says the last lines of `file` (up to 40) in the node log, and where the rest is.
    func sayTail(of file: String, what: String) {
        let lines = PipLogReader.lastLines(of: file, count: 40)
        say("python env: \(what) failed; its last \(lines.count) line(s) follow, all of its output is in \(file)")
        for line in lines { say("  " + line) }
    }

    /// Takes an exclusive `flock` on `path`, waiting without blocking a thread.
    func lockFile(_ path: String) async throws -> Int32 {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CapstanError(.io, "Cannot open the lock \(path): \(String(cString: strerror(errno))).") }
        var waited = false
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if !waited { say("python env: another node on this machine is building it; waiting") }
            waited = true
            try? await Task.sleep(for: .milliseconds(200))
        }
        return fd
    }

    /// A command's stdout (trimmed), or nil when it cannot run or fails.
    func output(of argv: [String], env: [String: String]) async throws -> String? {
        let file = config.stateDir + "/.probe-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: file) }
        guard let pid = try? Spawn.start(["/bin/sh", "-c", shell(argv) + " 2>/dev/null"], environment: env, cwd: config.workdir, output: file) else { return nil }
        guard await Spawn.wait(pid).succeeded, let data = FileManager.default.contents(atPath: file) else { return nil }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// `argv` as one `/bin/sh` command line, each word single-quoted.
    func shell(_ argv: [String]) -> String {
        argv.map(SSHClient.quote).joined(separator: " ")
    }
}

/// Reads pip's output file as it grows, into a ``PipProgress``.
struct PipLogReader {
    let file: String
    var offset: UInt64
    var partial = Data()
    var progress = PipProgress()

    init(file: String, offset: UInt64) {
        self.file = file
        self.offset = offset
    }

    /// Feeds the whole lines written since the last read.
    mutating func read() {
        guard let h = FileHandle(forReadingAtPath: file) else { return }
        defer { try? h.close() }
        guard (try? h.seek(toOffset: offset)) != nil, let data = try? h.readToEnd(), !data.isEmpty else { return }
        offset += UInt64(data.count)
        partial.append(data)
        guard let end = partial.lastIndex(where: { $0 == 0x0A || $0 == 0x0D }) else { return }
        progress.feed(text: String(decoding: partial[...end], as: UTF8.self))
        partial = Data(partial[partial.index(after: end)...])
    }

    /// The last `count` non-empty lines of `file` (from its last 64 KiB).
    static func lastLines(of file: String, count: Int) -> [String] {
        guard let h = FileHandle(forReadingAtPath: file) else { return [] }
        defer { try? h.close() }
        let size = (try? h.seekToEnd()) ?? 0
        let from = size > 65_536 ? size - 65_536 : 0
        guard (try? h.seek(toOffset: from)) != nil, let data = try? h.readToEnd() else { return [] }
        let lines = String(decoding: data, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map(String.init)
        return Array(lines.dropFirst(from > 0 ? 1 : 0).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }.suffix(count))
    }
}
