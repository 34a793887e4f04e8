import Foundation

/// How Capstan reaches a node to run its agent: a value the node's provider returns with the
/// instance (``Instance/access``), by which the controller picks the transport that serves it
/// and configures it. Nothing about reaching a node is read from its provider's name or from
/// ``Instance/details``.
///
/// On the wire (an instance's `"access"` field, in state rows and in plugins' answers) it is an
/// object with a `"kind"` and that kind's fields:
///
/// ```json
/// {"kind": "local", "folder": "/…/nodes/node-0-1a2b", "workdir": "/…/nodes/node-0-1a2b/work"}
/// {"kind": "ssh", "address": "10.0.0.5", "port": 22, "user": "ubuntu", "key": "cluster",
///  "workRoot": "/scratch/capstan", "interface": "eth1"}
/// {"kind": "slurm", "job": "4711", "node": "gpu-07", "workRoot": "/shared/capstan"}
/// ```
///
/// A kind this build does not know (a later one: container exec, …) decodes as
/// ``unsupported(kind:fields:)``, kept verbatim (it encodes back unchanged), so a newer plugin
/// or state row never makes an instance unreadable; only running a job there fails, with an
/// error naming the kind and the node.
public enum NodeAccess: Sendable, Hashable, Codable {
    /// A folder on this machine (the `local` provider's nodes).
    case local(LocalNodeAccess)
    /// A login over SSH.
    case ssh(SSHNodeAccess)
    /// A node of a Slurm allocation, reached with `srun` steps in that allocation.
    case slurm(SlurmNodeAccess)
    /// A kind this build cannot use: its name (`""` when the object names none) and the whole
    /// object as received.
    case unsupported(kind: String, fields: JSONValue)

    /// The wire name of this kind: `local`, `ssh`, or the unsupported kind's.
    public var kind: String {
        switch self {
        case .local: "local"
        case .ssh: "ssh"
        case .slurm: "slurm"
        case .unsupported(let kind, _): kind
        }
    }

    /// The network interface of the node's private address, when the provider names it (the
    /// job's `GLOO_SOCKET_IFNAME`/`NCCL_SOCKET_IFNAME` unless it sets them).
    public var networkInterface: String? {
        if case .ssh(let s) = self { return s.interface }
        return nil
    }

    enum Key: String, CodingKey { case kind }

    public init(from decoder: any Decoder) throws {
        let kind = try? decoder.container(keyedBy: Key.self).decodeIfPresent(String.self, forKey: .kind)
        switch kind {
        case "local": self = .local(try LocalNodeAccess(from: decoder))
        case "ssh": self = .ssh(try SSHNodeAccess(from: decoder))
        case "slurm": self = .slurm(try SlurmNodeAccess(from: decoder))
        default: self = .unsupported(kind: kind ?? "", fields: try JSONValue(from: decoder))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .local(let l):
            var c = encoder.container(keyedBy: Key.self)
            try c.encode("local", forKey: .kind)
            try l.encode(to: encoder)
        case .ssh(let s):
            var c = encoder.container(keyedBy: Key.self)
            try c.encode("ssh", forKey: .kind)
            try s.encode(to: encoder)
        case .slurm(let s):
            var c = encoder.container(keyedBy: Key.self)
            try c.encode("slurm", forKey: .kind)
            try s.encode(to: encoder)
        case .unsupported(_, let fields):
            try fields.encode(to: encoder)
        }
    }
}

/// A node of a Slurm allocation: the agent runs there as an `srun` step of `job` pinned to
/// `node`, and its files live under `workRoot`, a folder the submit host and the nodes share.
public struct SlurmNodeAccess: Sendable, Hashable, Codable {
    /// The allocation's job id.
    public var job: String
    /// The node's Slurm name.
    public var node: String
    /// The shared folder (absolute).
    public var workRoot: String
    /// `SLURM_CONF` for `srun`, when the cluster's configuration is not found by default.
    public var slurmConf: String?
    /// The login node that runs `srun` and holds `workRoot`, when Capstan runs elsewhere; nil:
    /// this machine is a submit host and sees `workRoot` itself.
    public var login: SlurmLogin?

    public init(job: String, node: String, workRoot: String, slurmConf: String? = nil, login: SlurmLogin? = nil) {
        self.job = job
        self.node = node
        self.workRoot = workRoot
        self.slurmConf = slurmConf
        self.login = login
    }
}

/// A Slurm cluster's login node, reached over SSH (`providers.slurm.login`).
public struct SlurmLogin: Sendable, Hashable, Codable {
    public var address: String
    public var port: Int?
    public var user: String
    /// A private key file (only its path is ever passed to ssh); nil: the SSH client's own.
    public var key: String?

    public init(address: String, port: Int? = nil, user: String, key: String? = nil) {
        self.address = address
        self.port = port
        self.user = user
        self.key = key
    }
}

/// A node that is a folder on this machine.
public struct LocalNodeAccess: Sendable, Hashable, Codable {
    /// The node's own folder (its `pids` file, `authorized_keys`, …).
    public var folder: String
    /// Where jobs run: the job's workdir is copied here and agents keep their state under it.
    public var workdir: String

    public init(folder: String, workdir: String) {
        self.folder = folder
        self.workdir = workdir
    }
}

/// A node reached over SSH.
public struct SSHNodeAccess: Sendable, Hashable, Codable {
    /// Which key logs in, and which `known_hosts` vouches for the host.
    public enum Key: Sendable, Hashable {
        /// The cluster's own key pair and `known_hosts`, made by Capstan at launch
        /// (``ClusterKeys``): a cloud instance given the cluster's public key. The default.
        case cluster
        /// This private key file, with Capstan's shared `known_hosts`.
        case file(String)
        /// No key named: the SSH client's own (ssh-agent, `~/.ssh`), with Capstan's shared
        /// `known_hosts`.
        case client
    }

    /// The address (or name) Capstan connects to.
    public var address: String
    public var port: Int
    public var user: String
    public var key: Key
    /// Where Capstan keeps its files on the node: an absolute path or `~/FOLDER`; nil: the
    /// transport's default (`~/.capstan-node`).
    public var workRoot: String?
    /// The network interface of the node's private address, when known.
    public var interface: String?

    public init(address: String, port: Int = 22, user: String, key: Key = .cluster, workRoot: String? = nil, interface: String? = nil) {
        self.address = address
        self.port = port
        self.user = user
        self.key = key
        self.workRoot = workRoot
        self.interface = interface
    }

    enum CodingKeys: String, CodingKey { case address, port, user, key, keyFile, workRoot, interface }

    /// `key`: `"cluster"` (or absent), `"client"`, or `"file"` with `keyFile` (a `keyFile`
    /// alone means `"file"` too).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        address = try c.decode(String.self, forKey: .address)
        port = try c.decodeIfPresent(Int.self, forKey: .port) ?? 22
        user = try c.decode(String.self, forKey: .user)
        let file = try c.decodeIfPresent(String.self, forKey: .keyFile)
        switch (try c.decodeIfPresent(String.self, forKey: .key), file) {
        case ("file", let f?), (nil, let f?): key = .file(f)
        case ("cluster", nil), (nil, nil): key = .cluster
        case ("client", nil): key = .client
        case (let k, _):
            throw DecodingError.dataCorruptedError(
                forKey: .key, in: c,
                debugDescription: "SSH access key \(k.map { "'\($0)'" } ?? "(none)")\(file == nil ? "" : " with a keyFile") is not one of: cluster, client, file (with keyFile)")
        }
        workRoot = try c.decodeIfPresent(String.self, forKey: .workRoot)
        interface = try c.decodeIfPresent(String.self, forKey: .interface)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(address, forKey: .address)
        try c.encode(port, forKey: .port)
        try c.encode(user, forKey: .user)
        switch key {
        case .cluster: try c.encode("cluster", forKey: .key)
        case .client: try c.encode("client", forKey: .key)
        case .file(let f):
            try c.encode("file", forKey: .key)
            try c.encode(f, forKey: .keyFile)
        }
        try c.encodeIfPresent(workRoot, forKey: .workRoot)
        try c.encodeIfPresent(interface, forKey: .interface)
    }
}

extension Instance {
    /// How to reach this node — the one place its default is decided:
    ///
    /// 1. ``access``, as its provider returned it;
    /// 2. else, for a state row or provider file written before `access` existed, what the old
    ///    `local` and `ssh` providers put in ``details`` (`workdir`+`folder`; `workRoot`,
    ///    `sshKey`, `interface`), read by the earlier Capstan's own rules so a cluster it started
    ///    stays reachable: `workdir`+`folder` only on the `local` provider's nodes; without an
    ///    `sshKey`, the `ssh` provider's hosts used the SSH client's own key, others the
    ///    cluster's;
    /// 3. else (a cloud plugin that sends no `access`: EC2, Lambda) SSH as ``sshUser`` to
    ///    ``publicAddress`` (else ``privateAddress``) on ``sshPort`` (22) with the cluster's key;
    /// 4. nil when there is no such login either: Capstan has no way to reach the node.
    public var resolvedAccess: NodeAccess? {
        if let access { return access }
        // (The provider's name is read here only to mirror how those rows were once read.)
        if provider == "local", let workdir = details["workdir"], let folder = details["folder"] {
            return .local(LocalNodeAccess(folder: folder, workdir: workdir))
        }
        guard let user = sshUser, let address = publicAddress ?? privateAddress else { return nil }
        let legacyHost = provider == "ssh" && details["workRoot"] != nil
        let key: SSHNodeAccess.Key = details["sshKey"].map { .file($0) } ?? (legacyHost ? .client : .cluster)
        return .ssh(SSHNodeAccess(address: address, port: sshPort ?? 22, user: user, key: key, workRoot: details["workRoot"], interface: details["interface"]))
    }
}
