public import CapstanCore
public import Foundation

/// One SSH key pair per cluster, made by Capstan on first launch (`ssh-keygen -t ed25519`) and
/// kept in `<folder>/<cluster id>/id_ed25519` (mode 0600, never copied anywhere). Its public
/// half goes to the cloud with every launch (``LaunchRequest/sshPublicKey``: a provider SSH-key
/// API or user data), so remote nodes accept the controller and nothing else; its own
/// `known_hosts` sits beside it, because clouds hand a dead instance's address to new ones.
///
/// Keyed by the cluster's id, not its name: a later cluster of the same name gets a key of its
/// own, never its predecessor's. The folder goes when the cluster is terminated (``remove(_:)``).
public struct ClusterKeys: ClusterKeySource, Hashable {
    public let folder: String

    public init(folder: String) { self.folder = folder }

    /// The cluster's folder: `id_ed25519`, `id_ed25519.pub`, `known_hosts`.
    public func folder(clusterID: String) -> String { folder + "/" + clusterID }
    public func privateKey(clusterID: String) -> String { folder(clusterID: clusterID) + "/id_ed25519" }

    /// Where a node of a cluster finds its key and `known_hosts`: its cluster id's folder
    /// (``CapstanTags/clusterID``). A cluster launched before keys were kept by id has them
    /// under its name (``CapstanTags/cluster``), used while they last. Nil: the node carries
    /// neither tag.
    public func folder(for node: Instance) -> String? {
        let byID = node.tags[CapstanTags.clusterID].map { folder(clusterID: $0) }
        if let byID, FileManager.default.fileExists(atPath: byID + "/id_ed25519") { return byID }
        if let name = node.tags[CapstanTags.cluster], FileManager.default.fileExists(atPath: legacyFolder(name) + "/id_ed25519") {
            return legacyFolder(name)
        }
        return byID
    }

    /// Where a cluster's keys were kept before they were keyed by id.
    func legacyFolder(_ name: String) -> String { folder + "/" + name }

    /// The public key line of `cluster`, generating the pair if it has none. Throws (the
    /// caller logs why) when ssh-keygen is missing: the cluster then has no key of its own.
    public func publicKey(for cluster: Cluster) async throws -> String {
        // ssh-keygen runs for a moment: on a thread of its own, not the cooperative pool.
        try await Spawn.onThread { try self.makePublicKey(for: cluster) }
    }

    func makePublicKey(for cluster: Cluster) throws -> String {
        let dir = folder(clusterID: cluster.id)
        let key = privateKey(clusterID: cluster.id)
        if let existing = try? String(contentsOfFile: key + ".pub", encoding: .utf8), FileManager.default.fileExists(atPath: key) {
            return existing.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try? FileManager.default.removeItem(atPath: key)
        try? FileManager.default.removeItem(atPath: key + ".pub")
        guard let keygen = Spawn.which("ssh-keygen") else {
            throw CapstanError(.unsupported, "Cannot make cluster \(cluster.name)'s key pair: ssh-keygen is not installed.", hint: "Install the OpenSSH client (apt install openssh-client).")
        }
        let (status, _) = try Spawn.runBlocking([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "capstan-\(cluster.name)", "-f", key], streams: Spawn.Streams(), timeout: 60)
        guard status.succeeded, let pub = try? String(contentsOfFile: key + ".pub", encoding: .utf8) else {
            throw CapstanError(.io, "ssh-keygen could not make cluster \(cluster.name)'s key pair in \(dir) (\(status)).", hint: "Check that the folder is writable.")
        }
        PrivateFile.restrict(key + ".pub")  // ssh-keygen makes it 0644; nothing in the home is for others
        return pub.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Deletes `cluster`'s key pair, `known_hosts` and connection sockets (once it is
    /// terminated: nothing may log in with that key any more), and a folder its name had from
    /// before keys were kept by id. Best effort.
    public func remove(_ cluster: Cluster) async {
        try? FileManager.default.removeItem(atPath: folder(clusterID: cluster.id))
        // (A name that looks like an id could be another cluster's folder: left alone.)
        if UUID(uuidString: cluster.name) == nil, FileManager.default.fileExists(atPath: legacyFolder(cluster.name) + "/id_ed25519") {
            try? FileManager.default.removeItem(atPath: legacyFolder(cluster.name))
        }
    }
}
