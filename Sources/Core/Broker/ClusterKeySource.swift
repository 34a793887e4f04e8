/// Where a cluster's own SSH key pair comes from: the provisioner sends its public half with
/// every launch and removes the pair once the cluster is terminated. CapstanRuntime's
/// `ClusterKeys` keeps them in files made by ssh-keygen.
public protocol ClusterKeySource: Sendable {
    /// The public key line of `cluster`, making the pair if it has none. Throws when no pair
    /// can be made (the caller logs why; the cluster then has no key of its own).
    func publicKey(for cluster: Cluster) async throws -> String
    /// Deletes `cluster`'s key pair and what goes with it. Best effort.
    func remove(_ cluster: Cluster) async
}
