public import CapstanCore
public import CapstanRuntime

/// Something that happened to a job, as a controller reports it (``JobController``,
/// ``JobService/submit(yaml:folder:options:)``) or an observer reads it back (``JobObserver``).
/// New cases may be added: give a `switch` over it a `default`.
public enum JobEvent: Sendable, Hashable {
    case status(JobStatus, String)
    case attemptStarted(attempt: Int, resumeStep: Int?, nodes: [String])
    /// A line of a node's log (the command's output or the agent's own lines).
    case log(node: Int, line: String)
    case checkpoint(step: Int, bytes: Int64)
    case failure(attempt: Int, AttemptFailure)
    case nodeReplaced(node: Int, instance: String)
    case finished(JobRecord)
    /// A metrics line of the leader (node 0) — `{"step": 120, "loss": 4.37, …}` — parsed
    /// (``MetricsPoint``); it follows that line's ``log(node:line:)``.
    case metrics(MetricsPoint)
    /// A step of provisioning the job's cluster: an offer tried, failed or retried, instances
    /// launched, the cluster ready, a node replaced, the gang moved.
    case provisioning(String)
}
