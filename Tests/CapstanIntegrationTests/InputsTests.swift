import CapstanAWS
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing

extension JobHome {
    /// What each node's command saw of its inputs: check.py prints one `INPUTS {…}` line.
    static let inputsCheck = """
        import json, os, stat
        def mode(p): return oct(stat.S_IMODE(os.stat(p).st_mode))
        names = sorted(k[len("CAPSTAN_INPUT_"):].lower() for k in os.environ if k.startswith("CAPSTAN_INPUT_"))
        out = {"node": int(os.environ["CAPSTAN_NODE_RANK"]), "attempt": int(os.environ["CAPSTAN_ATTEMPT"]), "inputs": {}}
        for n in names:
            p = os.environ["CAPSTAN_INPUT_" + n.upper()]
            assert os.path.realpath(p) == os.path.realpath(os.path.join(os.environ["CAPSTAN_INPUTS_DIR"], n)), p
            if os.path.isdir(p):
                files = {}
                for root, dirs, fs in os.walk(p, followlinks=True):
                    for f in fs:
                        full = os.path.join(root, f)
                        rel = os.path.relpath(full, p)
                        if not rel.startswith(".capstan-"):
                            files[rel] = [open(full).read(), mode(full)]
                out["inputs"][n] = {"mode": mode(p), "files": files}
            else:
                out["inputs"][n] = {"mode": mode(p), "text": open(p).read()}
        print("INPUTS " + json.dumps(out, sort_keys=True), flush=True)
        """

    /// A job of `nodes` nodes running check.py with `inputs`.
    func inputsSpec(_ inputs: [String: String], nodes: Int = 2, maxRestarts: Int = 0, extra: String = "") {
        dir.write("job/check.py", Self.inputsCheck)
        dir.write("job/job.yaml", """
            name: inputs
            resources: {nodes: \(nodes)}
            workdir: .
            inputs:
            \(inputs.sorted { $0.key < $1.key }.map { "  \($0.key): \($0.value)" }.joined(separator: "\n"))
            run: python3 check.py
            maxRestarts: \(maxRestarts)
            storage: file://\(dir.file("bucket"))
            \(extra)
            """)
    }

    /// Every node's log of `job`, joined.
    func allLogs(_ job: String, nodes: Int = 2) -> String {
        (0..<nodes).map { (try? String(contentsOfFile: dir.file("jobs/\(job)/logs/node-\($0).log"), encoding: .utf8)) ?? "" }.joined(separator: "\n")
    }

    /// The `INPUTS` lines of `job`'s logs, decoded.
    func inputsSeen(_ job: String, nodes: Int = 2) -> [[String: Any]] {
        allLogs(job, nodes: nodes).split(separator: "\n").compactMap { line in
            guard let r = line.range(of: "INPUTS {") else { return nil }
            return try? JSONSerialization.jsonObject(with: Data(line[line.index(before: r.upperBound)...].utf8)) as? [String: Any]
        }
    }

    /// Source-cache entries (not their locks or cut downloads).
    func cacheEntries() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir.file("sources"))) ?? []).filter { !$0.hasSuffix(".lock") }.sorted()
    }
}

extension JobTests {
    static func seaweedInputs(_ home: JobHome) throws -> (env: [String: String], store: S3ObjectStore, secret: String) {
        let creds = try TestServers.seaweedCredentials
        let env = ["AWS_ACCESS_KEY_ID": creds.accessKeyID, "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey,
                   "AWS_ENDPOINT_URL_S3": try TestServers.seaweed, "AWS_REGION": "us-east-1"]
        let s3 = try S3ObjectStore(location: "s3://capstan-inputs", credentials: creds, configuration: S3Configuration(endpoint: try TestServers.seaweed, uploadStateFolder: home.dir.file("uploads")))
        return (env, s3, creds.secretAccessKey)
    }

    @Test("inputs: an s3:// prefix (SeaweedFS), a file:// file and a plain folder reach both nodes' command at $CAPSTAN_INPUT_<NAME>, read-only; each is fetched once per machine, not again by the next job, and fetched anew once it changes")
    func inputsSyncedOnce() async throws {
        var home = try JobHome()
        defer { home.dir.cleanup() }
        home.env["CAPSTAN_SOURCE_CACHE"] = home.dir.file("sources")
        let (aws, s3, secret) = try Self.seaweedInputs(home)
        try? await s3.createBucket()
        let run = "run-" + UUID().uuidString.prefix(8).lowercased()
        _ = home.dir.write("src/a.txt", "alpha")
        _ = home.dir.write("src/sub/b.txt", "beta")
        _ = try await s3.put(file: home.dir.file("src/a.txt"), key: "\(run)/data/a.txt")
        _ = try await s3.put(file: home.dir.file("src/sub/b.txt"), key: "\(run)/data/sub/b.txt")
        _ = home.dir.write("tok.json", "{\"v\": 1}")
        _ = home.dir.write("plain/p.txt", "plain-1")
        let urls = ["data": "s3://capstan-inputs/\(run)/data/", "tok": "file://\(home.dir.file("tok.json"))", "plain": "file://\(home.dir.file("plain"))/"]
        home.inputsSpec(urls)

        let first = try await home.capstan(["launch", home.spec] + JobHome.fast, env: aws)
        let job1 = try await #require(try home.store().jobs().first)
        #expect(first.status == 0 && job1.status == .succeeded, "\(first.stderr) \(home.logTail(job: job1.id))")
        let seen = home.inputsSeen(job1.id)
        #expect(seen.count == 2, "\(home.logTail(job: job1.id))")
        for s in seen {
            let inputs = s["inputs"] as? [String: [String: Any]] ?? [:]
            let data = inputs["data"]?["files"] as? [String: [String]]
            #expect(data == ["a.txt": ["alpha", "0o444"], "sub/b.txt": ["beta", "0o444"]], "\(s)")
            #expect(inputs["data"]?["mode"] as? String == "0o555")
            #expect(inputs["tok"]?["text"] as? String == "{\"v\": 1}" && inputs["tok"]?["mode"] as? String == "0o444", "\(s)")
            #expect((inputs["plain"]?["files"] as? [String: [String]])?["p.txt"]?.first == "plain-1", "\(s)")
        }
        // Two nodes on one machine: one fetches each input, the other finds it in the cache.
        let log1 = home.allLogs(job1.id)
        for (name, url) in urls {
            #expect(log1.components(separatedBy: "input \(name) \(url): fetched ").count == 2, "\(name) not fetched exactly once: \(log1.suffix(3000))")
            #expect(log1.components(separatedBy: "input \(name) \(url): cached in ").count == 2, "\(log1.suffix(3000))")
        }
        #expect(!log1.contains(secret))
        #expect(home.cacheEntries().count == 3 && !home.cacheEntries().contains { $0.hasSuffix(".partial") }, "\(home.cacheEntries())")

        // The next job: the bucket's and the file's inputs come from the cache; the folder whose
        // file changed is fetched anew (its entry is keyed by what it holds).
        _ = home.dir.write("plain/p.txt", "plain-two")
        let second = try await home.capstan(["launch", home.spec] + JobHome.fast, env: aws)
        let job2 = try await #require(try home.store().jobs().first { $0.id != job1.id })
        #expect(second.status == 0 && job2.status == .succeeded, "\(second.stderr) \(home.logTail(job: job2.id))")
        let log2 = home.allLogs(job2.id)
        for name in ["data", "tok"] {
            #expect(log2.components(separatedBy: "input \(name) \(urls[name]!): cached in ").count == 3, "\(name) fetched again: \(log2.suffix(3000))")
        }
        #expect(!log2.contains(": fetching into") || log2.components(separatedBy: ": fetching into").count == 2, "\(log2.suffix(3000))")
        #expect(log2.components(separatedBy: "input plain \(urls["plain"]!): fetched ").count == 2)
        #expect(home.inputsSeen(job2.id).allSatisfy { (($0["inputs"] as? [String: [String: Any]])?["plain"]?["files"] as? [String: [String]])?["p.txt"]?.first == "plain-two" })
    }

    @Test("inputs: a missing s3:// prefix, a missing file:// path and a non-URI are refused before anything is provisioned, saying which input and what to do")
    func inputsRefused() async throws {
        let home = try JobHome()
        defer { home.dir.cleanup() }
        let (aws, s3, _) = try Self.seaweedInputs(home)
        try? await s3.createBucket()
        let run = "run-" + UUID().uuidString.prefix(8).lowercased()
        let cases: [([String: String], String)] = [
            (["data": "s3://capstan-inputs/\(run)/none/"], "The job's input 'data' s3://capstan-inputs/\(run)/none/ does not exist: Nothing at s3://capstan-inputs/\(run)/none/"),
            (["tok": "file://\(home.dir.file("missing.json"))"], "The job's input 'tok' file://\(home.dir.file("missing.json")) does not exist: no file or folder \(home.dir.file("missing.json")) on this machine."),
            (["data": "data/train/"], "'inputs.data' must be a bucket URI: s3://bucket/prefix/, gs://bucket/prefix/ or file:///absolute/path, got 'data/train/'"),
            (["data": "hdfs://x/y"], "the scheme hdfs:// is not one Capstan fetches inputs from"),
            (["Data": "s3://b/p/"], "'inputs.Data' is not an input name"),
        ]
        for (inputs, message) in cases {
            home.inputsSpec(inputs)
            let r = try await home.capstan(["launch", home.spec] + JobHome.fast, env: aws)
            #expect(r.status != 0 && r.stderr.contains(message), "\(inputs): \(r.stderr)")
        }
        #expect(try await home.store().jobs().isEmpty)
        #expect(try await home.liveNodes().isEmpty)
    }

    @Test("inputs: an agent killed -9 in the middle of fetching an input leaves a cut download that is never used: the next attempt fetches it whole")
    func inputsCutFetch() async throws {
        var home = try JobHome()
        defer { home.dir.cleanup() }
        home.env["CAPSTAN_SOURCE_CACHE"] = home.dir.file("sources")
        for i in 0..<4 { _ = home.dir.write("many/f\(i).txt", "file \(i)") }
        let url = "file://\(home.dir.file("many"))/"
        home.inputsSpec(["data": url], nodes: 1, maxRestarts: 2)
        // Attempt 1's agent dies (SIGKILL) right after the 2nd file of the input.
        let r = try await home.capstan(["launch", home.spec] + JobHome.fast, env: ["CAPSTAN_TEST_CRASH_AT": "agent-input:2"])
        let job = try await #require(try home.job())
        #expect(r.status == 0 && job.status == .succeeded, "\(r.stderr) \(home.logTail(job: job.id))")
        let attempts = try await home.store().attempts(job: job.id)
        #expect(attempts.count == 2, "\(attempts.map { "\($0.attempt) \($0.outcome) \($0.message ?? "")" })")
        let log = home.allLogs(job.id, nodes: 1)
        #expect(log.components(separatedBy: "input data \(url): fetching into ").count == 3, "\(log.suffix(3000))")
        #expect(log.components(separatedBy: "input data \(url): fetched ").count == 2, "\(log.suffix(3000))")
        let seen = home.inputsSeen(job.id, nodes: 1)
        #expect(seen.count == 1 && seen.first?["attempt"] as? Int == 2)
        let files = (seen.first?["inputs"] as? [String: [String: Any]])?["data"]?["files"] as? [String: [String]]
        #expect(files == Dictionary(uniqueKeysWithValues: (0..<4).map { ("f\($0).txt", ["file \($0)", "0o444"]) }), "\(seen)")
        #expect(home.cacheEntries().count == 1 && !home.cacheEntries()[0].hasSuffix(".partial"), "\(home.cacheEntries())")
    }

    @Test("image: a node without a working container runtime fails the job at start-up with an error naming the node, the image and what was tried")
    func imageWithoutRuntime() async throws {
        let home = try JobHome()
        defer { home.dir.cleanup() }
        home.dir.write("job/job.yaml", """
            name: boxed
            resources: {nodes: 1}
            image: localhost/capstan-none:1
            run: echo never
            maxRestarts: 0
            storage: file://\(home.dir.file("bucket"))
            """)
        let r = try await home.capstan(["launch", home.spec] + JobHome.fast, env: ["CAPSTAN_CONTAINER_RUNTIME": "/nonexistent/podman"])
        let job = try await #require(try home.job())
        #expect(r.status != 0 && job.status == .failed)
        let error = job.lastError ?? ""
        #expect(error.contains("node 0 has no working container runtime for the image localhost/capstan-none:1: /nonexistent/podman: not installed."), "\(error)\n\(home.logTail(job: job.id))")
        #expect(home.allLogs(job.id, nodes: 1).contains("Install podman or docker on the node"), "\(home.logTail(job: job.id))")
        #expect(!home.allLogs(job.id, nodes: 1).contains("never"))
    }
}

extension JobTests {
    @Test("image: a container left running by an agent killed -9 is removed when the next attempt starts on that node; nothing of the job's is left")
    func staleContainerRemoved() async throws {
        try await Self.withPodmanHome { podman, image, home in try await staleContainer(podman: podman, image: image, home: home) }
    }

    func staleContainer(podman: String, image: String, home: JobHome) async throws {
        home.dir.write("job/job.yaml", """
            name: stale
            resources: {nodes: 1}
            workdir: .
            image: \(image)
            run: echo "up attempt=$CAPSTAN_ATTEMPT"; if [ "$CAPSTAN_ATTEMPT" = 1 ]; then sleep 600; fi; echo finished
            maxRestarts: 1
            storage: file://\(home.dir.file("bucket"))
            """)
        let env = ["CAPSTAN_CONTAINER_RUNTIME": podman, "CAPSTAN_CONTAINER_OPTIONS": Self.podmanOptions]
        let r = try await home.capstan(["launch", home.spec, "--detach"] + JobHome.fast, env: env)
        #expect(r.status == 0, "\(r.stderr)")
        let job = try await #require(try home.job())
        let deadline = Date().addingTimeInterval(240)
        while !home.allLogs(job.id, nodes: 1).contains("up attempt=1"), Date() < deadline { try await Task.sleep(for: .milliseconds(200)) }
        let agent = try #require(processCommandLines().first { $0.value.contains(" agent --config ") && $0.value.contains("/\(job.id)/") }?.key, "no agent of \(job.id) running")
        kill(agent, SIGKILL)
        while !(try await home.job()?.status.isFinished ?? false), Date() < deadline { try await Task.sleep(for: .milliseconds(200)) }
        let final = try await #require(try home.job())
        let log = home.allLogs(job.id, nodes: 1)
        #expect(final.status == .succeeded && final.attempt == 2 && log.contains("finished"), "\(final.status) \(final.lastError ?? "") \(log.suffix(3000))")
        #expect(log.contains("removing container(s) an earlier attempt left: capstan-\(job.id)-a1-n0"), "\(log.suffix(3000))")
        let left = try await runProcess(podman, ["ps", "-a", "--filter", "label=capstan.job=\(job.id)", "--format", "{{.Names}}"])
        #expect(left.status == 0 && left.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "left: \(left.stdout)")
    }
}

extension JobTests {
    /// What rootful podman needs on these machines (cgroups in hybrid mode: crun refuses them;
    /// no CAP_SYS_RESOURCE: podman's default ulimits cannot be set): runc, lower ulimits.
    static let podmanOptions = "--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096"

    /// A minimal image built here, no registry: busybox (Debian's busybox-static) and a marker
    /// file, imported into podman as `name`.
    static func busyboxImage(_ podman: String, name: String, in dir: TempDir) async throws {
        let busybox = try #require(Spawn.which("busybox"), "busybox is missing (.ci/run installs busybox-static)")
        // The image has no libc: a dynamic busybox (Debian's `busybox`) cannot start in it.
        let ldd = try await runProcess("/usr/bin/env", ["ldd", busybox])
        #expect(ldd.status != 0, "\(busybox) is dynamically linked (\(ldd.stdout.prefix(200))); the image needs busybox-static (scripts/lib/test-packages.sh installs it)")
        let root = dir.file("rootfs")
        for sub in ["bin", "tmp", "etc"] { try FileManager.default.createDirectory(atPath: root + "/" + sub, withIntermediateDirectories: true) }
        try FileManager.default.copyItem(atPath: busybox, toPath: root + "/bin/busybox")
        for tool in ["sh", "cat", "echo", "test", "touch", "ls", "env", "[", "sleep"] { try FileManager.default.createSymbolicLink(atPath: root + "/bin/" + tool, withDestinationPath: "busybox") }
        dir.write("rootfs/etc/capstan-image", "capstan-test\n")
        let tar = try await runProcess("/bin/tar", ["-C", root, "-cf", dir.file("rootfs.tar"), "."])
        #expect(tar.status == 0, "\(tar.stderr)")
        let imported = try await runProcess(podman, ["import", dir.file("rootfs.tar"), name], timeout: 120)
        #expect(imported.status == 0, "\(imported.stderr)")
    }

    @Test("scripts/lib/test-packages.sh asks for busybox-static when the busybox on PATH is dynamic (or missing), not when it is static")
    func staticBusyboxWanted() async throws {
        let dir = TempDir("capstan-busybox")
        defer { dir.cleanup() }
        let script = JobHome.repoRoot + "/scripts/lib/test-packages.sh"
        func wanted(_ busybox: String?) async throws -> Bool {
            let bin = dir.file("bin-\(UUID().uuidString.prefix(6))")
            try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
            if let busybox { try FileManager.default.createSymbolicLink(atPath: bin + "/busybox", withDestinationPath: busybox) }
            // Only that folder and the basic tools: no other busybox is found.
            let r = try await runProcess("/bin/bash", ["-c", "source \"$1\"; PATH=\"$2:/usr/bin:/bin\"; hash -r; capstan_static_busybox && echo static || echo wanted", "-", script, bin])
            #expect(r.status == 0, "\(r.stderr)")
            return r.stdout.contains("wanted")
        }
        let dynamic = try #require(Spawn.which("ls"))
        #expect(try await wanted(dynamic), "a dynamic binary named busybox passed for busybox-static")
        if Spawn.which("busybox", path: "/usr/bin:/bin") == nil { #expect(try await wanted(nil)) }
        if let busybox = Spawn.which("busybox"), (try await runProcess("/usr/bin/env", ["ldd", busybox])).status != 0 {
            #expect(try await !wanted(busybox), "the static \(busybox) was not taken")
        }
    }

    @Test("image: setup and the command run in a locally built image (podman) on both nodes: one container per node with setup's changes, the env contract, the input mounted read-only, the outputs uploaded")
    func imageJob() async throws {
        try await Self.withPodmanHome { podman, image, home in try await boxed(podman: podman, image: image, home: home) }
    }

    /// `body` with podman (skipped, or a recorded issue under CI, where it is missing), a job
    /// home with a source cache of its own, and a fresh busybox image in it.
    static func withPodmanHome(_ body: (String, String, JobHome) async throws -> Void) async throws {
        guard let podman = Spawn.which("podman") else {
            if ProcessInfo.processInfo.environment["CI"] != nil { Issue.record("podman is missing (.ci/run installs it)") }
            return
        }
        var home = try JobHome()
        defer { home.dir.cleanup() }
        home.env["CAPSTAN_SOURCE_CACHE"] = home.dir.file("sources")
        try await withBusyboxImage(podman, in: home.dir) { image in try await body(podman, image, home) }
    }

    /// `body` with a fresh ``busyboxImage(_:name:in:)``, which goes whatever happens, off the
    /// cooperative pool (`runProcess` waits on a thread).
    static func withBusyboxImage(_ podman: String, in dir: TempDir, _ body: (String) async throws -> Void) async throws {
        let image = "localhost/capstan-test:" + UUID().uuidString.prefix(8).lowercased()
        try await busyboxImage(podman, name: image, in: dir)
        do { try await body(image) } catch {
            _ = try? await runProcess(podman, ["rmi", "-f", image])
            throw error
        }
        _ = try? await runProcess(podman, ["rmi", "-f", image])
    }

    func boxed(podman: String, image: String, home: JobHome) async throws {
        home.dir.write("in/a.txt", "alpha")
        home.dir.write("job/job.yaml", """
            name: boxed
            resources: {nodes: 2}
            workdir: .
            image: \(image)
            inputs: {data: file://\(home.dir.file("in"))/}
            secrets: [BOX_TOKEN]
            setup: echo from-setup > /tmp/marker
            run: test -f /tmp/marker && if [ "${BOX_TOKEN%-7731}" = s3cr3t-box ]; then echo SECRET-IN-BOX; fi && while [ ! -e go ]; do sleep 0.2; done && echo "BOXED rank=$CAPSTAN_NODE_RANK of $NNODES image=$(cat /etc/capstan-image) data=$(cat $CAPSTAN_INPUT_DATA/a.txt) path=$PATH" && cat $CAPSTAN_INPUT_DATA/a.txt > $CAPSTAN_OUTPUT_DIR/out-$CAPSTAN_NODE_RANK.txt && if touch $CAPSTAN_INPUT_DATA/x; then echo WROTE-INPUT; fi
            maxRestarts: 0
            storage: file://\(home.dir.file("bucket"))
            """)
        let r = try await home.capstan(["launch", home.spec, "--detach"] + JobHome.fast, env: ["CAPSTAN_CONTAINER_RUNTIME": podman, "CAPSTAN_CONTAINER_OPTIONS": Self.podmanOptions, "BOX_TOKEN": "s3cr3t-box-7731"])
        #expect(r.status == 0, "\(r.stderr)")
        var job = try await #require(try home.job())
        let deadline = Date().addingTimeInterval(240)
        while home.allLogs(job.id).components(separatedBy: "SECRET-IN-BOX").count < 3, Date() < deadline { try await Task.sleep(for: .milliseconds(200)) }
        // While both containers run: the secret is in neither's configuration (`inspect`, which
        // does show the env contract) nor anywhere in podman's container storage.
        for rank in 0..<2 {
            let inspect = try await runProcess(podman, ["inspect", "capstan-\(job.id)-a1-n\(rank)"])
            #expect(inspect.status == 0 && inspect.stdout.contains("CAPSTAN_NODE_RANK=\(rank)") && inspect.stdout.contains("capstan.job"), "\(inspect.stdout.prefix(2000)) \(inspect.stderr)")
            #expect(!inspect.stdout.contains("s3cr3t-box-7731"), "podman keeps the secret in the container's configuration")
        }
        let info = try await runProcess(podman, ["info", "--format", "{{.Store.GraphRoot}} {{.Store.RunRoot}}"])
        let roots = info.stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(info.status == 0 && roots.count == 2, "\(info.stdout) \(info.stderr)")
        let scan = SecretScan([roots[0] + "/overlay-containers", roots[1]], for: "s3cr3t-box-7731")
        #expect(scan.scanned.contains { $0.hasSuffix("/config.json") }, "the scan found no container configuration: \(scan.scanned.prefix(20))")
        #expect(scan.hits.isEmpty, "the secret is in \(scan.hits)")
        // Each command waits for `go` in its node's workdir (mounted at the same path).
        for rank in 0..<2 {
            let workdir = try await runProcess(podman, ["inspect", "--format", "{{.Config.WorkingDir}}", "capstan-\(job.id)-a1-n\(rank)"])
            let path = workdir.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(workdir.status == 0 && path.hasPrefix("/"), "\(workdir.stdout) \(workdir.stderr)")
            _ = FileManager.default.createFile(atPath: path + "/go", contents: nil)
        }
        while !(try await home.job()?.status.isFinished ?? false), Date() < deadline { try await Task.sleep(for: .milliseconds(200)) }
        job = try await #require(try home.job())
        #expect(job.status == .succeeded, "\(home.logTail(job: job.id))")
        let log = home.allLogs(job.id)
        // The spec's secret reaches the command in the container (on its stdin: never in podman's
        // arguments; the spec spells it only in part, so the scans find only what was delivered).
        #expect(log.components(separatedBy: "SECRET-IN-BOX").count == 3 && !log.contains("s3cr3t-box-7731"), "\(log.suffix(3000))")
        for rank in 0..<2 {
            #expect(log.contains("BOXED rank=\(rank) of 2 image=capstan-test data=alpha path="), "\(log.suffix(3000))")
        }
        // The image's PATH, not the node's; the input's mount refused the write.
        #expect(!log.contains("path=\(ProcessInfo.processInfo.environment["PATH"] ?? "-")"))
        #expect(!log.contains("WROTE-INPUT") && log.contains("Read-only file system"), "\(log.suffix(3000))")
        #expect(log.contains("image \(image): running setup and the command in it with \(podman)"))
        let bucket = try FileObjectStore(location: job.storage)
        #expect(try await bucket.list(prefix: "outputs/").map(\.key).filter { $0.hasSuffix(".txt") } == ["outputs/node-1/out-1.txt", "outputs/out-0.txt"])
        // Nothing left running: each container went with its command.
        let left = try await runProcess(podman, ["ps", "-a", "--filter", "name=capstan-\(job.id)", "--format", "{{.Names}}"])
        #expect(left.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(left.stdout)")
    }
}
