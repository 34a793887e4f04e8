public import CapstanCore
public import CapstanProviders
public import CapstanRuntime
import CapstanStorage
import Foundation

extension AgentSecrets {
    /// Adds how to open the buckets of the job's `inputs:` (as ``addSources(of:specEndpoint:access:)``
    /// does for a recipe's). A bucket the controller cannot resolve is left to the agent's own
    /// environment.
    public mutating func addInputs(_ inputs: [JobInput], access: (String) throws -> BucketAccess?) {
        for input in inputs where !input.url.hasPrefix("file://") {
            let location = JobInput.split(input.url).location
            if sources?.contains(where: { $0.location == location }) == true { continue }
            if let a = try? access(location) { sources = (sources ?? []) + [a] }
        }
    }
}

extension JobInput {
    /// Opens the store an input lives in: `file://` as a plain folder (nothing written to it),
    /// else with `access` when the controller resolved it, else as `open` does.
    public func store(access: [BucketAccess]?, home: CapstanHome, open: (String) throws -> any ObjectStore) throws -> (store: any ObjectStore, prefix: String) {
        let (location, prefix) = JobInput.split(url)
        if location.hasPrefix("file://") {
            return (try FileObjectStore(root: String(location.dropFirst("file://".count)), create: false), prefix)
        }
        if let a = access?.first(where: { $0.location == location }) { return (try a.open(home: home), prefix) }
        return (try open(location), prefix)
    }
}

extension NodeAgent {
    /// Fetches the job's `inputs:` into this machine's source cache (``SourceCache``: once per
    /// machine, by content, read-only, a cut fetch never used) and links each as
    /// `<state>/inputs/<name>`. Returns `CAPSTAN_INPUTS_DIR` and each `CAPSTAN_INPUT_<NAME>`.
    func fetchInputs() async throws -> [String: String] {
        guard let inputs = config.inputs, !inputs.isEmpty else { return [:] }
        let env = ProcessInfo.processInfo.environment.merging(config.environment) { $1 }
        let cache = SourceCache(root: SourceCache.root(environment: env))
        let home = CapstanHome.fromEnvironment()
        let links = config.stateDir + "/inputs"
        try FileManager.default.createDirectory(atPath: links, withIntermediateDirectories: true)
        var out = [JobInput.folderVariable: links]
        for input in inputs {
            do {
                let (store, prefix) = try input.store(access: secrets.sources, home: home) { try ProviderRegistry.builtInStore(for: $0, home: home) }
                let attempt = config.attempt
                let location = JobInput.split(input.url).location
                let localRoot = location.hasPrefix("file://") ? String(location.dropFirst("file://".count)) : nil
                let (folder, files) = try await cache.bucket(store, prefix: prefix, location: input.url, localRoot: localRoot, say: { [self] in say("input \(input.name) \($0)") }) { [faults] n in
                    if attempt == 1 { faults.hit("agent-input", n) }
                }
                // A single object (a file): its path; a prefix: the folder.
                let target = files.count == 1 && !prefix.isEmpty && !prefix.hasSuffix("/") && files[0] == (prefix as NSString).lastPathComponent ? folder + "/" + files[0] : folder
                let link = links + "/" + input.name
                try? FileManager.default.removeItem(atPath: link)
                try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
                out[JobInput.variable(input.name)] = link
            } catch {
                throw CapstanError(.transient, "fetching the job's input '\(input.name)' \(input.url) failed: \((error as? CapstanError)?.description ?? "\(error)")")
            }
        }
        return out
    }
}
