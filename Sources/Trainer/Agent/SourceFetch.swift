public import CapstanCore
public import CapstanProviders
import CapstanRuntime
import Foundation

extension AgentSecrets {
    /// Adds how to open the buckets of `recipe`'s `s3://` sources, and the launching
    /// environment's `HF_TOKEN` when it has an `hf://` model. A bucket the controller cannot
    /// resolve is left to the agent's own environment. `specEndpoint`: the job spec's own
    /// `HF_ENDPOINT`; the token goes only to the launching environment's endpoint (or the
    /// Hub), never to one a spec names (a spec from someone else could collect it).
    public mutating func addSources(of recipe: RecipeSpec, specEndpoint: String? = nil, access: (String) throws -> BucketAccess?) {
        for (_, url, source) in recipe.remoteSources {
            switch source {
            case .bucket:
                let location = splitBucketURL(url).location
                if sources?.contains(where: { $0.location == location }) == true { continue }
                if let a = try? access(location) { sources = (sources ?? []) + [a] }
            case .hub:
                let env = ProcessInfo.processInfo.environment
                guard HubClient.mayReceiveToken(specEndpoint: specEndpoint, environment: env) else { continue }
                if let t = env["HF_TOKEN"], !t.isEmpty { hubToken = t }
            case .path:
                break
            }
        }
    }
}

extension NodeAgent {
    /// Fetches the recipe's `hf://` and `s3://` model and data into this machine's source cache
    /// (``SourceCache``: once per machine, by content, kept across attempts) and returns
    /// `CAPSTAN_RECIPE_SOURCES`: a JSON object from each URL to its local folder or file, which
    /// the recipe reads. Empty when the job has no remote source.
    func fetchRecipeSources() async throws -> [String: String] {
        guard let text = config.files[Recipe.folderName + "/sft.json"],
              let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              let model = object["model"] as? String else { return [:] }
        let recipe = RecipeSpec(name: "sft", model: model, data: object["data"] as? [String] ?? [])
        let remote = recipe.remoteSources
        if remote.isEmpty { return [:] }
        let env = ProcessInfo.processInfo.environment.merging(config.environment) { $1 }
        let cache = SourceCache(root: SourceCache.root(environment: env))
        let home = CapstanHome.fromEnvironment()
        var map: [String: String] = [:]
        for (what, url, source) in remote {
            do {
                switch source {
                case .hub(let repo, let revision):
                    let client = HubClient(endpoint: config.environment["HF_ENDPOINT"], token: secrets.hubToken)
                    let rev: HubClient.Revision
                    do { rev = try await client.revision(repo: repo, revision: revision) } catch {
                        // A restart on a machine that has the model: the Hub may be down.
                        guard let (folder, commit) = cache.cachedHub(client, repo: repo, revision: revision) else { throw error }
                        say("\(what) \(url): the Hub did not answer (\((error as? CapstanError)?.message ?? "\(error)")); using commit \(commit.prefix(12)) cached in \(folder)")
                        map[url] = folder
                        continue
                    }
                    map[url] = try await cache.hub(client, rev, asked: revision) { [self] in say("\(what) \($0)") }
                case .bucket:
                    let (location, prefix) = splitBucketURL(url)
                    let store: any ObjectStore
                    if let access = secrets.sources?.first(where: { $0.location == location }) {
                        store = try access.open(home: home)
                    } else {
                        store = try ProviderRegistry.builtInStore(for: location, home: home)
                    }
                    let (folder, files) = try await cache.bucket(store, prefix: prefix, location: url) { [self] in say("\(what) \($0)") }
                    // A single object (a data file): its path; a prefix: the folder.
                    map[url] = files.count == 1 && !prefix.hasSuffix("/") && files[0] == (prefix as NSString).lastPathComponent ? folder + "/" + files[0] : folder
                case .path:
                    break
                }
            } catch {
                throw CapstanError(.transient, "fetching the recipe's \(what) \(url) failed: \((error as? CapstanError)?.description ?? "\(error)")")
            }
        }
        let data = try JSONSerialization.data(withJSONObject: map, options: [.sortedKeys])
        return ["CAPSTAN_RECIPE_SOURCES": String(decoding: data, as: UTF8.self)]
    }
}
