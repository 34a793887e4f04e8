import CapstanCore
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a child process ended.
public enum ExitStatus: Sendable, Hashable, Codable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var succeeded: Bool { self == .exited(0) }

    /// The shell convention: the exit code, or 128 + the signal.
    public var code: Int32 {
        switch self {
        case .exited(let c): c
        case .signaled(let s): 128 + s
        }
    }

    /// The inverse of ``code``.
    public static func fromCode(_ code: Int32) -> ExitStatus {
        code > 128 && code <= 128 + 64 ? .signaled(code - 128) : .exited(code)
    }

    public var description: String {
        switch self {
        case .exited(let c): "exit code \(c)"
        case .signaled(let s): "killed by signal \(s)\(s == SIGKILL ? " (SIGKILL)" : s == SIGTERM ? " (SIGTERM)" : "")"
        }
    }
}

/// Starting processes that outlive a crash of whoever started them: each child gets its own
/// session (and so its own process group, which can be signalled as a whole), stdin from
/// /dev/null, and stdout + stderr appended to a file. `posix_spawn` rather than Foundation's
/// `Process`, which can do neither the session nor the redirection to a file we keep.
public enum Spawn {
    /// Starts `argv` in `cwd` with exactly `environment`, output appended to `output`
    /// (or discarded). Returns the pid, which is also the child's process-group id.
    public static func start(_ argv: [String], environment: [String: String], cwd: String? = nil, output: String? = nil) throws -> pid_t {
        guard let exe = argv.first else { throw CapstanError(.invalidRequest, "Nothing to start.") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let out = output ?? "/dev/null"
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of ours leaks into a process that may outlive us (a pipe held open by a
        // detached child would keep whoever reads our output waiting for it).
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
        posix_spawnattr_setflags(&attr, Int16(setsidFlag | Int32(POSIX_SPAWN_SETSIGMASK) | Int32(POSIX_SPAWN_SETSIGDEF)))
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

    /// Waits for child `pid` on a thread of its own (never on the cooperative pool).
    public static func wait(_ pid: pid_t) async -> ExitStatus {
        await withCheckedContinuation { (cont: CheckedContinuation<ExitStatus, Never>) in
            Thread.detachNewThread {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 {
                    if errno != EINTR {
                        cont.resume(returning: .exited(-1))
                        return
                    }
                }
                // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (macros do not import).
                if status & 0x7f == 0 {
                    cont.resume(returning: .exited((status >> 8) & 0xff))
                } else {
                    cont.resume(returning: .signaled(status & 0x7f))
                }
            }
        }
    }

    /// Reaps `pid` in the background (for detached helpers this process will not wait for).
    public static func reapLater(_ pid: pid_t) {
        Thread.detachNewThread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
    }

    /// Whether a process with this pid exists (a zombie counts until reaped).
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0 else { return false }
        return kill(pid, 0) == 0 || errno == EPERM
    }

    /// Signals the process group `pgid`, and the process itself in case it left the group.
    public static func signalGroup(_ pgid: pid_t, _ signal: Int32) {
        guard pgid > 1 else { return }
        kill(-pgid, signal)
        kill(pgid, signal)
    }

    /// Makes this process a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): orphaned
    /// descendants are re-parented to it instead of init, so it can still find and kill them.
    /// Returns false where that is not available.
    @discardableResult
    public static func becomeSubreaper() -> Bool {
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
    public static var currentExecutable: String {
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

    typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
    /// `posix_spawn_file_actions_addchdir_np` (glibc ≥ 2.29), looked up at run time because
    /// the Swift overlay does not import it.
    static let addChdir: AddChdir? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np") else { return nil }
        return unsafeBitCast(sym, to: AddChdir.self)
    }()
}
