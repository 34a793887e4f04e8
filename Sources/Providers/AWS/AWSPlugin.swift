public import CapstanCore
public import Foundation
public import Logging
public import CapstanPluginKit
import CapstanRuntime

/// The `aws` plugin: EC2 compute and S3 storage (plugins/aws exports this definition).
public enum AWSPlugin {
    public static let definition = PluginDefinition(
        manifest: PluginManifest(
            name: "aws", version: "1.0.0",
            description: "AWS EC2 GPU instances and S3 (or any S3-compatible) storage, signed with SigV4. Credentials: environment, ~/.aws profiles.",
            capabilities: [.compute, .storage],
            configSchema: .object([
                "type": .string("object"),
                "additionalProperties": .bool(false),
                "properties": .object([
                    "profile": .object(["type": .string("string"), "description": .string("Profile in ~/.aws/credentials and ~/.aws/config.")]),
                    "credentialsFile": .object(["type": .string("string"), "description": .string("An AWS-format credentials file to use instead of ~/.aws/credentials.")]),
                    "regions": .object(["type": .string("array"), "items": .object(["type": .string("string")])]),
                    "endpoint": .object(["type": .string("string"), "description": .string("Custom EC2 endpoint URL.")]),
                    "s3Endpoint": .object(["type": .string("string"), "description": .string("Custom S3 endpoint URL (SeaweedFS, MinIO, R2, Backblaze).")]),
                    "s3PathStyle": .object(["type": .string("boolean")]),
                    "allowInsecureHTTP": .object(["type": .string("boolean"), "description": .string("Allow plain http:// endpoints on other machines (default false: loopback only). Requests then cross the network unencrypted.")]),
                    "imageId": .object(["type": .string("string"), "description": .string("AMI for every region.")]),
                    "imageIds": .object(["type": .string("object"), "description": .string("AMI per region.")]),
                    "subnetId": .object(["type": .string("string")]),
                    "securityGroupIds": .object(["type": .string("array"), "items": .object(["type": .string("string")])]),
                    "instanceTypes": .object(["type": .string("array"), "description": .string("Instance type patterns (default: GPU families).")]),
                    "onDemandPrices": .object(["type": .string("object"), "description": .string("$/h overrides of the built-in price table (\(EC2PriceTable.date)).")]),
                ]),
            ]),
            autoEnable: false, storageSchemes: ["s3"], offerCacheSeconds: 600),
        make: { config, logger in
            if case .object(let o) = config, let unknown = o.keys.sorted().first(where: { !AWSSettings.keys.contains($0) }) {
                throw CapstanError(.config, "Unknown key 'providers.aws.\(unknown)'.", hint: "Known: \(AWSSettings.keys.sorted().joined(separator: ", ")).")
            }
            let settings: AWSSettings
            do { settings = try config.decode(AWSSettings.self) } catch {
                throw CapstanError(.config, "providers.aws is invalid: \(PluginWire.describe(error)).", hint: "See `capstan plugins inspect aws`.")
            }
            let chain = settings.credentialChain()
            let credentials = try chain.credentials()
            let region = chain.region()
            logger.debug("aws plugin ready", metadata: ["regions": "\(settings.regions ?? [region ?? "default"])"])
            let compute = try EC2ComputeProvider(settings: settings, credentials: credentials, defaultRegion: region)
            return PluginServices(compute: compute, openStore: { location in
                try S3ObjectStore(location: location, credentials: credentials, configuration: settings.s3Configuration(region: region))
            })
        })
}

extension AWSSettings {
    /// The credential chain these settings select: `credentialsFile` replaces
    /// `~/.aws/credentials` (and the environment's keys), `profile` picks the profile.
    public func credentialChain(environment: [String: String] = ProcessInfo.processInfo.environment) -> AWSCredentialChain {
        var environment = environment
        if let file = credentialsFile {
            environment["AWS_SHARED_CREDENTIALS_FILE"] = (file as NSString).expandingTildeInPath
            environment["AWS_ACCESS_KEY_ID"] = nil
            environment["AWS_SECRET_ACCESS_KEY"] = nil
            environment["AWS_SESSION_TOKEN"] = nil
        }
        return AWSCredentialChain(environment: environment, profile: profile)
    }

    /// Where S3 answers: `s3Endpoint`, else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, else AWS
    /// in `region`; path-style as `s3PathStyle` says (default: with a custom endpoint).
    public func s3Configuration(region: String?, environment: [String: String] = ProcessInfo.processInfo.environment, uploadStateFolder: String? = nil) -> S3Configuration {
        let endpoint = s3Endpoint ?? [environment["AWS_ENDPOINT_URL_S3"], environment["AWS_ENDPOINT_URL"]].compactMap { $0 }.first { !$0.isEmpty }
        var configuration = S3Configuration(endpoint: endpoint, region: region ?? "us-east-1", pathStyle: s3PathStyle, uploadStateFolder: uploadStateFolder)
        configuration.allowInsecureHTTP = allowInsecureHTTP ?? false
        return configuration
    }
}
