public import CapstanCore
public import Foundation

/// On-demand prices for EC2 GPU instance types, $/h, Linux, us-east-1 list prices as published
/// on AWS's price list; EC2 has no price API per call, so Capstan keeps this table (dated) and
/// lets the config override any entry (`providers.aws.onDemandPrices`). Other regions are
/// assumed equal unless overridden.
public enum EC2PriceTable {
    public static let date = "2026-11"
    public static let onDemand: [String: Double] = [
        "p6-b200.48xlarge": 113.93,
        "p5en.48xlarge": 84.80, "p5e.48xlarge": 84.80,
        "p5.48xlarge": 98.32, "p5.4xlarge": 6.88,
        "p4de.24xlarge": 40.97, "p4d.24xlarge": 32.77,
        "p3dn.24xlarge": 31.21, "p3.16xlarge": 24.48, "p3.8xlarge": 12.24, "p3.2xlarge": 3.06,
        "g6e.xlarge": 1.861, "g6e.12xlarge": 10.49, "g6e.48xlarge": 30.13,
        "g6.xlarge": 0.805, "g6.12xlarge": 4.602, "g6.48xlarge": 13.35,
        "g5.xlarge": 1.006, "g5.2xlarge": 1.212, "g5.12xlarge": 5.672, "g5.48xlarge": 16.288,
        "g4dn.xlarge": 0.526, "g4dn.12xlarge": 3.912,
    ]
}

/// The AWS plugin's settings (`providers.aws` in config.yaml).
public struct AWSSettings: Sendable, Hashable, Codable {
    /// A named profile from ~/.aws (else AWS_PROFILE, else `default`; env keys win without one).
    public var profile: String?
    /// An AWS-format credentials file to read instead of ~/.aws/credentials (the key stays in
    /// that file, never in config.yaml).
    public var credentialsFile: String?
    /// Regions to offer and manage. Default: the profile's region, else us-east-1 and us-west-2.
    public var regions: [String]?
    /// A custom EC2 endpoint (moto, a VPC endpoint), used for every region.
    public var endpoint: String?
    /// A custom S3 endpoint (SeaweedFS, MinIO, R2); path-style addressing by default there.
    public var s3Endpoint: String?
    public var s3PathStyle: Bool?
    /// Allow plain `http://` endpoints (`endpoint`, `s3Endpoint`, `AWS_ENDPOINT_URL*`) on another
    /// machine. Default false: only loopback (127.0.0.0/8, ::1, localhost) may be plain HTTP.
    public var allowInsecureHTTP: Bool?
    /// AMI per region, or one for all.
    public var imageIds: [String: String]?
    public var imageId: String?
    public var subnetId: String?
    public var securityGroupIds: [String]?
    /// Instance types to consider (wildcards allowed). Default: the GPU families.
    public var instanceTypes: [String]?
    /// $/h overrides of the built-in on-demand table.
    public var onDemandPrices: [String: Double]?

    public init() {}

    static let keys: Set<String> = ["profile", "credentialsFile", "regions", "endpoint", "s3Endpoint", "s3PathStyle", "allowInsecureHTTP", "imageIds", "imageId", "subnetId", "securityGroupIds", "instanceTypes", "onDemandPrices"]
}

/// EC2 GPU capacity: offers from DescribeInstanceTypes (GpuInfo) × DescribeInstanceTypeOfferings
/// per availability zone × DescribeSpotPriceHistory, with on-demand prices from
/// ``EC2PriceTable``; launch with RunInstances (ClientToken, tags, key pair, user data, spot);
/// describe by id or tag across regions; idempotent terminate.
public struct EC2ComputeProvider: ComputeProvider {
    public let name = "aws"
    public let settings: AWSSettings
    public let regions: [String]
    let credentials: AWSCredentials

    public static let gpuFamilies = ["p6-b200.*", "p5*", "p4d*", "p4de*", "p3*", "g6e.*", "g6.*", "g5.*", "g4dn.*"]

    public init(settings: AWSSettings, credentials: AWSCredentials, defaultRegion: String?) throws {
        self.settings = settings
        self.credentials = credentials
        self.regions = settings.regions ?? (defaultRegion.map { [$0] } ?? ["us-east-1", "us-west-2"])
        if let e = settings.endpoint { _ = try Self.endpoint(e, settings) }
    }

    func client(_ region: String) throws -> AWSHTTP {
        let endpoint = try settings.endpoint.map { try Self.endpoint($0, settings) } ?? AWSEndpoint(scheme: "https", host: "ec2.\(region).amazonaws.com")
        var http = AWSHTTP(signer: SigV4Signer(credentials: credentials, region: region, service: "ec2"), endpoint: endpoint)
        http.provider = name
        return http
    }

    static func endpoint(_ url: String, _ settings: AWSSettings) throws -> AWSEndpoint {
        try AWSEndpoint(url: url, allowInsecureHTTP: settings.allowInsecureHTTP ?? false, setting: "The EC2 endpoint providers.aws.endpoint")
    }

    /// Calls one EC2 Query API action and returns the parsed response, mapping errors.
    func call(_ region: String, _ action: String, _ params: [(String, String)]) async throws -> XMLElement {
        let form = ([("Action", action), ("Version", "2016-11-15")] + params).map { "\(SigV4Signer.encode($0.0))=\(SigV4Signer.encode($0.1))" }.joined(separator: "&")
        let r = try await client(region).send(method: "POST", path: "/", headers: [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")], body: Data(form.utf8))
        guard r.status == 200 else { throw Self.mapError(r, action: action, region: region) }
        return try XMLElement.parse(r.body)
    }

    static func mapError(_ r: AWSResponse, action: String, region: String) -> CapstanError {
        let (code, message) = AWSHTTP.errorCode(r.body) ?? ("HTTP\(r.status)", String(decoding: r.body.prefix(200), as: UTF8.self))
        let base: CapstanError.Code
        var hint: String?
        switch code {
        case "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity", "Unsupported", "SpotMaxPriceTooLow", "InsufficientFreeAddressesInSubnet":
            base = .capacity
        case "InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "PendingVerification":
            base = .quota
            hint = "Request a quota increase for this instance family in \(region) (Service Quotas), or choose another region."
        case "RequestLimitExceeded", "Throttling":
            base = .rateLimited
        case "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch", "OptInRequired", "Blocked", "ExpiredToken":
            base = .auth
            hint = "Check the AWS credentials (profile or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and their EC2 permissions in \(region)."
        case "InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed":
            base = .notFound
        case "InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidParameterValue", "InvalidParameterCombination", "IdempotentParameterMismatch", "MissingParameter", "InvalidSubnetID.NotFound", "InvalidGroup.NotFound":
            base = .invalidRequest
        default:
            base = r.status >= 500 ? .transient : .invalidRequest
        }
        return CapstanError(base, "EC2 \(action) in \(region) failed: \(code).", hint: hint, provider: "aws", cloudCode: code, cloudMessage: message)
    }

    // MARK: - Offers

    public func offers(for request: ResourceRequest) async throws -> [Offer] {
        let wanted = request.regions.isEmpty ? regions : regions.filter { r in request.regions.contains { $0 == r || $0.hasPrefix(r) } }
        var out: [Offer] = []
        var errors: [CapstanError] = []
        await withTaskGroup(of: Result<[Offer], CapstanError>.self) { group in
            for region in wanted {
                group.addTask {
                    do { return .success(try await offers(region: region)) } catch {
                        return .failure(error as? CapstanError ?? CapstanError(.transient, "\(error)", provider: "aws"))
                    }
                }
            }
            for await r in group {
                switch r {
                case .success(let o): out += o
                case .failure(let e): errors.append(e)
                }
            }
        }
        // One region failing (not enabled, throttled) degrades the answer; all failing is an error.
        if out.isEmpty, let first = errors.first { throw first }
        return out.sorted { $0.id < $1.id }
    }

    func offers(region: String) async throws -> [Offer] {
        let patterns = settings.instanceTypes ?? Self.gpuFamilies
        var typeParams: [(String, String)] = [("Filter.1.Name", "instance-type")]
        for (i, p) in patterns.enumerated() { typeParams.append(("Filter.1.Value.\(i + 1)", p)) }

        struct TypeInfo { var gpuName: String; var gpus: Int; var memMiB: Int; var vcpus: Int?; var memoryMiB: Int? }
        var types: [String: TypeInfo] = [:]
        var token: String?
        repeat {
            var p = typeParams
            if let token { p.append(("NextToken", token)) }
            let xml = try await call(region, "DescribeInstanceTypes", p)
            for item in xml.path("instanceTypeSet", "item") {
                guard let type = item.value("instanceType"), let gpu = item["gpuInfo"]?.path("gpus", "item").first,
                      let gpuName = gpu.value("name"), let count = gpu.value("count").flatMap(Int.init) else { continue }
                types[type] = TypeInfo(
                    gpuName: gpuName, gpus: count, memMiB: gpu["memoryInfo"]?.value("sizeInMiB").flatMap(Int.init) ?? 0,
                    vcpus: item["vCpuInfo"]?.value("defaultVCpus").flatMap(Int.init), memoryMiB: item["memoryInfo"]?.value("sizeInMiB").flatMap(Int.init))
            }
            token = xml.value("nextToken")
        } while token != nil
        guard !types.isEmpty else { return [] }

        var zones: [(String, String)] = []
        token = nil
        let names = types.keys.sorted()
        repeat {
            var p: [(String, String)] = [("LocationType", "availability-zone"), ("Filter.1.Name", "instance-type")]
            for (i, t) in names.enumerated() { p.append(("Filter.1.Value.\(i + 1)", t)) }
            if let token { p.append(("NextToken", token)) }
            let xml = try await call(region, "DescribeInstanceTypeOfferings", p)
            for item in xml.path("instanceTypeOfferingSet", "item") {
                if let t = item.value("instanceType"), let z = item.value("location") { zones.append((t, z)) }
            }
            token = xml.value("nextToken")
        } while token != nil

        var spot: [String: (Double, Date)] = [:]
        do {
            var p: [(String, String)] = [("ProductDescription.1", "Linux/UNIX"), ("StartTime", AWSTimestamp.plain.string(from: Date()))]
            for (i, t) in names.enumerated() { p.append(("InstanceType.\(i + 1)", t)) }
            let xml = try await call(region, "DescribeSpotPriceHistory", p)
            for item in xml.path("spotPriceHistorySet", "item") {
                guard let t = item.value("instanceType"), let z = item.value("availabilityZone"), let price = item.value("spotPrice").flatMap(Double.init) else { continue }
                let at = item.value("timestamp").flatMap(AWSTimestamp.parse) ?? .distantPast
                let key = "\(t)|\(z)"
                if spot[key].map({ at > $0.1 }) ?? true { spot[key] = (price, at) }
            }
        } catch let e as CapstanError where e.code == .auth || e.code == .unsupported || e.code == .invalidRequest {
            // No spot prices (permission, partition without spot): on-demand offers still stand.
        }

        return zones.compactMap { type, zone in
            guard let info = types[type] else { return nil }
            let onDemand = settings.onDemandPrices?[type] ?? EC2PriceTable.onDemand[type]
            return Offer(
                provider: name, instanceType: type, region: region, zone: zone, gpuName: info.gpuName, gpusPerNode: info.gpus,
                vcpus: info.vcpus, memoryGiB: info.memoryMiB.map { Double($0) / 1024 }, onDemandPricePerHour: onDemand,
                spotPricePerHour: spot["\(type)|\(zone)"]?.0, availability: .unknown,
                details: ["gpuMemoryMiB": "\(info.memMiB)", "priceTable": onDemand == nil ? "no on-demand price" : (settings.onDemandPrices?[type] != nil ? "config" : EC2PriceTable.date)])
        }
    }

    // MARK: - Launch

    public func launch(_ request: LaunchRequest) async throws -> [Instance] {
        let region = request.offer.region
        // EC2 honours ClientToken; check the intent tag too so a retry after a crash (or a
        // server that does not honour tokens) never launches twice.
        let existing = try await describe(region: region, ids: nil, tags: [CapstanTags.intent: request.idempotencyKey], includeTerminated: false)
        if !existing.isEmpty { return existing }

        guard let image = settings.imageIds?[region] ?? settings.imageId else {
            throw CapstanError(.config, "No AMI configured for \(region).", hint: "Set providers.aws.imageId (or imageIds.\(region)) to a GPU AMI such as the AWS Deep Learning AMI.", provider: name)
        }
        var p: [(String, String)] = [
            ("ImageId", image), ("InstanceType", request.offer.instanceType), ("MinCount", "\(request.count)"), ("MaxCount", "\(request.count)"),
            ("ClientToken", String(request.idempotencyKey.prefix(64))),
        ]
        if let zone = request.offer.zone { p.append(("Placement.AvailabilityZone", zone)) }
        if let key = request.sshPublicKey { p.append(("KeyName", try await importKey(key, region: region))) }
        if let userData = request.userData { p.append(("UserData", Data(userData.utf8).base64EncodedString())) }
        if let subnet = settings.subnetId { p.append(("SubnetId", subnet)) }
        for (i, g) in (settings.securityGroupIds ?? []).enumerated() { p.append(("SecurityGroupId.\(i + 1)", g)) }
        if request.spot {
            p += [("InstanceMarketOptions.MarketType", "spot"), ("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time"), ("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", "terminate")]
        }
        // A shutdown from inside the instance (the agent's dead-man switch) terminates it, so
        // its billing stops; the tag says so to every later describe.
        p.append(("InstanceInitiatedShutdownBehavior", "terminate"))
        var tags = request.tags
        tags[CapstanTags.shutdownBehavior] = "terminate"
        if let n = request.name { tags["Name"] = n }
        p.append(("TagSpecification.1.ResourceType", "instance"))
        for (i, (k, v)) in tags.sorted(by: { $0.key < $1.key }).enumerated() {
            p.append(("TagSpecification.1.Tag.\(i + 1).Key", k))
            p.append(("TagSpecification.1.Tag.\(i + 1).Value", v))
        }
        let xml = try await call(region, "RunInstances", p)
        return xml.path("instancesSet", "item").map { instance(from: $0, region: region) }
    }

    /// Imports the public key as `capstan-<hash>` (once per region) and returns its name.
    func importKey(_ publicKey: String, region: String) async throws -> String {
        let keyName = "capstan-" + SigV4Signer.sha256Hex(Data(publicKey.utf8)).prefix(16)
        do {
            _ = try await call(region, "ImportKeyPair", [("KeyName", keyName), ("PublicKeyMaterial", Data(publicKey.utf8).base64EncodedString())])
        } catch let e as CapstanError where e.cloudCode == "InvalidKeyPair.Duplicate" {}
        return keyName
    }

    // MARK: - Describe and terminate

    public func describe(_ query: InstanceQuery) async throws -> [Instance] {
        var out: [Instance] = []
        for region in regions {
            out += try await describe(region: region, ids: query.ids, tags: query.tags, includeTerminated: query.includeTerminated)
        }
        return out.filter(query.matches).sorted { $0.id < $1.id }
    }

    func describe(region: String, ids: [String]?, tags: [String: String], includeTerminated: Bool) async throws -> [Instance] {
        var p: [(String, String)] = []
        var f = 1
        for (k, v) in tags.sorted(by: { $0.key < $1.key }) {
            p += [("Filter.\(f).Name", "tag:\(k)"), ("Filter.\(f).Value.1", v)]
            f += 1
        }
        if !includeTerminated {
            p.append(("Filter.\(f).Name", "instance-state-name"))
            for (i, s) in ["pending", "running", "stopping", "stopped", "shutting-down"].enumerated() { p.append(("Filter.\(f).Value.\(i + 1)", s)) }
            f += 1
        }
        if let ids {
            if ids.isEmpty { return [] }
            // Filter by id rather than InstanceId.N: an id from another region is then simply absent.
            p.append(("Filter.\(f).Name", "instance-id"))
            for (i, id) in ids.enumerated() { p.append(("Filter.\(f).Value.\(i + 1)", id)) }
        }
        var out: [Instance] = []
        var token: String?
        repeat {
            var q = p
            if let token { q.append(("NextToken", token)) }
            let xml = try await call(region, "DescribeInstances", q)
            out += xml.path("reservationSet", "item", "instancesSet", "item").map { instance(from: $0, region: region) }
            token = xml.value("nextToken")
        } while token != nil
        return out
    }

    public func terminate(ids: [String]) async throws -> [Instance] {
        guard !ids.isEmpty else { return [] }
        var out: [Instance] = []
        var remaining = Set(ids)
        for region in regions where !remaining.isEmpty {
            let here = try await describe(region: region, ids: remaining.sorted(), tags: [:], includeTerminated: true)
            let live = here.filter { $0.state != .terminated }.map(\.id)
            remaining.subtract(here.map(\.id))
            out += here.filter { $0.state == .terminated }
            guard !live.isEmpty else { continue }
            var p: [(String, String)] = []
            for (i, id) in live.enumerated() { p.append(("InstanceId.\(i + 1)", id)) }
            let xml = try await call(region, "TerminateInstances", p)
            for item in xml.path("instancesSet", "item") {
                guard let id = item.value("instanceId"), var i = here.first(where: { $0.id == id }) else { continue }
                let stateName = item["currentState"]?.value("name") ?? "shutting-down"
                i.providerState = stateName
                i.state = Self.state(stateName, reason: nil)
                out.append(i)
            }
        }
        // Ids no region knows are gone: terminate is idempotent.
        out += remaining.sorted().map { Instance(id: $0, provider: name, instanceType: "?", region: "?", state: .terminated, providerState: "not-found") }
        return out
    }

    func instance(from item: XMLElement, region: String) -> Instance {
        let stateName = item["instanceState"]?.value("name") ?? "pending"
        let reason = item["stateReason"]?.value("code")
        var tags: [String: String] = [:]
        for t in item.path("tagSet", "item") { if let k = t.value("key") { tags[k] = t.value("value") ?? "" } }
        let type = item.value("instanceType") ?? "?"
        let spot = item.value("instanceLifecycle") == "spot"
        var instance = Instance(
            id: item.value("instanceId") ?? "?", provider: name, instanceType: type, region: region,
            zone: item["placement"]?.value("availabilityZone"), state: Self.state(stateName, reason: reason), providerState: stateName,
            privateAddress: item.value("privateIpAddress"), publicAddress: item.value("ipAddress"), sshPort: 22, sshUser: "ubuntu",
            spot: spot, pricePerHour: spot ? nil : (settings.onDemandPrices?[type] ?? EC2PriceTable.onDemand[type]), tags: tags,
            launchedAt: item.value("launchTime").flatMap(AWSTimestamp.parse),
            stateReason: reason)
        // Launched to terminate on a guest shutdown (tagged so at launch): a shutdown stops billing.
        if tags[CapstanTags.shutdownBehavior] == "terminate" { instance.shutdownCommand = Self.shutdownCommand }
        return instance
    }

    /// What the agent runs to shut an instance down (the AMI's user has passwordless sudo).
    public static let shutdownCommand = "sudo -n /sbin/shutdown -h now"

    static func state(_ name: String, reason: String?) -> Instance.State {
        switch name {
        case "pending": .pending
        case "running": .running
        case "shutting-down": .terminating
        case "terminated": reason == "Server.SpotInstanceTermination" ? .preempted : .terminated
        case "stopping": .stopping
        case "stopped": .stopped
        default: .unknown
        }
    }
}
