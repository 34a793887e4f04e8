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
    public static func jobEvent(_ event: StateEvent) -> JobEvent? {
        if let status = JobStatus(rawValue: event.kind) { return .status(status, event.message) }
        switch event.kind {
        case "checkpoint-corrupt":
            // The controller goes back to an older checkpoint: said as a restart.
            return .status(.restarting, event.message)
        case "checkpoint":
            // "Checkpoint step 20 committed (1234 bytes, attempt 1)."
            let words = event.message.split(separator: " ")
            guard words.count >= 5, words[0] == "Checkpoint", words[1] == "step", let step = Int(words[2]), words[3] == "committed",
                  words[4].hasPrefix("("), let bytes = Int64(words[4].dropFirst()) else { return nil }
            return .checkpoint(step: step, bytes: bytes)
        case "replaced":
            // "Node 1 is now local-abc123."
            let words = event.message.split(separator: " ")
            guard words.count == 5, words[0] == "Node", let node = Int(words[1]), words[2] == "is", words[3] == "now" else { return nil }
            var instance = String(words[4])
            if instance.hasSuffix(".") { instance.removeLast() }
            return .nodeReplaced(node: node, instance: instance)
        default:
            return nil
        }
    }
}
