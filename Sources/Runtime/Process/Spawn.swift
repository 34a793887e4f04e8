package import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Starting processes with `posix_spawn`, never Foundation's `Process`.
///
/// Two reasons. Children that outlive a crash of whoever started them need their own session
/// (a process group that can be signalled as a whole) and output appended to a file we keep,
/// which `Process` cannot do. And on Linux, `Process` notices a child's exit through a socket
/// the child inherits, then waits for that child in a blocking `waitpid` on its one manager
/// thread; a child that closes inherited descriptors as it starts (OpenSSH does) holds that
/// thread for its whole life, and meanwhile no other `Process` is seen to exit. Seen in the SSH
/// tests: a healthy node's `ssh … cat status.json` was a zombie with its answer written, yet
/// counted as running until the read of an unreachable node timed out 5 s later, so the
/// healthy node looked silent too. Here every child gets only fds 0–2, and each exit is
/// collected by `waitpid` on that child's pid, by whoever waits for it.
package enum Spawn {
    /// Where a child's standard streams go.
    package struct Streams: Sendable {
        /// File to read stdin from; nil: /dev/null.
        package var stdin: String?
        /// File for stdout; nil: /dev/null.
        package var stdout: String?
        /// File for stderr; nil: the same as stdout.
        package var stderr: String?
        /// Append to the output files (else truncate). Files are created 0600.
        package var append: Bool
        /// A descriptor to read stdin from instead of `stdin` (a pipe holding `input`).
        var stdinFD: Int32?
        /// A descriptor for stdout and stderr instead of the files (a ``RedactingPipe``'s).
        var outputFD: Int32?

        package init(stdin: String? = nil, stdout: String? = nil, stderr: String? = nil, append: Bool = true) {
            self.stdin = stdin
            self.stdout = stdout
            self.stderr = stderr
            self.append = append
        }
    }

    /// Starts `argv` in `cwd` with exactly `environment`, in a session of its own, output
    /// appended to `output` (or discarded). Returns the pid, which is also the child's
    /// process-group id.
    package static func start(_ argv: [String], environment: [String: String], cwd: String? = nil, output: String? = nil) throws -> pid_t {
        try spawn(argv, environment: environment, cwd: cwd, streams: Streams(stdout: output), newSession: true)
    }

    /// ``start(_:environment:cwd:output:)`` with `input` on the child's stdin, through a pipe
    /// or an anonymous memory file (never a file on disk: it may hold credentials; see
    /// ``inputHolding(_:)``).
    package static func start(_ argv: [String], environment: [String: String], cwd: String? = nil, output: String? = nil, input: Data) throws -> pid_t {
        let fd = try inputHolding(input)
        defer { close(fd) }
        var streams = Streams(stdout: output)
        streams.stdinFD = fd
        return try spawn(argv, environment: environment, cwd: cwd, streams: streams, newSession: true)
    }

    /// ``start(_:environment:cwd:output:)`` with stdout and stderr into `pipe` (which redacts
    /// secrets before they reach its file) and, when given, `input` on stdin (as
    /// ``start(_:environment:cwd:output:input:)`` does).
    package static func start(_ argv: [String], environment: [String: String], cwd: String? = nil, output pipe: RedactingPipe, input: Data? = nil) throws -> pid_t {
        var streams = Streams()
        streams.outputFD = pipe.writeEnd
        let fd = try input.map { try inputHolding($0) }
        defer { if let fd { close(fd) } }
        streams.stdinFD = fd
        return try spawn(argv, environment: environment, cwd: cwd, streams: streams, newSession: true)
    }

    /// Input up to this size goes to a child through a pipe, written whole before it starts.
    static let pipedInputLimit = 60_000

    /// A descriptor (close-on-exec) to give a child as its stdin that holds `data`, which never
    /// touches the disk, so a controller killed by SIGKILL leaves nothing behind: up to
    /// ``pipedInputLimit`` bytes, a pipe written whole before the child starts; more, an
    /// anonymous memory file (Linux `memfd_create`: no name in any folder, gone with its last
    /// descriptor); where that is missing, a pipe fed by a thread of its own.
    /// `forceFedPipe` takes the last way whatever the size (for its tests).
    static func inputHolding(_ data: Data, forceFedPipe: Bool = false) throws -> Int32 {
        if forceFedPipe { return try pipeFedByThread(data) }
        if data.count <= pipedInputLimit { return try pipeHolding(data) }
        if let fd = try memoryFileHolding(data) { return fd }
        return try pipeFedByThread(data)
    }

    /// Writes all of `data` to `fd` (retrying interrupted and short writes); false (errno set) on
    /// a failure. Also ``PrivateFile``'s.
    static func writeAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { (buf: UnsafeRawBufferPointer) in
            var written = 0
            while written < buf.count {
                let n = write(fd, buf.baseAddress! + written, buf.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                written += n
            }
            return true
        }
    }

    /// An anonymous memory file holding `data`, read from its start; nil where `memfd_create`
    /// is missing (not Linux, or a kernel older than 3.17).
    static func memoryFileHolding(_ data: Data) throws -> Int32? {
        guard let memfdCreate else { return nil }
        let fd = "capstan-stdin".withCString { memfdCreate($0, 1 /* MFD_CLOEXEC */) }
        guard fd >= 0 else { return nil }
        guard writeAll(fd, data), lseek(fd, 0, SEEK_SET) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw CapstanError(.io, "Cannot fill an in-memory file with \(data.count) bytes of a child's input: \(why).", hint: "Check the machine's free memory.")
        }
        return fd
    }

    /// The read end of a pipe (close-on-exec) that a thread of its own writes `data` into and
    /// then closes; a reader that goes away early ends the writing (EPIPE, never SIGPIPE).
    static func pipeFedByThread(_ data: Data) throws -> Int32 {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw CapstanError(.io, "Cannot make a pipe: \(String(cString: strerror(errno))).") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        #if canImport(Darwin)
        _ = fcntl(fds[1], F_SETNOSIGPIPE, 1)
        #endif
        let writeEnd = fds[1]
        Thread.detachNewThread {
            // SIGPIPE blocked on this thread: a write to a closed pipe fails with EPIPE instead
            // (a signal pending on this thread alone is dropped when it ends).
            var block = sigset_t()
            sigemptyset(&block)
            sigaddset(&block, SIGPIPE)
            pthread_sigmask(SIG_BLOCK, &block, nil)
            _ = writeAll(writeEnd, data)
            close(writeEnd)
        }
        return fds[0]
    }

    /// The read end of a pipe (close-on-exec) that holds `data` and is closed for writing.
    static func pipeHolding(_ data: Data) throws -> Int32 {
        guard data.count <= pipedInputLimit else {
            throw CapstanError(.invalidRequest, "Input of \(data.count) bytes is too big for a pipe written before the child starts (at most \(pipedInputLimit)).")
        }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw CapstanError(.io, "Cannot make a pipe: \(String(cString: strerror(errno))).") }
        defer { close(fds[1]) }
        // Children started by anything else meanwhile do not inherit it (pipe2 is not imported).
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        guard writeAll(fds[1], data) else {
            let why = String(cString: strerror(errno))
            close(fds[0])
            throw CapstanError(.io, "Cannot write to a pipe: \(why).")
        }
        return fds[0]
    }

    /// Starts `argv` with `streams`; `newSession`: its own session and process group (no
    /// controlling terminal), else its own process group only. Nothing but fds 0–2 is inherited.
    package static func spawn(_ argv: [String], environment: [String: String], cwd: String? = nil, streams: Streams, newSession: Bool) throws -> pid_t {
        guard let exe = argv.first else { throw CapstanError(.invalidRequest, "Nothing to start.") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let fd = streams.stdinFD {
            posix_spawn_file_actions_adddup2(&actions, fd, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, streams.stdin ?? "/dev/null", O_RDONLY, 0)
        }
        let mode = O_WRONLY | O_CREAT | (streams.append ? O_APPEND : O_TRUNC)
        if let fd = streams.outputFD {
            posix_spawn_file_actions_adddup2(&actions, fd, 1)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, streams.stdout ?? "/dev/null", mode, 0o600)
        }
        if let err = streams.stderr, streams.outputFD == nil {
            posix_spawn_file_actions_addopen(&actions, 2, err, mode, 0o600)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        // Nothing else of ours leaks into the child (a pipe or socket held open by a child
        // keeps whoever waits for its end-of-file waiting).
        if let closefrom = addClosefrom {
            closefrom(&actions, 3)
        } else {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
                if let fd = Int32(name), fd > 2, fcntl(fd, F_GETFD) >= 0 { posix_spawn_file_actions_addclose(&actions, fd) }
            }
        }
        if let cwd {
            guard let addchdir = addChdir else {
                throw CapstanError(.unsupported, "This C library has no posix_spawn_file_actions_addchdir_np; cannot start processes in \(cwd).", hint: "Use glibc 2.29 or newer.")
            }
            _ = cwd.withCString { addchdir(&actions, $0) }
        }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // A new session: no controlling terminal, its own process group (pgid == pid).
        let group = newSession ? setsidFlag : Int32(POSIX_SPAWN_SETPGROUP)
        posix_spawnattr_setflags(&attr, Int16(group | Int32(POSIX_SPAWN_SETSIGMASK) | Int32(POSIX_SPAWN_SETSIGDEF)))
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)

        let args = argv.map { strdup($0) } + [nil]
        let env = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            args.forEach { free($0) }
            env.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, &attr, args, env)
        guard rc == 0 else {
            throw CapstanError(.io, "Cannot start \(exe): \(String(cString: strerror(rc))).", hint: "Check that it exists and is executable.")
        }
        return pid
    }

    /// Runs `argv` to its end on the calling thread (so: not on the cooperative pool), with
    /// `streams`; past `timeout` seconds it gets SIGTERM, then SIGKILL 0.2 s later, and
    /// `timedOut` is true. The environment is this process's unless given.
    package static func runBlocking(_ argv: [String], environment: [String: String]? = nil, streams: Streams, timeout: Double) throws -> (status: ExitStatus, timedOut: Bool) {
        let pid = try spawn(argv, environment: environment ?? ProcessInfo.processInfo.environment, streams: streams, newSession: false)
        let deadline = ContinuousClock.now + .seconds(timeout)
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return (decode(status), false) }
            if r < 0 && errno != EINTR { return (.exited(-1), false) }
            if ContinuousClock.now > deadline { break }
            usleep(2_000)
        }
        kill(pid, SIGTERM)
        let grace = ContinuousClock.now + .milliseconds(200)
        var killed = false
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return (decode(status), true) }
            if r < 0 && errno != EINTR { return (.signaled(SIGKILL), true) }
            if !killed, ContinuousClock.now > grace {
                kill(pid, SIGKILL)
                killed = true
            }
            usleep(2_000)
        }
    }

    /// What ``runCapturing(_:environment:input:stdinFile:timeout:)`` saw.
    package struct Captured: Sendable {
        package var status: ExitStatus
        package var timedOut: Bool
        package var stdout: Data
        package var stderr: Data
    }

    /// ``runBlocking(_:environment:streams:timeout:)`` with stdin from `input` (or the file
    /// `stdinFile`, or /dev/null) and stdout and stderr collected. The output goes through
    /// temporary files, not pipes: a child that leaves a daemon behind holding them (ssh's
    /// ControlPersist master) would keep a pipe from ever reaching end-of-file. `input` never
    /// touches the disk, whatever its size (credentials travel in it): see ``inputHolding(_:)``.
    package static func runCapturing(_ argv: [String], environment: [String: String]? = nil, input: Data? = nil, stdinFile: String? = nil, timeout: Double) throws -> Captured {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-run-\(UUID().uuidString)").path
        defer {
            for f in [".out", ".err"] { unlink(base + f) }
        }
        var streams = Streams(stdin: stdinFile, stdout: base + ".out", stderr: base + ".err", append: false)
        var piped: Int32?
        defer { if let piped { close(piped) } }
        if stdinFile == nil, let input {
            piped = try inputHolding(input)
            streams.stdinFD = piped
        }
        if let stdin = streams.stdin, !FileManager.default.isReadableFile(atPath: stdin) { throw CapstanError(.io, "Cannot read \(stdin).") }
        let (status, timedOut) = try runBlocking(argv, environment: environment, streams: streams, timeout: timeout)
        return Captured(status: status, timedOut: timedOut,
                        stdout: FileManager.default.contents(atPath: base + ".out") ?? Data(),
                        stderr: FileManager.default.contents(atPath: base + ".err") ?? Data())
    }

    /// Runs blocking `body` on a thread of its own and awaits it: never on the cooperative pool,
    /// and not on Dispatch's global queues either, whose few threads a handful of children
    /// waiting out their timeouts would hold while every other read queued behind them.
    package static func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    /// The first executable `name` on `PATH` (or `path`), like the shell finds it.
    package static func which(_ name: String, path: String? = ProcessInfo.processInfo.environment["PATH"]) -> String? {
        for dir in (path ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (the macros do not import).
    static func decode(_ status: Int32) -> ExitStatus {
        status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
    }

    /// Waits for child `pid` on a thread of its own (never on the cooperative pool).
    package static func wait(_ pid: pid_t) async -> ExitStatus {
        await withCheckedContinuation { (cont: CheckedContinuation<ExitStatus, Never>) in
            Thread.detachNewThread {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 {
                    if errno != EINTR {
                        cont.resume(returning: .exited(-1))
                        return
                    }
                }
                cont.resume(returning: decode(status))
            }
        }
    }

    /// Reaps `pid` in the background (for detached helpers this process will not wait for).
    package static func reapLater(_ pid: pid_t) {
        Thread.detachNewThread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
    }

    /// Whether a process with this pid exists (a zombie counts until reaped).
    package static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0 else { return false }
        return kill(pid, 0) == 0 || errno == EPERM
    }

    /// Signals the process group `pgid`, and the process itself in case it left the group.
    package static func signalGroup(_ pgid: pid_t, _ signal: Int32) {
        guard pgid > 1 else { return }
        kill(-pgid, signal)
        kill(pgid, signal)
    }

    /// Makes this process a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): orphaned
    /// descendants are re-parented to it instead of init, so it can still find and kill them.
    /// Returns false where that is not available.
    @discardableResult
    package static func becomeSubreaper() -> Bool {
        #if os(Linux)
        // prctl is variadic in C (not callable from Swift); its five integer arguments are passed
        // the same way through a fixed signature.
        typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prctl") else { return false }
        return unsafeBitCast(sym, to: Prctl.self)(36 /* PR_SET_CHILD_SUBREAPER */, 1, 0, 0, 0) == 0
        #else
        return false
        #endif
    }

    /// The path of this executable.
    package static var currentExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    #if os(Linux)
    static let setsidFlag: Int32 = 0x80  // POSIX_SPAWN_SETSID (glibc ≥ 2.26); not imported into Swift.
    #else
    static let setsidFlag: Int32 = 0x400
    #endif

    typealias AddClosefrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    /// `posix_spawn_file_actions_addclosefrom_np` (glibc ≥ 2.34).
    static let addClosefrom: AddClosefrom? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(sym, to: AddClosefrom.self)
    }()

    typealias MemfdCreate = @convention(c) (UnsafePointer<CChar>, UInt32) -> Int32
    /// `memfd_create` (glibc ≥ 2.27), looked up at run time: not imported everywhere.
    static let memfdCreate: MemfdCreate? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memfd_create") else { return nil }
        return unsafeBitCast(sym, to: MemfdCreate.self)
    }()

    typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
    /// `posix_spawn_file_actions_addchdir_np` (glibc ≥ 2.29), looked up at run time because
    /// the Swift overlay does not import it.
    static let addChdir: AddChdir? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np") else { return nil }
        return unsafeBitCast(sym, to: AddChdir.self)
    }()
}
