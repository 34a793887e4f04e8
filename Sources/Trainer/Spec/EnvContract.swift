public import CapstanCore
public import CapstanRuntime

/// The environment every node's command runs with: torchrun-compatible variables plus
/// Capstan's own (DESIGN.md, "Env contract"). Pure: builds the variables, starts nothing.
public struct EnvContract: Sendable, Hashable {
    public var jobID: String
    public var nodeRank: Int
    /// Node addresses in rank order; rank 0 is the leader (`MASTER_ADDR`).
    public var nodeAddresses: [String]
    public var gpusPerNode: Int
    public var masterPort: Int
    public var checkpointDir: String
    /// Set when a checkpoint was restored before this attempt.
    public var resumeDir: String?
    public var outputDir: String
    /// 1 for the first run, +1 for each restart.
    public var attempt: Int

    public init(jobID: String, nodeRank: Int, nodeAddresses: [String], gpusPerNode: Int, masterPort: Int = 29500, checkpointDir: String, resumeDir: String? = nil, outputDir: String, attempt: Int = 1) {
        self.jobID = jobID
        self.nodeRank = nodeRank
        self.nodeAddresses = nodeAddresses
        self.gpusPerNode = gpusPerNode
        self.masterPort = masterPort
        self.checkpointDir = checkpointDir
        self.resumeDir = resumeDir
        self.outputDir = outputDir
        self.attempt = attempt
    }

    /// Checks the contract is self-consistent. Throws `.invalidRequest`.
    public func validate() throws {
        guard !nodeAddresses.isEmpty else { throw CapstanError(.invalidRequest, "A job needs at least one node address.") }
        guard nodeAddresses.indices.contains(nodeRank) else {
            throw CapstanError(.invalidRequest, "Node rank \(nodeRank) is outside 0..<\(nodeAddresses.count).")
        }
        guard (1...65535).contains(masterPort) else { throw CapstanError(.invalidRequest, "Master port \(masterPort) is not a TCP port.") }
        guard attempt >= 1 else { throw CapstanError(.invalidRequest, "Attempt numbers start at 1, got \(attempt).") }
    }

    /// The torchrun-compatible names the contract sets (besides its `CAPSTAN_` ones): a secret
    /// may not take one of them.
    public static let reservedNames: Set<String> = ["MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE"]
    /// Capstan's own names the contract sets on every node.
    public static let contractNames: Set<String> = [
        "CAPSTAN_JOB_ID", "CAPSTAN_NODE_RANK", "CAPSTAN_NUM_NODES", "CAPSTAN_GPUS_PER_NODE", "CAPSTAN_NODE_IPS",
        "CAPSTAN_CHECKPOINT_DIR", "CAPSTAN_OUTPUT_DIR", "CAPSTAN_ATTEMPT", "CAPSTAN_RESUME_DIR",
    ]

    /// The variables, ready to merge over the user's `env`.
    public var variables: [String: String] {
        // torchrun's NPROC_PER_NODE: one process per GPU, or one on a CPU-only node.
        let procs = max(1, gpusPerNode)
        var env: [String: String] = [
            "MASTER_ADDR": nodeAddresses[0],
            "MASTER_PORT": "\(masterPort)",
            "NNODES": "\(nodeAddresses.count)",
            "NODE_RANK": "\(nodeRank)",
            "NPROC_PER_NODE": "\(procs)",
            "CAPSTAN_JOB_ID": jobID,
            "CAPSTAN_NODE_RANK": "\(nodeRank)",
            "CAPSTAN_NUM_NODES": "\(nodeAddresses.count)",
            "CAPSTAN_GPUS_PER_NODE": "\(gpusPerNode)",
            "CAPSTAN_NODE_IPS": nodeAddresses.joined(separator: ","),
            "CAPSTAN_CHECKPOINT_DIR": checkpointDir,
            "CAPSTAN_OUTPUT_DIR": outputDir,
            "CAPSTAN_ATTEMPT": "\(attempt)",
        ]
        if let resumeDir { env["CAPSTAN_RESUME_DIR"] = resumeDir }
        return env
    }
}

/// What a job's processes (setup, the command, the Python env build) inherit from the node's
/// agent: only this minimal base, then the env contract and the spec's `env:` over it. Nothing
/// else of the launching shell or the agent (cloud keys, tokens) ever reaches them.
public enum BaseEnvironment {
    /// Inherited by name.
    public static let names: Set<String> = [
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "LD_LIBRARY_PATH",
    ]
    /// Inherited by prefix: locale settings and the GPU stack's (`CUDA_VISIBLE_DEVICES`,
    /// `NVIDIA_VISIBLE_DEVICES`, a node's `NCCL_SOCKET_IFNAME`).
    public static let prefixes = ["LC_", "CUDA_", "NVIDIA_", "NCCL_"]

    /// The part of `environment` a job's processes inherit.
    public static func filter(_ environment: [String: String]) -> [String: String] {
        environment.filter { k, _ in names.contains(k) || prefixes.contains { k.hasPrefix($0) } }
    }
}
