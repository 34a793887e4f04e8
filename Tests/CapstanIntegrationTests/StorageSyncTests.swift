import CapstanAWS
import CapstanCore
import CapstanRuntime
import CapstanStorage
import CapstanTestSupport
import Foundation
import Testing

/// `capstan storage cp -r` and `storage sync` through the built binary, against a file bucket
/// and SeaweedFS (S3).
@Suite("capstan storage cp -r and sync", .serialized)
struct StorageSyncTests {
    struct Summary: Decodable { var transferred: Int; var unchanged: Int; var bytes: Int64 }

    /// A folder of `count` files in nested folders, 1–160 KiB each, plus a download's
    /// leftover temporary file (never copied).
    static func tree(_ dir: TempDir, _ name: String, count: Int = 12) throws {
        for i in 0..<count {
            let path = dir.file("\(name)/\(i % 3 == 0 ? "" : "d\(i % 3)/")f\(i).bin")
            try FileManager.default.createDirectory(atPath: LocalPath.folder(of: path), withIntermediateDirectories: true)
            try makeFile(path, size: 1024 + i * 13_000, seed: UInt8(i))
        }
        dir.write("\(name)/.capstan-get-0000", "a cut download")
    }

    /// Relative paths → contents of the regular files under `root` (Capstan's own files left out).
    static func contents(_ root: String) -> [String: Data] {
        var out: [String: Data] = [:]
        for rel in (try? FileManager.default.subpathsOfDirectory(atPath: root)) ?? [] where !rel.contains(".capstan-") {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: root + "/" + rel, isDirectory: &isDir), !isDir.boolValue { out[rel] = FileManager.default.contents(atPath: root + "/" + rel) }
        }
        return out
    }

    func capstan(_ args: [String], env: [String: String]) async throws -> ProcessResult {
        try await runProcess(BuildProducts.capstan, ["storage"] + args, environment: env, timeout: 120)
    }

    func summary(_ r: ProcessResult) throws -> Summary {
        try JSONDecoder().decode(Summary.self, from: Data(r.stdout.utf8))
    }

    /// Upload, a cut and resumed upload, a no-op rerun, a change; a cut and resumed download;
    /// cp -r; cp of one object into a folder.
    func roundTrip(_ uri: String, env: [String: String], dir: TempDir) async throws {
        try Self.tree(dir, "src")
        // Cut (kill -9) after the 4th file, 2 in flight: whatever is in the bucket is whole.
        let cut = try await capstan(["sync", dir.file("src"), uri, "--parallel", "2", "--json"], env: env.merging(["CAPSTAN_TEST_CRASH_AT": "storage-transfer:4"]) { $1 })
        #expect(cut.status == 9, "\(cut.stderr)")
        let resumed = try summary(try await capstan(["sync", dir.file("src"), uri, "--parallel", "3", "--json"], env: env))
        #expect(resumed.unchanged >= 4 && resumed.transferred + resumed.unchanged == 12, "\(resumed)")
        let again = try summary(try await capstan(["sync", dir.file("src"), uri, "--json"], env: env))
        #expect(again.transferred == 0 && again.unchanged == 12)
        // Same size, other bytes; and a new file: only those two go.
        try makeFile(dir.file("src/d1/f1.bin"), size: 1024 + 13_000, seed: 99)
        dir.write("src/d2/new.txt", "new")
        let changed = try summary(try await capstan(["sync", dir.file("src"), uri, "--json"], env: env))
        #expect(changed.transferred == 2 && changed.unchanged == 11, "\(changed)")
        let ls = try await capstan(["ls", uri, "--json"], env: env)
        let keys = try JSONDecoder.iso.decode([ObjectInfo].self, from: Data(ls.stdout.utf8)).map(\.key)
        #expect(keys.count == 13 && !keys.contains { $0.contains(".capstan-") }, "\(keys)")

        // Download, cut after the 3rd file and resumed: the folder ends up equal to the source.
        let down = try await capstan(["sync", uri, dir.file("down"), "--parallel", "2", "--json"], env: env.merging(["CAPSTAN_TEST_CRASH_AT": "storage-transfer:3"]) { $1 })
        #expect(down.status == 9, "\(down.stderr)")
        let rest = try summary(try await capstan(["sync", uri, dir.file("down"), "--json"], env: env))
        #expect(rest.unchanged >= 3 && rest.transferred + rest.unchanged == 13, "\(rest)")
        #expect(Self.contents(dir.file("down")) == Self.contents(dir.file("src")))
        #expect(!(try FileManager.default.subpathsOfDirectory(atPath: dir.file("down"))).contains { $0.contains(".capstan-get-") })

        // cp -r copies everything; cp of one object into a folder keeps its name.
        let all = try summary(try await capstan(["cp", "-r", uri, dir.file("copy"), "--json"], env: env))
        #expect(all.transferred == 13 && all.unchanged == 0)
        #expect(Self.contents(dir.file("copy")) == Self.contents(dir.file("src")))
        try FileManager.default.createDirectory(atPath: dir.file("one"), withIntermediateDirectories: true)
        let one = try await capstan(["cp", (uri.hasSuffix("/") ? uri : uri + "/") + "d2/new.txt", dir.file("one")], env: env)
        #expect(one.status == 0 && FileManager.default.contents(atPath: dir.file("one/new.txt")) == Data("new".utf8), "\(one.stderr)")
    }

    @Test("file bucket: sync up and down, resumed after kill -9 with only what is missing or changed; cp -r; cp into a folder")
    func fileBucket() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try await roundTrip("file://" + dir.file("bucket/tree"), env: ["CAPSTAN_HOME": dir.file("home")], dir: dir)
    }

    @Test("SeaweedFS: sync up and down, resumed after kill -9 with only what is missing or changed (ETag or SHA-256); cp -r; cp into a folder")
    func seaweed() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let creds = try TestServers.seaweedCredentials
        let env = ["CAPSTAN_HOME": dir.file("home"), "AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey,
                   "AWS_ENDPOINT_URL_S3": try TestServers.seaweed, "AWS_REGION": "us-east-1"]
        let s3 = try S3ObjectStore(location: "s3://capstan-sync", credentials: creds, configuration: S3Configuration(endpoint: try TestServers.seaweed, uploadStateFolder: dir.file("uploads")))
        try? await s3.createBucket()
        try await roundTrip("s3://capstan-sync/run-\(UUID().uuidString.prefix(8).lowercased())/tree/", env: env, dir: dir)
    }

    @Test("progress: piped, cp -r and sync print one plain line per file copied and never a \\r; on a terminal a live bar redrawn in place; TERM=dumb is plain")
    func progressLines() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let env = ["CAPSTAN_HOME": dir.file("home"), "CAPSTAN_PROGRESS": "", "NO_COLOR": ""]
        try Self.tree(dir, "src")
        let uri = "file://" + dir.file("bucket/tree")
        let up = try await capstan(["cp", "-r", dir.file("src"), uri], env: env)
        #expect(up.status == 0, "\(up.stderr)")
        let lines = up.stderr.split(separator: "\n")
        #expect(lines.count == 12 && lines.allSatisfy { $0.hasPrefix("uploaded ") && $0.contains(" files  ") } && !up.stderr.contains("\r"), "\(up.stderr)")
        #expect(lines.contains { $0.contains("(100%  12/12 files  ") }, "\(up.stderr)")
        #expect(up.stdout.hasPrefix("12 file(s) uploaded") && !up.stdout.contains("\r"))
        // A sync with nothing to copy prints no step, only its result.
        let again = try await capstan(["sync", dir.file("src"), uri], env: env)
        #expect(again.status == 0 && again.stderr.isEmpty && again.stdout.hasPrefix("0 file(s) uploaded"), "\(again.stderr)")

        // On a terminal (script(1) gives the command one): the bar, redrawn with \r and cleared
        // before the result; no per-file lines. Colour unless NO_COLOR.
        func onTerminal(_ args: String, _ extra: [String: String]) async throws -> ProcessResult {
            try await runProcess("/usr/bin/script", ["-qfec", "\(BuildProducts.capstan) storage \(args)", "/dev/null"], environment: env.merging(extra.merging(["COLUMNS": "100"]) { $1 }) { $1 }, timeout: 120)
        }
        let live = try await onTerminal("sync \(uri) \(dir.file("down"))", ["TERM": "xterm-256color"])
        #expect(live.status == 0 && live.stdout.contains("\r\u{1B}[K") && live.stdout.contains("\u{1B}[1msync\u{1B}[0m [") && !live.stdout.contains("\ndownloaded "), "\(live.stdout.debugDescription)")
        #expect(live.stdout.contains("12 file(s) downloaded"))
        let plainColours = try await onTerminal("cp -r \(uri) \(dir.file("down2"))", ["TERM": "xterm-256color", "NO_COLOR": "1"])
        #expect(plainColours.status == 0 && plainColours.stdout.contains("cp -r [") && !plainColours.stdout.contains("\u{1B}[1m"), "\(plainColours.stdout.debugDescription)")
        // (The terminal itself turns each \n into \r\n.)
        let dumb = try await onTerminal("cp -r \(uri) \(dir.file("down3"))", ["TERM": "dumb"])
        #expect(dumb.status == 0 && !dumb.stdout.contains("\u{1B}") && dumb.stdout.split(whereSeparator: \.isNewline).count { $0.hasPrefix("downloaded ") } == 12, "\(dumb.stdout.debugDescription)")
        #expect(Self.contents(dir.file("down3")) == Self.contents(dir.file("src")))
    }

    @Test("two syncs into one folder at once both finish, the folder whole, nothing of theirs left behind")
    func concurrentSyncs() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let env = ["CAPSTAN_HOME": dir.file("home")]
        try Self.tree(dir, "src", count: 40)
        let uri = "file://" + dir.file("bucket/tree")
        #expect(try await capstan(["sync", dir.file("src"), uri, "--json"], env: env).status == 0)
        async let a = capstan(["sync", uri, dir.file("down"), "--parallel", "2", "--json"], env: env)
        async let b = capstan(["sync", uri, dir.file("down"), "--parallel", "2", "--json"], env: env)
        let (ra, rb) = try await (a, b)
        #expect(ra.status == 0 && rb.status == 0, "\(ra.stderr)\n\(rb.stderr)")
        let sa = try summary(ra), sb = try summary(rb)
        #expect(sa.transferred + sa.unchanged == 40 && sb.transferred + sb.unchanged == 40)
        #expect(Self.contents(dir.file("down")) == Self.contents(dir.file("src")))
        let own = try FileManager.default.subpathsOfDirectory(atPath: dir.file("down")).filter { $0.contains(".capstan-") }
        #expect(own.isEmpty, "\(own)")
    }

    @Test("storage ls never lists a file bucket's own records (.capstan-meta, .capstan-tmp), also when the bucket is a folder below the one listed")
    func lsHidesRecords() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let env = ["CAPSTAN_HOME": dir.file("home")]
        dir.write("x.bin", "x")
        let up = try await capstan(["cp", dir.file("x.bin"), "file://" + dir.file("outer/bucket/run/x.bin")], env: env)
        #expect(up.status == 0, "\(up.stderr)")
        for uri in ["file://" + dir.file("outer"), "file://" + dir.file("outer/bucket/run"), "file://" + dir.file("outer/bucket/run/")] {
            let ls = try await capstan(["ls", uri, "--json"], env: env)
            let keys = try JSONDecoder.iso.decode([ObjectInfo].self, from: Data(ls.stdout.utf8)).map(\.key)
            #expect(!keys.isEmpty && !keys.contains { $0.contains(".capstan-") }, "\(uri): \(keys) \(ls.stderr)")
        }
    }

    @Test("cp -r and sync refuse what they cannot do, saying why")
    func badInput() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let env = ["CAPSTAN_HOME": dir.file("home")]
        dir.write("file.txt", "x")
        let cases: [([String], String)] = [
            (["sync", dir.file("nope"), "file://" + dir.file("b/")], "\(dir.file("nope")) is not a folder."),
            (["sync", dir.file("file.txt"), "file://" + dir.file("b/")], "is not a folder."),
            (["sync", "file://" + dir.file("a/"), "file://" + dir.file("b/")], "one side must be a local folder"),
            (["cp", "-r", dir.file("a"), dir.file("b")], "one side must be"),
            (["sync", dir.file("a"), "file://" + dir.file("b/"), "--parallel", "0"], "--parallel must be from 1 to 256"),
            (["sync", "file://" + dir.file("empty/"), dir.file("down")], "No objects under"),
        ]
        try FileManager.default.createDirectory(atPath: dir.file("a"), withIntermediateDirectories: true)
        for (args, message) in cases {
            let r = try await capstan(args, env: env)
            #expect(r.status != 0 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
    }
}
