public import CapstanCore
public import CapstanRuntime
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A Slurm cluster as capacity (`providers.slurm` in config.yaml). Slurm does the allocating;
/// Capstan asks it for a gang and runs its agents there:
///
/// - **Offers** come from `sinfo`: one per partition and GPU shape (GRES type and count per
///   node), priced at `pricePerNodeHour` (default $0/h), `available` when enough nodes are idle,
///   `limited` when the job would wait in the queue.
/// - **A cluster is one allocation**: `launch` submits one batch job holding N whole nodes
///   (`sbatch --nodes=N --exclusive`, a batch script that only sleeps), Capstan's tags in its
///   comment, so Slurm gives all nodes or none. Its instances are `slurm-<job>-<k>`, one per
///   node; while the job waits in the queue they are `pending`, with Slurm's reason and queue
///   position as their state reason.
/// - **The time limit**: `stopBeforeLimitSeconds` before it, the nodes read as preempted, so
///   the controller stops the gang while the allocation still runs (the agents finish their
///   uploads), cancels it, and resumes the job on a new one.
/// - **`terminate`** is `scancel`; `describe` lists this user's jobs with Capstan's comment
///   (`squeue`), which is how reconcile finds and cancels an allocation no cluster owns.
/// - **Nodes** are reached through Slurm itself: `NodeAccess.slurm`, served by the trainer's
///   `SlurmTransport` (an `srun` step per node runs the agent), with the job's files in
///   `workRoot`, a folder every node and the submit host share.
///
/// Capstan runs on a submit host of the cluster (where `sbatch` works), or anywhere, with
/// `login`: Slurm's commands and the agents' `srun` then run over SSH on that login node.
///
/// ```yaml
/// providers:
///   slurm:
///     partitions: [gpu]          # default: all
///     account: ml-team           # sbatch --account, --qos, --time when set
///     qos: normal
///     timeLimit: "2-00:00:00"
///     workRoot: /shared/capstan  # default ~/.capstan-slurm (home is shared on most clusters)
/// ```
public struct SlurmProvider: ComputeProvider {
    public struct Configuration: Sendable, Hashable, Codable {
        /// Only these partitions (default: every partition).
        public var partitions: [String]?
        public var account: String?
        public var qos: String?
        /// The allocation's time limit in Slurm's syntax (`30`, `4:00:00`, `2-00:00:00`);
        /// default: the partition's.
        public var timeLimit: String?
        /// Seconds before the allocation's time limit at which its nodes count as taken back
        /// (like a spot notice): the gang stops, its uploads finish, and it resumes on a new
        /// allocation from the last checkpoint (default 300).
        public var stopBeforeLimitSeconds: Int?
        /// Price of one node-hour, for ranking against clouds (default 0).
        public var pricePerNodeHour: Double?
        /// A folder the submit host and every node share (default `~/.capstan-slurm`).
        public var workRoot: String?
        /// `SLURM_CONF` for Slurm's commands, where the cluster's slurm.conf is not found by
        /// default (`/etc/slurm/slurm.conf` or configless).
        public var slurmConf: String?
        /// Seconds each Slurm command may take (default 30).
        public var commandSeconds: Int?
        /// Minutes an allocation may wait in the queue before the launch gives up (and cancels
        /// it); default 1440 (a day). Waiting is no failure: `capstan status` shows the reason
        /// and the place in the queue meanwhile.
        public var queueTimeoutMinutes: Int?
        /// Run Slurm's commands and the agents' `srun` on this login node over SSH (the system
        /// OpenSSH client, Capstan's `known_hosts`); `workRoot` is then a folder there, shared
        /// with the compute nodes. Nil: this machine is a submit host.
        public var login: SlurmLogin?

        public init(
            partitions: [String]? = nil, account: String? = nil, qos: String? = nil, timeLimit: String? = nil, stopBeforeLimitSeconds: Int? = nil,
            pricePerNodeHour: Double? = nil, workRoot: String? = nil, slurmConf: String? = nil, commandSeconds: Int? = nil, queueTimeoutMinutes: Int? = nil,
            login: SlurmLogin? = nil
        ) {
            self.queueTimeoutMinutes = queueTimeoutMinutes
            self.login = login
            self.partitions = partitions
            self.account = account
            self.qos = qos
            self.timeLimit = timeLimit
            self.stopBeforeLimitSeconds = stopBeforeLimitSeconds
            self.pricePerNodeHour = pricePerNodeHour
            self.workRoot = workRoot
            self.slurmConf = slurmConf
            self.commandSeconds = commandSeconds
        }

        /// JSON Schema of `providers.slurm` in config.yaml, checked like every plugin's.
        public static let schema: JSONValue = {
            func type(_ t: String) -> JSONValue { .object(["type": .string(t)]) }
            return .object([
                "type": .string("object"), "additionalProperties": .bool(false),
                "properties": .object([
                    "partitions": .object(["type": .string("array"), "items": type("string")]),
                    "account": type("string"), "qos": type("string"), "timeLimit": type("string"),
                    "stopBeforeLimitSeconds": .object(["type": .string("integer"), "minimum": .number(0)]),
                    "pricePerNodeHour": .object(["type": .string("number"), "minimum": .number(0)]),
                    "workRoot": type("string"), "slurmConf": type("string"),
                    "commandSeconds": .object(["type": .string("integer"), "minimum": .number(1)]),
                    "queueTimeoutMinutes": .object(["type": .string("integer"), "minimum": .number(1)]),
                    "login": .object([
                        "type": .string("object"), "additionalProperties": .bool(false), "required": .array([.string("address"), .string("user")]),
                        "properties": .object([
                            "address": type("string"), "user": type("string"), "key": type("string"),
                            "port": .object(["type": .string("integer"), "minimum": .number(1), "maximum": .number(65535)]),
                        ]),
                    ]),
                ]),
            ])
        }()
    }

    public let name = "slurm"
    /// Idle nodes change by the minute: offers are read fresh.
    public var offerCacheTTL: Duration { .zero }
    /// An allocation starts within seconds of Slurm's scheduling pass, and `squeue` is a local
    /// command: watched closely in a launch's first seconds (with the provisioner's doubling
    /// from 0.5 s, a job that started at 1.6 s was seen at 3.5 s); a job still queued after
    /// them is looked at less and less often, up to every 5 s.
    public var bootPollInterval: Duration? { .milliseconds(250) }
    /// Slurm gives an allocation's nodes all or none, and ends them together.
    public var allocatesGangs: Bool { true }
    /// A queue can hold an allocation for hours: `queueTimeoutMinutes` (default a day).
    public var readyTimeout: Duration? { .seconds(60 * (configuration.queueTimeoutMinutes ?? 1440)) }
    public let configuration: Configuration
    public let commands: SlurmCommands
    /// `workRoot`, with `~` expanded.
    public let workRoot: String
    /// `<job>/<node>` → NodeAddr, as `sinfo` said (``addresses(for:)``).
    let knownAddresses = LockedBox<[String: String]>([:])

    /// `ssh`: the SSH client for `login` (Capstan's `known_hosts`); needed only with one.
    public init(configuration: Configuration, environment: [String: String] = ProcessInfo.processInfo.environment, ssh: SSHClient? = nil) throws {
        if let limit = configuration.timeLimit {
            guard let seconds = SlurmParsing.parseDuration(limit) else {
                throw CapstanError(.config, "providers.slurm.timeLimit '\(limit)' is not a Slurm time limit.", hint: "Write minutes (90), H:MM:SS (4:00:00) or D-HH:MM:SS (2-00:00:00).")
            }
            let lead = configuration.stopBeforeLimitSeconds ?? 300
            guard seconds > lead else {
                throw CapstanError(
                    .config, "providers.slurm.timeLimit '\(limit)' (\(seconds) s) leaves no time to train: the nodes count as taken back stopBeforeLimitSeconds (\(lead) s) before it.",
                    hint: "Raise timeLimit, or lower stopBeforeLimitSeconds.")
            }
        }
        let given = configuration.workRoot ?? "~/.capstan-slurm"
        let root: String
        if configuration.login != nil {
            // A folder on the login node: absolute, or ~/FOLDER in the login user's home there.
            guard given.hasPrefix("/") || (given.hasPrefix("~/") && given.count > 2 && !given.split(separator: "/").contains("..")) else {
                throw CapstanError(.config, "providers.slurm.workRoot '\(given)' is neither an absolute path nor ~/FOLDER on the login node.", hint: "Name a folder the login node and the compute nodes share, e.g. /shared/capstan or ~/.capstan-slurm.")
            }
            root = given
        } else {
            root = NSString(string: given).expandingTildeInPath
            guard root.hasPrefix("/") else {
                throw CapstanError(.config, "providers.slurm.workRoot '\(given)' is not an absolute path.", hint: "Name a folder every node and this machine share, e.g. /shared/capstan or ~/.capstan-slurm.")
            }
        }
        self.configuration = configuration
        self.workRoot = root
        var env = environment
        if let conf = configuration.slurmConf { env["SLURM_CONF"] = configuration.login == nil ? NSString(string: conf).expandingTildeInPath : conf }
        var login: (SSHClient, SSHTarget)?
        if let l = configuration.login {
            guard let ssh else { throw CapstanError(.config, "providers.slurm.login is set, but this Capstan was built without an SSH client for it.", hint: "This is a bug in how the provider was created: report it.") }
            login = (ssh, SlurmCommands.target(l))
        }
        self.commands = SlurmCommands(environment: env, timeout: Double(configuration.commandSeconds ?? 30), login: login)
    }

    // MARK: - Offers

    public func offers(for request: ResourceRequest) async throws -> [Offer] {
        let nodes = try SlurmParsing.parseNodes(try await commands.check(["sinfo", "-h", "-N", "-o", SlurmParsing.sinfoFormat], what: "Listing the cluster's nodes (sinfo)"))
        let wanted = configuration.partitions.map(Set.init)
        let wantedSeconds = configuration.timeLimit.flatMap(SlurmParsing.parseDuration)
        let lead = configuration.stopBeforeLimitSeconds ?? 300
        var groups: [String: [SlurmParsing.NodeLine]] = [:]
        for n in nodes where wanted?.contains(n.partition) ?? true {
            groups[Self.instanceType(partition: n.partition, gpu: Self.gpu(of: n)), default: []].append(n)
        }
        return groups.keys.sorted().map { key in
            let members = groups[key]!
            let first = members[0]
            let gpu = Self.gpu(of: first)
            var usable = members.filter(\.isUsable)
            var idle = members.filter(\.isIdle)
            var details = [
                "partition": first.partition, "nodes": "\(members.count)", "idle": "\(idle.count)",
                "timeLimit": first.timeLimitSeconds.map { "\($0 / 60) min" } ?? "unlimited",
            ]
            // What sbatch asks for: `gpu:<type>:<count>`, or `gpu:<count>` on a cluster whose GPUs have no type.
            if let g = gpu { details["gres"] = g.type.map { "gpu:\($0):\(g.count)" } ?? "gpu:\(g.count)" }
            // A partition whose own limit is below the allocation's (or below the lead before
            // it) would hold the job pending forever (PartitionTimeLimit), or take it back at once.
            if let partitionLimit = first.timeLimitSeconds {
                if let w = wantedSeconds, partitionLimit < w {
                    details["unusable"] = "its time limit (\(partitionLimit / 60) min) is below providers.slurm.timeLimit (\(w / 60) min)"
                } else if wantedSeconds == nil, partitionLimit <= lead {
                    details["unusable"] = "its time limit (\(partitionLimit / 60) min) is within stopBeforeLimitSeconds (\(lead) s)"
                }
                if details["unusable"] != nil {
                    usable = []
                    idle = []
                }
            }
            return Offer(
                provider: name, instanceType: key, region: first.partition, gpuName: gpu.map { $0.type ?? "gpu" }, gpusPerNode: gpu?.count ?? 0,
                vcpus: first.cpus, memoryGiB: first.memoryMiB.map { Double($0) / 1024 },
                onDemandPricePerHour: configuration.pricePerNodeHour ?? 0,
                availability: idle.count >= request.nodes ? .available : (usable.count >= request.nodes ? .limited : .unavailable),
                maxNodes: usable.count, details: details
            ).normalized()
        }
    }

    /// `slurm-<partition>-<count>x<type>` (or `-cpu`).
    static func instanceType(partition: String, gpu: SlurmParsing.Gres?) -> String {
        "slurm-\(partition)-" + (gpu.map { "\($0.count)x\($0.type ?? "gpu")" } ?? "cpu")
    }

    static func gpu(of node: SlurmParsing.NodeLine) -> SlurmParsing.Gres? {
        node.gres.first { $0.name == "gpu" && $0.count > 0 }
    }

    // MARK: - Work root

    /// Makes `root` (and its `bin/` and `nodes/`) this user's own and owner-only: created mode
    /// 0700 (never wider, not even for a moment), an existing one of this user's made 0700; one
    /// another user owns (or a link another user owns) is refused. Nodes run the agent binary
    /// kept in `bin/`, with the job's credentials on its stdin. A link to a folder (e.g. on
    /// scratch) is followed. Checked before each allocation is submitted, and before each agent
    /// starts.
    public static func prepareWorkRoot(_ root: String) throws {
        func refuse(_ why: String) -> CapstanError {
            CapstanError(
                .config, "providers.slurm.workRoot \(root) \(why): the nodes run the agent binary kept there.",
                hint: "Name a folder of your own that the nodes share, e.g. ~/.capstan-slurm or \(root)/\(ProcessInfo.processInfo.environment["USER"] ?? "$USER").", provider: "slurm")
        }
        func own(_ path: String) throws {
            if mkdir(path, 0o700) != 0 && errno != EEXIST {
                throw refuse("cannot be made (\(path): \(String(cString: strerror(errno))))")
            }
            var link = stat()
            if lstat(path, &link) == 0, (link.st_mode & S_IFMT) == S_IFLNK, link.st_uid != getuid() {
                throw refuse("is a link another user owns (\(path), uid \(link.st_uid))")
            }
            var st = stat()
            guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { throw refuse("is not a folder (\(path))") }
            guard st.st_uid == getuid() else { throw refuse("is owned by another user (\(path), uid \(st.st_uid))") }
            if st.st_mode & 0o077 != 0, chmod(path, 0o700) != 0 {
                throw refuse("cannot be made owner-only (\(path): \(String(cString: strerror(errno))))")
            }
        }
        let parent = (root as NSString).deletingLastPathComponent
        do { try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true) } catch {
            throw refuse("cannot be made (\(parent): \(error.localizedDescription))")
        }
        try own(root)
        for sub in ["bin", "nodes"] { try own(root + "/" + sub) }
    }

    // MARK: - Launch

    public func launch(_ request: LaunchRequest) async throws -> [Instance] {
        guard request.offer.provider == name, let partition = request.offer.details["partition"] else {
            throw CapstanError(.invalidRequest, "Offer \(request.offer.id) is not one of the slurm provider's.", provider: name)
        }
        if configuration.login == nil { try Self.prepareWorkRoot(workRoot) }
        // Idempotency: a retried launch (or one after a crash) finds the job it submitted.
        let previous = try await jobs().filter { $0.tags?[CapstanTags.intent] == request.idempotencyKey }
        if let job = previous.first(where: { SlurmParsing.instanceState($0.state).isLive }) ?? previous.first {
            return try await describe(InstanceQuery(tags: [CapstanTags.intent: request.idempotencyKey], includeTerminated: true)).filter { $0.details["job"] == job.id }
        }
        var tags = request.tags
        tags[CapstanTags.managed] = "true"
        tags[CapstanTags.intent] = request.idempotencyKey
        var argv = [
            "sbatch", "--parsable", "--job-name=\(Self.jobName(request.name))", "--partition=\(partition)",
            "--nodes=\(request.count)", "--ntasks-per-node=1", "--exclusive", "--chdir=/tmp", "--output=/dev/null",
            // A node failure or a preemption ends the allocation (Capstan submits a new one and
            // resumes); a requeued job would come back on other nodes, without its agents.
            "--no-requeue",
            // The batch script (a sleep) needs nothing of ours.
            "--export=NONE",
            "--comment=\(SlurmParsing.encodeComment(tags))",
        ]
        if let gres = request.offer.details["gres"] { argv.append("--gres=\(gres)") }
        if let a = configuration.account { argv.append("--account=\(a)") }
        if let q = configuration.qos { argv.append("--qos=\(q)") }
        if let t = configuration.timeLimit { argv.append("--time=\(t)") }
        // The allocation's own script only holds the nodes; the agents run as steps beside it.
        argv += ["--wrap", "exec sleep 2147483647"]
        let out = try await commands.check(argv, what: "Submitting the allocation (sbatch)")
        let id = try SlurmParsing.parseSubmitted(out)
        let submitted = SlurmParsing.JobLine(
            id: id, name: Self.jobName(request.name), state: "PENDING", nodeCount: request.count, nodes: [], reason: "submitted",
            timeLeftSeconds: nil, partition: partition, tags: tags)
        return instances(of: submitted, addresses: [:], positions: [:])
    }

    static func jobName(_ name: String?) -> String {
        let raw = name ?? "capstan"
        return String(raw.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." ? $0 : "-" }.prefix(64))
    }

    // MARK: - Describe, terminate

    /// Capstan's jobs from `squeue`; the queue positions and node addresses beside them are
    /// best effort (without them, no position is shown and a node's name stands for its
    /// address): only `squeue` failing fails a describe.
    /// A running job whose nodes' addresses cannot be read reads `pending` (saying why) until
    /// they can: a guessed address would become the gang's `MASTER_ADDR`.
    public func describe(_ query: InstanceQuery) async throws -> [Instance] {
        let all = try await jobs()
        let pending = all.filter { SlurmParsing.instanceState($0.state) == .pending }
        let positions = pending.isEmpty ? [:] : ((try? await queuePositions()) ?? [:])
        var addresses: [String: [String: String]] = [:]
        var addressError: String?
        do { addresses = try await self.addresses(for: all.filter { SlurmParsing.instanceState($0.state) == .running }) } catch {
            addressError = (error as? CapstanError)?.message ?? "\(error)"
        }
        let ruledOut = await ruledOutByPartition(pending)
        return all.flatMap { job in
            instances(of: job, addresses: addresses[job.id] ?? [:], positions: positions, hopeless: ruledOut.contains(job.id), addressError: addressError)
        }.filter(query.matches).sorted { $0.id < $1.id }
    }

    /// Pending jobs held for `PartitionConfig` that their partition's own limits rule out for
    /// good (more time than its MaxTime, more nodes than it has), by job id; best effort.
    func ruledOutByPartition(_ pending: [SlurmParsing.JobLine]) async -> Set<String> {
        let held = pending.filter { $0.reason.hasPrefix("PartitionConfig") }
        guard !held.isEmpty else { return [] }
        let wanted = configuration.timeLimit.flatMap(SlurmParsing.parseDuration)
        var out: Set<String> = []
        for partition in Set(held.map(\.partition)) {
            guard let text = try? await commands.check(["sinfo", "-h", "-p", partition, "-o", "%l|%D"], what: "Reading partition \(partition)'s limits (sinfo)") else { continue }
            var maxTime: Int?
            var nodes = 0
            for line in text.split(separator: "\n") {
                let f = line.split(separator: "|").map(String.init)
                guard f.count == 2 else { continue }
                maxTime = SlurmParsing.parseDuration(f[0])
                nodes += Int(f[1]) ?? 0
            }
            for job in held where job.partition == partition {
                if let w = wanted, let m = maxTime, w > m { out.insert(job.id) }
                if nodes > 0, job.nodeCount > nodes { out.insert(job.id) }
            }
        }
        return out
    }

    public func terminate(ids: [String]) async throws -> [Instance] {
        let jobIDs = Set(ids.compactMap(Self.jobID(ofInstance:)))
        if !jobIDs.isEmpty {
            // scancel of a job that already ended exits 0 (it says so on stderr): nothing to undo.
            try await commands.check(["scancel"] + jobIDs.sorted(), what: "Cancelling \(jobIDs.sorted().joined(separator: ", ")) (scancel)", allowing: "Invalid job id specified")
        }
        // The cancel is done; what squeue says of it now is best effort (a failing squeue must
        // not turn a cancel that worked into an error): unknown, the nodes are terminating.
        let listed = try? await describe(InstanceQuery(ids: ids, includeTerminated: true))
        let described = Dictionary((listed ?? []).map { ($0.id, $0) }) { a, _ in a }
        return ids.map { id in
            var i = described[id] ?? Instance(id: id, provider: name, instanceType: "slurm", region: "slurm", state: listed == nil ? .terminating : .terminated, providerState: listed == nil ? "unknown" : "not-found")
            if i.state.isLive { i.state = .terminating }
            return i
        }
    }

    /// `slurm-<job>-<k>` → `<job>`.
    static func jobID(ofInstance id: String) -> String? {
        let parts = id.split(separator: "-")
        guard parts.count == 3, parts[0] == "slurm", parts[1].allSatisfy(\.isNumber), Int(parts[2]) != nil else { return nil }
        return String(parts[1])
    }

    /// This user's jobs that carry Capstan's comment.
    func jobs() async throws -> [SlurmParsing.JobLine] {
        let out = try await commands.check(["squeue", "-h", "--me", "-t", "all", "-o", SlurmParsing.squeueFormat], what: "Listing the allocations (squeue)")
        return try SlurmParsing.parseJobs(out).filter { $0.tags != nil }
    }

    /// Each pending job's place in its partition's queue (1 = next), in Slurm's priority order.
    func queuePositions() async throws -> [String: Int] {
        let out = try await commands.check(["squeue", "-h", "-t", "PENDING", "--sort=P,-p,i", "-o", "%i|%P"], what: "Reading the queue (squeue)")
        var positions: [String: Int] = [:]
        var seen: [String: Int] = [:]
        for line in out.split(separator: "\n") {
            let f = line.split(separator: "|").map(String.init)
            guard f.count == 2 else { continue }
            seen[f[1], default: 0] += 1
            positions[f[0]] = seen[f[1]]
        }
        return positions
    }

    /// NodeAddr of each node of `jobs` (how the other nodes reach it), by job id and node name.
    /// Remembered per allocation (a node's address can change between allocations on clusters
    /// that power nodes down or burst to a cloud): `sinfo` runs once for each new allocation,
    /// not on each of the controller's describes (every few seconds, for days).
    func addresses(for jobs: [SlurmParsing.JobLine]) async throws -> [String: [String: String]] {
        let known = knownAddresses.withLock { $0 }
        let missing = Set(jobs.flatMap { job in job.nodes.filter { known["\(job.id)/\($0)"] == nil } })
        var found: [String: String] = [:]
        if !missing.isEmpty {
            let out = try await commands.check(["sinfo", "-h", "-N", "-n", missing.sorted().joined(separator: ","), "-o", SlurmParsing.sinfoFormat], what: "Reading the nodes' addresses (sinfo)")
            for n in try SlurmParsing.parseNodes(out) { found[n.node] = n.address ?? n.node }
        }
        var out: [String: [String: String]] = [:]
        knownAddresses.withLock { cache in
            for job in jobs {
                for node in job.nodes {
                    let key = "\(job.id)/\(node)"
                    if cache[key] == nil, let a = found[node] { cache[key] = a }
                    if let a = cache[key] { out[job.id, default: [:]][node] = a }
                }
            }
        }
        return out
    }

    /// One instance per node of `job` (its node count while it waits).
    /// `hopeless`: Slurm will never start it (``ruledOutByPartition(_:)``); `addressError`: why
    /// the running nodes' addresses are unknown.
    func instances(of job: SlurmParsing.JobLine, addresses: [String: String], positions: [String: Int], hopeless: Bool = false, addressError: String? = nil) -> [Instance] {
        var state = SlurmParsing.instanceState(job.state)
        var reason: String?
        // The time limit is near: like a spot notice, the nodes count as taken back now, so the
        // controller stops the gang while the allocation still runs (the agents finish their
        // uploads), then cancels it and resumes the job on a new one.
        let lead = configuration.stopBeforeLimitSeconds ?? 300
        if state == .running, let left = job.timeLeftSeconds, left <= lead {
            state = .preempted
            reason = "the allocation's time limit is \(left) s away (providers.slurm.stopBeforeLimitSeconds: \(lead))"
        }
        if state == .running, let addressError, job.nodes.contains(where: { addresses[$0] == nil }) {
            state = .pending
            reason = "allocated, but its nodes' addresses could not be read yet (\(addressError))"
        }
        if state == .pending, hopeless || SlurmParsing.isHopeless(reason: job.reason) {
            // Slurm will never start it as it is: the launch fails (and cancels it) now.
            state = .failed
            reason = "Slurm will never start it: \(job.reason) (check providers.slurm's timeLimit, account and qos against the partition's limits: `scontrol show partition \(job.partition)`)"
        }
        switch state {
        case .failed where reason != nil: break
        case .pending where reason != nil: break
        case .pending: reason = "queued in \(job.partition): \(job.reason)" + (positions[job.id].map { ", position \($0)" } ?? "")
        case .running: reason = job.timeLeftSeconds.map { "\($0 / 60) min left of its time limit" }
        case .preempted where reason != nil: break
        default: reason = job.reason == "None" ? job.state.lowercased() : "\(job.state.lowercased()): \(job.reason)"
        }
        var tags = job.tags ?? [:]
        tags[CapstanTags.node] = nil
        return (0..<max(job.nodeCount, 1)).map { k in
            let node = k < job.nodes.count ? job.nodes[k] : nil
            var details = ["job": job.id, "partition": job.partition]
            if let node { details["node"] = node }
            if let left = job.timeLeftSeconds { details["timeLeftSeconds"] = "\(left)" }
            let access = node.map { NodeAccess.slurm(SlurmNodeAccess(job: job.id, node: $0, workRoot: workRoot, slurmConf: commands.environment["SLURM_CONF"], login: configuration.login)) }
            return Instance(
                id: "slurm-\(job.id)-\(k)", provider: name, instanceType: job.name, region: job.partition, state: state, providerState: job.state,
                privateAddress: node.map { addresses[$0] ?? $0 }, spot: false, pricePerHour: configuration.pricePerNodeHour ?? 0, tags: tags,
                stateReason: reason, details: details, access: access)
        }
    }
}

/// Runs Slurm's commands on this machine (the submit host), or over SSH on the cluster's login
/// node, with the provider's `SLURM_CONF`.
public struct SlurmCommands: Sendable {
    /// What the commands see: ``clientEnvironment(_:)`` of what they were given (on a login
    /// node, only `SLURM_CONF` of it: the login's own environment is the rest).
    public let environment: [String: String]
    public let timeout: Double
    /// The login node, when the commands run there.
    public let login: (client: SSHClient, target: SSHTarget)?

    public init(environment: [String: String], timeout: Double = 30, login: (client: SSHClient, target: SSHTarget)? = nil) {
        self.environment = Self.clientEnvironment(environment)
        self.timeout = timeout
        self.login = login
    }

    /// The SSH login for `login`.
    public static func target(_ login: SlurmLogin) -> SSHTarget {
        SSHTarget(address: login.address, port: login.port ?? 22, user: login.user, keyFile: login.key.map { NSString(string: $0).expandingTildeInPath })
    }

    /// `argv` as one command line for the login node's shell, with `SLURM_CONF` when set.
    public func remoteCommand(_ argv: [String]) -> String {
        let conf = environment["SLURM_CONF"].map { "SLURM_CONF=\(SSHClient.quote($0)) " } ?? ""
        return conf + argv.map(SSHClient.quote).joined(separator: " ")
    }

    /// The part of `environment` Slurm's commands get: the basics (PATH, HOME, user, locale,
    /// TMPDIR) and Slurm's own settings (`SLURM_*`). Nothing else: `sbatch` records its whole
    /// environment in slurmctld's state (`…/hash.N/job.N/environment`), where a cloud key of the
    /// process running Capstan must never go.
    public static func clientEnvironment(_ environment: [String: String]) -> [String: String] {
        let names: Set<String> = ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"]
        return environment.filter { k, _ in names.contains(k) || k.hasPrefix("LC_") || k.hasPrefix("SLURM_") }
    }

    /// The full path of `command` on `PATH`; an error saying where Capstan must run when the
    /// Slurm client tools are not there.
    public func path(of command: String) throws -> String {
        for folder in (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(folder)/\(command)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        throw CapstanError(
            .unsupported, "Slurm's \(command) is not on PATH here, and the slurm provider runs Slurm's commands on this machine.",
            hint: "Run Capstan on a submit host of the cluster (where `sinfo` and `sbatch` work), or install the Slurm client (Debian/Ubuntu: slurm-client).", provider: "slurm")
    }

    /// Runs `argv` (its first word looked up on PATH); throws unless it exits 0, with what
    /// Slurm said.
    @discardableResult
    /// `allowing`: a message that makes a failure count as success (a job already gone).
    public func check(_ argv: [String], input: Data? = nil, what: String, allowing: String? = nil) async throws -> String {
        let status: Int32, stdout: Data, stderr: String
        if let login {
            let r = try await login.client.run(login.target, remoteCommand(argv), input: input, timeout: timeout)
            if r.stderr.hasPrefix("timed out after") {
                throw CapstanError(.transient, "\(what) on \(login.target.description) did not answer within \(Int(timeout)) s.", hint: "Check that slurmctld is up (`scontrol ping` there); Capstan retries.", provider: "slurm")
            }
            if r.status == 127 {
                throw CapstanError(
                    .unsupported, "Slurm's \(argv[0]) is not on PATH on the login node \(login.target.description).",
                    hint: "Point providers.slurm.login at a node where `sinfo` and `sbatch` work (a submit host of the cluster).", provider: "slurm")
            }
            (status, stdout, stderr) = (r.status, r.stdout, r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))
        } else {
            let exe = try path(of: argv[0])
            let env = environment
            let timeout = timeout
            let r = try await Spawn.onThread { try Spawn.runCapturing([exe] + argv.dropFirst(), environment: env, input: input, timeout: timeout) }
            if r.timedOut {
                throw CapstanError(.transient, "\(what) did not answer within \(Int(timeout)) s.", hint: "Check that slurmctld is up (`scontrol ping`); Capstan retries.", provider: "slurm")
            }
            (status, stdout, stderr) = (r.status.code, r.stdout, String(decoding: r.stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard status == 0 || allowing.map({ stderr.contains($0) }) == true else {
            let said = stderr.isEmpty ? "" : ": \(stderr.suffix(400))"
            let code: CapstanError.Code = stderr.contains("Unable to contact slurm controller") || stderr.contains("Socket timed out") ? .transient
                : (stderr.contains("Invalid account") || stderr.contains("Invalid qos") || stderr.contains("invalid partition") || stderr.contains("Invalid partition") ? .config
                : (stderr.contains("Requested node configuration is not available") ? .capacity : .io))
            throw CapstanError(code, "\(what) failed (exit \(status))\(said)", hint: code == .config ? "Check providers.slurm (partitions, account, qos) against `sinfo` and `sacctmgr show assoc user=$USER`." : nil, provider: "slurm")
        }
        return String(decoding: stdout, as: UTF8.self)
    }
}
