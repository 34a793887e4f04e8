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
    /// marked ready last, so a build cut short is redone, never used. Progress goes to the
    /// node log. Throws with what failed and what to do.
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
            say("python env \(hash.prefix(12)): building in \(venv) (python \(version), \(requirements.joined(separator: " ")))")
            try? FileManager.default.removeItem(atPath: venv)
            let made = await runCommand(shell([python.interpreter, "-m", "venv"] + (python.systemPackages ? ["--system-site-packages"] : []) + [venv]))
            guard made.succeeded else {
                throw CapstanError(.invalidRequest, "Creating the venv \(venv) failed (\(made)).", hint: "The node needs Python's venv module (Debian/Ubuntu: apt install python3-venv).")
            }
            if !requirements.isEmpty {
                let reqFile = venv + "/capstan-requirements.txt"
                try Data((requirements.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: reqFile))
                let pip = [venv + "/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
                var installed = false
                if let wheels = python.wheels {
                    say("python env: installing from the wheel folder \(wheels) only (offline)")
                    installed = await runCommand(shell(pip + ["--no-index", "--find-links", wheels, "-r", reqFile])).succeeded
                    if !installed { say("python env: the wheel folder lacks some of them; installing from the index, wheels first") }
                }
                if !installed {
                    let sources = (python.wheels.map { ["--find-links", $0] } ?? []) + (python.index.map { ["--index-url", $0] } ?? [])
                    let exit = await runCommand(shell(pip + sources + ["-r", reqFile]))
                    guard exit.succeeded else {
                        throw CapstanError(.transient, "Installing the job's Python requirements into \(venv) failed (\(exit)); pip's output is in the node log.", hint: "Check the requirement names and that the node reaches the package index, or set python.wheels to a folder holding the wheels.")
                    }
                }
            }
            let info: [String: Any] = ["hash": hash, "python": version, "requirements": requirements, "built": ISO8601DateFormatter().string(from: Date())]
            try JSONSerialization.data(withJSONObject: info, options: [.sortedKeys]).write(to: URL(fileURLWithPath: ready))
            say("python env \(hash.prefix(12)): ready in \(String(format: "%.1f", (ContinuousClock.now - start).seconds)) s")
        }
        return ["PATH": venv + "/bin:" + (env["PATH"] ?? "/usr/bin:/bin"), "VIRTUAL_ENV": venv, "CAPSTAN_PYTHON": venv + "/bin/python"]
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
