public import CapstanCore
public import Foundation

/// Reading what Slurm's commands print (`sinfo`, `squeue`, `sbatch --parsable`) and writing
/// what Capstan hands them: pure functions, tested without a cluster.
public enum SlurmParsing {
    /// One line of `sinfo -h -N -o '%N|%P|%G|%t|%l|%c|%m|%o'`: a node in one partition.
    public struct NodeLine: Sendable, Hashable {
        public var node: String
        /// Without the default partition's `*`.
        public var partition: String
        public var isDefaultPartition: Bool
        public var gres: [Gres]
        /// Compact state (`idle`, `mix`, `alloc`, `drain`, `down*`, …).
        public var state: String
        /// The partition's time limit in seconds; nil when unlimited.
        public var timeLimitSeconds: Int?
        public var cpus: Int?
        public var memoryMiB: Int?
        /// How the node is reached (`NodeAddr`).
        public var address: String?

        /// Free for a new allocation now.
        public var isIdle: Bool { state.trimmingCharacters(in: CharacterSet(charactersIn: "*~#!%$@^-")) == "idle" }
        /// Able to run jobs at all (allocated or busy counts: a job may queue for it).
        public var isUsable: Bool {
            let s = state.lowercased()
            return !(s.hasPrefix("down") || s.hasPrefix("drain") || s.hasPrefix("fail") || s.hasPrefix("maint") || s.hasPrefix("inval") || s.hasPrefix("unk") || s.hasSuffix("*"))
        }
    }

    /// A generic resource: `gpu:h100:8` is name `gpu`, type `h100`, count 8.
    public struct Gres: Sendable, Hashable {
        public var name: String
        public var type: String?
        public var count: Int

        public init(name: String, type: String?, count: Int) {
            self.name = name
            self.type = type
            self.count = count
        }
    }

    /// The `sinfo` format ``parseNodes(_:)`` reads.
    public static let sinfoFormat = "%N|%P|%G|%t|%l|%c|%m|%o"

    /// Parses `sinfo -h -N -o sinfoFormat` output; a line with another shape is an error that
    /// quotes it (a Slurm whose output Capstan misreads must not become wrong offers).
    public static func parseNodes(_ text: String) throws -> [NodeLine] {
        try text.split(separator: "\n").compactMap { raw -> NodeLine? in
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty else { return nil }
            let f = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 8, !f[0].isEmpty, !f[1].isEmpty else {
                throw CapstanError(.pluginFailure, "sinfo printed a line Capstan cannot read: '\(line.prefix(200))' (expected \(sinfoFormat)).", hint: "Check the Slurm version (22.05 or later is tested) and that sinfo runs without a site-wide SINFO_FORMAT.")
            }
            let isDefault = f[1].hasSuffix("*")
            return NodeLine(
                node: f[0], partition: isDefault ? String(f[1].dropLast()) : f[1], isDefaultPartition: isDefault,
                gres: parseGres(f[2]), state: f[3], timeLimitSeconds: parseDuration(f[4]),
                cpus: Int(f[5]), memoryMiB: Int(f[6].trimmingCharacters(in: CharacterSet(charactersIn: "+"))),
                address: f[7].isEmpty || f[7] == "(null)" ? nil : f[7])
        }
    }

    /// `gpu:h100:8(S:0-1),nvme:1` → [gpu h100 ×8, nvme ×1]; `(null)` → [].
    public static func parseGres(_ text: String) -> [Gres] {
        guard text != "(null)", !text.isEmpty else { return [] }
        // Commas inside the (S:…) socket list are not separators.
        var items: [String] = []
        var depth = 0
        var current = ""
        for ch in text {
            if ch == "(" { depth += 1 } else if ch == ")" { depth -= 1 }
            if ch == ",", depth == 0 {
                items.append(current)
                current = ""
            } else {
                current.append(ch)
            }
        }
        items.append(current)
        return items.compactMap { item in
            let plain = item.split(separator: "(").first.map(String.init) ?? item
            let parts = plain.split(separator: ":").map(String.init)
            guard let name = parts.first, !name.isEmpty else { return nil }
            switch parts.count {
            case 1: return Gres(name: name, type: nil, count: 1)
            case 2: return Int(parts[1]).map { Gres(name: name, type: nil, count: $0) } ?? Gres(name: name, type: parts[1], count: 1)
            default: return Gres(name: name, type: parts[1], count: Int(parts[2]) ?? 1)
            }
        }
    }

    /// A Slurm duration in seconds: `30` (minutes), `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
    /// `D-HH:MM:SS`; nil for `infinite`/`UNLIMITED`/`NOT_SET`/`INVALID` and anything unreadable.
    public static func parseDuration(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: .whitespaces)
        guard !t.isEmpty, t.first?.isNumber == true else { return nil }
        var days = 0
        var rest = Substring(t)
        if let dash = t.firstIndex(of: "-") {
            guard let d = Int(t[..<dash]) else { return nil }
            days = d
            rest = t[t.index(after: dash)...]
        }
        let parts = rest.split(separator: ":").map { Int($0) }
        guard !parts.contains(nil) else { return nil }
        let n = parts.map { $0! }
        let hasDays = t.contains("-")
        let seconds: Int
        switch (n.count, hasDays) {
        case (1, false): seconds = n[0] * 60
        case (2, false): seconds = n[0] * 60 + n[1]
        case (3, _): seconds = n[0] * 3600 + n[1] * 60 + n[2]
        case (1, true): seconds = n[0] * 3600
        case (2, true): seconds = n[0] * 3600 + n[1] * 60
        default: return nil
        }
        return days * 86400 + seconds
    }

    /// Expands a Slurm host list: `node[1-3,07],gpu-a` → node1 node2 node3 node07 gpu-a
    /// (zero padding kept, order kept).
    public static func expandHostList(_ list: String) -> [String] {
        var out: [String] = []
        var depth = 0
        var current = ""
        func flush() {
            guard !current.isEmpty else { return }
            out.append(contentsOf: expandOne(current))
            current = ""
        }
        for ch in list {
            if ch == "[" { depth += 1 } else if ch == "]" { depth -= 1 }
            if ch == ",", depth == 0 { flush() } else { current.append(ch) }
        }
        flush()
        return out
    }

    /// One item of a host list, with at most one bracket group per level (`a[1-2]b[3-4]` too).
    static func expandOne(_ item: String) -> [String] {
        guard let open = item.firstIndex(of: "["), let close = item[open...].firstIndex(of: "]") else { return [item] }
        let prefix = String(item[..<open])
        let inner = item[item.index(after: open)..<close]
        let suffixes = expandOne(String(item[item.index(after: close)...]))
        var out: [String] = []
        for range in inner.split(separator: ",") {
            let bounds = range.split(separator: "-", maxSplits: 1).map(String.init)
            if bounds.count == 2, let lo = Int(bounds[0]), let hi = Int(bounds[1]), lo <= hi {
                let width = bounds[0].count
                for i in lo...hi {
                    let digits = String(i)
                    let padded = String(repeating: "0", count: max(0, width - digits.count)) + digits
                    out.append(contentsOf: suffixes.map { prefix + padded + $0 })
                }
            } else {
                out.append(contentsOf: suffixes.map { prefix + String(range) + $0 })
            }
        }
        return out
    }

    /// One line of `squeue -h --me -t all -o squeueFormat`: a job.
    public struct JobLine: Sendable, Hashable {
        public var id: String
        public var name: String
        /// Slurm's state: PENDING, CONFIGURING, RUNNING, COMPLETING, CANCELLED, …
        public var state: String
        public var nodeCount: Int
        /// Expanded from the node list; empty while pending.
        public var nodes: [String]
        /// Why it is pending (`Priority`, `Resources`, …) or `None`.
        public var reason: String
        /// Seconds left before its time limit; nil when unlimited or unknown.
        public var timeLeftSeconds: Int?
        public var partition: String
        /// The tags Capstan wrote into its comment; nil when the comment is not Capstan's.
        public var tags: [String: String]?
    }

    public static let squeueFormat = "%i|%j|%T|%D|%N|%r|%L|%P|%k"

    public static func parseJobs(_ text: String) throws -> [JobLine] {
        try text.split(separator: "\n").compactMap { raw -> JobLine? in
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty else { return nil }
            // The comment is last and may hold `|` only if someone else wrote it: keep it whole.
            let f = line.split(separator: "|", maxSplits: 8, omittingEmptySubsequences: false).map(String.init)
            guard f.count == 9, !f[0].isEmpty, let count = Int(f[3]) else {
                throw CapstanError(.pluginFailure, "squeue printed a line Capstan cannot read: '\(line.prefix(200))' (expected \(squeueFormat)).", hint: "Check the Slurm version (22.05 or later is tested) and that squeue runs without a site-wide SQUEUE_FORMAT.")
            }
            return JobLine(
                id: f[0], name: f[1], state: f[2], nodeCount: count, nodes: f[4].isEmpty || f[4] == "(null)" ? [] : expandHostList(f[4]),
                reason: f[5], timeLeftSeconds: parseDuration(f[6]), partition: f[7], tags: decodeComment(f[8]))
        }
    }

    /// What an instance of a job in `state` is: a job waiting in the queue is pending; one
    /// Slurm took back (preempted, requeued) is preempted; a finished or failed one is gone.
    public static func instanceState(_ state: String) -> Instance.State {
        switch state.uppercased() {
        case "PENDING", "CONFIGURING", "RESV_DEL_HOLD", "REQUEUE_HOLD", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT": .pending
        case "RUNNING": .running
        case "PREEMPTED", "REQUEUED", "REQUEUE_FED": .preempted
        case "COMPLETING", "CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT": .terminated
        default: .unknown
        }
    }

    /// Reasons a pending job gives when Slurm will never start it as submitted (squeue's job
    /// reason codes): a time limit of the partition, account or QOS it exceeds, an account or
    /// QOS it may not use, a dependency that cannot be met. Waiting would be waiting forever.
    /// (Not `PartitionNodeLimit` or `PartitionConfig`: Slurm says those too while nodes are
    /// down or drained; the provider checks the partition's limits for `PartitionConfig`.)
    public static let hopelessReasons: Set<String> = [
        "PartitionTimeLimit", "AccountNotAllowed", "InvalidAccount", "InvalidQOS",
        "QOSMaxWallDurationPerJobLimit", "QOSMaxNodePerJobLimit", "AssocMaxWallDurationPerJobLimit", "AssocMaxNodesPerJobLimit",
        "DependencyNeverSatisfied", "BadConstraints",
    ]

    /// Whether a pending job's `reason` is one of the ``hopelessReasons`` (squeue may add
    /// detail after a comma: `ReqNodeNotAvail, UnavailableNodes:node3`).
    public static func isHopeless(reason: String) -> Bool {
        hopelessReasons.contains(reason.split(separator: ",").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? reason)
    }

    /// The marker every Capstan comment starts with.
    public static let commentMarker = "capstan"

    /// Capstan's tags as a job comment: `capstan;k=v;k=v`, keys and values percent-encoded
    /// (only letters, digits and `-._:` stay as they are), sorted so that the same tags give
    /// the same comment.
    public static func encodeComment(_ tags: [String: String]) -> String {
        ([commentMarker] + tags.sorted { $0.key < $1.key }.map { "\(escape($0.key))=\(escape($0.value))" }).joined(separator: ";")
    }

    /// The tags of a comment ``encodeComment(_:)`` wrote; nil for any other comment.
    public static func decodeComment(_ comment: String) -> [String: String]? {
        let parts = comment.split(separator: ";", omittingEmptySubsequences: false)
        guard parts.first == Substring(commentMarker) else { return nil }
        var tags: [String: String] = [:]
        for p in parts.dropFirst() {
            guard let eq = p.firstIndex(of: "="), let k = String(p[..<eq]).removingPercentEncoding, let v = String(p[p.index(after: eq)...]).removingPercentEncoding else { return nil }
            tags[k] = v
        }
        return tags
    }

    static func escape(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics.intersection(CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
        allowed.insert(charactersIn: "-._:")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    /// The job id `sbatch --parsable` printed (`1234` or `1234;cluster`).
    public static func parseSubmitted(_ text: String) throws -> String {
        let line = text.split(separator: "\n").last.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? ""
        let id = line.split(separator: ";").first.map(String.init) ?? ""
        guard !id.isEmpty, id.allSatisfy(\.isNumber) else {
            throw CapstanError(.pluginFailure, "sbatch printed '\(text.prefix(200))', not a job id.", hint: "Run the same sbatch by hand on the submit host to see what it says.")
        }
        return id
    }

    /// A shell word, single-quoted.
    public static func quote(_ word: String) -> String { "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'" }
}
