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
        case .signaled(let s): "killed by signal \(s)\(s == 9 ? " (SIGKILL)" : s == 15 ? " (SIGTERM)" : "")"
        }
    }
}
