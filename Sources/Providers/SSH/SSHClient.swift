public import CapstanCore
public import CapstanRuntime
public import CapstanAWS
public import CapstanStorage
public import Foundation

/// Where and as whom to log in on a machine over SSH.
public struct SSHTarget: Sendable, Hashable, Codable {
    public var address: String
    public var port: Int
    public var user: String
    /// Private key file (never its contents: only the path goes into ssh's arguments).
    public var keyFile: String?

    public init(address: String, port: Int = 22, user: String, keyFile: String? = nil) {
        self.address = address
        self.port = port
        self.user = user
        self.keyFile = keyFile
    }

    public var description: String { "\(user)@\(address)\(port == 22 ? "" : ":\(port)")" }
}

/// What a remote command did.
public struct SSHResult: Sendable {
    public var status: Int32
    public var stdout: Data
    public var stderr: String
    public var text: String { String(decoding: stdout, as: UTF8.self) }
}

/// Runs commands on machines through the system OpenSSH client (`ssh`).
///
/// Why OpenSSH rather than a Swift SSH library: it is the maintained implementation every
/// target machine already trusts; it reuses one authenticated connection for every command
/// (`ControlMaster`), so the controller's once-a-second status reads cost a round trip, not a
/// handshake; it speaks every key type, agent and `~/.ssh/config` (jump hosts, proxies) a user
/// already has; and its `known_hosts` handling is the reference. swift-nio-ssh has none of the
/// connection sharing, known_hosts or config support, and would add minutes to every build.
///
/// Host keys are safe by default: Capstan keeps its own `known_hosts` (in `folder`), records a
/// host's key on first contact and refuses a changed one (`StrictHostKeyChecking=accept-new`).
public struct SSHClient: Sendable {
    /// Capstan's SSH folder: `known_hosts` and the connection sockets.
    public let folder: String
    /// Seconds to wait for a TCP connection.
    public var connectTimeout: Int
    /// Seconds of silence (ServerAlive probes) before a live connection counts as lost.
    public var aliveTimeout: Int

    public init(folder: String, connectTimeout: Int = 5, aliveTimeout: Int = 6) {
        self.folder = folder
        self.connectTimeout = connectTimeout
        self.aliveTimeout = aliveTimeout
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    public var knownHosts: String { folder + "/known_hosts" }

    /// The connection socket's path pattern: `folder/cm-%C`, unless that could pass the 108
    /// bytes a Unix socket path may have (ssh adds 17 while it binds; a cloud cluster's folder
    /// under a long `$CAPSTAN_HOME` does) — then a folder of this user's own in the runtime
    /// folder (`$XDG_RUNTIME_DIR`, else /tmp), named per `folder` so clusters never share a
    /// connection. The folder is made 0700 and must be this user's.
    public var controlPath: String {
        let direct = folder + "/cm-%C"
        guard direct.utf8.count + 40 - 2 + 17 >= 104 else { return direct }
        let runtime = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"].flatMap { $0.hasPrefix("/") && $0.utf8.count < 40 ? $0 : nil } ?? "/tmp"
        let dir = "\(runtime)/capstan-ssh-\(getuid())"
        var st = stat()
        if mkdir(dir, 0o700) != 0, errno != EEXIST { return direct }
        // Someone else's folder (or a link) is not used: ssh then fails with the long path's
        // own clear error rather than talk through a socket another user controls.
        guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == getuid(), st.st_mode & 0o077 == 0 else { return direct }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in folder.utf8 { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 }
        return "\(dir)/\(String(hash, radix: 16))-%C"
    }

    /// ssh's arguments for `target` (before the remote command).
    public func arguments(_ target: SSHTarget) -> [String] {
        var args = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", "UserKnownHostsFile=\(knownHosts)",
            "-o", "ControlMaster=auto",
            "-o", "ControlPath=\(controlPath)",
            "-o", "ControlPersist=120",
            "-o", "ConnectTimeout=\(connectTimeout)",
            "-o", "ServerAliveInterval=2",
            "-o", "ServerAliveCountMax=\(max(1, aliveTimeout / 2))",
            "-o", "LogLevel=ERROR",
            "-p", "\(target.port)",
        ]
        if let key = target.keyFile { args += ["-i", key, "-o", "IdentitiesOnly=yes"] }
        return args + ["\(target.user)@\(target.address)"]
    }

    /// Runs `command` (a shell command line) on `target`, with `input` on its stdin (through a
    /// pipe or an anonymous memory file, never a file on disk: it may hold credentials). The
    /// command runs with `umask 077` (``remoteCommand(_:)``). A non-zero exit of the command is
    /// returned; ssh's own failures (exit 255: unreachable, refused host key, denied key) are
    /// thrown as clear errors.
    @discardableResult
    public func run(_ target: SSHTarget, _ command: String, input: Data? = nil, inputFile: String? = nil, timeout: Double = 60) async throws -> SSHResult {
        let r = try await Self.exec("/usr/bin/ssh", arguments(target) + ["--", Self.remoteCommand(command)], input: input, inputFile: inputFile, timeout: timeout)
        if r.status == 255 { throw Self.error(r.stderr, target: target, knownHosts: knownHosts, timeout: timeout) }
        return r
    }

    /// Runs `command` and throws unless it exits 0.
    @discardableResult
    public func check(_ target: SSHTarget, _ command: String, input: Data? = nil, inputFile: String? = nil, timeout: Double = 60, what: String) async throws -> SSHResult {
        let r = try await run(target, command, input: input, inputFile: inputFile, timeout: timeout)
        guard r.status == 0 else {
            throw CapstanError(.io, "\(what) on \(target.description) failed (exit \(r.status)): \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines).suffix(300))")
        }
        return r
    }

    /// Closes the shared connection to `target`, if any (after a host is released).
    public func disconnect(_ target: SSHTarget) async {
        _ = try? await Self.exec("/usr/bin/ssh", arguments(target).dropLast() + ["-O", "exit", "\(target.user)@\(target.address)"], input: nil, inputFile: nil, timeout: 5)
    }

    /// ssh's exit-255 message as a typed error that says what to do.
    static func error(_ stderr: String, target: SSHTarget, knownHosts: String, timeout: Double) -> CapstanError {
        let s = stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        if s.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || s.contains("Host key verification failed") {
            return CapstanError(.auth, "The host key of \(target.address) is not the one Capstan recorded on first contact; refusing to connect (it may be a different machine, or someone in between).", hint: "If the machine was reinstalled, remove its line from \(knownHosts) and retry.")
        }
        if s.contains("Permission denied") {
            return CapstanError(.auth, "SSH login as \(target.user) on \(target.address) was denied (\(s.split(separator: "\n").last ?? "")).", hint: "Check the user and that the key \(target.keyFile ?? "(ssh's default)") is in the host's authorized_keys.")
        }
        if s.contains("timed out") || s.contains("No route to host") || s.contains("Connection refused") || s.contains("Network is unreachable") || s.contains("closed by remote host") || s.contains("Broken pipe") || s.contains("Timeout, server") || s.isEmpty {
            return CapstanError(.transient, "Cannot reach \(target.description) over SSH: \(s.isEmpty ? "no answer within \(Int(timeout)) s" : String(s.split(separator: "\n").last ?? ""))", hint: "Check that the machine is up, sshd listens on port \(target.port), and nothing blocks the way.")
        }
        return CapstanError(.io, "SSH to \(target.description) failed: \(s.suffix(300))")
    }

    /// Runs a program to the end with a deadline; its output is read while it runs.
    static func exec(_ exe: String, _ args: [String], input: Data?, inputFile: String?, timeout: Double) async throws -> SSHResult {
        try await Spawn.onThread { try execBlocking(exe, args, input: input, inputFile: inputFile, timeout: timeout) }
    }

    static func execBlocking(_ exe: String, _ args: [String], input: Data?, inputFile: String?, timeout: Double) throws -> SSHResult {
        // Spawned with `Spawn` (see there why not Foundation's Process: two reads at once must
        // not wait for each other); output through files (ssh's ControlPersist master keeps
        // whatever it inherited open).
        guard FileManager.default.isExecutableFile(atPath: exe) else {
            throw CapstanError(.unsupported, "Cannot run \(exe): it is missing or not executable.", hint: "Install the OpenSSH client (Debian/Ubuntu: apt install openssh-client).")
        }
        let r = try Spawn.runCapturing([exe] + args, input: input, stdinFile: inputFile, timeout: timeout)
        if r.timedOut { return SSHResult(status: 255, stdout: r.stdout, stderr: "timed out after \(Int(timeout)) s") }
        return SSHResult(status: r.status.code, stdout: r.stdout, stderr: String(decoding: r.stderr, as: UTF8.self))
    }

    /// A shell loop that kills every process listed in `file` (``NodeProcesses``' "pid start"
    /// lines) whose start time still matches (a reused pid is left alone; start 0: no check).
    public static func killListed(_ file: String) -> String {
        let f = remotePath(file)
        return "[ -f \(f) ] && while read -r p x; do if [ \"$x\" = 0 ] || [ \"$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f20)\" = \"$x\" ]; then kill -KILL \"$p\" 2>/dev/null; fi; done < \(f); true"
    }

    /// What runs on the node for `command`: with `umask 077`, so whatever Capstan creates
    /// there (folders, the agent's config, logs, checkpoints) is the login user's alone.
    public static func remoteCommand(_ command: String) -> String { "umask 077; " + command }

    /// A path on a node for its shell: single-quoted, except that `~/REST` becomes
    /// `"$HOME"/'REST'` (the login user's home, resolved on the node).
    public static func remotePath(_ path: String) -> String {
        path.hasPrefix("~/") ? "\"$HOME\"/" + quote(String(path.dropFirst(2))) : quote(path)
    }

    /// `word` single-quoted for a remote shell.
    public static func quote(_ word: String) -> String { "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'" }
}
