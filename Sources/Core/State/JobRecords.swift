public import Foundation

/// Where a job is in its life.
public enum JobStatus: String, Sendable, Hashable, Codable, CaseIterable {
    /// Written; capacity not yet acquired.
    case pending
    /// Acquiring its cluster.
    case provisioning
    /// An attempt is running on every node.
    case running
    /// An attempt failed; the gang is being stopped, repaired and restarted.
    case restarting
    /// `capstan cancel` asked it to stop; the controller is stopping it.
    case cancelling
    case succeeded, failed, cancelled

    /// No controller will ever work on it again.
    public var isFinished: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// A job as the state store knows it (table `job`).
public struct JobRecord: Sendable, Hashable, Codable {
    /// `<name>-<6 hex>`, also the cluster name when the job provisions its own.
    public var id: String
    public var name: String
    public var status: JobStatus
    /// The job spec as the user wrote it (YAML).
    public var spec: String
    /// The folder the spec's relative paths (`workdir`) are resolved against.
    public var specFolder: String
    /// Run settings (heartbeat timeout, grace periods) as JSON, owned by CapstanTrainer.
    public var settings: String
    public var clusterName: String
    /// The job provisioned the cluster, so it terminates it when it ends.
    public var ownsCluster: Bool
    /// The bucket URI the job's checkpoints and outputs go to (`<storage>/<job id>/…`).
    public var storage: String
    /// The current (or last) attempt, 1-based; 0 before the first.
    public var attempt: Int
    /// Restarts used (counted against the spec's `maxRestarts`).
    public var restarts: Int
    /// Newest committed checkpoint step the controller has seen.
    public var latestCheckpoint: Int?
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    public var lastError: String?
    /// pid of the controller process that last worked on it (informational; the job lock is the truth).
    public var controllerPID: Int32?
    /// The fencing token of the controller that works on the job (its job lock's
    /// ``HeldLock/fence``). A controller writes the job only while this is its own token, so
    /// a controller that lost its lease (paused, partitioned) can never overwrite its successor.
    public var controllerFence: Int64?
    /// Who holds it: `<host>:<pid>` of the controller's process (for people; the fence is the truth).
    public var controllerHolder: String?
    /// The newest metrics line of the leader's log (a JSON object with `step`: loss, lr,
    /// tokens/s…), as written; nil until the job prints one.
    public var metrics: String?

    public init(id: String, name: String, spec: String, specFolder: String, settings: String, clusterName: String, ownsCluster: Bool, storage: String, createdAt: Date = Date()) {
        self.id = id
        self.name = name
        self.status = .pending
        self.spec = spec
        self.specFolder = specFolder
        self.settings = settings
        self.clusterName = clusterName
        self.ownsCluster = ownsCluster
        self.storage = storage
        self.attempt = 0
        self.restarts = 0
        self.createdAt = createdAt
    }
}

/// One attempt of a job: the same command on every node, from one restored checkpoint.
public struct JobAttemptRecord: Sendable, Hashable, Codable {
    public enum Outcome: String, Sendable, Hashable, Codable {
        /// Agents are being started; a controller that finds an attempt here after a crash stops it.
        case starting
        case running, succeeded, failed
        /// Stopped by a cancel, or by a controller that could not tell its state.
        case stopped
    }

    public var jobID: String
    public var attempt: Int
    public var outcome: Outcome
    /// Instance ids in node-rank order.
    public var nodes: [String]
    public var masterAddress: String
    public var masterPort: Int
    /// The checkpoint step every node restored before starting, if any.
    public var resumeStep: Int?
    public var startedAt: Date
    public var endedAt: Date?
    /// What went wrong (`command`, `signal`, `heartbeat`, `instance-gone`, `hung-at-exit`, `agent`).
    public var failureKind: String?
    public var failedNode: Int?
    /// The failed command's exit code (shell convention: 128 + N for signal N).
    public var exitCode: Int?
    public var message: String?

    public init(jobID: String, attempt: Int, nodes: [String], masterAddress: String, masterPort: Int, resumeStep: Int?, startedAt: Date = Date()) {
        self.jobID = jobID
        self.attempt = attempt
        self.outcome = .starting
        self.nodes = nodes
        self.masterAddress = masterAddress
        self.masterPort = masterPort
        self.resumeStep = resumeStep
        self.startedAt = startedAt
    }
}

/// A committed checkpoint the controller saw in the bucket.
public struct CheckpointRecord: Sendable, Hashable, Codable {
    public var jobID: String
    public var step: Int
    public var attempt: Int
    public var bytes: Int64
    public var committedAt: Date
    /// Deleted from the bucket by retention.
    public var deleted: Bool

    public init(jobID: String, step: Int, attempt: Int, bytes: Int64, committedAt: Date, deleted: Bool = false) {
        self.jobID = jobID
        self.step = step
        self.attempt = attempt
        self.bytes = bytes
        self.committedAt = committedAt
        self.deleted = deleted
    }
}

/// A bearer token of the control plane's API (`capstan serve token create`). Only the token's
/// SHA-256 is stored; the token itself is shown once, when it is created.
public struct APIToken: Sendable, Hashable, Codable {
    /// A short public id (`tok_…`), for listing and revoking.
    public var id: String
    /// What it is for (`laptop`, `ci`), as its creator named it.
    public var name: String
    /// Hex SHA-256 of the token.
    public var hash: String
    public var createdAt: Date
    public var revokedAt: Date?
    /// When it last authenticated a request (updated at most once a minute).
    public var lastUsedAt: Date?

    public init(id: String, name: String, hash: String, createdAt: Date = Date()) {
        self.id = id
        self.name = name
        self.hash = hash
        self.createdAt = createdAt
    }

    public var isRevoked: Bool { revokedAt != nil }
}
