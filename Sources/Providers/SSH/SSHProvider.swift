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

/// Machines the user already has, listed by address in `providers.ssh` (config.yaml). Each host
/// is one node: offers cost $0/h, provisioning reserves free hosts (after checking each answers
/// over SSH), terminating releases them. Reservations live in a file under an `flock`, so
/// concurrent `capstan` processes never hand one host to two clusters.
///
/// ```yaml
/// providers:
///   ssh:
///     user: ubuntu                  # defaults for every host
///     key: ~/.ssh/id_ed25519
///     hosts:
///       - {address: 10.0.0.5, gpu: H100, gpus: 8, labels: {rack: r1}}
///       - {name: box2, address: 203.0.113.7, privateAddress: 10.0.0.6, port: 2222, interface: ens5, workRoot: /data/capstan}
/// ```
public struct SSHProvider: ComputeProvider {
    public struct Host: Sendable, Hashable, Codable {
        /// Unique; default: the address.
        public var name: String?
        /// How Capstan reaches it.
        public var address: String
        /// How the other nodes reach it (MASTER_ADDR, gloo/NCCL); default: `address`.
        public var privateAddress: String?
        public var port: Int?
        public var user: String?
        public var key: String?
        /// GPU model (a catalog name, e.g. H100); omit for CPU hosts.
        public var gpu: String?
        public var gpus: Int?
        /// The network interface of `privateAddress`, for GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME.
        public var interface: String?
        /// Where Capstan keeps its files on the host: an absolute path or `~/FOLDER` (default:
        /// `~/.capstan-node`, in the login user's home there).
        public var workRoot: String?
        public var labels: [String: String]?

        public var id: String { name ?? address }

        enum CodingKeys: String, CodingKey, CaseIterable { case name, address, privateAddress, port, user, key, gpu, gpus, interface, workRoot, labels }
        public init(from decoder: any Decoder) throws {
            try SSHProvider.rejectUnknown(decoder, CodingKeys.allCases.map(\.rawValue), in: "providers.ssh.hosts[]")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decodeIfPresent(String.self, forKey: .name)
            address = try c.decode(String.self, forKey: .address)
            privateAddress = try c.decodeIfPresent(String.self, forKey: .privateAddress)
            port = try c.decodeIfPresent(Int.self, forKey: .port)
            user = try c.decodeIfPresent(String.self, forKey: .user)
            key = try c.decodeIfPresent(String.self, forKey: .key)
            gpu = try c.decodeIfPresent(String.self, forKey: .gpu)
            gpus = try c.decodeIfPresent(Int.self, forKey: .gpus)
            interface = try c.decodeIfPresent(String.self, forKey: .interface)
            workRoot = try c.decodeIfPresent(String.self, forKey: .workRoot)
            labels = try c.decodeIfPresent([String: String].self, forKey: .labels)
        }
    }

    static func rejectUnknown(_ decoder: any Decoder, _ known: [String], in section: String) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        if let unknown = c.allKeys.first(where: { !known.contains($0.stringValue) }) {
            throw CapstanError(.config, "Unknown key '\(section).\(unknown.stringValue)'.", hint: "Known: \(known.joined(separator: ", ")).")
        }
    }

    public struct Configuration: Sendable, Hashable, Codable {
        public var hosts: [Host]
        public var user: String?
        public var key: String?
        /// Seconds a host has to answer the health check.
        public var checkSeconds: Int?
        public init(hosts: [Host], user: String? = nil, key: String? = nil, checkSeconds: Int? = nil) {
            self.hosts = hosts
            self.user = user
            self.key = key
            self.checkSeconds = checkSeconds
        }

        enum CodingKeys: String, CodingKey, CaseIterable { case hosts, user, key, checkSeconds }

        /// JSON Schema of `providers.ssh` in config.yaml, checked like every plugin's.
        public static let schema: JSONValue = {
            func type(_ t: String) -> JSONValue { .object(["type": .string(t)]) }
            let host: JSONValue = .object([
                "type": .string("object"), "additionalProperties": .bool(false), "required": .array([.string("address")]),
                "properties": .object([
                    "name": type("string"), "address": type("string"), "privateAddress": type("string"),
                    "port": .object(["type": .string("integer"), "minimum": .number(1), "maximum": .number(65535)]),
                    "user": type("string"), "key": type("string"), "gpu": type("string"),
                    "gpus": .object(["type": .string("integer"), "minimum": .number(0)]),
                    "interface": type("string"), "workRoot": type("string"),
                    "labels": .object(["type": .string("object"), "additionalProperties": type("string")]),
                ]),
            ])
            return .object([
                "type": .string("object"), "additionalProperties": .bool(false),
                "properties": .object([
                    "hosts": .object(["type": .string("array"), "items": host]),
                    "user": type("string"), "key": type("string"),
                    "checkSeconds": .object(["type": .string("integer"), "minimum": .number(1)]),
                ]),
            ])
        }()
        public init(from decoder: any Decoder) throws {
            try SSHProvider.rejectUnknown(decoder, CodingKeys.allCases.map(\.rawValue), in: "providers.ssh")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            hosts = try c.decodeIfPresent([Host].self, forKey: .hosts) ?? []
            user = try c.decodeIfPresent(String.self, forKey: .user)
            key = try c.decodeIfPresent(String.self, forKey: .key)
            checkSeconds = try c.decodeIfPresent(Int.self, forKey: .checkSeconds)
        }
    }

    public let name = "ssh"
    public var offerCacheTTL: Duration { .zero }
    public let configuration: Configuration
    /// Reservations (`reservations.json`) and their lock.
    public let root: String
    public let client: SSHClient

    public init(configuration: Configuration, root: String, client: SSHClient) throws {
        var seen = Set<String>()
        for h in configuration.hosts {
            guard !h.address.isEmpty else { throw CapstanError(.config, "providers.ssh.hosts: a host has an empty address.") }
            guard seen.insert(h.id).inserted else {
                throw CapstanError(.config, "providers.ssh.hosts: '\(h.id)' is listed twice.", hint: "Give each host a unique name or address.")
            }
            if let g = h.gpu { _ = try GPUCatalog.resolve(g) }
            guard (h.user ?? configuration.user) != nil else {
                throw CapstanError(.config, "providers.ssh.hosts: '\(h.id)' has no user.", hint: "Set `user` on the host or for all hosts under providers.ssh.")
            }
        }
        self.configuration = configuration
        self.root = root
        self.client = client
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    /// The login for `host`.
    public func target(_ host: Host) -> SSHTarget {
        SSHTarget(address: host.address, port: host.port ?? 22, user: host.user ?? configuration.user ?? "root",
                  keyFile: (host.key ?? configuration.key).map { NSString(string: $0).expandingTildeInPath })
    }

    /// Hosts grouped by what they offer: one offer per (GPU, GPUs per host).
    func groups() -> [(key: String, hosts: [Host])] {
        let grouped = Dictionary(grouping: configuration.hosts) { h in
            h.gpu.map { "ssh-\(h.gpus ?? 1)x\($0)" } ?? "ssh-cpu"
        }
        return grouped.map { ($0.key, $0.value) }.sorted { $0.key < $1.key }
    }

    public func offers(for request: ResourceRequest) async throws -> [Offer] {
        let reserved = try reservations()
        return groups().map { key, hosts in
            let free = hosts.filter { reserved[$0.id] == nil }
            let first = hosts[0]
            // A family name (H100) stands for its first variant; name the variant to be exact.
            let model = first.gpu.flatMap { try? GPUCatalog.resolve($0) }?.sorted().first
            return Offer(
                provider: name, instanceType: key, region: "ssh", zone: nil, gpuName: first.gpu, gpu: model,
                gpusPerNode: first.gpu == nil ? 0 : (first.gpus ?? 1), vcpus: nil, memoryGiB: nil,
                onDemandPricePerHour: 0, spotPricePerHour: nil,
                availability: free.count >= request.nodes ? .available : (free.isEmpty ? .unavailable : .limited),
                maxNodes: free.count, details: ["hosts": hosts.map(\.id).joined(separator: ","), "owned": "machines listed in providers.ssh"])
        }
    }

    public func launch(_ request: LaunchRequest) async throws -> [Instance] {
        guard request.offer.provider == name, let group = groups().first(where: { $0.key == request.offer.instanceType }) else {
            throw CapstanError(.invalidRequest, "Offer \(request.offer.id) is not one of the ssh provider's.", provider: name)
        }
        // Idempotency: a retried launch with the same key gets the same hosts.
        let previous = try withLock { try readReservations().values.filter { $0.tags[CapstanTags.intent] == request.idempotencyKey } }
        if !previous.isEmpty { return previous.sorted { $0.id < $1.id } }
        // Check the free hosts (outside the lock: a dead host takes seconds), then reserve.
        let reserved = try reservations()
        var healthy: [(Host, String)] = []
        var problems: [String] = []
        for host in group.hosts where reserved[host.id] == nil {
            do { healthy.append((host, try await check(host))) } catch {
                problems.append("\(host.id): \((error as? CapstanError)?.message ?? "\(error)")")
            }
            if healthy.count == request.count { break }
        }
        return try withLock {
            var all = try readReservations()
            let free = healthy.filter { all[$0.0.id] == nil }
            guard free.count >= request.count else {
                throw CapstanError(
                    .capacity, "The ssh provider has \(free.count) healthy free host(s) of \(group.hosts.count) \(group.key); \(request.count) asked for." + (problems.isEmpty ? "" : " Unusable: " + problems.joined(separator: "; ")),
                    hint: "Release hosts with `capstan down`, fix the hosts listed, or add hosts to providers.ssh.", provider: name)
            }
            var out: [Instance] = []
            for (host, root) in free.prefix(request.count) {
                var tags = request.tags
                tags[CapstanTags.managed] = "true"
                tags[CapstanTags.intent] = request.idempotencyKey
                let t = target(host)
                let id = "ssh-\(host.id.replacingOccurrences(of: "[^A-Za-z0-9.-]", with: "-", options: .regularExpression))-" + UUID().uuidString.prefix(6).lowercased()
                // The host's id in providers.ssh (what releasing it finds it by) and its labels.
                var details = ["host": host.id]
                for (k, v) in host.labels ?? [:] { details["label." + k] = v }
                // A host the user listed: their key (else the SSH client's own) and Capstan's
                // shared known_hosts, never a cluster's key pair.
                let access = SSHNodeAccess(address: t.address, port: t.port, user: t.user, key: t.keyFile.map { .file($0) } ?? .client, workRoot: root, interface: host.interface)
                let instance = Instance(
                    id: id, provider: name, instanceType: group.key, region: "ssh", state: .running, providerState: "reserved",
                    privateAddress: host.privateAddress ?? host.address, publicAddress: host.address, sshPort: t.port, sshUser: t.user,
                    spot: false, pricePerHour: 0, tags: tags, launchedAt: Date(), details: details, access: .ssh(access))
                all[host.id] = instance
                out.append(instance)
            }
            try writeReservations(all)
            return out
        }
    }

    /// The host answers over SSH; returns its work root (`workRoot`, else `~/.capstan-node`
    /// resolved with the login user's home there).
    func check(_ host: Host) async throws -> String {
        let r = try await client.run(target(host), "echo \"$HOME\"", timeout: Double(configuration.checkSeconds ?? 10))
        guard r.status == 0 else { throw CapstanError(.io, "the health check exited \(r.status): \(r.stderr.prefix(200))") }
        if let root = host.workRoot { return root }
        return try Self.defaultWorkRoot(home: r.text.trimmingCharacters(in: .whitespacesAndNewlines), target: target(host))
    }

    /// `<home>/.capstan-node`; a home that is not an absolute path is an error (never a shared
    /// fallback such as /tmp, where another user could plant Capstan's folder first).
    static func defaultWorkRoot(home: String, target: SSHTarget) throws -> String {
        guard home.hasPrefix("/") else {
            throw CapstanError(.config, "the home folder of \(target.user) there is '\(home)', not an absolute path, so Capstan has no private place for its files (it never falls back to /tmp): give \(target.user) an absolute home there, or set the host's workRoot.", hint: "Give \(target.user) an absolute home folder on that host, or set the host's workRoot in providers.ssh.")
        }
        return (home.hasSuffix("/") ? String(home.dropLast()) : home) + "/.capstan-node"
    }

    public func describe(_ query: InstanceQuery) async throws -> [Instance] {
        try reservations().values.filter(query.matches).sorted { $0.id < $1.id }
    }

    public func terminate(ids: [String]) async throws -> [Instance] {
        let released: [Instance] = try withLock {
            var all = try readReservations()
            var out: [Instance] = []
            for id in ids {
                guard let (key, inst) = all.first(where: { $0.value.id == id }) else { continue }
                all[key] = nil
                var gone = inst
                gone.state = .terminated
                gone.providerState = "released"
                out.append(gone)
            }
            try writeReservations(all)
            return out
        }
        // Like a cloud deleting a machine: whatever Capstan started there stops (best effort;
        // an unreachable host's processes end when their gang does).
        for inst in released {
            guard let host = configuration.hosts.first(where: { $0.id == inst.details["host"] }),
                  case .ssh(let access)? = inst.resolvedAccess, let work = access.workRoot else { continue }
            let pids = work + "/nodes/" + inst.id + "/pids"
            // An unreachable host is left to its gang's failure; its shared connection dies
            // with its keep-alives. A reachable one also closes it now.
            if (try? await client.run(target(host), SSHClient.killListed(pids) + "; rm -f \(SSHClient.remotePath(pids))", timeout: 4)) != nil {
                await client.disconnect(target(host))
            }
        }
        let unknown = ids.filter { id in !released.contains { $0.id == id } }
        return released + unknown.map { Instance(id: $0, provider: name, instanceType: "ssh", region: "ssh", state: .terminated, providerState: "not-found") }
    }

    // MARK: - Reservations

    func reservations() throws -> [String: Instance] { try withLock { try readReservations() } }

    func readReservations() throws -> [String: Instance] {
        let path = root + "/reservations.json"
        guard let data = FileManager.default.contents(atPath: path) else { return [:] }
        do { return try PluginWire.decoder.decode([String: Instance].self, from: data) } catch {
            throw CapstanError(.io, "The ssh provider's reservations \(path) are unreadable (\(error)).", hint: "Remove the file if no cluster uses these hosts.", provider: name)
        }
    }

    func writeReservations(_ all: [String: Instance]) throws {
        let path = root + "/reservations.json"
        do { try PluginWire.encoder.encode(all).write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw CapstanError(.io, "Cannot write \(path): \(error.localizedDescription)", provider: name)
        }
    }

    func withLock<T>(_ body: () throws -> T) throws -> T { try withFolderLock(root, provider: name, body) }
}
