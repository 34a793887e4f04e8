import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
import Testing

/// The aws plugin (.so built by the package) against moto's EC2 and S3 over HTTP.
@Suite("AWS plugin on moto", .serialized)
struct AWSPluginTests {
    static var pluginPath: String { BuildProducts.folder + "/libCapstanPluginAWS.so" }

    /// A credentials file and a plugin config pointing at `endpoint`.
    static func config(_ dir: TempDir, endpoint: String, regions: [String] = ["us-east-1"]) -> JSONValue {
        dir.write("aws-credentials", "[default]\naws_access_key_id = AKIDMOTOTEST\naws_secret_access_key = motosecret\n")
        return .object([
            "credentialsFile": .string(dir.file("aws-credentials")), "endpoint": .string(endpoint), "s3Endpoint": .string(endpoint),
            "regions": .array(regions.map { .string($0) }), "imageId": .string("ami-12c6146b"),
        ])
    }

    @Test("offers from DescribeInstanceTypes × offerings × spot prices, with normalized GPUs")
    func offers() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let lib = try PluginLibrary.load(path: Self.pluginPath)
        #expect(lib.manifest.capabilities == [.compute, .storage] && lib.manifest.storageSchemes == ["s3"])
        let aws = try PluginComputeProvider(lib.instantiate(config: Self.config(dir, endpoint: try TestServers.moto, regions: ["us-east-1", "us-west-2"])))
        let offers = try await aws.offers(for: ResourceRequest())
        let p5 = offers.filter { $0.instanceType == "p5.48xlarge" }
        #expect(Set(p5.map(\.region)) == ["us-east-1", "us-west-2"])
        #expect(p5.allSatisfy { $0.gpu == "H100-SXM" && $0.gpusPerNode == 8 && $0.onDemandPricePerHour == 98.32 && $0.zone != nil && $0.vcpus == 192 })
        #expect(offers.contains { $0.instanceType == "p4d.24xlarge" && $0.gpu == "A100-40GB-SXM" })
        #expect(offers.contains { $0.instanceType == "g5.xlarge" && $0.gpu == "A10G" && $0.gpusPerNode == 1 })
        #expect(offers.allSatisfy { $0.spotPricePerHour != nil })
        let ranked = try OfferRanking.rank(offers, for: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2)).ranked
        #expect(ranked.first?.offer.instanceType == "p5.48xlarge")
        #expect(ranked.first?.clusterPricePerHour == 196.64)
    }

    @Test("launch with tags, idempotency key and ssh key; describe by tag; terminate idempotently")
    func lifecycle() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let aws = try PluginComputeProvider(PluginLibrary.load(path: Self.pluginPath).instantiate(config: Self.config(dir, endpoint: try TestServers.moto)))
        let offer = try #require(try await aws.offers(for: ResourceRequest(gpu: "A10G")).first { $0.instanceType == "g5.xlarge" })
        let key = "cap-" + UUID().uuidString.lowercased()
        let tags = [CapstanTags.managed: "true", CapstanTags.intent: key, "test": key]
        let publicKey = try await sshPublicKey(in: dir)
        let request = LaunchRequest(offer: offer, count: 2, idempotencyKey: key, tags: tags, sshPublicKey: publicKey, userData: "#!/bin/sh\necho hi\n", name: "capstan-t")
        let launched = try await aws.launch(request)
        #expect(launched.count == 2)
        #expect(launched.allSatisfy { $0.zone == offer.zone && $0.tags["test"] == key && $0.tags["Name"] == "capstan-t" && $0.privateAddress != nil })
        // The same key again returns the same instances (moto ignores ClientToken; the tag does not).
        let again = try await aws.launch(request)
        #expect(Set(again.map(\.id)) == Set(launched.map(\.id)))
        let seen = try await aws.describe(InstanceQuery(tags: ["test": key]))
        #expect(Set(seen.map(\.id)) == Set(launched.map(\.id)))
        #expect(seen.allSatisfy { $0.state == .running || $0.state == .pending })
        // Launched to terminate on a guest shutdown: the dead-man switch may shut them down
        // (the launch and every later describe say so, from the tag).
        #expect((launched + seen).allSatisfy { $0.tags[CapstanTags.shutdownBehavior] == "terminate" && $0.shutdownCommand == "sudo -n /sbin/shutdown -h now" })
        let gone = try await aws.terminate(ids: launched.map(\.id) + ["i-0000000000000dead"])
        #expect(gone.count == 3)
        #expect(gone.allSatisfy { $0.state == .terminating || $0.state == .terminated })
        #expect(try await aws.describe(InstanceQuery(tags: ["test": key])).isEmpty)
        #expect(try await aws.describe(InstanceQuery(tags: ["test": key], includeTerminated: true)).count == 2)
    }

    @Test("a missing AMI and missing credentials are clear errors")
    func clearErrors() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let lib = try PluginLibrary.load(path: Self.pluginPath)
        var cfg = Self.config(dir, endpoint: try TestServers.moto)
        if case .object(var o) = cfg { o["imageId"] = nil; cfg = .object(o) }
        let aws = try PluginComputeProvider(lib.instantiate(config: cfg))
        let offer = try #require(try await aws.offers(for: ResourceRequest()).first)
        let e = await #expect(throws: CapstanError.self) { try await aws.launch(LaunchRequest(offer: offer, count: 1, idempotencyKey: "k-\(UUID())")) }
        #expect(e?.code == .config && e?.message.contains("No AMI configured for us-east-1") == true)
        let noCreds = #expect(throws: CapstanError.self) {
            try lib.instantiate(config: .object(["credentialsFile": .string(dir.file("nope")), "profile": .string("ghost")]))
        }
        #expect(noCreds?.code == .auth && noCreds?.message.contains("No AWS credentials found for profile 'ghost'") == true)
        let typo = #expect(throws: CapstanError.self) { try lib.instantiate(config: .object(["regoins": .array([])])) }
        #expect(typo?.message.contains("providers.aws.regoins") == true)
    }

    @Test("S3 through the plugin: put, list, get on moto")
    func storage() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let instance = try PluginLibrary.load(path: Self.pluginPath).instantiate(config: Self.config(dir, endpoint: try TestServers.moto))
        let direct = try S3ObjectStore(location: "s3://capstan-plugin", credentials: TestServers.motoCredentials, configuration: S3Configuration(endpoint: try TestServers.moto, uploadStateFolder: dir.file("u")))
        try await direct.createBucket()
        let store = try PluginObjectStore(instance, location: "s3://capstan-plugin/p")
        try makeFile(dir.file("f"), size: 6 << 20)
        let info = try await store.put(file: dir.file("f"), key: "a/b.bin", options: PutOptions(partSize: 5 << 20))
        #expect(info.size == 6 << 20 && info.sha256 != nil)
        #expect(try await store.list(prefix: "a/").map(\.key) == ["a/b.bin"])
        _ = try await store.get(key: "a/b.bin", to: dir.file("back"))
        #expect(FileManager.default.contentsEqual(atPath: dir.file("f"), andPath: dir.file("back")))
    }
}

@Suite("capstan up on AWS (moto)", .serialized)
struct AWSProvisioningTests {
    static func home(endpoint: String) -> TempDir {
        let home = TempDir("capstan-aws")
        home.write("config.yaml", "providers:\n  local:\n    enabled: false\n" + providerSection(home, endpoint: endpoint))
        return home
    }

    /// config.yaml's `providers.aws` for moto at `endpoint` (p5 types in us-east-1), with its
    /// credentials file written into `home`.
    static func providerSection(_ home: TempDir, endpoint: String) -> String {
        home.write("aws-credentials", "[default]\naws_access_key_id = AKIDMOTOTEST\naws_secret_access_key = motosecret\n")
        return """
              aws:
                credentialsFile: \(home.file("aws-credentials"))
                endpoint: \(endpoint)
                regions: [us-east-1]
                imageId: ami-12c6146b
                instanceTypes: ["p5.*"]

            """
    }

    @Test("InsufficientInstanceCapacity twice (moto patched), then ready; the report lists all three attempts")
    func capacityFailover() async throws {
        let home = Self.home(endpoint: try TestServers.motoFaulty); defer { home.cleanup() }
        let r = try await runProcess(BuildProducts.capstan, ["up", "train", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2", "--json"], environment: ["CAPSTAN_HOME": home.path])
        #expect(r.status == 0, "\(r.stderr)\n\(r.stdout)")
        let report = try JSONDecoder.iso.decode(ProvisionReport.self, from: Data(r.stdout.utf8))
        #expect(report.attempts.map(\.outcome) == ["capacity", "capacity", "ready"])
        #expect(report.attempts.prefix(2).allSatisfy { $0.error?.cloudCode == "InsufficientInstanceCapacity" })
        #expect(Set(report.attempts.map { $0.offer.zone ?? "" }).count == 3)
        #expect(report.instances.count == 2 && Set(report.instances.map(\.zone)).count == 1)
        #expect(report.cluster.offer?.instanceType == "p5.48xlarge")
        let down = try await runProcess(BuildProducts.capstan, ["down", "train"], environment: ["CAPSTAN_HOME": home.path])
        #expect(down.status == 0, "\(down.stderr)")
    }

    @Test("kill -9 during capstan up on EC2 leaves no instance that no cluster owns")
    func crashes() async throws {
        for point in ["up.before-launch", "up.after-launch", "up.waiting"] {
            let home = Self.home(endpoint: try TestServers.moto); defer { home.cleanup() }
            let env = ["CAPSTAN_HOME": home.path]
            let r = try await runProcess(BuildProducts.capstan, ["up", "c1", "--gpu", "H100", "--gpus-per-node", "8", "--nodes", "2"], environment: env.merging(["CAPSTAN_TEST_CRASH_AT": point]) { $1 })
            #expect(r.status == 9, "\(point): \(r.stderr)")
            let status = try await runProcess(BuildProducts.capstan, ["status", "--all"], environment: env)
            #expect(status.status == 0, "\(status.stderr)")
            // What does EC2 say this home owns?
            let store = try SQLiteStateStore(path: home.file("state/capstan.db"))
            let ec2 = try EC2ComputeProvider(settings: { var s = AWSSettings(); s.endpoint = try! TestServers.moto; s.regions = ["us-east-1"]; return s }(), credentials: TestServers.motoCredentials, defaultRegion: nil)
            let live = try await ec2.describe(InstanceQuery(tags: [CapstanTags.owner: try await store.ownerID()]))
            var leaked: [Instance] = []
            for i in live {
                let c = try await store.cluster(id: i.tags[CapstanTags.clusterID] ?? "")
                if !(c?.status == .running && c?.intentKey == i.tags[CapstanTags.intent]) { leaked.append(i) }
            }
            #expect(leaked.isEmpty, "\(point): leaked \(leaked.map(\.id))")
            #expect(live.count == (point == "up.before-launch" ? 0 : 2), "\(point): \(live.map(\.id))")
            if !live.isEmpty {
                // The adopted cluster comes down like any other.
                let down = try await runProcess(BuildProducts.capstan, ["down", "c1"], environment: env)
                #expect(down.status == 0, "\(point): \(down.stderr)")
            }
            #expect(try await ec2.describe(InstanceQuery(tags: [CapstanTags.owner: try store.ownerID()])).isEmpty, "\(point): instances left")
        }
    }
}
