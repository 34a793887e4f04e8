import CapstanCore
import CapstanSQLite
import CapstanTestSupport
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A `capstan serve` process on a home of the test's, on a free port of 127.0.0.1.
final class ServeProcess: @unchecked Sendable {
    let home: String
    let process = Process()
    let log: String
    let portFile: String
    private(set) var port = 0
    /// Where it listens (its network namespace's address, or loopback).
    let address: String

    /// Starts it and waits until it listens. `netns`: in that network namespace (a replica on
    /// "another machine"), listening on all of that namespace's addresses; `address` is how the
    /// test reaches it.
    init(home: String, extraArgs: [String] = [], env extra: [String: String] = [:], log name: String = "serve.log", netns: String? = nil, address: String = "127.0.0.1") async throws {
        self.home = home
        self.log = home + "/" + name
        self.portFile = home + "/" + name + ".port"
        self.address = address
        unlink(portFile)
        let serve = ["serve", "--port", "0", "--port-file", portFile, "--supervise-seconds", "0.5"] + (netns == nil ? [] : ["--host", "0.0.0.0"]) + extraArgs
        if let netns {
            // `ip netns exec` execs the command: the pid is capstan's own.
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            process.arguments = ["netns", "exec", netns, BuildProducts.capstan] + serve
        } else {
            process.executableURL = URL(fileURLWithPath: BuildProducts.capstan)
            process.arguments = serve
        }
        var e = ProcessInfo.processInfo.environment
        e["CAPSTAN_PLUGIN_PATH"] = nil
        e["CAPSTAN_HOME"] = home
        for (k, v) in extra { e[k] = v }
        process.environment = e
        FileManager.default.createFile(atPath: log, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        out.seekToEndOfFile()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let end = Date().addingTimeInterval(60)
        while Date() < end {
            if let s = try? String(contentsOfFile: portFile, encoding: .utf8), let p = Int(s.trimmingCharacters(in: .whitespacesAndNewlines)), p > 0 {
                port = p
                return
            }
            if !process.isRunning { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw CapstanError(.timeout, "capstan serve did not listen: \(logText)")
    }

    var url: String { "http://\(address):\(port)" }
    var pid: pid_t { process.processIdentifier }
    var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM, and waits for the graceful stop (for `defer`; in a test body use ``stop()``).
    func terminate() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
        }
    }

    /// SIGTERM, and waits for the graceful stop on a thread of its own.
    func stop() async {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            await process.exited()
        }
    }

    struct Answer {
        var status: Int
        var body: Data
        var text: String { String(decoding: body, as: UTF8.self) }
        func json() throws -> Any { try JSONSerialization.jsonObject(with: body) }
    }

    /// One request; `token` nil: no Authorization header.
    func request(_ method: String, _ path: String, token: String?, body: Data? = nil, contentType: String = "application/json", authorization: String? = nil) async throws -> Answer {
        var r = URLRequest(url: URL(string: url + path)!)
        r.httpMethod = method
        r.timeoutInterval = 600
        if let token { r.setValue("Bearer " + token, forHTTPHeaderField: "Authorization") }
        if let authorization { r.setValue(authorization, forHTTPHeaderField: "Authorization") }
        if let body {
            r.httpBody = body
            r.setValue(contentType, forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await URLSession.shared.data(for: r)
        return Answer(status: (response as? HTTPURLResponse)?.statusCode ?? 0, body: data)
    }
}

/// `capstan serve token create NAME` in `home`: the token.
func createToken(home: String, name: String) async throws -> String {
    let r = try await runProcess(BuildProducts.capstan, ["serve", "token", "create", name], environment: ["CAPSTAN_HOME": home])
    #expect(r.status == 0, "\(r.stderr)")
    return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A tar of `files` (path → content), built with python's tarfile so tests can make entries
/// `tar` itself refuses to create (absolute names, `..`, links).
func makeTar(_ dir: TempDir, _ name: String, script: String) throws -> Data {
    let path = dir.file(name)
    let r = try runProcessBlocking("/usr/bin/env", ["python3", "-c", "import io, tarfile\nt = tarfile.open(\(pyString(path)), 'w')\n" + script + "\nt.close()\n"], timeout: 60)
    #expect(r.status == 0, "\(r.stderr)")
    return try Data(contentsOf: URL(fileURLWithPath: path))
}

func pyString(_ s: String) -> String { "'" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'" }

@Suite("capstan serve: tokens, uploads", .serialized)
struct ServerAccessTests {
    @Test("no token, a malformed header, a wrong token and a revoked token are each 401 with an error body; none of the tokens reaches the log or the database")
    func authRefusals() async throws {
        let dir = TempDir("capstan-serve-auth")
        defer { dir.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        let token = try await createToken(home: dir.path, name: "laptop")
        #expect(token.hasPrefix("cap_") && token.count > 40)
        let serve = try await ServeProcess(home: dir.path)
        defer { serve.terminate() }

        let health = try await serve.request("GET", "/v1/health", token: nil)
        #expect(health.status == 200 && health.text.contains("\"status\":\"ok\""))
        let ok = try await serve.request("GET", "/v1/jobs", token: token)
        #expect(ok.status == 200 && ok.text == "[]", "\(ok.text)")

        let wrong = "cap_" + String(repeating: "x", count: 43)
        for (what, answer) in [
            ("no token", try await serve.request("GET", "/v1/jobs", token: nil)),
            ("basic auth", try await serve.request("GET", "/v1/jobs", token: nil, authorization: "Basic " + Data("u:\(token)".utf8).base64EncodedString())),
            ("wrong token", try await serve.request("GET", "/v1/jobs", token: wrong)),
        ] {
            #expect(answer.status == 401, "\(what): \(answer.status) \(answer.text)")
            let body = try #require(try answer.json() as? [String: Any])
            let error = try #require(body["error"] as? [String: Any])
            #expect(error["code"] as? String == "auth", "\(what)")
            #expect(!answer.text.contains(token) && !answer.text.contains(wrong))
        }
        let revoke = try await runProcess(BuildProducts.capstan, ["serve", "token", "revoke", "laptop"], environment: ["CAPSTAN_HOME": dir.path])
        #expect(revoke.status == 0 && revoke.stdout.contains("revoked"), "\(revoke.stdout)\(revoke.stderr)")
        let revoked = try await serve.request("GET", "/v1/jobs", token: token)
        #expect(revoked.status == 401 && revoked.text.contains("revoked token"), "\(revoked.text)")
        // A second live token keeps working; the list shows both, never a token.
        let ci = try await createToken(home: dir.path, name: "ci")
        #expect(try await serve.request("GET", "/v1/jobs", token: ci).status == 200)
        let list = try await runProcess(BuildProducts.capstan, ["serve", "token", "list"], environment: ["CAPSTAN_HOME": dir.path])
        #expect(list.stdout.contains("laptop") && list.stdout.contains("ci") && !list.stdout.contains(token) && !list.stdout.contains(ci))

        await serve.stop()
        let log = serve.logText
        for why in ["no Authorization header", "Authorization is not `Bearer <token>`", "unknown token", "revoked token"] {
            #expect(log.contains(why), "the log does not say \(why): \(log)")
        }
        let scan = SecretScan([dir.path], for: token)
        #expect(scan.covered("/state/capstan.db") && scan.covered("/serve.log"), "\(scan.scanned)")
        #expect(scan.hits.isEmpty, "the token appears in \(scan.hits)")
        #expect(SecretScan([dir.path], for: ci).hits.isEmpty)
    }

    @Test("uploads: links, escaping names, compressed and non-tar bodies are refused before anything is unpacked; one past --max-upload-mb is 413; launches may not name the server's folders")
    func badUploads() async throws {
        let dir = TempDir("capstan-serve-upload")
        defer { dir.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        let token = try await createToken(home: dir.path, name: "t")
        let serve = try await ServeProcess(home: dir.path, extraArgs: ["--max-upload-mb", "1"])
        defer { serve.terminate() }
        let file = "i = tarfile.TarInfo('{N}'); d = b'x'; i.size = len(d); t.addfile(i, io.BytesIO(d))"
        let cases: [(String, Data, String)] = [
            ("escaping", try makeTar(dir, "a.tar", script: file.replacingOccurrences(of: "{N}", with: "../evil.txt")), "outside its folder"),
            ("absolute", try makeTar(dir, "b.tar", script: file.replacingOccurrences(of: "{N}", with: "/tmp/evil.txt")), "outside its folder"),
            ("symlink", try makeTar(dir, "c.tar", script: "i = tarfile.TarInfo('link'); i.type = tarfile.SYMTYPE; i.linkname = '/etc'; t.addfile(i)"), "symbolic link"),
            ("not a tar", Data("this is not a tar archive, it is text".utf8), "not a tar archive"),
        ]
        for (what, body, says) in cases {
            let r = try await serve.request("POST", "/v1/uploads", token: token, body: body, contentType: "application/x-tar")
            #expect(r.status == 400 && r.text.contains(says), "\(what): \(r.status) \(r.text)")
        }
        // A compressed tar would inflate past the limit on the server's disk: refused.
        let plain = try makeTar(dir, "d.tar", script: file.replacingOccurrences(of: "{N}", with: "ok.txt"))
        try plain.write(to: URL(fileURLWithPath: dir.file("d2.tar")))
        #expect(try runProcessBlocking("/usr/bin/env", ["gzip", "-f", dir.file("d2.tar")], timeout: 30).status == 0)
        let gz = try await serve.request("POST", "/v1/uploads", token: token, body: try Data(contentsOf: URL(fileURLWithPath: dir.file("d2.tar.gz"))), contentType: "application/x-tar")
        #expect(gz.status == 400 && gz.text.contains("compressed"), "\(gz.status) \(gz.text)")
        let ok = try await serve.request("POST", "/v1/uploads", token: token, body: plain, contentType: "application/x-tar")
        #expect(ok.status == 201, "a plain tar is taken: \(ok.text)")
        // A launch may not name the server's own folders (keys, credentials) without --allow-server-paths.
        for (spec, says) in [("name: x\nworkdir: /etc\nrun: cat passwd\n", "folder on the server's machine"),
                             ("name: x\nstorage: file:///tmp/elsewhere\nrun: echo hi\n", "folder on the server's machine")] {
            let r = try await serve.request("POST", "/v1/jobs", token: token, body: try JSONSerialization.data(withJSONObject: ["spec": spec]))
            #expect(r.status == 400 && r.text.contains(says) && r.text.contains("--allow-server-paths"), "\(r.text)")
        }
        let big = try await serve.request("POST", "/v1/uploads", token: token, body: Data(count: 2 * 1024 * 1024), contentType: "application/x-tar")
        #expect(big.status == 413 && big.text.contains("larger than this server takes"), "\(big.status) \(big.text)")
        // Nothing was unpacked or left behind but the one plain tar.
        let uploads = (try? FileManager.default.contentsOfDirectory(atPath: dir.file("server/uploads"))) ?? []
        #expect(uploads.count == 1, "\(uploads)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("evil.txt")) && !FileManager.default.fileExists(atPath: dir.file("server/evil.txt")))
        // A bad body for a JSON route says which field.
        let launch = try await serve.request("POST", "/v1/jobs", token: token, body: Data("{\"upload\": 3}".utf8))
        #expect(launch.status == 400 && launch.text.contains("spec"), "\(launch.text)")
        let unknownRoute = try await serve.request("GET", "/v1/nothing", token: token)
        #expect(unknownRoute.status == 404 && unknownRoute.text.contains("No route"), "\(unknownRoute.text)")
    }
}

@Suite("capstan serve: jobs without anyone's shell", .serialized)
struct ServerJobTests {
    init() throws {
        guard torchAvailable() else {
            throw CapstanError(.config, "python3 cannot import torch.", hint: "pip install torch (CPU wheel); .ci/run installs it.")
        }
    }

    /// Uploads the job's folder and launches it through the API; returns the job id.
    func launch(_ home: JobHome, _ serve: ServeProcess, token: String, heartbeatTimeout: Int = 4) async throws -> String {
        let tar = try runProcessBlocking("/usr/bin/env", ["tar", "-C", home.dir.file("job"), "-cf", home.dir.file("job.tar"), "."], timeout: 60)
        #expect(tar.status == 0)
        let up = try await serve.request("POST", "/v1/uploads", token: token, body: try Data(contentsOf: URL(fileURLWithPath: home.dir.file("job.tar"))), contentType: "application/x-tar")
        #expect(up.status == 201, "\(up.text)")
        let upload = try #require((try up.json() as? [String: Any])?["id"] as? String)
        let settings = ["heartbeatTimeoutSeconds": heartbeatTimeout, "exitGraceSeconds": 30, "stopGraceSeconds": 3]
        let body = try JSONSerialization.data(withJSONObject: ["spec": try String(contentsOfFile: home.spec, encoding: .utf8), "upload": upload, "settings": settings])
        let r = try await serve.request("POST", "/v1/jobs", token: token, body: body)
        #expect(r.status == 201, "\(r.text)")
        return try #require((try r.json() as? [String: Any])?["id"] as? String)
    }

    @Test("a job launched through the server, its client gone: a killed node's worker, a SIGTERM of the server (exit 0) and a kill -9 of it are all recovered from; exact resume; the cluster is terminated at the end")
    func laptopClosed() async throws {
        // Held at step 20 of attempt 1 (its worker is killed there), then at 70 and 130 of
        // attempt 2 until each server change is done: every break lands mid-job.
        let home = try JobHome(steps: 200, every: 10, hold: [(1, 20), (2, 70), (2, 130)])
        defer { home.dir.cleanup() }
        let token = try await createToken(home: home.dir.path, name: "laptop")
        var serve = try await ServeProcess(home: home.dir.path, env: ["TMPDIR": home.tmp])
        defer { serve.terminate() }
        let id = try await launch(home, serve, token: token)
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 10 }, "no checkpoint came: \(serve.logText)")
        // A node's training process dies: the server's controller restarts the gang.
        let pid = try #require(home.workerPID(job: id, attempt: 1, rank: 1))
        kill(pid, SIGKILL)
        #expect(try await home.wait { (try await home.job()?.attempt ?? 0) >= 2 }, "no second attempt: \(serve.logText)")
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 60 })
        // The server is stopped the polite way (SIGTERM): it exits 0, the job goes on without it,
        // and the next server adopts it.
        await serve.stop()
        #expect(serve.process.terminationStatus == 0, "SIGTERM: exit status \(serve.process.terminationStatus)\n\(serve.logText.suffix(2000))")
        #expect(try await home.job()?.status == .running)
        serve = try await ServeProcess(home: home.dir.path, env: ["TMPDIR": home.tmp], log: "serve-2.log")
        home.release(attempt: 2, step: 70)
        #expect(try await home.wait { (try await home.job()?.latestCheckpoint ?? 0) >= 120 }, "\(serve.logText)")
        // Then it dies mid-job (kill -9); a new one adopts the job and its running agents.
        serve.kill9()
        let fenceBefore = try #require(try await home.job()?.controllerFence)
        serve = try await ServeProcess(home: home.dir.path, env: ["TMPDIR": home.tmp], log: "serve-3.log")
        home.release(attempt: 2, step: 130)
        #expect(try await home.wait(timeout: 300) { try await home.job()?.status.isFinished == true }, "\(serve.logText)")
        let final = try #require(try await home.job())
        #expect(final.status == .succeeded, "\(final.lastError ?? "")\n\(home.logTail(job: id))\n\(serve.logText)")
        #expect(final.attempt == 2 && final.restarts == 1, "the server's restart is not a job restart: attempt \(final.attempt)")
        #expect((final.controllerFence ?? 0) > fenceBefore, "the new server's controller took the job with a newer fencing token")
        _ = try await home.checkContinuity(job: final, total: 200)
        #expect(try await home.liveNodes().isEmpty, "the job's cluster is terminated")
        let events = try await home.store().events(job: id).map(\.kind)
        #expect(events.filter { $0 == "controller" }.count == 3, "one takeover per server: \(events)")
        // The logs route streams the whole job to its end.
        let logs = try await serve.request("GET", "/v1/jobs/\(id)/logs?node=1", token: token)
        #expect(logs.status == 200 && logs.text.contains("{\\\"step\\\": 200") && logs.text.contains("\"end\""), "\(logs.text.suffix(500))")
        // The whole history, page by page: ids above `after`, oldest first.
        let page = try await serve.request("GET", "/v1/jobs/\(id)/events?after=0&limit=2", token: token)
        let firstTwo = try #require(try page.json() as? [[String: Any]])
        #expect(firstTwo.count == 2 && (firstTwo[0]["id"] as? Int ?? 0) < (firstTwo[1]["id"] as? Int ?? 0), "\(page.text)")
        let rest = try await serve.request("GET", "/v1/jobs/\(id)/events?after=\(firstTwo[1]["id"] as? Int ?? 0)&limit=1000", token: token)
        let stored = try await home.store().events(job: id, after: 0, limit: 10_000)
        #expect((try rest.json() as? [[String: Any]])?.count == stored.count - 2, "\(rest.text.suffix(500))")
        let badAfter = try await serve.request("GET", "/v1/jobs/\(id)/events?after=x", token: token)
        #expect(badAfter.status == 400 && badAfter.text.contains("after"), "\(badAfter.text)")
        // What it cost (local nodes are free), by job id.
        let costs = try await serve.request("GET", "/v1/costs/jobs", token: token)
        #expect(((try costs.json() as? [String: Any])?["costs"] as? [String: Any])?[id] as? Double == 0, "\(costs.text)")
    }
}

@Suite("capstan serve: clusters", .serialized)
struct ServerClusterTests {
    @Test("the server autostops a cluster idle past its idleMinutes (up through the API) and leaves one without a limit running")
    func idleAutostop() async throws {
        let dir = TempDir("capstan-serve-idle")
        defer { dir.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 4\n")
        let token = try await createToken(home: dir.path, name: "t")
        // The keeper judges idleness two hours ahead (a debug-build hook), so nobody waits.
        let serve = try await ServeProcess(home: dir.path, extraArgs: ["--cluster-seconds", "1"], env: ["CAPSTAN_TEST_CLOCK_OFFSET_SECONDS": "7200"])
        defer { serve.terminate() }
        func up(_ name: String, idle: Int?) async throws -> ServeProcess.Answer {
            var body: [String: Any] = ["name": name, "request": ["nodes": 1, "regions": [], "providers": [], "spot": "never"]]
            if let idle { body["idleMinutes"] = idle }
            return try await serve.request("POST", "/v1/clusters", token: token, body: try JSONSerialization.data(withJSONObject: body))
        }
        let idle = try await up("idle", idle: 30)
        #expect(idle.status == 200 && idle.text.contains("\"idleMinutes\":30"), "\(idle.text)")
        let keep = try await up("keep", idle: nil)
        #expect(keep.status == 200, "\(keep.text)")
        let bad = try await up("bad", idle: 0)
        #expect(bad.status == 400 && bad.text.contains("idle"), "\(bad.text)")
        func status(_ name: String) async throws -> String? {
            let r = try await serve.request("GET", "/v1/clusters?all=true&reconcile=false", token: token)
            let rows = try #require((try r.json() as? [String: Any])?["clusters"] as? [[String: Any]])
            return rows.compactMap { $0["cluster"] as? [String: Any] }.last { $0["name"] as? String == name }?["status"] as? String
        }
        let end = Date().addingTimeInterval(180)  // generous: a loaded machine
        while Date() < end, try await status("idle") != "terminated" { try await Task.sleep(for: .milliseconds(200)) }
        #expect(try await status("idle") == "terminated", "\(serve.logText.suffix(2000))")
        let keepStatus = try await status("keep")
        let keepEvents = try await serve.request("GET", "/v1/events?cluster=keep", token: token)
        #expect(keepStatus == "running", "keep is \(keepStatus ?? "missing"): \(keepEvents.text.suffix(1500)) \(serve.logText.suffix(2000))")
        let events = try await serve.request("GET", "/v1/events?cluster=idle", token: token)
        #expect(events.text.contains("autostop"), "\(events.text)")
        _ = try await serve.request("DELETE", "/v1/clusters/keep", token: token)
    }
}
