import CapstanCore
import CapstanCloudKit
import Crypto
import Foundation
import Logging

/// `providers.gcp` in config.yaml.
struct GCPSettings: Codable, Sendable {
    /// Service-account JSON key (default: GOOGLE_APPLICATION_CREDENTIALS).
    var credentialsFile: String?
    /// Project (default: the key's project_id).
    var project: String?
    /// Zones to offer (default: every zone that has the machine types).
    var zones: [String]?
    /// compute/v1 base URL (default https://compute.googleapis.com/compute/v1).
    var endpoint: String?
    /// Cloud Storage base URL (default https://storage.googleapis.com).
    var storageEndpoint: String?
    /// Boot image (default: a Deep Learning VM image family with CUDA).
    var sourceImage: String?
    var diskSizeGb: Int?
    /// $/h overrides of the built-in price table: {"a3-highgpu-8g": {"onDemand": 88.0, "spot": 30.0}}.
    var prices: [String: GCPPrice]?
    var allowInsecureHTTP: Bool?

    static let keys: Set<String> = ["credentialsFile", "project", "zones", "endpoint", "storageEndpoint", "sourceImage", "diskSizeGb", "prices", "allowInsecureHTTP"]
}

struct GCPPrice: Codable, Sendable, Hashable {
    var onDemand: Double?
    var spot: Double?
}

/// On-demand and spot list prices of the accelerator-optimized machine types, $/h for the whole
/// machine (GPUs included) in us-central1. Compute Engine's API has no prices (the Cloud Billing
/// Catalog does, behind its own API); these are approximate and dated — override them with
/// `providers.gcp.prices`.
enum GCPPriceTable {
    static let date = "2026-11-27"
    static let prices: [String: GCPPrice] = [
        "a3-highgpu-8g": GCPPrice(onDemand: 88.49, spot: 35.40),
        "a3-megagpu-8g": GCPPrice(onDemand: 93.50, spot: 37.40),
        "a2-highgpu-1g": GCPPrice(onDemand: 3.67, spot: 1.47),
        "a2-highgpu-8g": GCPPrice(onDemand: 29.39, spot: 11.76),
        "a2-ultragpu-8g": GCPPrice(onDemand: 40.22, spot: 16.09),
        "g2-standard-4": GCPPrice(onDemand: 0.71, spot: 0.28),
        "g2-standard-96": GCPPrice(onDemand: 8.00, spot: 3.20),
    ]
    /// Compute Engine accelerator names → Capstan's canonical GPU ids.
    static let gpus: [String: String] = [
        "nvidia-h100-80gb": "H100-SXM", "nvidia-h100-mega-80gb": "H100-SXM", "nvidia-tesla-a100": "A100-40GB-SXM",
        "nvidia-a100-80gb": "A100-80GB-SXM", "nvidia-l4": "L4", "nvidia-h200-141gb": "H200", "nvidia-b200": "B200",
    ]
}

/// Capstan's tags as GCP labels. Labels allow only lowercase letters, digits, `_` and `-` (a
/// key starts with a letter; both at most 63 characters), so every other character — `:` of
/// `capstan:owner`, an upper-case letter, a `.` — is written `_xx` (its byte in lower-case hex)
/// and `_` itself `_5f`: `capstan:owner` → `capstan_3aowner`. A key whose encoding would not
/// start with a letter (`Name` → `_4eame`) is prefixed `z_z` (never produced by the encoding):
/// `z_z_4eame`. Decoding reverses both exactly.
enum GCPLabels {
    static func encodeKey(_ k: String) -> String {
        let e = encode(k)
        return e.first.map { $0 >= "a" && $0 <= "z" } == true ? e : "z_z" + e
    }

    static func decodeKey(_ k: String) -> String {
        decode(k.hasPrefix("z_z") ? String(k.dropFirst(3)) : k)
    }

    static func encode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || b == 0x2d { out.append(Character(UnicodeScalar(b))) } else { out += String(format: "_%02x", b) }
        }
        return out
    }

    static func decode(_ s: String) -> String {
        var bytes: [UInt8] = []
        var i = s.utf8.startIndex
        let u = s.utf8
        while i < u.endIndex {
            let b = u[i]
            if b == 0x5f, let j = u.index(i, offsetBy: 3, limitedBy: u.endIndex), let v = UInt8(String(decoding: u[u.index(after: i)..<j], as: UTF8.self), radix: 16) {
                bytes.append(v)
                i = j
            } else {
                bytes.append(b)
                i = u.index(after: i)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Tags → labels, refusing what GCP would refuse (with the tag named).
    static func labels(_ tags: [String: String]) throws -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in tags {
            let key = encodeKey(k), value = encode(v)
            guard key.count <= 63, value.count <= 63 else {
                throw CapstanError(.invalidRequest, "Tag '\(k)'='\(v)' cannot be a GCP label: encoded ('\(key)'='\(value)') it is longer than 63 characters.", hint: "Use shorter tags, in lower case (an upper-case letter or a symbol takes 3 characters encoded).", provider: "gcp")
            }
            out[key] = value
        }
        return out
    }

    static func tags(_ labels: [String: String]) -> [String: String] {
        Dictionary(labels.map { (decodeKey($0.key), decode($0.value)) }, uniquingKeysWith: { a, _ in a })
    }
}

/// Compute Engine: accelerator-optimized VMs (A3, A2, G2) per zone, on demand or SPOT.
final class GCPCompute: ComputeProvider, Sendable {
    let name = "gcp"
    let project: String
    let base: String
    let zones: [String]?
    let auth: GCPTokenSource
    let sourceImage: String
    let diskSizeGb: Int
    let prices: [String: GCPPrice]
    let logger: Logger
    /// How long a launch waits for its insert operations (well inside the host's 30 s call).
    let operationWait: TimeInterval = 10
    /// The login Capstan's key is authorised for (through the `ssh-keys` metadata item).
    static let sshUser = "capstan"

    init(settings: GCPSettings, project: String, auth: GCPTokenSource, logger: Logger) throws {
        base = settings.endpoint ?? "https://compute.googleapis.com/compute/v1"
        try CloudHTTP.checkEndpoint(base, setting: "providers.gcp.endpoint", allowInsecureHTTP: settings.allowInsecureHTTP ?? false)
        self.project = project
        zones = settings.zones
        self.auth = auth
        sourceImage = settings.sourceImage ?? "projects/deeplearning-platform-release/global/images/family/common-cu124-ubuntu-2204"
        diskSizeGb = settings.diskSizeGb ?? 200
        prices = GCPPriceTable.prices.merging(settings.prices ?? [:]) { $1 }
        self.logger = logger
    }

    var projectURL: String { "\(base)/projects/\(project)" }

    // MARK: HTTP

    /// One authorised call; a 401 refreshes the token and tries once more. Errors mapped.
    func call(_ method: String, _ path: String, body: [String: Any]? = nil, what: String) async throws -> [String: Any] {
        var retriedAuth = false
        while true {
            let token = try await auth.accessToken()
            let r = try await CloudHTTP.send(method, projectURL + path, headers: [("Authorization", "Bearer \(token)"), ("Content-Type", "application/json")], body: try body.map(CloudHTTP.json), provider: name)
            if r.status == 401, !retriedAuth {
                retriedAuth = true
                await auth.invalidate()
                continue
            }
            if (200..<300).contains(r.status) { return r.json ?? [:] }
            throw Self.mapHTTPError(r, what: what)
        }
    }

    /// A compute/v1 error body (`{error: {code, message, errors: [{reason}], status}}`) as a
    /// Capstan error: throttling (403 `rateLimitExceeded`, 429) → rateLimited, 401/403 → auth,
    /// 404 → notFound, 5xx → transient, quota reasons → quota.
    static func mapHTTPError(_ r: CloudHTTPResponse, what: String) -> CapstanError {
        let e = r.json?["error"] as? [String: Any]
        let message = e?["message"] as? String ?? "HTTP \(r.status)"
        let reason = (e?["errors"] as? [[String: Any]])?.first?["reason"] as? String
        let cloudCode = reason ?? (e?["status"] as? String) ?? "HTTP \(r.status)"
        let text = "Compute Engine could not \(what): \(message.hasSuffix(".") ? String(message.dropLast()) : message)."
        switch (r.status, reason ?? "") {
        case (429, _), (403, "rateLimitExceeded"), (403, "userRateLimitExceeded"):
            return CapstanError(.rateLimited, text, provider: "gcp", retryAfterSeconds: r.retryAfterSeconds ?? 1, cloudCode: cloudCode, cloudMessage: message)
        case (_, "quotaExceeded"), (_, "QUOTA_EXCEEDED"):
            return CapstanError(.quota, text, hint: "Ask for more quota: console.cloud.google.com → IAM → Quotas.", provider: "gcp", cloudCode: cloudCode, cloudMessage: message)
        case (401, _), (403, _):
            return CapstanError(.auth, text, hint: "Grant the service account roles/compute.instanceAdmin.v1 on the project (and check providers.gcp.project).", provider: "gcp", cloudCode: cloudCode, cloudMessage: message)
        case (404, _):
            return CapstanError(.notFound, text, provider: "gcp", cloudCode: cloudCode, cloudMessage: message)
        case (500..., _):
            return CapstanError(.transient, text, provider: "gcp", cloudCode: cloudCode, cloudMessage: message)
        default:
            return CapstanError(.invalidRequest, text, provider: "gcp", cloudCode: cloudCode, cloudMessage: message)
        }
    }

    /// An operation's `error.errors[0]` as a Capstan error.
    static func mapOperationError(_ error: [String: Any], zone: String, what: String) -> CapstanError {
        let code = error["code"] as? String ?? "UNKNOWN"
        let message = error["message"] as? String ?? code
        let text = "Compute Engine could not \(what) in \(zone): \(message.trimmingCharacters(in: .whitespaces).hasSuffix(".") ? String(message.trimmingCharacters(in: .whitespaces).dropLast()) : message)."
        switch code {
        case "ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "UNSUPPORTED_OPERATION", "insufficientCapacity", "RESOURCE_NOT_READY":
            return CapstanError(.capacity, text, hint: "Capstan tries the next zone or offer.", provider: "gcp", cloudCode: code, cloudMessage: message)
        case "QUOTA_EXCEEDED", "quotaExceeded":
            return CapstanError(.quota, text, hint: "Ask for more GPU quota: console.cloud.google.com → IAM → Quotas (GPUS_ALL_REGIONS and the region's GPU quota).", provider: "gcp", cloudCode: code, cloudMessage: message)
        case "rateLimitExceeded", "RESOURCE_EXHAUSTED":
            return CapstanError(.rateLimited, text, provider: "gcp", retryAfterSeconds: 1, cloudCode: code, cloudMessage: message)
        default:
            return CapstanError(.invalidRequest, text, provider: "gcp", cloudCode: code, cloudMessage: message)
        }
    }

    /// An aggregated list's `items` (scope → value), every page (`nextPageToken` followed,
    /// `returnPartialSuccess`: an unreachable zone does not fail the whole list).
    func aggregated(_ path: String, what: String) async throws -> [(String, Any)] {
        var out: [(String, Any)] = []
        var token: String?
        var pages = 0
        repeat {
            var p = path + (path.contains("?") ? "&" : "?") + "returnPartialSuccess=true"
            if let token { p += "&pageToken=" + token.addingPercentEncoding(withAllowedCharacters: .alphanumerics)! }
            let doc = try await call("GET", p, what: what)
            out += (doc["items"] as? [String: Any] ?? [:]).map { ($0.key, $0.value) }
            token = (doc["nextPageToken"] as? String).flatMap { $0.isEmpty ? nil : $0 }
            pages += 1
            if pages > 1000 { throw CapstanError(.transient, "Compute Engine answered more than 1,000 pages to \(what).", provider: name) }
        } while token != nil
        return out
    }

    // MARK: ComputeProvider

    func offers(for request: ResourceRequest) async throws -> [Offer] {
        let filter = "name eq \"(a2|a3|g2)-.*\"".addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        var out: [Offer] = []
        for (scope, value) in try await aggregated("/aggregated/machineTypes?filter=\(filter)", what: "list machine types") {
            let zone = scope.hasPrefix("zones/") ? String(scope.dropFirst(6)) : scope
            if let zones, !zones.contains(zone) { continue }
            let region = zone.split(separator: "-").dropLast().joined(separator: "-")
            for t in (value as? [String: Any])?["machineTypes"] as? [[String: Any]] ?? [] {
                guard let type = t["name"] as? String, let acc = (t["accelerators"] as? [[String: Any]])?.first,
                      let accType = acc["guestAcceleratorType"] as? String, let count = acc["guestAcceleratorCount"] as? Int else { continue }
                let price = prices[type]
                out.append(Offer(
                    provider: name, instanceType: type, region: region, zone: zone, gpuName: accType, gpu: GCPPriceTable.gpus[accType],
                    gpusPerNode: count, vcpus: t["guestCpus"] as? Int, memoryGiB: (t["memoryMb"] as? Double ?? Double(t["memoryMb"] as? Int ?? 0)) / 1024,
                    onDemandPricePerHour: price?.onDemand, spotPricePerHour: price?.spot, availability: .unknown,
                    details: ["priceTable": GCPPriceTable.date, "acceleratorType": accType]))
            }
        }
        return out.sorted { ($0.zone ?? "", $0.instanceType) < ($1.zone ?? "", $1.instanceType) }
    }

    /// A request id for node `k` of launch `key`: the same launch retried sends the same ids,
    /// which Compute Engine deduplicates (a name-based UUID from SHA-256; never the zero UUID).
    static func requestID(_ key: String, _ k: Int) -> String {
        var b = Array(SHA256.hash(data: Data("\(key)/\(k)".utf8)).prefix(16))
        b[6] = (b[6] & 0x0f) | 0x50
        b[8] = (b[8] & 0x3f) | 0x80
        let h = b.map { String(format: "%02x", $0) }.joined()
        let c = Array(h)
        return "\(String(c[0..<8]))-\(String(c[8..<12]))-\(String(c[12..<16]))-\(String(c[16..<20]))-\(String(c[20..<32]))"
    }

    /// An instance name: the launch's name, the node index and 8 hex of the launch key
    /// (`capstan-train-0-1a2b3c4d`), lower-case and at most 63 characters.
    static func instanceName(prefix: String?, node: Int, key: String) -> String {
        let clean = (prefix ?? "capstan").lowercased().map { ($0.isLetter && $0.isASCII) || $0.isNumber ? $0 : "-" }
        var p = String(clean.prefix(40))
        if p.first?.isLetter != true { p = "c" + p }
        let tail = SHA256.hash(data: Data(key.utf8)).prefix(4).map { String(format: "%02x", $0) }.joined()
        return "\(p)-\(node)-\(tail)"
    }

    func launch(_ request: LaunchRequest) async throws -> [Instance] {
        guard let zone = request.offer.zone else {
            throw CapstanError(.invalidRequest, "Offer \(request.offer.id) has no zone.", hint: "Ask `capstan offers --refresh` for fresh GCP offers.", provider: name)
        }
        let labels = try GCPLabels.labels(request.tags)
        let indices = request.nodeIndices ?? Array(0..<request.count)
        var metadata: [[String: String]] = []
        if let key = request.sshPublicKey { metadata.append(["key": "ssh-keys", "value": "\(Self.sshUser):\(key)"]) }
        if let script = request.userData { metadata.append(["key": "startup-script", "value": script]) }
        var scheduling: [String: Any] = ["onHostMaintenance": "TERMINATE", "automaticRestart": !request.spot]
        if request.spot {
            scheduling["provisioningModel"] = "SPOT"
            // DELETE, not STOP: a stopped (preempted) VM keeps its disk, billed, until deleted.
            scheduling["instanceTerminationAction"] = "DELETE"
        }
        // Insert every node (each with its own request id), then wait for every operation.
        var pending: [(name: String, operation: String?)] = []
        var failure: CapstanError?
        for k in 0..<request.count {
            let instance = Self.instanceName(prefix: request.name, node: k < indices.count ? indices[k] : k, key: request.idempotencyKey)
            let body: [String: Any] = [
                "name": instance, "machineType": "zones/\(zone)/machineTypes/\(request.offer.instanceType)",
                "labels": labels, "scheduling": scheduling, "metadata": ["items": metadata],
                "disks": [["boot": true, "autoDelete": true, "initializeParams": ["sourceImage": sourceImage, "diskSizeGb": diskSizeGb]]],
                "networkInterfaces": [["network": "global/networks/default", "nicType": "GVNIC", "accessConfigs": [["type": "ONE_TO_ONE_NAT", "name": "External NAT", "networkTier": "PREMIUM"]]]],
            ]
            do {
                let op = try await call("POST", "/zones/\(zone)/instances?requestId=\(Self.requestID(request.idempotencyKey, k))", body: body, what: "create \(instance) (\(request.offer.instanceType))")
                pending.append((instance, op["name"] as? String))
            } catch let e as CapstanError {
                failure = e
                break
            }
        }
        // The operations are waited for a few seconds at most (the host gives a plugin call
        // 30 s): one that fails in that time fails the launch; the rest return as pending, and
        // the host's wait for running reads them (an insert that fails later leaves no instance:
        // the broker's capacity path).
        var done = Set<String>()
        if failure == nil {
            let deadline = Date().addingTimeInterval(operationWait)
            for p in pending {
                guard let op = p.operation else { continue }
                let (finished, e) = try await wait(operation: op, zone: zone, what: "create \(p.name) (\(request.offer.instanceType))", until: deadline)
                if finished, e == nil { done.insert(p.name) }
                if let e { failure = failure ?? e }
            }
        }
        if let failure {
            // Throttled or a hiccup: what started stays for the broker's retry with the same
            // key (the same request ids find it). Anything else: the partial gang goes first.
            if failure.code != .rateLimited, failure.code != .transient {
                let started = try? await describe(InstanceQuery(tags: [CapstanTags.intent: request.idempotencyKey]))
                if let started, !started.isEmpty {
                    logger.info("deleting a partial GCP gang", metadata: ["intent": "\(request.idempotencyKey)", "instances": "\(started.map(\.id))"])
                    _ = try? await terminate(ids: started.map(\.id))
                }
            }
            throw failure
        }
        var out: [Instance] = []
        for p in pending {
            if done.contains(p.name), let i = try? await call("GET", "/zones/\(zone)/instances/\(p.name)", what: "read \(p.name)") {
                out.append(instance(i))
            } else {
                out.append(Instance(
                    id: "\(zone)/\(p.name)", provider: name, instanceType: request.offer.instanceType, region: request.offer.region, zone: zone,
                    state: .pending, providerState: "PROVISIONING", sshUser: Self.sshUser, spot: request.spot,
                    pricePerHour: request.spot ? request.offer.spotPricePerHour : request.offer.onDemandPricePerHour, tags: request.tags,
                    details: ["name": p.name]))
            }
        }
        return out
    }

    /// Polls a zone operation until DONE or `deadline` (0.2 s doubling to 2 s): whether it is
    /// done, and its error mapped.
    func wait(operation: String, zone: String, what: String, until deadline: Date) async throws -> (done: Bool, error: CapstanError?) {
        var delay = 0.2
        while true {
            let op = try await call("GET", "/zones/\(zone)/operations/\(operation)", what: "read operation \(operation)")
            if op["status"] as? String == "DONE" {
                if let first = ((op["error"] as? [String: Any])?["errors"] as? [[String: Any]])?.first {
                    return (true, Self.mapOperationError(first, zone: zone, what: what))
                }
                return (true, nil)
            }
            if Date().addingTimeInterval(delay) > deadline { return (false, nil) }
            try await Task.sleep(for: .milliseconds(Int64(delay * 1000)))
            delay = min(delay * 2, 2)
        }
    }

    func describe(_ query: InstanceQuery) async throws -> [Instance] {
        var path = "/aggregated/instances"
        if !query.tags.isEmpty {
            let filter = try GCPLabels.labels(query.tags).sorted { $0.key < $1.key }.map { "labels.\($0.key) = \"\($0.value)\"" }.joined(separator: " AND ")
            path += "?filter=" + filter.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        }
        var all: [Instance] = []
        for (_, value) in try await aggregated(path, what: "list instances") {
            for i in (value as? [String: Any])?["instances"] as? [[String: Any]] ?? [] { all.append(instance(i)) }
        }
        var out = all.filter(query.matches)
        if let ids = query.ids, query.includeTerminated {
            let seen = Set(all.map(\.id))
            for id in ids where !seen.contains(id) {
                let zone = id.split(separator: "/").first.map(String.init)
                out.append(Instance(id: id, provider: name, instanceType: "unknown", region: zone.map { $0.split(separator: "-").dropLast().joined(separator: "-") } ?? "unknown", zone: zone, state: .terminated, stateReason: "Compute Engine no longer lists the instance"))
            }
        }
        return out
    }

    func terminate(ids: [String]) async throws -> [Instance] {
        var out: [Instance] = []
        for id in ids {
            let parts = id.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2 else {
                throw CapstanError(.invalidRequest, "'\(id)' is not a GCP instance id (ZONE/NAME).", provider: name)
            }
            var state = Instance.State.terminating
            do {
                // The request id names this VM (its numeric id, so a later VM of the same name
                // is not deduplicated away): a retried delete is the same request.
                let current = try await call("GET", "/zones/\(parts[0])/instances/\(parts[1])", what: "read \(parts[1])")
                let rid = Self.requestID("delete/\(id)/\(current["id"] as? String ?? "")", 0)
                _ = try await call("DELETE", "/zones/\(parts[0])/instances/\(parts[1])?requestId=\(rid)", what: "delete \(parts[1])")
            } catch let e as CapstanError where e.code == .notFound {
                state = .terminated
            } catch let e as CapstanError where e.cloudCode == "resourceNotReady" || (e.cloudMessage ?? "").contains("already being deleted") {
                state = .terminating  // a delete already under way (an earlier try's)
            }
            out.append(Instance(id: id, provider: name, instanceType: "unknown", region: parts[0].split(separator: "-").dropLast().joined(separator: "-"), zone: parts[0], state: state))
        }
        return out
    }

    /// A compute#instance as a Capstan instance (id `ZONE/NAME`).
    func instance(_ i: [String: Any]) -> Instance {
        let zone = (i["zone"] as? String)?.split(separator: "/").last.map(String.init) ?? "unknown"
        let name = i["name"] as? String ?? "?"
        let type = (i["machineType"] as? String)?.split(separator: "/").last.map(String.init) ?? "unknown"
        let scheduling = i["scheduling"] as? [String: Any]
        let spot = scheduling?["provisioningModel"] as? String == "SPOT"
        let nic = (i["networkInterfaces"] as? [[String: Any]])?.first
        let nat = (nic?["accessConfigs"] as? [[String: Any]])?.first?["natIP"] as? String
        let status = i["status"] as? String ?? "UNKNOWN"
        var reason: String?
        let state: Instance.State
        switch status {
        case "PROVISIONING", "STAGING", "REPAIRING": state = .pending
        case "RUNNING": state = .running
        case "STOPPING", "SUSPENDING": state = .stopping
        case "STOPPED", "SUSPENDED": state = .stopped
        case "TERMINATED":
            // Capstan never stops an instance: a SPOT one that is TERMINATED was preempted.
            state = spot ? .preempted : .stopped
            if spot { reason = "spot VM preempted by Compute Engine" }
        default: state = .unknown
        }
        let price = prices[type].flatMap { spot ? $0.spot : $0.onDemand }
        return Instance(
            id: "\(zone)/\(name)", provider: self.name, instanceType: type, region: zone.split(separator: "-").dropLast().joined(separator: "-"), zone: zone,
            state: state, providerState: status, privateAddress: nic?["networkIP"] as? String, publicAddress: nat, sshUser: Self.sshUser,
            spot: spot, pricePerHour: price, tags: GCPLabels.tags(i["labels"] as? [String: String] ?? [:]), stateReason: reason,
            details: ["name": name, "instanceId": i["id"] as? String ?? ""])
    }
}
