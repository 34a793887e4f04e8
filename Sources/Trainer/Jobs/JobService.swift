public import CapstanCore
public import CapstanRuntime
public import Foundation
public import Yams
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A running job in this process: its events as they happen, and its end.
public struct JobHandle: Sendable {
    public let id: String
    /// Status changes, attempts, failures, checkpoints and every log line, in order. Ends
    /// when the job does.
    public let events: AsyncStream<JobEvent>
    let task: Task<JobRecord, any Error>

    /// Waits for the job to end.
    public func result() async throws -> JobRecord { try await task.value }

    /// Stops this process's controller of the job (the handle owns it); the job itself goes on
    /// being what its state says: `capstan attach` or `JobService.ensureController` picks it up
    /// again. To stop the job, use ``JobService/cancel(_:wait:)``.
    public func detach() { task.cancel() }
}

/// A checkpoint of a job as the bucket has it (`capstan checkpoints`).
public struct CheckpointSummary: Sendable, Hashable, Codable {
    public var step: Int
    public var attempt: Int?
    public var bytes: Int64?
    public var createdAt: Date?
    /// Every file it lists is present with its size and the SHA-256 the store recorded.
    public var verified: Bool
    /// Where it is.
    public var location: String
    /// Why it was recorded as corrupt (a node's restore found its bytes damaged), if it was.
    public var corrupt: String?
}

/// Jobs, as a library: what `capstan launch | jobs | logs | cancel | checkpoints` call.
///
/// ```swift
/// let service = JobService(context: context, agentExecutable: "/usr/local/bin/capstan")
/// let handle = try service.submit(yaml: try String(contentsOfFile: "job.yaml"), folder: ".")
/// for await event in handle.events { print(event) }
/// let job = try await handle.result()
/// ```
public struct JobService: Sendable {
    public var context: JobContext
    /// The `capstan` binary: runs agents and detached controllers.
    public let agentExecutable: String
    /// The bucket used when neither the spec nor config.yaml names one.
    public let defaultStorage: String?
    /// The `notify:` a spec without one gets (config.yaml's); recorded in the job's settings.
    public var defaultNotify: NotifySpec?
    /// How this process delivers notifications (config.yaml's `notifyDelivery:`).
    public var notifyDelivery = NotifyDelivery()
    /// Whether a controller ``attach(_:)`` runs in this process also delivers the job's
    /// notifications (``NotificationDeliverer/alongside(store:settings:logger:drain:_:)``), as
    /// `capstan launch` does around its follower. Off by default.
    public var deliversNotifications = false

    public init(context: JobContext, agentExecutable: String, defaultStorage: String? = nil) {
        self.context = context
        self.agentExecutable = agentExecutable
        self.defaultStorage = defaultStorage
    }

    public struct Options: Sendable {
        /// Run on this existing cluster (which the job then does not terminate) instead of
        /// provisioning one.
        public var cluster: String?
        public var settings = JobSettings()
        public init(cluster: String? = nil) { self.cluster = cluster }
    }

    /// Checks the spec and writes the job (status `pending`). Nothing runs yet.
    public func create(yaml: String, folder: String, options: Options = .init()) async throws -> JobRecord {
        let parsed = try JobSpec.parse(yaml, source: "job spec")
        try parsed.checkLaunchEnv(options.settings.env ?? [:])
        let spec = parsed.applying(options.settings)
        // Every secret must be there now (its value is read again by each controller, never stored).
        _ = try context.secretSource.resolve(spec.secrets)
        let suffix = String(UUID().uuidString.lowercased().filter(\.isHexDigit).prefix(6))
        let id = String(spec.name.prefix(56)) + "-" + suffix
        if let cluster = options.cluster {
            guard let c = try await context.store.cluster(named: cluster), c.status == .running else {
                throw CapstanError(.notFound, "Cluster '\(cluster)' is not running.", hint: "Start it with `capstan up \(cluster) …`, or launch without --cluster.")
            }
            guard c.nodes == spec.resources.nodes else {
                throw CapstanError(.invalidRequest, "Cluster '\(cluster)' has \(c.nodes) node(s); the job asks for \(spec.resources.nodes).", hint: "Set resources.nodes to \(c.nodes), or launch without --cluster.")
            }
        }
        let root = spec.storage ?? defaultStorage ?? "file://" + context.home.path("bucket")
        let storage = (root.hasSuffix("/") ? String(root.dropLast()) : root) + "/" + id
        // Fail now, not on the first checkpoint, when the bucket cannot be opened.
        _ = try context.openBucket(storage)
        _ = try context.bucketAccess(storage)
        if let workdir = spec.workdir {
            let local = workdir.hasPrefix("/") ? workdir : folder + "/" + workdir
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: local, isDirectory: &isDir), isDir.boolValue else {
                throw CapstanError(.invalidRequest, "The job's workdir \(local) is not a folder.", hint: "workdir is relative to the spec file's folder.")
            }
            // Local nodes live under the home: a workdir holding it would be copied into itself.
            let dir = URL(fileURLWithPath: local).standardizedFileURL.resolvingSymlinksInPath().path
            let home = URL(fileURLWithPath: context.home.root).standardizedFileURL.resolvingSymlinksInPath().path
            if home == dir || home.hasPrefix(dir.hasSuffix("/") ? dir : dir + "/") {
                throw CapstanError(.invalidRequest, "The job's workdir \(dir) contains Capstan's home \(home), so every node would get a copy of the nodes themselves.", hint: "Point workdir at the code's folder, or set CAPSTAN_HOME outside it.")
            }
        }
        try Self.checkRecipeInputs(spec, folder: folder)
        try await checkRemoteRecipeInputs(spec)
        try await checkInputs(spec)
        var jobSettings = options.settings
        if spec.notify == nil, jobSettings.notify == nil { jobSettings.notify = defaultNotify }
        let settings = String(decoding: try PluginWire.encoder.encode(jobSettings), as: UTF8.self)
        let job = JobRecord(
            id: id, name: spec.name, spec: yaml, specFolder: (folder as NSString).standardizingPath, settings: settings,
            clusterName: options.cluster ?? id, ownsCluster: options.cluster == nil, storage: storage)
        try await context.store.insert(job)
        await context.store.jobEvent("submitted", "Job \(id) submitted: \(spec.resources.nodes) node(s), checkpoints and outputs in \(storage).", job: id)
        return job
    }

    /// A recipe's model folder and data files that the workdir carries (relative paths) are
    /// checked here, before anything is provisioned. Absolute paths are on the nodes.
    static func checkRecipeInputs(_ spec: JobSpec, folder: String) throws {
        guard var recipe = spec.recipe else { return }
        // Fetched by each node's agent, checked by checkRemoteRecipeInputs.
        let remote = Set(recipe.remoteSources.map(\.url))
        if remote.contains(recipe.model) { recipe.model = "/" }
        recipe.data.removeAll { remote.contains($0) }
        guard let workdir = spec.workdir else {
            if !recipe.model.hasPrefix("/") || recipe.data.contains(where: { !$0.hasPrefix("/") }) {
                throw CapstanError(.invalidRequest, "The recipe's model or data is a relative path, but the job has no workdir to carry it to the nodes.", hint: "Add `workdir: .` (the spec's folder), or use absolute paths that exist on every node.")
            }
            return
        }
        let root = workdir.hasPrefix("/") ? workdir : folder + "/" + workdir
        if !recipe.model.hasPrefix("/") {
            let config = root + "/" + recipe.model + "/config.json"
            guard FileManager.default.fileExists(atPath: config) else {
                throw CapstanError(.invalidRequest, "The recipe's model folder \(recipe.model) has no config.json (looked in \(root)).", hint: "Point `model` at a Hugging Face model folder, relative to the workdir, or an absolute path on the nodes; see docs/recipes.md.")
            }
        }
        for file in recipe.data where !file.hasPrefix("/") {
            guard FileManager.default.fileExists(atPath: root + "/" + file) else {
                throw CapstanError(.invalidRequest, "The recipe's data file \(file) is not in the workdir \(root).", hint: "`data` paths are relative to the workdir.")
            }
        }
    }

    /// A recipe's `hf://` model and `s3://` model or data must exist and be readable with the
    /// credentials the nodes will get (`HF_TOKEN`, the bucket's), checked before anything is
    /// provisioned: a typo costs an error, not a cluster.
    func checkRemoteRecipeInputs(_ spec: JobSpec) async throws {
        guard let recipe = spec.recipe else { return }
        for (what, url, source) in recipe.remoteSources {
            switch source {
            case .hub(let repo, let revision):
                let env = ProcessInfo.processInfo.environment
                let specEndpoint = spec.env["HF_ENDPOINT"]
                let token = HubClient.mayReceiveToken(specEndpoint: specEndpoint, environment: env) ? env["HF_TOKEN"] : nil
                let client = HubClient(endpoint: specEndpoint ?? env["HF_ENDPOINT"], token: token)
                let rev = try await client.revision(repo: repo, revision: revision)
                guard rev.files.contains(where: { $0.name == "config.json" }) else {
                    throw CapstanError(.invalidRequest, "The recipe's model \(url) has no config.json at commit \(rev.commit.prefix(12)) on \(client.endpoint): not a Hugging Face model.", hint: "Name a model repository (hf://org/name[@revision]).")
                }
            case .bucket:
                let (location, prefix) = splitBucketURL(url)
                let store: any ObjectStore
                do { store = try context.openBucket(location) } catch {
                    throw CapstanError(.invalidRequest, "Cannot open the bucket of the recipe's \(what) \(url): \((error as? CapstanError)?.message ?? "\(error)")", hint: "The nodes read it with the same credentials as the job's storage; see docs/recipes.md.")
                }
                let objects: [ObjectInfo]
                do { objects = try await SourceCache.objects(store, prefix: prefix, location: url) } catch let e as CapstanError where e.code == .notFound {
                    throw CapstanError(.invalidRequest, "The recipe's \(what) \(url) does not exist: \(e.message)", hint: e.hint)
                }
                if what == "model", !objects.contains(where: { SourceCache.relative($0.key, prefix: prefix) == "config.json" }) {
                    throw CapstanError(.invalidRequest, "The recipe's model \(url) has no config.json: not a Hugging Face model folder.", hint: "Upload the folder as `huggingface-cli download` leaves it (config.json, weights, tokenizer).")
                }
            case .path:
                break
            }
        }
    }

    /// Creates the job and runs its controller in this process.
    public func submit(yaml: String, folder: String, options: Options = .init()) async throws -> JobHandle {
        let job = try await create(yaml: yaml, folder: folder, options: options)
        return attach(job.id)
    }

    /// Runs the controller of an existing job in this process (re-attaching to its agents).
    public func attach(_ id: String) -> JobHandle {
        let (stream, continuation) = AsyncStream.makeStream(of: JobEvent.self, bufferingPolicy: .unbounded)
        let controller = JobController(jobID: id, context: context) { continuation.yield($0) }
        let (delivers, store, settings, logger) = (deliversNotifications, context.store, notifyDelivery, context.logger)
        let task = Task {
            defer { continuation.finish() }
            guard delivers else { return try await controller.run() }
            return try await NotificationDeliverer.alongside(store: store, settings: settings, logger: logger) { try await controller.run() }
        }
        return JobHandle(id: id, events: stream, task: task)
    }

    /// Starts a detached controller (`capstan job-controller ID`) for an unfinished job that
    /// has none — after the `capstan` that ran it was killed. Returns whether one was started.
    @discardableResult
    public func ensureController(_ id: String) async throws -> Bool {
        guard let job = try await context.store.job(id), !job.status.isFinished else { return false }
        guard await !context.jobLocks.isHeld(job.id) else { return false }
        let folder = context.jobFolder(job.id)
        try PrivateFile.createFolder(folder)
        var env = ProcessInfo.processInfo.environment
        env["CAPSTAN_HOME"] = context.home.root
        let pid = try Spawn.start([agentExecutable, "job-controller", job.id], environment: env, cwd: nil, output: folder + "/controller.log")
        Spawn.reapLater(pid)
        await context.store.jobEvent("reattached", "A controller (pid \(pid)) took over the job.", job: job.id)
        // Wait until it holds the lock, so callers that look next see it working.
        for _ in 0..<100 { if await context.jobLocks.isHeld(job.id) { break }; try await Task.sleep(for: .milliseconds(20)) }
        return true
    }

    /// Asks the job to stop. Its controller (started here when there is none) stops the gang,
    /// lets the agents upload what is complete, and terminates the cluster the job owns.
    @discardableResult
    public func cancel(_ id: String, wait: Duration = .seconds(300)) async throws -> JobRecord {
        guard let job = try await context.store.job(id) else { throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs`.") }
        if job.status.isFinished { return job }
        try await context.store.updateJob(job.id) { $0.status = .cancelling }
        await context.store.jobEvent("cancelling", "Cancel requested.", job: job.id)
        if await !context.jobLocks.isHeld(job.id) {
            return try await JobController(jobID: job.id, context: context).run()
        }
        let deadline = ContinuousClock.now + wait
        while ContinuousClock.now < deadline {
            if let j = try await context.store.job(job.id), j.status.isFinished { return j }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw CapstanError(.timeout, "Job \(job.id) is still stopping after \(wait).", hint: "Check `capstan jobs`; the cancel stays in force.")
    }

    /// The job's checkpoints in its bucket, each verified against its manifest.
    public func checkpoints(_ id: String) async throws -> [CheckpointSummary] {
        guard let job = try await context.store.job(id) else { throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs`.") }
        let store = CheckpointStore(store: try context.openBucket(job.storage), prefix: "checkpoints")
        var out: [CheckpointSummary] = []
        let corrupt = Set(try await store.corruptSteps())
        for step in try await store.committedSteps() {
            let m = try? await store.verified(step: step)
            let bad = corrupt.contains(step) ? (try? await store.corruption(step: step))?.reason ?? "recorded as corrupt" : nil
            out.append(CheckpointSummary(step: step, attempt: m?.attempt, bytes: m?.totalBytes, createdAt: m?.createdAt, verified: m != nil && bad == nil, location: "\(job.storage)/checkpoints/step-\(step)", corrupt: bad))
        }
        return out
    }

    /// Downloads every file of each of the job's checkpoints and hashes it against the
    /// manifest (``CheckpointStore/check(step:scratch:)``), newest last.
    public func verifyCheckpoints(_ id: String) async throws -> [CheckpointCheck] {
        guard let job = try await context.store.job(id) else { throw CapstanError(.notFound, "No job '\(id)'.", hint: "See `capstan jobs`.") }
        let store = CheckpointStore(store: try context.openBucket(job.storage), prefix: "checkpoints")
        let scratch = NSTemporaryDirectory() + "capstan-verify-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var out: [CheckpointCheck] = []
        for step in try await store.committedSteps() { out.append(try await store.check(step: step, scratch: scratch)) }
        return out
    }
}
