import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTestSupport
import Foundation
import Testing

/// Plain `http://` AWS endpoints (EC2, S3, `AWS_ENDPOINT_URL*`): refused to another machine
/// unless allowed in config.yaml; loopback stays allowed (the tests' moto and SeaweedFS).
@Suite("AWS endpoints: no plain HTTP to other machines unless allowed")
struct InsecureHTTPTests {
    let credentials = AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", sessionToken: nil)

    @Test("loopback hosts", arguments: [
        ("127.0.0.1", true), ("127.255.3.4", true), ("localhost", true), ("LocalHost.", true), ("::1", true), ("[::1]", true),
        ("10.0.0.5", false), ("128.0.0.1", false), ("127.0.0.1.example.com", false), ("localhost.example.com", false),
        ("127.0.0", false), ("127.0.0.256", false), ("1.127.0.0", false), ("::2", false), ("s3.amazonaws.com", false),
    ] as [(String, Bool)])
    func loopback(host: String, expected: Bool) {
        #expect(AWSEndpoint.isLoopback(host: host) == expected)
    }

    @Test("an S3 store with an http:// endpoint on another machine is refused: the endpoint, why, and the fix")
    func s3Refused() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        for endpoint in ["http://10.1.2.3:8333", "http://minio.internal", "HTTP://192.0.2.10:9000"] {
            let e = #expect(throws: CapstanError.self) {
                try S3ObjectStore(location: "s3://bucket/p", credentials: credentials, configuration: S3Configuration(endpoint: endpoint, uploadStateFolder: dir.path))
            }
            #expect(e?.code == .config, "\(endpoint): \(String(describing: e))")
            #expect(e?.message.contains("The S3 endpoint") == true && e?.message.contains(endpoint) == true && e?.message.contains("plain HTTP") == true && e?.message.contains("unencrypted") == true, "\(String(describing: e))")
            #expect(e?.hint?.contains("providers.aws.allowInsecureHTTP: true") == true && e?.hint?.contains("Use https://") == true, "\(String(describing: e))")
            #expect(e.map { !"\($0)".contains(credentials.secretAccessKey) } ?? true)
        }
        // Allowed: loopback, https, or the user's explicit choice.
        for endpoint in ["http://127.0.0.1:8333", "http://localhost:9000", "http://[::1]:9000", "https://10.1.2.3:8333"] {
            #expect(throws: Never.self) { try S3ObjectStore(location: "s3://bucket", credentials: credentials, configuration: S3Configuration(endpoint: endpoint, uploadStateFolder: dir.path)) }
        }
        var allowed = S3Configuration(endpoint: "http://10.1.2.3:8333", uploadStateFolder: dir.path)
        allowed.allowInsecureHTTP = true
        #expect(throws: Never.self) { try S3ObjectStore(location: "s3://bucket", credentials: credentials, configuration: allowed) }
    }

    @Test("the EC2 endpoint and the aws settings: providers.aws.allowInsecureHTTP turns it on for EC2 and S3")
    func ec2AndSettings() throws {
        var settings = AWSSettings()
        settings.endpoint = "http://10.9.8.7:5000"
        let e = #expect(throws: CapstanError.self) { try EC2ComputeProvider(settings: settings, credentials: credentials, defaultRegion: "us-east-1") }
        #expect(e?.code == .config && e?.message.contains("The EC2 endpoint providers.aws.endpoint http://10.9.8.7:5000 is plain HTTP to 10.9.8.7") == true, "\(String(describing: e))")
        settings.allowInsecureHTTP = true
        #expect(throws: Never.self) { try EC2ComputeProvider(settings: settings, credentials: credentials, defaultRegion: "us-east-1") }
        settings.s3Endpoint = "http://10.9.8.7:8333"
        #expect(settings.s3Configuration(region: "us-east-1", environment: [:]).allowInsecureHTTP)
        settings.endpoint = "http://127.0.0.1:5000"
        settings.allowInsecureHTTP = nil
        #expect(throws: Never.self) { try EC2ComputeProvider(settings: settings, credentials: credentials, defaultRegion: "us-east-1") }
    }

    @Test("AWS_ENDPOINT_URL_S3 with plain HTTP to another machine: the built-in client refuses it unless storage.allowInsecureHTTP")
    func environmentEndpoint() throws {
        let home = TempDir(); defer { home.cleanup() }
        let env = ["AWS_ACCESS_KEY_ID": credentials.accessKeyID, "AWS_SECRET_ACCESS_KEY": credentials.secretAccessKey, "AWS_ENDPOINT_URL_S3": "http://198.51.100.4:8333", "AWS_REGION": "us-east-1"]
        let e = #expect(throws: CapstanError.self) { try ProviderRegistry.builtInStore(for: "s3://bucket", home: CapstanHome(root: home.path), environment: env) }
        #expect(e?.message.contains("http://198.51.100.4:8333") == true && e?.hint?.contains("storage.allowInsecureHTTP: true") == true, "\(String(describing: e))")
        #expect(e.map { !"\($0)".contains(credentials.secretAccessKey) } ?? true)
        #expect(throws: Never.self) { try ProviderRegistry.builtInStore(for: "s3://bucket", home: CapstanHome(root: home.path), environment: env, allowInsecureHTTP: true) }
        // Through config.yaml and the registry, as `capstan storage` and a job's controller open it.
        home.write("config.yaml", "providers:\n  local: {enabled: false}\n")
        let registry = try ProviderRegistry.load(home: CapstanHome(root: home.path), environment: env)
        #expect(throws: CapstanError.self) { try registry.bucketAccess(for: "s3://bucket", environment: env) }
        home.write("config.yaml", "providers:\n  local: {enabled: false}\nstorage:\n  allowInsecureHTTP: true\n")
        let allowing = try ProviderRegistry.load(home: CapstanHome(root: home.path), environment: env)
        let access = try #require(try allowing.bucketAccess(for: "s3://bucket", environment: env))
        #expect(access.s3?.allowInsecureHTTP == true)
        // The agent opens it with the same permission (it travels in the access, on its stdin).
        let decoded = try JSONDecoder().decode(BucketAccess.self, from: JSONEncoder().encode(access))
        #expect(throws: Never.self) { try decoded.open(home: CapstanHome(root: home.path)) }
        var denied = decoded
        denied.s3?.allowInsecureHTTP = nil
        #expect(throws: CapstanError.self) { try denied.open(home: CapstanHome(root: home.path)) }
    }
}
