public import CapstanCore
public import CapstanRuntime

/// Something that happened to a job, as a controller reports it (``JobController``,
/// ``JobService/submit(_:options:)``).
public enum JobEvent: Sendable, Hashable {
    case status(JobStatus, String)
    case attemptStarted(attempt: Int, resumeStep: Int?, nodes: [String])
    /// A line of a node's log (the command's output or the agent's own lines).
    case log(node: Int, line: String)
    case checkpoint(step: Int, bytes: Int64)
    case failure(attempt: Int, AttemptFailure)
    case nodeReplaced(node: Int, instance: String)
    case finished(JobRecord)
}
