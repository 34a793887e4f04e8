public import CapstanCore
public import CapstanPluginKit
public import Foundation
public import Logging
import CapstanCloudKit

/// `providers.runpod` in config.yaml.
struct RunPodSettings: Codable, Sendable {
    /// GraphQL endpoint (default https://api.runpod.io/graphql).
    var endpoint: String?
    /// A file holding the API key (default: the RUNPOD_API_KEY environment variable).
    var apiKeyFile: String?
    /// SECURE (default) or COMMUNITY: which of RunPod's clouds to offer and deploy to.
    var cloudType: String?
    var imageName: String?
    var containerDiskInGb: Int?
    /// GPU counts per pod to offer (default 1, 2, 4, 8, up to each type's maxGpuCount).
    var gpuCounts: [Int]?
    var allowInsecureHTTP: Bool?

    static let keys: Set<String> = ["endpoint", "apiKeyFile", "cloudType", "imageName", "containerDiskInGb", "gpuCounts", "allowInsecureHTTP"]
}

/// RunPod pods through RunPod's GraphQL API (docs/plugins/runpod.md): one pod per node, spot as
/// interruptible pods, Capstan's tags in the pod's environment (RunPod has no tags).
final class RunPodCloud: ComputeProvider, Sendable {
    let name = "runpod"
    let endpoint: String
    private let apiKey: String
    let cloudType: String
    let imageName: String
    let containerDisk: Int
    let gpuCounts: [Int]
    let logger: Logger
    /// The environment variable that carries a pod's Capstan tags (base64 of a JSON object).
    static let tagsVariable = "CAPSTAN_TAGS"
    /// The environment variable that carries the offer a pod was launched from (`type|region`).
    static let offerVariable = "CAPSTAN_OFFER"
    /// Prices are read live from `gpuTypes`: a minute is fresh enough.
    var offerCacheTTL: Duration { .seconds(60) }

    init(settings: RunPodSettings, environment: [String: String], logger: Logger) throws {
        endpoint = settings.endpoint ?? "https://api.runpod.io/graphql"
        try CloudHTTP.checkEndpoint(endpoint, setting: "providers.runpod.endpoint", allowInsecureHTTP: settings.allowInsecureHTTP ?? false)
        if let file = settings.apiKeyFile {
            apiKey = try CloudHTTP.readSecret(file, what: "RunPod API key", provider: "runpod")
        } else if let key = environment["RUNPOD_API_KEY"], !key.isEmpty {
            apiKey = key
        } else {
            throw CapstanError(.auth, "No RunPod API key: providers.runpod.apiKeyFile is not set and RUNPOD_API_KEY is empty.", hint: "Create a key at runpod.io → Settings → API Keys and put it in a file named by providers.runpod.apiKeyFile (mode 600).", provider: "runpod")
        }
        let cloud = (settings.cloudType ?? "SECURE").uppercased()
        guard ["SECURE", "COMMUNITY"].contains(cloud) else {
            throw CapstanError(.config, "providers.runpod.cloudType '\(settings.cloudType ?? "")' is not SECURE or COMMUNITY.", provider: "runpod")
        }
        cloudType = cloud
        imageName = settings.imageName ?? "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
        containerDisk = settings.containerDiskInGb ?? 50
        gpuCounts = settings.gpuCounts ?? [1, 2, 4, 8]
        if let bad = gpuCounts.first(where: { $0 < 1 || $0 > 64 }) {
            throw CapstanError(.config, "providers.runpod.gpuCounts holds \(bad): a pod has 1 to 64 GPUs.", provider: "runpod")
        }
        self.logger = logger
    }

    var region: String { cloudType.lowercased() }

    // MARK: GraphQL

    /// Runs one GraphQL operation and returns its `data`, mapping RunPod's errors (HTTP 401,
    /// 429, 5xx, and `errors[]` in an HTTP 200 answer) to Capstan's codes.
    func graphql(_ query: String, _ variables: [String: Any], what: String) async throws -> [String: Any] {
        let body = try CloudHTTP.json(["query": query, "variables": variables])
        let r = try await CloudHTTP.send("POST", endpoint, headers: [("Content-Type", "application/json"), ("Authorization", "Bearer \(apiKey)")], body: body, provider: name)
        let doc = r.json
        let firstError = (doc?["errors"] as? [[String: Any]])?.first
        let message = firstError?["message"] as? String
        let code = (firstError?["extensions"] as? [String: Any])?["code"] as? String
        switch r.status {
        case 200 where message == nil:
            guard let data = doc?["data"] as? [String: Any] else {
                throw CapstanError(.transient, "RunPod answered \(what) without data.", provider: name)
            }
            return data
        case 200:
            throw Self.mapError(message: message ?? "", code: code, what: what)
        case 401, 403:
            throw CapstanError(.auth, "RunPod refused the API key while trying to \(what) (HTTP \(r.status)).", hint: "Check the key in providers.runpod.apiKeyFile (or RUNPOD_API_KEY); create a new one at runpod.io → Settings → API Keys if it was revoked.", provider: name, cloudCode: code ?? "HTTP \(r.status)", cloudMessage: message)
        case 429:
            throw CapstanError(.rateLimited, "RunPod throttled the request to \(what) (HTTP 429).", provider: name, retryAfterSeconds: r.retryAfterSeconds ?? 1, cloudCode: "HTTP 429")
        case 500...:
            throw CapstanError(.transient, "RunPod answered HTTP \(r.status) while trying to \(what).", hint: "RunPod's API had a problem; Capstan retries.", provider: name, cloudCode: "HTTP \(r.status)")
        default:
            throw CapstanError(.invalidRequest, "RunPod answered HTTP \(r.status) while trying to \(what)\(message.map { ": \($0)" } ?? "").", provider: name, cloudCode: code ?? "HTTP \(r.status)", cloudMessage: message)
        }
    }

    /// A GraphQL error (HTTP 200, `errors[0]`) as a Capstan error.
    static func mapError(message: String, code: String?, what: String) -> CapstanError {
        let m = message.lowercased()
        let kind: CapstanError.Code
        var hint: String?
        if m.contains("no longer any instances available") || m.contains("does not have the resources") {
            kind = .capacity
            hint = "Capstan tries the next offer; `capstan offers --gpu … --refresh` shows RunPod's stock."
        } else if m.contains("insufficient balance") || m.contains("spend limit") {
            kind = .quota
            hint = "Add funds (or raise the spend limit) at runpod.io → Billing."
        } else if code == "UNAUTHENTICATED" || code == "FORBIDDEN" && m.contains("api key") {
            kind = .auth
        } else if m.contains("not found") {
            kind = .notFound
        } else if m.contains("rate limit") || m.contains("too many requests") {
            kind = .rateLimited
        } else {
            kind = .invalidRequest
        }
        let text = message.hasSuffix(".") ? String(message.dropLast()) : message
        return CapstanError(kind, "RunPod could not \(what): \(text).", hint: hint, provider: "runpod", retryAfterSeconds: kind == .rateLimited ? 1 : nil, cloudCode: code, cloudMessage: message)
    }

    static let podFields = "id name desiredStatus imageName costPerHr gpuCount machineId podType env lastStatusChange runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } } machine { podHostId gpuDisplayName }"

    // MARK: ComputeProvider

    func offers(for request: ResourceRequest) async throws -> [Offer] {
        let secure = cloudType == "SECURE"
        let query = "query GpuTypes($input: GpuTypeFilter, $lowestPrice: GpuLowestPriceInput) { gpuTypes(input: $input) { id displayName manufacturer memoryInGb secureCloud communityCloud securePrice communityPrice maxGpuCount lowestPrice(input: $lowestPrice) { minimumBidPrice uninterruptablePrice stockStatus availableGpuCounts } } }"
        let data = try await graphql(query, ["input": [String: Any](), "lowestPrice": ["gpuCount": 1, "secureCloud": secure]], what: "list GPU types")
        var out: [Offer] = []
        for t in data["gpuTypes"] as? [[String: Any]] ?? [] {
            guard let id = t["id"] as? String else { continue }
            guard (t[secure ? "secureCloud" : "communityCloud"] as? Bool) ?? true else { continue }
            let lowest = t["lowestPrice"] as? [String: Any]
            let perGPU = (lowest?["uninterruptablePrice"] as? Double) ?? (t[secure ? "securePrice" : "communityPrice"] as? Double)
            let bid = lowest?["minimumBidPrice"] as? Double
            let stock = lowest?["stockStatus"] as? String
            let availability: Offer.Availability = switch stock ?? "None" {
            case "High", "Medium": .available
            case "Low": .limited
            default: .unavailable  // None, or null: RunPod has none to rent
            }
            let maxCount = t["maxGpuCount"] as? Int ?? 8
            let memory = (t["memoryInGb"] as? Int).map { $0 * 1024 }
            for count in gpuCounts where count <= maxCount {
                if let want = request.gpusPerNode, want != count { continue }
                var details = ["gpuTypeId": id, "gpuCount": "\(count)", "cloudType": cloudType, "stockStatus": stock ?? "None"]
                if let memory { details["gpuMemoryMiB"] = "\(memory)" }
                if let bid { details["minimumBidPerGpu"] = String(format: "%.4f", bid) }
                out.append(Offer(
                    provider: name, instanceType: "\(count)x \(id)", region: region, gpuName: id, gpusPerNode: count,
                    onDemandPricePerHour: perGPU.map { ($0 * Double(count) * 10000).rounded() / 10000 },
                    spotPricePerHour: bid.map { ($0 * Double(count) * 10000).rounded() / 10000 },
                    availability: availability, details: details))
            }
        }
        return out
    }

    func launch(_ request: LaunchRequest) async throws -> [Instance] {
        guard let typeID = request.offer.details["gpuTypeId"], let count = request.offer.details["gpuCount"].flatMap(Int.init) else {
            throw CapstanError(.invalidRequest, "Offer \(request.offer.id) is not a RunPod offer (no gpuTypeId/gpuCount in its details).", hint: "Ask `capstan offers --refresh` for fresh offers.", provider: name)
        }
        let bid = request.offer.details["minimumBidPerGpu"].flatMap(Double.init)
        if request.spot, bid == nil {
            throw CapstanError(.invalidRequest, "Offer \(request.offer.id) has no interruptible price.", provider: name)
        }
        // No idempotency token at RunPod: a repeated launch first finds the pods it started.
        let existing = try await describe(InstanceQuery(tags: [CapstanTags.intent: request.idempotencyKey]))
        let indices = request.nodeIndices ?? Array(0..<request.count)
        let namesTaken = Set(existing.map { $0.details["name"] ?? "" })
        var pods = existing
        let tags = Data(try JSONSerialization.data(withJSONObject: request.tags, options: [.sortedKeys])).base64EncodedString()
        for k in 0..<request.count where pods.count < request.count {
            let podName = "\(request.name ?? "capstan")-\(k < indices.count ? indices[k] : k)"
            if namesTaken.contains(podName) { continue }
            var env: [[String: String]] = [["key": Self.tagsVariable, "value": tags], ["key": Self.offerVariable, "value": "\(request.offer.instanceType)|\(region)"]]
            if let key = request.sshPublicKey { env.append(["key": "PUBLIC_KEY", "value": key]) }
            var input: [String: Any] = [
                "cloudType": cloudType, "gpuTypeId": typeID, "gpuCount": count, "name": podName, "imageName": imageName,
                "containerDiskInGb": containerDisk, "volumeInGb": 0, "ports": "22/tcp", "startSsh": true, "supportPublicIp": true, "env": env,
            ]
            let op = request.spot ? "podRentInterruptable" : "podFindAndDeployOnDemand"
            if request.spot, let bid { input["bidPerGpu"] = bid }
            do {
                let data = try await graphql("mutation Deploy($input: \(request.spot ? "PodRentInterruptableInput" : "PodFindAndDeployOnDemandInput")!) { \(op)(input: $input) { \(Self.podFields) } }", ["input": input], what: "deploy \(count)× \(typeID) (\(request.spot ? "interruptible" : "on demand"))")
                guard let pod = data[op] as? [String: Any] else { throw CapstanError(.transient, "RunPod answered the deploy without a pod.", provider: name) }
                pods.append(instance(pod))
            } catch let e as CapstanError {
                // Throttled or a hiccup: keep what started; the broker retries with the same key
                // and the lookup above finds them. Anything else: the partial gang goes first.
                if e.code != .rateLimited, e.code != .transient, !pods.isEmpty {
                    logger.info("terminating a partial RunPod gang", metadata: ["intent": "\(request.idempotencyKey)", "pods": "\(pods.map(\.id))"])
                    _ = try? await terminate(ids: pods.map(\.id))
                }
                throw e
            }
        }
        return pods
    }

    func describe(_ query: InstanceQuery) async throws -> [Instance] {
        let data = try await graphql("query Pods { myself { pods { \(Self.podFields) } } }", [:], what: "list pods")
        let pods = ((data["myself"] as? [String: Any])?["pods"] as? [[String: Any]] ?? []).map(instance)
        var out = pods.filter(query.matches)
        // RunPod forgets a terminated pod: an id asked for and not listed is gone.
        if let ids = query.ids, query.includeTerminated {
            let seen = Set(pods.map(\.id))
            for id in ids where !seen.contains(id) {
                out.append(Instance(id: id, provider: name, instanceType: "unknown", region: region, state: .terminated, providerState: "TERMINATED", stateReason: "RunPod no longer lists the pod"))
            }
        }
        return out
    }

    func terminate(ids: [String]) async throws -> [Instance] {
        var out: [Instance] = []
        for id in ids {
            do {
                _ = try await graphql("mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }", ["input": ["podId": id]], what: "terminate pod \(id)")
            } catch let e as CapstanError where e.code == .notFound {
                // Already gone: not an error.
            }
            out.append(Instance(id: id, provider: name, instanceType: "unknown", region: region, state: .terminated, providerState: "TERMINATED"))
        }
        return out
    }

    /// A pod as a Capstan instance: tags and offer from its environment, addresses from its
    /// runtime's port 22 mappings, state from `desiredStatus` and whether the container runs.
    func instance(_ pod: [String: Any]) -> Instance {
        var env: [String: String] = [:]
        for line in pod["env"] as? [String] ?? [] {
            if let eq = line.firstIndex(of: "=") { env[String(line[..<eq])] = String(line[line.index(after: eq)...]) }
        }
        var tags: [String: String] = [:]
        if let b64 = env[Self.tagsVariable], let data = Data(base64Encoded: b64), let t = (try? JSONSerialization.jsonObject(with: data)) as? [String: String] { tags = t }
        let offer = env[Self.offerVariable]?.split(separator: "|", maxSplits: 1).map(String.init) ?? []
        let spot = (pod["podType"] as? String) == "INTERRUPTABLE"
        let runtime = pod["runtime"] as? [String: Any]
        let ports = runtime?["ports"] as? [[String: Any]] ?? []
        let ssh = ports.first { ($0["privatePort"] as? Int) == 22 && ($0["isIpPublic"] as? Bool) == true }
        let inner = ports.first { ($0["privatePort"] as? Int) == 22 && ($0["isIpPublic"] as? Bool) == false }
        let status = pod["desiredStatus"] as? String ?? "UNKNOWN"
        var reason: String?
        let state: Instance.State
        switch status {
        case "RUNNING": state = runtime == nil ? .pending : .running
        case "CREATED", "RESTARTING": state = .pending
        case "EXITED":
            // An interruptible pod RunPod stopped is preempted; an on-demand one exited.
            state = spot ? .preempted : .stopped
            reason = spot ? "interruptible pod stopped by RunPod (\(pod["lastStatusChange"] as? String ?? "outbid or reclaimed"))" : pod["lastStatusChange"] as? String
        case "PAUSED": state = .stopped
        case "TERMINATED": state = .terminated
        case "DEAD": state = .failed
        default: state = .unknown
        }
        var details = ["name": pod["name"] as? String ?? ""]
        if let host = (pod["machine"] as? [String: Any])?["podHostId"] as? String { details["podHostId"] = host }
        return Instance(
            id: pod["id"] as? String ?? "?", provider: name, instanceType: offer.first ?? "\(pod["gpuCount"] as? Int ?? 0)x unknown",
            region: offer.count > 1 ? offer[1] : region, state: state, providerState: status,
            privateAddress: inner?["ip"] as? String, publicAddress: ssh?["ip"] as? String, sshPort: ssh?["publicPort"] as? Int,
            sshUser: "root", spot: spot, pricePerHour: pod["costPerHr"] as? Double, tags: tags, stateReason: reason, details: details)
    }
}

/// The `runpod` plugin's definition (plugins/runpod/Plugin.swift exports it).
enum RunPodPlugin {
    static let definition = PluginDefinition(
        manifest: PluginManifest(
            name: "runpod", version: "1.0.0",
            description: "RunPod GPU pods (on demand and interruptible) through RunPod's GraphQL API. Key: providers.runpod.apiKeyFile or RUNPOD_API_KEY.",
            capabilities: [.compute],
            configSchema: .object([
                "type": .string("object"),
                "additionalProperties": .bool(false),
                "properties": .object([
                    "endpoint": .object(["type": .string("string"), "description": .string("GraphQL endpoint (default https://api.runpod.io/graphql).")]),
                    "apiKeyFile": .object(["type": .string("string"), "description": .string("File holding the API key (default: RUNPOD_API_KEY).")]),
                    "cloudType": .object(["type": .string("string"), "enum": .array([.string("SECURE"), .string("COMMUNITY")])]),
                    "imageName": .object(["type": .string("string"), "description": .string("Container image of every pod (it must run sshd with PUBLIC_KEY, as RunPod's images do).")]),
                    "containerDiskInGb": .object(["type": .string("integer"), "minimum": .number(10)]),
                    "gpuCounts": .object(["type": .string("array"), "items": .object(["type": .string("integer")]), "description": .string("GPUs per pod to offer (default 1, 2, 4, 8).")]),
                    "allowInsecureHTTP": .object(["type": .string("boolean"), "description": .string("Allow a plain http:// endpoint on another machine (default false).")]),
                ]),
            ]),
            offerCacheSeconds: 60),
        make: { config, logger in
            if case .object(let o) = config, let unknown = o.keys.sorted().first(where: { !RunPodSettings.keys.contains($0) }) {
                throw CapstanError(.config, "Unknown key 'providers.runpod.\(unknown)'.", hint: "Known: \(RunPodSettings.keys.sorted().joined(separator: ", ")).")
            }
            let settings: RunPodSettings
            do { settings = try config.decode(RunPodSettings.self) } catch {
                throw CapstanError(.config, "providers.runpod is invalid: \(PluginWire.describe(error)).", hint: "See `capstan plugins inspect runpod`.")
            }
            return PluginServices(compute: try RunPodCloud(settings: settings, environment: ProcessInfo.processInfo.environment, logger: logger))
        })
}
