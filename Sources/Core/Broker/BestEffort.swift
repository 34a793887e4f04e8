package import Logging

extension Logger {
    /// Runs a state write whose failure must not stop (or hide the error of) its caller: a
    /// failure is logged with `what`, never silently dropped. The provisioner's and the job
    /// controller's `bestEffort` both come here.
    package func bestEffort(_ what: String, metadata: Logger.Metadata = [:], _ write: () async throws -> Void) async {
        do { try await write() } catch {
            self.error("state write failed", metadata: metadata.merging(["what": "\(what)", "error": "\(error)"]) { $1 })
        }
    }
}
