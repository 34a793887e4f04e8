public import CapstanCore
public import CapstanRuntime
public import CapstanAWS
public import CapstanStorage
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The embedded-default compute provider: "instances" are node slots on this machine.
///
/// Each node gets its own folder (`<root>/nodes/<id>/work`) and its own loopback address
/// `127.0.0.<slot+2>` (all of 127.0.0.0/8 is loopback on Linux), so multi-node code paths —
/// rendezvous, per-node folders, per-node failure — run for real on one machine. Nodes share the
/// machine's CPUs, memory and GPUs; each offer states the whole machine.
///
/// State lives in files (`<root>/nodes/<id>/instance.json`, written atomically, under an
/// `flock`), so other processes — and a `capstan` restarted after a crash — see the same nodes.
/// Launch is idempotent per idempotency key; terminate is idempotent and kills any processes a
/// node recorded in its `pids` file, as a cloud would when an instance goes away.
public struct LocalProvider: ComputeProvider {
    public struct Configuration: Sendable, Hashable, Codable {
        /// How many nodes may run at once.
        public var slots: Int
        /// Seconds a new node stays `pending` before it is `running`, like a cloud instance
        /// booting (0: running at once). Lets tests and demos exercise the readiness waiter.
        public var bootSeconds: Double
        /// Spot-style interruption, as the sim cloud's switch: a node is taken back (its processes
        /// killed, its work folder gone, state `preempted`) this many seconds after it started
        /// running — once per node of a cluster, so its replacement is left alone.
        public var preemptAfterSeconds: Double?
        /// Which node indices `preemptAfterSeconds` applies to (default: every node).
        public var preemptNodes: [Int]?
        public init(slots: Int = 8, bootSeconds: Double = 0, preemptAfterSeconds: Double? = nil, preemptNodes: [Int]? = nil) {
            self.slots = slots
            self.bootSeconds = bootSeconds
            self.preemptAfterSeconds = preemptAfterSeconds
            self.preemptNodes = preemptNodes
        }

        enum CodingKeys: String, CodingKey, CaseIterable { case slots, bootSeconds, preemptAfterSeconds, preemptNodes }

        /// JSON Schema of `providers.local` in config.yaml, checked like every plugin's.
        public static let schema: JSONValue = .object([
            "type": .string("object"),
            "additionalProperties": .bool(false),
            "properties": .object([
                "slots": .object(["type": .string("integer"), "minimum": .number(1), "maximum": .number(250), "description": .string("How many nodes may run at once (default 8).")]),
                "bootSeconds": .object(["type": .string("number"), "minimum": .number(0), "description": .string("Seconds a new node stays pending (default 0).")]),
                "preemptAfterSeconds": .object(["type": .string("number"), "minimum": .number(0), "description": .string("Take a node back this long after it runs, as spot does (tests, benches).")]),
                "preemptNodes": .object(["type": .string("array"), "items": .object(["type": .string("integer")]), "description": .string("Node indices preemptAfterSeconds applies to (default: all).")]),
            ]),
        ])
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            let known = Set(CodingKeys.allCases.map(\.rawValue))
            if let unknown = c.allKeys.first(where: { !known.contains($0.stringValue) }) {
                throw CapstanError(.config, "Unknown key 'providers.local.\(unknown.stringValue)'.", hint: "The local provider accepts: slots (1–250), bootSeconds, preemptAfterSeconds, preemptNodes.")
            }
            slots = try c.decodeIfPresent(Int.self, forKey: AnyKey("slots")) ?? 8
            bootSeconds = try c.decodeIfPresent(Double.self, forKey: AnyKey("bootSeconds")) ?? 0
            preemptAfterSeconds = try c.decodeIfPresent(Double.self, forKey: AnyKey("preemptAfterSeconds"))
            preemptNodes = try c.decodeIfPresent([Int].self, forKey: AnyKey("preemptNodes"))
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(slots, forKey: .slots)
            try c.encode(bootSeconds, forKey: .bootSeconds)
            try c.encodeIfPresent(preemptAfterSeconds, forKey: .preemptAfterSeconds)
            try c.encodeIfPresent(preemptNodes, forKey: .preemptNodes)
        }
    }

    public let name = "local"
    /// Local offers reflect free slots right now: never cached.
    public var offerCacheTTL: Duration { .zero }
    public let root: String
    public let configuration: Configuration
    public let resources: MachineResources

    public init(root: String, configuration: Configuration = .init(), resources: MachineResources = .detect()) throws {
        guard configuration.slots >= 1, configuration.slots <= 250 else {
            throw CapstanError(.config, "providers.local.slots must be between 1 and 250, got \(configuration.slots).")
        }
        self.root = root
        self.configuration = configuration
        self.resources = resources
        do {
            // Nodes' folders hold their agents' configs (a job's env: values): owner only.
            try PrivateFile.createFolder(root + "/nodes")
        } catch {
            throw CapstanError(.io, "Cannot create the local provider's folder \(root): \(error.localizedDescription)", hint: "Set CAPSTAN_HOME to a writable folder.")
        }
    }

    /// The instance type this machine offers: `local-cpu` or `local-<n>x<gpu>`.
    public var instanceType: String {
        guard let first = resources.gpus.first else { return "local-cpu" }
        return "local-\(resources.gpus.count)x\(first.model ?? first.name.replacingOccurrences(of: " ", with: "-"))"
    }

    public func offers(for request: ResourceRequest) async throws -> [Offer] {
        let live = try await describe(InstanceQuery())
        let free = configuration.slots - live.count
        var details = ["slots": "\(configuration.slots)", "shared": "nodes share this machine's CPUs, memory and GPUs"]
        if let g = resources.gpus.first { details["gpuMemoryMiB"] = "\(g.memoryMiB)" }
        let offer = Offer(
            provider: name, instanceType: instanceType, region: "local", zone: nil,
            gpuName: resources.gpus.first?.name, gpu: resources.gpus.first?.model,
            gpusPerNode: resources.gpus.count, vcpus: resources.cpuCores, memoryGiB: (resources.memoryGiB * 10).rounded() / 10,
            onDemandPricePerHour: 0, spotPricePerHour: nil,
            availability: free >= request.nodes ? .available : (free > 0 ? .limited : .unavailable),
            maxNodes: max(0, free), details: details)
        return [offer]
    }

    public func launch(_ request: LaunchRequest) async throws -> [Instance] {
        guard request.count >= 1 else { throw CapstanError(.invalidRequest, "Launch asked for \(request.count) nodes.", provider: name) }
        guard request.offer.provider == name else {
            throw CapstanError(.invalidRequest, "Offer \(request.offer.id) is not a local offer.", provider: name)
        }
        return try withLock {
            let all = try readAll().map(booted)
            // Idempotency: a retried launch with the same key gets the same nodes.
            let previous = all.filter { $0.tags[CapstanTags.intent] == request.idempotencyKey && $0.state.isLive }
            if !previous.isEmpty { return previous.sorted { $0.id < $1.id } }
            let used = Set(all.filter { $0.state.isLive }.compactMap { $0.details["slot"].flatMap(Int.init) })
            let free = (0..<configuration.slots).filter { !used.contains($0) }
            guard free.count >= request.count else {
                throw CapstanError(
                    .capacity, "The local provider has \(free.count) free node slot(s) of \(configuration.slots); \(request.count) asked for.",
                    hint: "Stop a cluster with `capstan down`, or raise providers.local.slots in the config.", provider: name)
            }
            var created: [Instance] = []
            for (n, slot) in free.prefix(request.count).enumerated() {
                let id = "node-\(slot)-" + UUID().uuidString.prefix(8).lowercased()
                let folder = root + "/nodes/" + id
                try PrivateFile.createFolder(folder)
                try FileManager.default.createDirectory(atPath: folder + "/work", withIntermediateDirectories: true)
                var tags = request.tags
                tags[CapstanTags.managed] = "true"
                tags[CapstanTags.intent] = request.idempotencyKey
                let instance = Instance(
                    id: id, provider: name, instanceType: instanceType, region: "local",
                    state: configuration.bootSeconds > 0 ? .pending : .running,
                    providerState: configuration.bootSeconds > 0 ? "booting" : "running", privateAddress: "127.0.0.\(slot + 2)", publicAddress: nil,
                    spot: false, pricePerHour: 0, tags: tags, launchedAt: Date(),
                    details: ["slot": "\(slot)", PreemptionSwitch.launchIndex: "\(n)"],
                    access: .local(LocalNodeAccess(folder: folder, workdir: folder + "/work")))
                if let key = request.sshPublicKey {
                    try PrivateFile.write(Data((key + "\n").utf8), to: folder + "/authorized_keys")
                }
                if let userData = request.userData {
                    try PrivateFile.write(Data(userData.utf8), to: folder + "/user-data")
                }
                try write(instance)
                created.append(instance)
            }
            return created
        }
    }

    public func describe(_ query: InstanceQuery) async throws -> [Instance] {
        if configuration.preemptAfterSeconds != nil { try preemptDue() }
        return try readAll().map(booted).filter(query.matches).sorted { $0.id < $1.id }
    }

    /// Applies ``Configuration/preemptAfterSeconds``: every running node past its time (and not
    /// preempted before for its cluster and index) is taken back as a spot instance would be.
    func preemptDue() throws {
        let preemption = PreemptionSwitch(afterSeconds: configuration.preemptAfterSeconds, nodes: configuration.preemptNodes, bootSeconds: configuration.bootSeconds)
        try withLock {
            for (i, at) in preemption.due(in: try readAll().map(booted)) {
                killRecordedProcesses(folder: root + "/nodes/" + i.id)
                try? FileManager.default.removeItem(atPath: root + "/nodes/" + i.id + "/work")
                try write(PreemptionSwitch.preempted(i, at: at))
            }
        }
    }

    /// A pending node whose boot time has passed is running (computed on read, so no daemon is
    /// needed to advance it).
    func booted(_ instance: Instance) -> Instance {
        guard instance.state == .pending, let launched = instance.launchedAt,
              Date().timeIntervalSince(launched) >= configuration.bootSeconds else { return instance }
        var i = instance
        i.state = .running
        i.providerState = "running"
        return i
    }

    public func terminate(ids: [String]) async throws -> [Instance] {
        try withLock {
            var out: [Instance] = []
            for id in ids {
                guard var instance = try read(id) else {
                    // Never existed or already cleaned: terminate is idempotent.
                    out.append(Instance(id: id, provider: name, instanceType: instanceType, region: "local", state: .terminated, providerState: "not-found"))
                    continue
                }
                if instance.state != .terminated {
                    killRecordedProcesses(folder: root + "/nodes/" + id)
                    try? FileManager.default.removeItem(atPath: root + "/nodes/" + id + "/work")
                    instance.state = .terminated
                    instance.providerState = "terminated"
                    instance.details["terminatedAt"] = ISO8601DateFormatter().string(from: Date())
                    try write(instance)
                }
                out.append(instance)
            }
            return out
        }
    }

    // MARK: - Files

    func write(_ instance: Instance) throws {
        let folder = root + "/nodes/" + instance.id
        do {
            try PrivateFile.write(PluginWire.encoder.encode(instance), to: folder + "/instance.json")
        } catch let e as CapstanError {
            throw CapstanError(.io, "Cannot write local node state in \(folder): \(e.message)", hint: e.hint, provider: name)
        } catch { throw CapstanError(.io, "Cannot write local node state in \(folder): \(error.localizedDescription)", provider: name) }
    }

    func read(_ id: String) throws -> Instance? {
        guard !id.contains("/"), !id.hasPrefix(".") else { return nil }
        let path = root + "/nodes/" + id + "/instance.json"
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do { return try PluginWire.decoder.decode(Instance.self, from: data) } catch {
            throw CapstanError(.io, "Local node state \(path) is unreadable (\(error)).", hint: "Remove the folder \(root)/nodes/\(id) if the node is gone.", provider: name)
        }
    }

    func readAll() throws -> [Instance] {
        let ids = (try? FileManager.default.contentsOfDirectory(atPath: root + "/nodes")) ?? []
        return try ids.compactMap { try read($0) }
    }

    func withLock<T>(_ body: () throws -> T) throws -> T { try withFolderLock(root, provider: name, body) }

    /// A node's processes are listed in `<folder>/pids` (``NodeProcesses``) by whoever starts
    /// them (the node agent); each is killed with its process group.
    func killRecordedProcesses(folder: String) {
        NodeProcesses.killAll(in: folder + "/pids")
    }
}

/// A coding key for any string, to find unknown keys in config sections.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}
