import CapstanCore
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The real browser the dashboard test drives: Debian's chromium + chromium-driver, and a
/// Python with Selenium (`CAPSTAN_SELENIUM_PYTHON`, else the repository's `.venv`, else
/// `python3`). `.ci/run` installs them.
enum Browser {
    static let python: String? = {
        var candidates: [String] = []
        if let p = ProcessInfo.processInfo.environment["CAPSTAN_SELENIUM_PYTHON"], !p.isEmpty { candidates.append(p) }
        candidates += [JobHome.repoRoot + "/.venv/bin/python3", "python3"]
        for c in candidates where c == "python3" || FileManager.default.isExecutableFile(atPath: c) {
            let exe = c == "python3" ? "/usr/bin/env" : c
            let args = c == "python3" ? ["python3", "-c", "import selenium"] : ["-c", "import selenium"]
            if (try? runProcessBlocking(exe, args, timeout: 60).status) == 0 { return c }
        }
        return nil
    }()
    static var chromium: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium") && FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver") }
    /// What is missing, in words; nil when the browser can run.
    static var missing: String? {
        var m: [String] = []
        if !chromium { m.append("/usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)") }
        if python == nil { m.append("a Python with Selenium (pip install selenium, or set CAPSTAN_SELENIUM_PYTHON to a venv's python)") }
        return m.isEmpty ? nil : "The dashboard's browser test needs " + m.joined(separator: " and ") + "; .ci/run installs them."
    }
    /// In CI (`CI` set) a missing browser is a failure; elsewhere the test is skipped.
    static var runs: Bool { missing == nil || ProcessInfo.processInfo.environment["CI"] != nil }
}

/// One plain HTTP request with its headers (the dashboard's assets are judged by them).
func httpGet(_ url: String, headers: [String: String] = [:]) async throws -> (status: Int, headers: [String: String], body: String) {
    var r = URLRequest(url: URL(string: url)!)
    r.timeoutInterval = 120
    r.cachePolicy = .reloadIgnoringLocalAndRemoteCacheData
    for (k, v) in headers { r.setValue(v, forHTTPHeaderField: k) }
    let (data, response) = try await URLSession.shared.data(for: r)
    let http = response as? HTTPURLResponse
    var h: [String: String] = [:]
    for (k, v) in http?.allHeaderFields ?? [:] { h[String(describing: k).lowercased()] = String(describing: v) }
    return (http?.statusCode ?? 0, h, String(decoding: data, as: UTF8.self))
}

@Suite("capstan serve: the web dashboard", .serialized)
struct DashboardTests {
    @Test("the page and its assets need no token and hold no data: right content types, ETags (304 when unchanged), a CSP that allows only this server, nothing from elsewhere; /v1/overview and /v1/jobs/{id}/summary need the token and refuse bad input clearly")
    func assetsAndRoutes() async throws {
        let dir = TempDir("capstan-dashboard")
        defer { dir.cleanup() }
        dir.write("config.yaml", "providers:\n  local:\n    slots: 2\n")
        let token = try await createToken(home: dir.path, name: "browser")
        let serve = try await ServeProcess(home: dir.path)
        defer { serve.terminate() }

        var etags: [String: String] = [:]
        for (path, type, says) in [("/", "text/html", "/dashboard/app.js"), ("/dashboard/app.js", "text/javascript", "Authorization"), ("/dashboard/app.css", "text/css", "--accent")] {
            let r = try await httpGet(serve.url + path)
            #expect(r.status == 200, "\(path): \(r.status) \(r.body)")
            #expect(r.headers["content-type"]?.hasPrefix(type) == true, "\(path): \(r.headers)")
            #expect(r.body.contains(says), "\(path)")
            // Offline: nothing is fetched from another host.
            #expect(!r.body.contains("http://") && !r.body.contains("https://") && !r.body.contains("//cdn"), "\(path) names another host")
            #expect(!r.body.contains(token))
            let etag = try #require(r.headers["etag"], "\(path) has no ETag")
            etags[path] = etag
            #expect(r.headers["cache-control"] == "no-cache")
            #expect(r.headers["x-content-type-options"] == "nosniff")
            let csp = try #require(r.headers["content-security-policy"])
            #expect(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'") && csp.contains("script-src 'self'"), "\(csp)")
            let again = try await httpGet(serve.url + path, headers: ["If-None-Match": etag])
            #expect(again.status == 304 && again.body.isEmpty, "\(path): \(again.status)")
            let other = try await httpGet(serve.url + path, headers: ["If-None-Match": "\"stale\""])
            #expect(other.status == 200)
        }
        #expect(Set(etags.values).count == 3)
        // The page never puts the token in a URL: it sends it as a header.
        let script = try await httpGet(serve.url + "/dashboard/app.js").body
        #expect(script.contains("Authorization: \"Bearer \" + token") && script.contains("sessionStorage"))
        #expect(!script.contains("token=") && !script.contains("?token"))

        // The data routes need the token.
        for path in ["/v1/overview", "/v1/jobs/x/summary"] {
            let r = try await serve.request("GET", path, token: nil)
            #expect(r.status == 401 && r.text.contains("no Authorization header"), "\(path): \(r.text)")
        }
        // A path under /dashboard/ that is not an asset is not public.
        #expect(try await serve.request("GET", "/dashboard/secret", token: nil).status == 401)
        #expect(try await serve.request("GET", "/dashboard/secret", token: token).status == 404)

        let empty = try await serve.request("GET", "/v1/overview", token: token)
        #expect(empty.status == 200, "\(empty.text)")
        let body = try #require(try empty.json() as? [String: Any])
        #expect((body["jobs"] as? [Any])?.isEmpty == true && (body["clusters"] as? [Any])?.isEmpty == true && body["generatedAt"] is String, "\(empty.text)")
        for (query, says) in [("limit=0", "limit must be 1…1000, got 0"), ("limit=5000", "limit must be 1…1000, got 5000"), ("limit=many", "`limit` must be an integer, got 'many'")] {
            let r = try await serve.request("GET", "/v1/overview?" + query, token: token)
            #expect(r.status == 400 && r.text.contains(says), "\(query): \(r.status) \(r.text)")
        }
        let missing = try await serve.request("GET", "/v1/jobs/no-such-job/summary", token: token)
        #expect(missing.status == 404 && missing.text.contains("No job 'no-such-job'") && missing.text.contains("capstan jobs"), "\(missing.text)")
    }

    @Test("a real Chromium: the token form refuses a wrong token clearly; the running 2-node job is in the list; its page's loss chart gains points and new log lines (both nodes) arrive without a reload; checkpoints, the timeline, progress and a second metric show; screenshot", .enabled(if: Browser.runs, "chromium, chromium-driver or Selenium is missing (not in CI: skipped)"))
    func browser() async throws {
        if let missing = Browser.missing { Issue.record("\(missing)"); return }
        guard torchAvailable() else {
            throw CapstanError(.config, "python3 cannot import torch.", hint: "pip install torch (CPU wheel); .ci/run installs it.")
        }
        // A long, slow job (3000 steps of 0.2 s): it runs all through the test, which cancels it.
        let home = try JobHome(steps: 3000, every: 25, pause: 0.2, keep: 3)
        defer { home.dir.cleanup() }
        try FileManager.default.removeItem(atPath: home.dir.file("job/train.py"))
        try FileManager.default.copyItem(atPath: BuildProducts.fixtures + "/dashboard_train.py", toPath: home.dir.file("job/train.py"))
        let token = try await createToken(home: home.dir.path, name: "browser")
        let serve = try await ServeProcess(home: home.dir.path, env: ["TMPDIR": home.tmp])
        defer { serve.terminate() }

        #expect(try runProcessBlocking("/usr/bin/env", ["tar", "-C", home.dir.file("job"), "-cf", home.dir.file("job.tar"), "."], timeout: 60).status == 0)
        let up = try await serve.request("POST", "/v1/uploads", token: token, body: try Data(contentsOf: URL(fileURLWithPath: home.dir.file("job.tar"))), contentType: "application/x-tar")
        #expect(up.status == 201, "\(up.text)")
        let upload = try #require((try up.json() as? [String: Any])?["id"] as? String)
        let launch = try await serve.request("POST", "/v1/jobs", token: token, body: try JSONSerialization.data(withJSONObject: [
            "spec": try String(contentsOfFile: home.spec, encoding: .utf8), "upload": upload,
            "settings": ["heartbeatTimeoutSeconds": 10, "exitGraceSeconds": 30, "stopGraceSeconds": 3],
        ]))
        #expect(launch.status == 201, "\(launch.text)")
        let id = try #require((try launch.json() as? [String: Any])?["id"] as? String)
        // Running, with a metrics point: the page has something to show from its first paint.
        let running = try await home.wait(timeout: 300) {
            let job = try await home.job()
            return job?.status == .running && job?.metrics != nil
        }
        #expect(running, "the job did not start: \(serve.logText.suffix(3000))")
        guard running else { return }

        // The overview route has it, with progress and both nodes.
        let overview = try await serve.request("GET", "/v1/overview", token: token)
        let jobs = try #require((try overview.json() as? [String: Any])?["jobs"] as? [[String: Any]])
        let row = try #require(jobs.first { $0["id"] as? String == id }, "\(overview.text)")
        #expect(row["status"] as? String == "running" && row["nodes"] as? Int == 2 && row["totalSteps"] as? Int == 3000 && row["step"] != nil && row["tokensPerSecond"] != nil && row["cost"] != nil, "\(row)")

        let shot = home.dir.file("dashboard.png")
        let python = Browser.python!
        let r = try await runProcess(python == "python3" ? "/usr/bin/env" : python, (python == "python3" ? ["python3"] : []) + [BuildProducts.fixtures + "/dashboard_browser.py", serve.url, id, shot],
                                     environment: ["CAPSTAN_DASHBOARD_TOKEN": token, "CAPSTAN_DASHBOARD_DEADLINE": "180"], timeout: 900)
        #expect(r.status == 0, "the browser's checks failed:\n\(r.stdout)\n\(r.stderr)")
        let png = try Data(contentsOf: URL(fileURLWithPath: shot))
        #expect(png.count > 10_000 && png.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]), "not a PNG screenshot")
        // `CAPSTAN_DASHBOARD_SCREENSHOT=docs/dashboard.png` keeps it (the README's picture).
        if let keep = ProcessInfo.processInfo.environment["CAPSTAN_DASHBOARD_SCREENSHOT"], !keep.isEmpty {
            let target = keep.hasPrefix("/") ? keep : JobHome.repoRoot + "/" + keep
            try? FileManager.default.removeItem(atPath: target)
            try png.write(to: URL(fileURLWithPath: target))
        }

        let cancel = try await serve.request("POST", "/v1/jobs/\(id)/cancel?wait=120", token: token)
        #expect(cancel.status == 200 && cancel.text.contains("\"cancelled\""), "\(cancel.text)")
        await serve.stop()
        // The token went only into headers: not in the server's log or state.
        let scan = SecretScan([home.dir.path], for: token)
        #expect(scan.hits.isEmpty, "the token appears in \(scan.hits)")
    }
}
