public import CapstanCore
public import CapstanRuntime
public import Foundation
public import Logging

/// The node agent's checkpoint side: watches `CAPSTAN_CHECKPOINT_DIR` for complete `step-N/`
/// folders (those with the `.done` marker) and uploads each once, in the background, so the
/// training loop never waits on the network. The leader (node 0) commits a step's manifest once
/// every node's part is in, then applies retention.
public actor CheckpointWatcher {
    public let folder: String
    public let checkpoints: CheckpointStore
    public let job: String
    public let attempt: Int
    public let node: Int
    public let nodes: Int
    public let keep: Int
    public let pollInterval: Duration
    let logger: Logger
    /// Runs after each file a part upload puts (test hook: a cut upload).
    let afterFile: (@Sendable (Int) -> Void)?
    /// Runs when a step's parts are all in, before its manifest is written (test hook).
    let beforeCommit: (@Sendable (Int) -> Void)?

    private var uploaded: Set<Int> = []
    private var awaitingCommit: Set<Int> = []
    /// Steps whose part is uploaded, ascending.
    public var uploadedSteps: [Int] { uploaded.sorted() }
    /// Steps uploaded by the leader whose manifest is not written yet.
    public var pendingCommits: [Int] { awaitingCommit.sorted() }
    /// Steps whose manifest this watcher committed, ascending.
    public private(set) var committed: [Int] = []
    /// How long each step's part took to upload (seconds) and its size (bytes).
    public private(set) var uploads: [Int: (seconds: Double, bytes: Int64)] = [:]

    public init(
        folder: String, checkpoints: CheckpointStore, job: String, attempt: Int, node: Int, nodes: Int, keep: Int,
        pollInterval: Duration = .seconds(1), logger: Logger = Logger(label: "capstan.agent", factory: { _ in SwiftLogNoOpLogHandler() }),
        afterFile: (@Sendable (Int) -> Void)? = nil, beforeCommit: (@Sendable (Int) -> Void)? = nil
    ) {
        self.afterFile = afterFile
        self.beforeCommit = beforeCommit
        self.folder = folder
        self.checkpoints = checkpoints
        self.job = job
        self.attempt = attempt
        self.node = node
        self.nodes = nodes
        self.keep = keep
        self.pollInterval = pollInterval
        self.logger = logger
    }

    /// One pass: commit what can be committed (leader), upload every new complete step, then
    /// commit again. Committing first means a step waiting for another node's part is not held
    /// up behind this node's next upload. Returns the steps uploaded in this pass.
    @discardableResult
    public func runOnce() async throws -> [Int] {
        try await commitReady()
        var done: [Int] = []
        for step in CheckpointProtocol.completeSteps(in: folder) where !uploaded.contains(step) {
            let start = ContinuousClock.now
            let part = try await checkpoints.uploadPart(folder: "\(folder)/step-\(step)", step: step, node: node, attempt: attempt, afterFile: afterFile)
            uploaded.insert(step)
            done.append(step)
            let seconds = (ContinuousClock.now - start).seconds, bytes = part.files.reduce(Int64(0)) { $0 + Int64($1.size) }
            uploads[step] = (seconds, bytes)
            logger.info("checkpoint uploaded", metadata: [
                "capstan.job": "\(job)", "capstan.node": "\(node)", "step": "\(step)",
                "bytes": "\(bytes)", "seconds": "\(String(format: "%.2f", seconds))",
            ])
            if node == 0 { awaitingCommit.insert(step) }
        }
        try await commitReady()
        return done
    }

    func commitReady() async throws {
        for step in awaitingCommit.sorted() {
            let hook = beforeCommit
            guard try await checkpoints.commit(step: step, job: job, attempt: attempt, nodes: nodes, beforeManifest: { hook?(step) }) != nil else { continue }
            awaitingCommit.remove(step)
            committed.append(step)
            logger.notice("checkpoint committed", metadata: ["capstan.job": "\(job)", "step": "\(step)"])
            try await checkpoints.retain(keep: keep)
        }
    }

    /// Polls until cancelled. A failed pass is logged and retried on the next one: a network
    /// hiccup must not stop training, and nothing is marked uploaded until it is.
    public func run() async {
        while !Task.isCancelled {
            do { try await runOnce() } catch {
                logger.warning("checkpoint upload failed; will retry", metadata: ["capstan.job": "\(job)", "error": "\(error)"])
            }
            try? await Task.sleep(for: pollInterval)
        }
    }
}
