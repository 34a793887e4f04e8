public import CapstanCore
import CapstanRuntime
public import Foundation

/// How a job with `image:` runs on a node: setup and the command in one container of the
/// image (`podman run` or `docker run`), on the host's network (torch.distributed reaches the
/// other nodes as it would outside) and IPC namespace, with the node's GPUs passed through
/// (`--gpus all` for docker, CDI's `nvidia.com/gpu=all` for podman), the env contract and the
/// spec's `env:` set, and the job's folders mounted at the same paths: the workdir, the
/// checkpoint, resume and output folders, the agent's state (inputs, recipe files) and the
/// source cache (read-only).
public struct ContainerRun: Sendable, Hashable {
    /// The runtime's program (`/usr/bin/podman`).
    public var runtime: String
    public var image: String
    public var name: String
    /// Folders mounted read-write at the same path.
    public var mounts: [String]
    /// Folders mounted read-only at the same path.
    public var readOnlyMounts: [String]
    public var workdir: String
    public var gpus: Bool
    /// More `run` options from the node's `CAPSTAN_CONTAINER_OPTIONS` (`--runtime runc --ulimit
    /// nproc=4096:4096` where the host's cgroups or capabilities need them).
    public var options: [String]

    public init(runtime: String, image: String, name: String, mounts: [String], readOnlyMounts: [String], workdir: String, gpus: Bool, options: [String] = []) {
        self.options = options
        self.runtime = runtime
        self.image = image
        self.name = name
        self.mounts = mounts
        self.readOnlyMounts = readOnlyMounts
        self.workdir = workdir
        self.gpus = gpus
    }

    /// Setup and `run` as one script for the container: setup's changes (a `pip install`)
    /// are in the container the command runs in. The command is exec'd, so it is the one the
    /// runtime's forwarded SIGTERM reaches (a graceful stop, a final checkpoint).
    /// `secretsOnStdin`: the script first reads `export` lines for the spec's secrets from its
    /// stdin (``secretInput(_:)``), so their values are in no argument and in none of the
    /// container's configuration the runtime keeps on disk.
    public static func script(setup: [String], run: String, secretsOnStdin: Bool = false) -> String {
        (["set -e"] + (secretsOnStdin ? [#"eval "$(cat)""#, "exec </dev/null"] : []) + setup + ["exec /bin/sh -c " + quote(run)]).joined(separator: "\n")
    }

    /// The stdin of a container whose script reads its secrets (``script(setup:run:secretsOnStdin:)``):
    /// one `export NAME='value'` per secret.
    public static func secretInput(_ secrets: [String: String]) -> Data {
        Data(secrets.keys.sorted().map { "export \($0)=\(quote(secrets[$0]!))\n" }.joined().utf8)
    }

    /// `text` as one single-quoted shell word.
    static func quote(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    var isDocker: Bool { (runtime as NSString).lastPathComponent.hasPrefix("docker") }

    /// The labels every container of a job's carries (``NodeAgent/removeStaleContainers(environment:)``
    /// finds what a killed agent left by them).
    public var labels: [String: String] = [:]
    /// Run as this `uid:gid` (docker, whose containers otherwise write root-owned files into
    /// the mounted job folders; rootless podman maps root to the user already).
    public var user: String?

    /// `run` with `environment`'s names passed through (`-e NAME`: the values reach the
    /// runtime in its environment, never in its arguments). `stdin`: the container reads
    /// the runtime's stdin (the secrets' exports).
    public func arguments(script: String, environment names: [String], stdin: Bool = false) -> [String] {
        var a = [runtime, "run", "--rm", "--name", name, "--network", "host", "--ipc", "host"]
        if stdin { a.append("-i") }
        for (k, v) in labels.sorted(by: { $0.key < $1.key }) { a += ["--label", "\(k)=\(v)"] }
        if isDocker, let user { a += ["--user", user, "-e", "HOME=/tmp"] }
        // The node's options last: they may override the above (`--user 0`).
        a += options
        if gpus { a += isDocker ? ["--gpus", "all"] : ["--device", "nvidia.com/gpu=all"] }
        for m in Self.unique(mounts) { a += ["-v", "\(m):\(m)"] }
        for m in Self.unique(readOnlyMounts) { a += ["-v", "\(m):\(m):ro"] }
        a += ["-w", workdir]
        for n in names.sorted() { a += ["-e", n] }
        return a + [image, "/bin/sh", "-c", script]
    }

    static func unique(_ paths: [String]) -> [String] {
        var seen = Set<String>()
        return paths.filter { seen.insert($0).inserted }
    }

    /// The names of the command's environment that go into the container: the env contract,
    /// the spec's `env:` and `secrets:` (`config`), what the agent prepared (inputs, `CAPSTAN_PYTHON`) and
    /// the GPU stack's (`CUDA_*`, `NVIDIA_*`, `NCCL_*`); never the node's `PATH`, `HOME` or
    /// `LD_LIBRARY_PATH` (the image has its own).
    public static func names(config: [String: String], prepared: [String: String], node: [String: String]) -> [String] {
        Array(Set(config.keys).union(prepared.keys).union(node.keys.filter { k in ["CAPSTAN_", "CUDA_", "NVIDIA_", "NCCL_"].contains { k.hasPrefix($0) } }))
    }

    /// The runtime to use on this node: `CAPSTAN_CONTAINER_RUNTIME` (a program, or a
    /// comma-separated list) else podman, then docker: the first whose `info` answers. Throws
    /// `.unsupported` naming the node and what each candidate said.
    public static func findRuntime(node: Int, image: String, environment: [String: String]) async throws -> String {
        let asked = environment["CAPSTAN_CONTAINER_RUNTIME"].map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } } ?? ["podman", "docker"]
        var tried: [String] = []
        for candidate in asked where !candidate.isEmpty {
            guard let program = candidate.hasPrefix("/") ? (FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil) : Spawn.which(candidate, path: environment["PATH"]) else {
                tried.append("\(candidate): not installed")
                continue
            }
            let info = try await Spawn.onThread { try Spawn.runCapturing([program, "info"], environment: environment, timeout: 60) }
            if info.status == .exited(0) { return program }
            let said = String(decoding: info.stderr.isEmpty ? info.stdout : info.stderr, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? "exit \(info.status)"
            tried.append("\(candidate): `\((program as NSString).lastPathComponent) info` failed (\(info.timedOut ? "no answer in 60 s" : said.trimmingCharacters(in: .whitespaces)))")
        }
        throw CapstanError(.unsupported, "node \(node) has no working container runtime for the image \(image): \(tried.joined(separator: "; ")).", hint: "Install podman or docker on the node (Debian/Ubuntu: apt-get install podman), or remove `image:` from the job spec.")
    }
}

extension NodeAgent {
    var containerName: String { "capstan-\(config.job)-a\(config.attempt)-n\(config.node)" }
    static let jobLabel = "capstan.job"

    /// The program and arguments `command` runs as, and its stdin: `/bin/sh -c command` on the
    /// node, or, for a job with `image:`, the runtime's `run` of it (a container left by a
    /// killed agent of this attempt is removed first), with the spec's secrets taken out of
    /// `env` and handed over on stdin instead.
    func commandLine(_ command: String, environment env: inout [String: String], prepared: [String: String]) async -> (argv: [String], input: Data?) {
        guard let image = config.image, let runtime = containerRuntime.withLock({ $0 }) else { return (["/bin/sh", "-c", command], nil) }
        await removeContainer(environment: env)
        let cache = SourceCache.root(environment: ProcessInfo.processInfo.environment.merging(config.environment) { $1 })
        var run = ContainerRun(
            runtime: runtime, image: image, name: containerName,
            mounts: [config.workdir, config.checkpointDir, config.outputDir, config.stateDir] + (config.resumeDir.map { [$0] } ?? []),
            readOnlyMounts: FileManager.default.fileExists(atPath: cache) ? [cache] : [], workdir: config.workdir,
            gpus: (Int(config.environment["CAPSTAN_GPUS_PER_NODE"] ?? "") ?? 0) > 0,
            options: (ProcessInfo.processInfo.environment["CAPSTAN_CONTAINER_OPTIONS"] ?? "").split(whereSeparator: \.isWhitespace).map(String.init))
        run.labels = [Self.jobLabel: config.job, "capstan.node": String(config.node), "capstan.attempt": String(config.attempt)]
        if getuid() != 0 { run.user = "\(getuid()):\(getgid())" }
        let secretValues = secrets.environment ?? [:]
        for name in secretValues.keys { env[name] = nil }
        let script = secretValues.isEmpty ? command : ContainerRun.script(setup: [], run: command, secretsOnStdin: true)
        let argv = run.arguments(script: script, environment: ContainerRun.names(config: config.environment, prepared: prepared, node: env), stdin: !secretValues.isEmpty)
        return (argv, secretValues.isEmpty ? nil : ContainerRun.secretInput(secretValues))
    }

    /// `rm -f` of this attempt's container (none: nothing happens).
    func removeContainer(environment env: [String: String]) async {
        guard config.image != nil, let runtime = containerRuntime.withLock({ $0 }) else { return }
        let name = containerName
        _ = try? await Spawn.onThread { try Spawn.runCapturing([runtime, "rm", "-f", name], environment: env, timeout: 60) }
    }

    /// `rm -f` of this job's containers for this node from earlier attempts, which an agent
    /// killed with SIGKILL left running (docker's are not its descendants; podman's `--rm`
    /// needs the `run` process alive). Found by label, so whatever the names.
    func removeStaleContainers(environment env: [String: String]) async {
        guard config.image != nil, let runtime = containerRuntime.withLock({ $0 }) else { return }
        let (job, node, attempt, label) = (config.job, config.node, config.attempt, Self.jobLabel)
        // The runtime may still be tearing one down itself (podman's `--rm` cleanup racing our
        // `rm -f`): listed again until none is left, for a few rounds.
        for round in 0..<5 {
            let listed = try? await Spawn.onThread {
                try Spawn.runCapturing([runtime, "ps", "-a", "--filter", "label=\(label)=\(job)", "--format", "{{.Names}}"], environment: env, timeout: 60)
            }
            guard let listed, listed.status == .exited(0) else { return }
            let stale = String(decoding: listed.stdout, as: UTF8.self).split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { name in
                // capstan-<job>-a<attempt>-n<node>: this node's, of another attempt.
                guard name.hasPrefix("capstan-\(job)-a"), name.hasSuffix("-n\(node)"),
                      let a = Int(name.dropFirst("capstan-\(job)-a".count).dropLast("-n\(node)".count)) else { return false }
                return a != attempt
            }
            guard !stale.isEmpty else { return }
            if round == 0 { say("removing container(s) an earlier attempt left: \(stale.joined(separator: ", "))") }
            _ = try? await Spawn.onThread { try Spawn.runCapturing([runtime, "rm", "-f"] + stale, environment: env, timeout: 120) }
            if round > 0 { try? await Task.sleep(for: .seconds(1)) }
        }
        say("container(s) of an earlier attempt could not be removed; remove them with `\((runtime as NSString).lastPathComponent) rm -f`")
    }
}
