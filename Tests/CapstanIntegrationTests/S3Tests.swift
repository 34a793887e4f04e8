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

/// The endpoints scripts/test-servers.sh started (scripts/test.sh does it for every run).
enum TestServers {
    static func env(_ name: String) throws -> String {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else {
            throw CapstanError(.config, "\(name) is not set.", hint: "Run the tests with scripts/test.sh, which starts moto and SeaweedFS (scripts/test-servers.sh).")
        }
        return v
    }
    static var seaweed: String { get throws { try env("CAPSTAN_TEST_S3_ENDPOINT") } }
    static var seaweedCredentials: AWSCredentials { get throws { AWSCredentials(accessKeyID: try env("CAPSTAN_TEST_S3_KEY"), secretAccessKey: try env("CAPSTAN_TEST_S3_SECRET")) } }
    static var moto: String { get throws { try env("CAPSTAN_TEST_MOTO_ENDPOINT") } }
    static var motoFaulty: String { get throws { try env("CAPSTAN_TEST_MOTO_FAULTY_ENDPOINT") } }
    static let motoCredentials = AWSCredentials(accessKeyID: "AKIDMOTOTEST", secretAccessKey: "motosecret")
}

/// Writes `size` bytes of a deterministic pattern (different per `seed`).
func makeFile(_ path: String, size: Int, seed: UInt8 = 7) throws {
    FileManager.default.createFile(atPath: path, contents: nil)
    let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    var left = size
    var block = 0
    while left > 0 {
        let n = min(left, 1 << 20)
        h.write(Data((0..<n).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ block &* 7 &+ Int(seed)) }))
        left -= n
        block += 1
    }
    try h.close()
}

@Suite("S3 object store on real servers", .serialized)
struct S3Tests {
    func store(_ server: String, credentials: AWSCredentials, bucket: String, prefix: String = "ckpt", dir: TempDir, partSize: Int = 5 << 20) throws -> S3ObjectStore {
        var config = S3Configuration(endpoint: server, region: "us-east-1", uploadStateFolder: dir.file("uploads"))
        config.partSize = partSize
        config.concurrency = 4
        return try S3ObjectStore(location: "s3://\(bucket)/\(prefix)", credentials: credentials, configuration: config)
    }

    @Test("SeaweedFS: put (single and multipart), head, list, get with verification, delete")
    func seaweedRoundTrip() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let s = try store(try TestServers.seaweed, credentials: try TestServers.seaweedCredentials, bucket: "capstan-rt", dir: dir)
        try await s.createBucket()
        try await s.createBucket()  // idempotent
        let small = dir.file("small"), big = dir.file("big")
        try makeFile(small, size: 1000)
        try makeFile(big, size: 23 << 20 + 12345)  // 5 parts, the last short
        let seen = Counter()
        let a = try await s.put(file: small, key: "job/step-1/a.json", options: PutOptions(metadata: ["step": "1"]))
        let b = try await s.put(file: big, key: "job/step-1/model.bin", options: PutOptions(), progress: { _ in seen.increment() })
        #expect(a.size == 1000 && a.metadata["step"] == "1" && a.sha256?.count == 64)
        #expect(b.size == Int64(23 << 20 + 12345))
        #expect(seen.value == 5)
        #expect(try await s.list(prefix: "job/").map(\.key) == ["job/step-1/a.json", "job/step-1/model.bin"])
        let back = dir.file("back/model.bin")
        let got = try await s.get(key: "job/step-1/model.bin", to: back)
        #expect(got.sha256 == b.sha256)
        #expect(FileManager.default.contentsEqual(atPath: big, andPath: back))
        #expect(try await s.head(key: "job/none") == nil)
        try await s.delete(key: "job/step-1/a.json")
        #expect(try await s.head(key: "job/step-1/a.json") == nil)
        let missing = await #expect(throws: CapstanError.self) { try await s.get(key: "job/none", to: dir.file("x")) }
        #expect(missing?.code == .notFound)
    }

    @Test("SeaweedFS rejects a wrong secret: a clear auth error, nothing written")
    func wrongSecret() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        var bad = try TestServers.seaweedCredentials
        bad.secretAccessKey = "not-the-secret"
        let s = try store(try TestServers.seaweed, credentials: bad, bucket: "capstan-rt", dir: dir)
        try makeFile(dir.file("f"), size: 10)
        let e = await #expect(throws: CapstanError.self) { try await s.put(file: dir.file("f"), key: "nope", options: PutOptions()) }
        #expect(e?.code == .auth)
        #expect(e?.cloudCode == "SignatureDoesNotMatch")
        #expect(e?.message.contains("not-the-secret") == false)
        #expect(e?.hint?.contains("credentials") == true)
        let good = try store(try TestServers.seaweed, credentials: try TestServers.seaweedCredentials, bucket: "capstan-rt", dir: dir)
        try await good.createBucket()
        #expect(try await good.head(key: "nope") == nil)
    }

    @Test("conditional create and a changed file are refused")
    func conditional() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let s = try store(try TestServers.moto, credentials: TestServers.motoCredentials, bucket: "capstan-cond", dir: dir)
        try await s.createBucket()
        try makeFile(dir.file("m"), size: 100)
        _ = try await s.put(file: dir.file("m"), key: "manifest.json", options: PutOptions(ifNoneMatch: true))
        let e = await #expect(throws: CapstanError.self) { try await s.put(file: dir.file("m"), key: "manifest.json", options: PutOptions(ifNoneMatch: true)) }
        #expect(e?.cloudCode == "PreconditionFailed")
        let e2 = await #expect(throws: CapstanError.self) { try await s.put(file: dir.file("m"), key: "other", options: PutOptions(expectedSHA256: String(repeating: "0", count: 64))) }
        #expect(e2?.code == .invalidRequest)
    }

    @Test("moto: multipart round trip and listing past one page")
    func motoMultipart() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let s = try store(try TestServers.moto, credentials: TestServers.motoCredentials, bucket: "capstan-moto", dir: dir)
        try await s.createBucket()
        try makeFile(dir.file("big"), size: 11 << 20)
        let info = try await s.put(file: dir.file("big"), key: "m/model.bin", options: PutOptions())
        let back = dir.file("back")
        _ = try await s.get(key: "m/model.bin", to: back)
        #expect(FileManager.default.contentsEqual(atPath: dir.file("big"), andPath: back))
        #expect(info.sha256 != nil)
        try makeFile(dir.file("tiny"), size: 3)
        // 1,002 keys: ListObjectsV2 pages at 1,000, so the continuation token is exercised.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<1002 {
                if i >= 16 { try await group.next() }
                group.addTask { _ = try await s.put(file: dir.file("tiny"), key: "many/\(String(format: "%04d", i))", options: PutOptions()) }
            }
            try await group.waitForAll()
        }
        #expect(try await s.list(prefix: "many/").count == 1002)
    }

    @Test("an object whose bytes no longer match its recorded checksum is refused; the destination is untouched")
    func corrupt() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let endpoint = try TestServers.seaweed
        let creds = try TestServers.seaweedCredentials
        let s = try store(endpoint, credentials: creds, bucket: "capstan-rt", prefix: "corrupt", dir: dir)
        try await s.createBucket()
        try makeFile(dir.file("good"), size: 2000, seed: 1)
        try makeFile(dir.file("evil"), size: 2000, seed: 2)
        let original = try await s.put(file: dir.file("good"), key: "x", options: PutOptions())
        // A foreign writer replaces the bytes but leaves the old checksum (awscli, same server).
        let aws = try await runProcess("/usr/bin/env", ["aws", "--endpoint-url", endpoint, "--region", "us-east-1", "s3", "cp", dir.file("evil"), "s3://capstan-rt/corrupt/x", "--metadata", "capstan-sha256=\(original.sha256!)"],
                                 environment: ["AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey])
        #expect(aws.status == 0, "\(aws.stderr)")
        let dest = dir.file("dest")
        try Data("keep".utf8).write(to: URL(fileURLWithPath: dest))
        let e = await #expect(throws: CapstanError.self) { try await s.get(key: "x", to: dest) }
        #expect(e?.message.contains("is corrupt") == true)
        #expect(try String(contentsOfFile: dest, encoding: .utf8) == "keep")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".capstan-get-") }.isEmpty)
    }
}

@Suite("Interrupted uploads", .serialized)
struct InterruptedUploadTests {
    @Test("kill -9 mid multipart upload: no object appears; the next cp resumes and completes")
    func killMidUpload() async throws {
        let home = TempDir("capstan-int"); defer { home.cleanup() }
        let creds = try TestServers.seaweedCredentials
        home.write("aws-credentials", "[default]\naws_access_key_id = \(creds.accessKeyID)\naws_secret_access_key = \(creds.secretAccessKey)\n")
        home.write("config.yaml", "providers:\n  aws:\n    credentialsFile: \(home.file("aws-credentials"))\n    s3Endpoint: \(try TestServers.seaweed)\n    regions: [us-east-1]\n")
        let direct = try S3ObjectStore(location: "s3://capstan-int", credentials: creds, configuration: S3Configuration(endpoint: try TestServers.seaweed, uploadStateFolder: home.file("direct-uploads")))
        try await direct.createBucket()
        let file = home.file("big.bin")
        try makeFile(file, size: 100 << 20, seed: 9)
        let run = "run-" + UUID().uuidString.prefix(8).lowercased()
        let args = ["storage", "cp", file, "s3://capstan-int/\(run)/big.bin", "--part-size-mib", "5", "--concurrency", "1"]

        // Killed (SIGKILL, by the CLI's crash point) right after its 4th part is recorded, one
        // part in flight at a time: exactly 4 parts are on the server and in the upload state.
        // The bandwidth cap only exercises the option here; BandwidthLimiterTests checks its rate.
        let cut = try await runProcess(BuildProducts.capstan, args + ["--max-bandwidth-mib", "200"], environment: ["CAPSTAN_HOME": home.path, "CAPSTAN_TEST_CRASH_AT": "storage-upload-progress:4"])
        #expect(cut.status == 9, "the upload was not cut: \(cut.stderr)")
        let uploads = home.file("uploads")
        let states = try FileManager.default.contentsOfDirectory(atPath: uploads).filter { $0.hasSuffix(".json") }
        #expect(states.count == 1, "\(states)")
        let saved = try states.first.flatMap { FileManager.default.contents(atPath: uploads + "/" + $0) }.flatMap { try JSONSerialization.jsonObject(with: $0) as? [String: Any] }
        let parts = (saved?["parts"] as? [String: Any])?.count ?? 0
        #expect(parts == 4, "parts recorded at the kill: \(parts)")

        // Nothing that looks like an object.
        #expect(try await direct.head(key: "\(run)/big.bin") == nil)
        #expect(try await direct.list(prefix: "\(run)/").isEmpty)

        // The same copy again (uncapped) resumes from the recorded parts.
        let again = try await runProcess(BuildProducts.capstan, args, environment: ["CAPSTAN_HOME": home.path])
        #expect(again.status == 0, "\(again.stderr)")
        // Piped, one plain line per tenth: `upload   30%  30.0 MiB/100.0 MiB  …`.
        let firstProgress = again.stderr.split(separator: "\n").first { $0.hasPrefix("upload ") }
        let doneMiB = firstProgress.flatMap { line in line.range(of: #"[0-9.]+ MiB/"#, options: .regularExpression).flatMap { Double(line[$0].dropLast(" MiB/".count)) } } ?? 0
        #expect(doneMiB >= Double(parts * 5) - 0.1, "first progress after resume: \(firstProgress ?? "none")")
        #expect(try FileManager.default.contentsOfDirectory(atPath: uploads).filter { $0.hasSuffix(".json") }.isEmpty)
        let back = home.file("back.bin")
        let info = try await direct.get(key: "\(run)/big.bin", to: back)
        #expect(info.size == 100 << 20)
        #expect(FileManager.default.contentsEqual(atPath: file, andPath: back))
    }
}

@Suite("Built-in S3 without the aws plugin")
struct BuiltInS3Tests {
    @Test("capstan storage cp to s3:// with only environment credentials and AWS_ENDPOINT_URL_S3")
    func builtIn() async throws {
        let home = TempDir("capstan-builtin-s3"); defer { home.cleanup() }
        let creds = try TestServers.seaweedCredentials
        let direct = try S3ObjectStore(location: "s3://capstan-builtin", credentials: creds, configuration: S3Configuration(endpoint: try TestServers.seaweed, uploadStateFolder: home.file("u")))
        try await direct.createBucket()
        try makeFile(home.file("f"), size: 7 << 20)
        let env = ["CAPSTAN_HOME": home.path, "AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey, "AWS_ENDPOINT_URL_S3": try TestServers.seaweed, "AWS_REGION": "us-east-1"]
        let up = try await runProcess(BuildProducts.capstan, ["storage", "cp", home.file("f"), "s3://capstan-builtin/x/f.bin"], environment: env)
        #expect(up.status == 0, "\(up.stderr)")
        let ls = try await runProcess(BuildProducts.capstan, ["storage", "ls", "s3://capstan-builtin/x/"], environment: env)
        #expect(ls.stdout.contains("x/f.bin"), "\(ls.stdout)\(ls.stderr)")
        let down = try await runProcess(BuildProducts.capstan, ["storage", "cp", "s3://capstan-builtin/x/f.bin", home.file("back")], environment: env)
        #expect(down.status == 0)
        #expect(FileManager.default.contentsEqual(atPath: home.file("f"), andPath: home.file("back")))
        // Without credentials: a clear auth error naming where Capstan looked.
        let none = try await runProcess(BuildProducts.capstan, ["storage", "ls", "s3://capstan-builtin/"], environment: ["CAPSTAN_HOME": home.path, "HOME": home.path, "AWS_ENDPOINT_URL_S3": try TestServers.seaweed])
        #expect(none.status == 1)
        #expect(none.stderr.contains("No AWS credentials found"), "\(none.stderr)")
    }
}

@Suite("Unfinished uploads")
struct AbortUploadsTests {
    @Test("abortUnfinishedUploads removes uploads left under the store's prefix, and only those")
    func abort() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let endpoint = try TestServers.moto
        let bucket = "capstan-abort-\(UUID().uuidString.prefix(6).lowercased())"
        let store = try S3ObjectStore(location: "s3://\(bucket)/ckpt", credentials: TestServers.motoCredentials, configuration: S3Configuration(endpoint: endpoint, uploadStateFolder: dir.file("u")))
        try await store.createBucket()
        let env = ["AWS_ACCESS_KEY_ID": TestServers.motoCredentials.accessKeyID, "AWS_SECRET_ACCESS_KEY": TestServers.motoCredentials.secretAccessKey]
        for key in ["ckpt/a.bin", "ckpt/b/c.bin", "other/d.bin"] {
            let r = try await runProcess("/usr/bin/env", ["aws", "--endpoint-url", endpoint, "--region", "us-east-1", "s3api", "create-multipart-upload", "--bucket", bucket, "--key", key], environment: env)
            #expect(r.status == 0, "\(r.stderr)")
        }
        #expect(try await store.abortUnfinishedUploads() == 2)
        let left = try await runProcess("/usr/bin/env", ["aws", "--endpoint-url", endpoint, "--region", "us-east-1", "s3api", "list-multipart-uploads", "--bucket", bucket, "--query", "Uploads[].Key", "--output", "text"], environment: env)
        #expect(left.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "other/d.bin", "\(left.stdout)")
    }
}
