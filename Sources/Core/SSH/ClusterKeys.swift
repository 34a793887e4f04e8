import Foundation

/// One SSH key pair per cluster, made by Capstan on first launch (`ssh-keygen -t ed25519`) and
/// kept in `<folder>/<cluster>/id_ed25519` (mode 0600, never copied anywhere). Its public half
/// goes to the cloud with every launch (``LaunchRequest/sshPublicKey``: a provider SSH-key API
/// or user data), so remote nodes accept the controller and nothing else; its own
/// `known_hosts` sits beside it, because clouds hand a dead instance's address to new ones.
public struct ClusterKeys: Sendable, Hashable {
    public let folder: String

    public init(folder: String) { self.folder = folder }

    /// The cluster's folder: `id_ed25519`, `id_ed25519.pub`, `known_hosts`.
    public func folder(cluster: String) -> String { folder + "/" + cluster }
    public func privateKey(cluster: String) -> String { folder(cluster: cluster) + "/id_ed25519" }

    /// The public key line, generating the pair if the cluster has none. Nil (with the reason
    /// logged by the caller) when ssh-keygen is missing: the cluster then has no key of its own.
    public func publicKey(cluster: String) throws -> String {
        let key = privateKey(cluster: cluster)
        if let existing = try? String(contentsOfFile: key + ".pub", encoding: .utf8), FileManager.default.fileExists(atPath: key) {
            return existing.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        try FileManager.default.createDirectory(atPath: folder(cluster: cluster), withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try? FileManager.default.removeItem(atPath: key)
        try? FileManager.default.removeItem(atPath: key + ".pub")
        guard let keygen = Spawn.which("ssh-keygen") else {
            throw CapstanError(.unsupported, "Cannot make cluster \(cluster)'s key pair: ssh-keygen is not installed.", hint: "Install the OpenSSH client (apt install openssh-client).")
        }
        let (status, _) = try Spawn.runBlocking([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "capstan-\(cluster)", "-f", key], streams: Spawn.Streams(), timeout: 60)
        guard status.succeeded, let pub = try? String(contentsOfFile: key + ".pub", encoding: .utf8) else {
            throw CapstanError(.io, "ssh-keygen could not make cluster \(cluster)'s key pair in \(folder(cluster: cluster)) (\(status)).", hint: "Check that the folder is writable.")
        }
        PrivateFile.restrict(key + ".pub")  // ssh-keygen makes it 0644; nothing in the home is for others
        return pub.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
