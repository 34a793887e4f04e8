public import CapstanCore
public import CapstanRuntime
public import Foundation

/// A transport whose nodes' folders this machine reads and writes itself: the local
/// provider's node folders (``LocalTransport``) and a Slurm cluster's shared filesystem
/// (``SlurmTransport``). Copying the workdir, reading the agent's status, log and output, and
/// the controller's `controller-seen` mark are file operations here, the same for both; only
/// how the agent starts and stops differs.
public protocol SharedFolderTransport: NodeTransport {}

extension SharedFolderTransport {
    public func uploadWorkdir(_ localPath: String, job: String, on node: Instance) async throws {
        try await folderUploadWorkdir(localPath, job: job, on: node)
    }

    public func agentOutput(job: String, attempt: Int, on node: Instance) async -> String {
        await folderAgentOutput(job: job, attempt: attempt, on: node)
    }

    public func agentStatus(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        try await folderAgentStatus(job: job, attempt: attempt, on: node)
    }

    public func pollAgent(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        try await folderPollAgent(job: job, attempt: attempt, on: node)
    }

    public func readLog(job: String, attempt: Int, on node: Instance, from offset: Int64, limit: Int) async throws -> Data {
        try await folderReadLog(job: job, attempt: attempt, on: node, from: offset, limit: limit)
    }

    // The file operations themselves, for a transport that serves some nodes this way and
    // others another (``SlurmTransport``: with or without a login node).

    func folderUploadWorkdir(_ localPath: String, job: String, on node: Instance) async throws {
        let work = try layout(job: job, attempt: 0, on: node).workdir
        let marker = "\(work)/.capstan/\(job)/workdir-copied"
        if FileManager.default.fileExists(atPath: marker) { return }
        try FileManager.default.createDirectory(atPath: "\(work)/.capstan/\(job)", withIntermediateDirectories: true)
        let pid = try Spawn.start(["/bin/cp", "-a", localPath + "/.", work + "/"], environment: ProcessInfo.processInfo.environment)
        let exit = await Spawn.wait(pid)
        guard exit.succeeded else {
            throw CapstanError(.io, "Copying the workdir \(localPath) to node \(node.id) failed (\(exit)).", hint: "Check that the folder exists and is readable.")
        }
        try PrivateFile.write(Data(), to: marker)
    }

    /// Writes the agent's config (owner only: it holds the spec's env: values) into its state
    /// folder, made if missing; returns its path.
    func writeAgentConfig(_ config: AgentConfig) throws -> String {
        try PrivateFile.createFolder(config.stateDir)
        let path = config.stateDir + "/agent.json"
        do {
            try PrivateFile.write(PluginWire.encoder.encode(config), to: path)
        } catch {
            throw CapstanError(.io, "Cannot write the agent's config \(path): \((error as? CapstanError)?.message ?? error.localizedDescription)")
        }
        return path
    }

    func folderAgentOutput(job: String, attempt: Int, on node: Instance) async -> String {
        guard let l = try? layout(job: job, attempt: attempt, on: node), let h = FileHandle(forReadingAtPath: l.stateDir + "/agent.out") else { return "" }
        defer { try? h.close() }
        let end = (try? h.seekToEnd()) ?? 0
        try? h.seek(toOffset: end > 2000 ? end - 2000 : 0)
        return String(decoding: (try? h.readToEnd()) ?? Data(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func folderAgentStatus(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        let l = try layout(job: job, attempt: attempt, on: node)
        guard let data = FileManager.default.contents(atPath: l.stateDir + "/status.json") else { return nil }
        do { return try PluginWire.decoder.decode(AgentStatus.self, from: data) } catch {
            throw CapstanError(.io, "The agent status on node \(node.id) is unreadable (\(error)).")
        }
    }

    func folderPollAgent(job: String, attempt: Int, on node: Instance) async throws -> AgentStatus? {
        let l = try layout(job: job, attempt: attempt, on: node)
        // Only into a folder the agent made (never creating one for an attempt not started).
        if FileManager.default.fileExists(atPath: l.stateDir) {
            // Owner only, like everything in the node's folder.
            try? PrivateFile.write(Data("\(Date().timeIntervalSince1970)\n".utf8), to: l.stateDir + "/" + AgentConfig.controllerSeenName)
        }
        return try await folderAgentStatus(job: job, attempt: attempt, on: node)
    }

    func folderReadLog(job: String, attempt: Int, on node: Instance, from offset: Int64, limit: Int) async throws -> Data {
        let l = try layout(job: job, attempt: attempt, on: node)
        guard let h = FileHandle(forReadingAtPath: l.stateDir + "/node.log") else { return Data() }
        defer { try? h.close() }
        try h.seek(toOffset: UInt64(max(0, offset)))
        return try h.read(upToCount: limit) ?? Data()
    }
}
