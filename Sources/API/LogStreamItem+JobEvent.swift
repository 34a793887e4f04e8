public import CapstanCore
public import CapstanTrainer
import Foundation

extension LogStreamItem {
    /// The item as the ``JobEvent`` an embedded ``JobHandle`` would have given, so a follower
    /// prints the same lines either way: a log line, a status change (with its message), a
    /// committed checkpoint, a replaced node, the end. Events an embedded follower never sees
    /// (`submitted`, `controller`, …) are nil.
    public var jobEvent: JobEvent? {
        if let line { return .log(node: node ?? 0, line: line) }
        if let end { return .finished(end) }
        guard let event else { return nil }
        return Self.jobEvent(event)
    }

    /// A job's ``StateEvent`` (as the job controller records it) as the ``JobEvent`` it emitted
    /// alongside, if it emitted one.
    public static func jobEvent(_ event: StateEvent) -> JobEvent? { JobEvent(event) }
}
