import CapstanCore
import CapstanRuntime
import CapstanSDK
import CapstanSQLite
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// CapstanSDK in process: `Capstan(home:)`, the agent binary's lookup, the read-only observer,
/// and public-api.md's example.
@Suite("Embedded SDK: Capstan(home:), the agent binary, the read-only observer")
struct EmbeddedSDKTests {
    /// The first ```swift block of docs/public-api.md.
    static func docSnippet() throws -> String {
        let doc = try String(contentsOfFile: JobHome.repoRoot + "/docs/public-api.md", encoding: .utf8)
        let start = try #require(doc.range(of: "```swift\n"))
        let end = try #require(doc.range(of: "```\n", range: start.upperBound..<doc.endIndex))
        return String(doc[start.upperBound..<end.lowerBound])
    }

    @Test("docs/public-api.md starts with the 10-line embedding example, and it is examples/embedded's Snippet (which the example test builds and runs)")
    func docStartsWithSnippet() throws {
        let doc = try String(contentsOfFile: JobHome.repoRoot + "/docs/public-api.md", encoding: .utf8)
        #expect(doc.hasPrefix("# Public API\n\n```swift\nimport CapstanSDK\n"))
        let snippet = try Self.docSnippet()
        #expect(snippet.split(separator: "\n", omittingEmptySubsequences: false).dropLast().count == 10, "\(snippet)")
        let file = try String(contentsOfFile: JobHome.repoRoot + "/examples/embedded/Sources/Snippet/main.swift", encoding: .utf8)
        #expect(snippet == file, "docs/public-api.md's example and examples/embedded/Sources/Snippet/main.swift differ")
    }

    @Test("the agent binary: $CAPSTAN_AGENT_BINARY, next to the program (with a release's capstan-agent for remote nodes), the build folder; else an error saying what to ship")
    func agentBinaryLookup() throws {
        let dir = TempDir("capstan-agent")
        defer { dir.cleanup() }
        try FileManager.default.createDirectory(atPath: dir.file("app"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.file("build"), withIntermediateDirectories: true)
        // Nothing anywhere: says where it looked and what a host app must ship.
        do {
            _ = try AgentBinary.locate(environment: [:], executableFolder: dir.file("app"), buildFolders: [dir.file("build")])
            Issue.record("found an agent where there is none")
        } catch let e as CapstanError {
            #expect(e.code == .notFound)
            #expect(e.message.contains(dir.file("app/capstan")) && e.message.contains(dir.file("build/capstan")), "\(e)")
            #expect(e.hint?.contains("Ship `capstan` next to this program") == true && e.hint?.contains("CAPSTAN_AGENT_BINARY") == true, "\(e)")
        }
        // A bad $CAPSTAN_AGENT_BINARY is an error, never a quiet fall-back.
        do {
            _ = try AgentBinary.locate(environment: ["CAPSTAN_AGENT_BINARY": dir.file("nope")], executableFolder: dir.file("app"), buildFolders: [])
            Issue.record("a missing CAPSTAN_AGENT_BINARY was accepted")
        } catch let e as CapstanError {
            #expect(e.code == .notFound && e.message.contains("CAPSTAN_AGENT_BINARY is \(dir.file("nope")), which is not an executable file"), "\(e)")
        }
        // The build folder, then next to the program (it wins), then the variable (it wins).
        try FileManager.default.copyItem(atPath: BuildProducts.capstan, toPath: dir.file("build/capstan"))
        #expect(try AgentBinary.locate(environment: [:], executableFolder: dir.file("app"), buildFolders: [dir.file("build")]).local == dir.file("build/capstan"))
        try FileManager.default.copyItem(atPath: BuildProducts.capstan, toPath: dir.file("app/capstan"))
        let found = try AgentBinary.locate(environment: [:], executableFolder: dir.file("app"), buildFolders: [dir.file("build")])
        #expect(found.local == dir.file("app/capstan") && found.remote == found.local)
        // A release's capstan-agent beside it (the static build) is what remote nodes receive;
        // one that is not executable is not.
        #expect(FileManager.default.createFile(atPath: dir.file("app/capstan-agent"), contents: Data("#!/bin/sh\n".utf8), attributes: [.posixPermissions: 0o644]))
        #expect(try AgentBinary.locate(environment: [:], executableFolder: dir.file("app"), buildFolders: []).remote == dir.file("app/capstan"))
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.file("app/capstan-agent"))
        let release = try AgentBinary.locate(environment: [:], executableFolder: dir.file("app"), buildFolders: [])
        #expect(release.local == dir.file("app/capstan") && release.remote == dir.file("app/capstan-agent"))
        #expect(AgentBinary.beside(dir.file("app/capstan")) == release)
        #expect(try AgentBinary.locate(environment: ["CAPSTAN_AGENT_BINARY": BuildProducts.capstan], executableFolder: dir.file("app")).local == BuildProducts.capstan)
    }

    @Test("Capstan(home:): the CLI's wiring; bad input says what and where; an observer never takes a job from its controller")
    func observerTakesNoControl() async throws {
        let dir = TempDir("capstan-sdk")
        defer { dir.cleanup() }
        dir.write("job/job.yaml", "name: idle\nresources: {nodes: 1}\nrun: \"true\"\nstorage: file://\(dir.file("bucket"))\n")
        let capstan = try await Capstan(home: dir.path, agent: AgentBinary(local: BuildProducts.capstan))
        #expect(capstan.state.kind == "sqlite" && capstan.jobService.agentExecutable == BuildProducts.capstan)
        #expect(capstan.registry.compute.map(\.name) == ["local"])
        #expect(try await capstan.jobs().isEmpty)
        await #expect(throws: CapstanError.self) { _ = try await capstan.job("nope") }
        do {
            _ = try await capstan.submit(specFile: dir.file("missing.yaml"))
            Issue.record("a missing spec was accepted")
        } catch let e as CapstanError {
            #expect(e.code == .invalidRequest && e.message.contains("Cannot read job spec \(dir.file("missing.yaml"))"), "\(e)")
        }
        do {
            for try await _ in capstan.observe("nope") {}
            Issue.record("observed a job that does not exist")
        } catch let e as CapstanError {
            #expect(e.code == .notFound && e.message.contains("No job 'nope' to observe"), "\(e)")
        }

        // A job with no controller (as after its controller's process died): observing it reads,
        // and starts nothing, locks nothing, writes nothing.
        var options = JobService.Options()
        options.settings = JobSettings()
        let job = try await capstan.jobService.create(yaml: try String(contentsOfFile: dir.file("job/job.yaml"), encoding: .utf8), folder: dir.file("job"), options: options)
        let before = try await capstan.events(job.id)
        let watcher = Task {
            var seen: [JobEvent] = []
            for try await event in capstan.observe(job.id) { seen.append(event) }
            return seen
        }
        // Long enough for several polls (300 ms each).
        try await Task.sleep(for: .seconds(2))
        #expect(await !capstan.state.jobLocks.isHeld(job.id), "the observer's process holds the job's lock")
        watcher.cancel()
        _ = try? await watcher.value
        let after = try await capstan.job(job.id)
        #expect(after.status == .pending && after.controllerHolder == nil && after.controllerFence == nil)
        #expect(try await capstan.events(job.id) == before, "observing wrote events")

        // Finished: everything recorded, then .finished, then the stream ends.
        _ = try await capstan.state.store.updateJob(job.id) { $0.status = .cancelled }
        await capstan.state.store.jobEvent("cancelled", "Cancelled by the test.", job: job.id)
        var seen: [JobEvent] = []
        for try await event in capstan.observe(job.id) { seen.append(event) }
        #expect(seen.contains(.status(.cancelled, "Cancelled by the test.")))
        guard case .finished(let end)? = seen.last else { Issue.record("no .finished: \(seen)"); return }
        #expect(end.status == .cancelled)
        await capstan.close()
    }
}

/// examples/embedded, built against this package by path: its Snippet (public-api.md's example)
/// runs a job; `embedded run` runs the demo job (the sft recipe) and prints its loss from typed
/// metric events while `embedded observe` follows it read-only from a second process.
extension JobTests {
    /// Builds examples/embedded into .build-embedded (gitignored; kept between runs, so only the
    /// first build is long) and returns its bin folder.
    static func buildEmbeddedExample() async throws -> String {
        let scratch = JobHome.repoRoot + "/.build-embedded"
        let args = ["swift", "build", "--package-path", JobHome.repoRoot + "/examples/embedded", "--scratch-path", scratch]
        let started = Date()
        let build = try await runProcess("/usr/bin/env", args, timeout: 3600)
        print("examples/embedded: swift build took \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
        guard build.status == 0 else {
            throw CapstanError(.internalError, "swift build of examples/embedded failed (\(build.status)): \(build.stdout.suffix(4000)) \(build.stderr.suffix(4000))")
        }
        return scratch + "/debug"
    }

    @Test("examples/embedded builds by path; its Snippet runs a job; it runs the demo job printing loss from typed metrics, and a second process observes it read-only")
    func embeddedExample() async throws {
        let bin = try await Self.buildEmbeddedExample()
        var home = try JobHome.recipe(steps: 20, every: 10)
        defer { home.dir.cleanup() }
        home.env["CAPSTAN_HOME"] = home.dir.path
        home.env["TMPDIR"] = home.tmp
        // The example finds the agent in this checkout's build folder (AgentBinary.locate); a
        // test build elsewhere (CAPSTAN_TEST_BUILD_DIR) is named instead.
        let buildFolder = URL(fileURLWithPath: JobHome.repoRoot + "/.build/debug/capstan").resolvingSymlinksInPath().path
        if buildFolder != URL(fileURLWithPath: BuildProducts.capstan).resolvingSymlinksInPath().path { home.env["CAPSTAN_AGENT_BINARY"] = BuildProducts.capstan }

        // public-api.md's example, on a job that prints three metrics lines.
        home.dir.write("job/metrics.py", "import json\nfor s in range(1, 4):\n    print(json.dumps({\"step\": s, \"loss\": round(1.0 / s, 4)}), flush=True)\n")
        home.dir.write("job/snippet.yaml", "name: snippet\nresources: {nodes: 1}\nworkdir: .\nrun: python3 metrics.py\nstorage: file://\(home.dir.file("bucket"))\n")
        let snippet = try await runProcess(bin + "/Snippet", [home.dir.file("job/snippet.yaml")], environment: home.env, timeout: 600)
        #expect(snippet.status == 0, "\(snippet.stdout)\n\(snippet.stderr)")
        let lines = snippet.stdout.split(separator: "\n").map(String.init)
        #expect(lines.prefix(3) == ["step 1 loss 1.0", "step 2 loss 0.5", "step 3 loss 0.3333"], "\(snippet.stdout)")
        #expect(lines.last?.hasPrefix("job snippet-") == true && lines.last?.hasSuffix(" succeeded") == true, "\(snippet.stdout)")

        // The demo job, run by one process, observed by another.
        let run = Process()
        run.executableURL = URL(fileURLWithPath: bin + "/embedded")
        run.arguments = ["run", home.spec]
        var env = ProcessInfo.processInfo.environment
        env["CAPSTAN_PLUGIN_PATH"] = nil
        for (k, v) in home.env { env[k] = v }
        run.environment = env
        _ = FileManager.default.createFile(atPath: home.dir.file("run.out"), contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: home.dir.file("run.out")))
        run.standardOutput = out
        run.standardError = out
        try run.run()
        defer { if run.isRunning { run.terminate() } }
        func runOutput() -> String { (try? String(contentsOfFile: home.dir.file("run.out"), encoding: .utf8)) ?? "" }
        var jobID: String?
        _ = try await home.wait(timeout: 120) {
            jobID = runOutput().split(separator: "\n").first { $0.hasPrefix("job sft-") }.map { String($0.dropFirst(4)) }
            return jobID != nil || !run.isRunning
        }
        let id = try #require(jobID, "embedded run printed no job id: \(runOutput())")
        // The first run on a machine builds the recipe's venv (pip: transformers, peft).
        let observed = try await runProcess(bin + "/embedded", ["observe", id], environment: home.env, timeout: 1200)
        #expect(observed.status == 0, "\(observed.stdout)\n\(observed.stderr)")
        _ = try await home.wait(timeout: 300) { !run.isRunning }
        let ran = runOutput()
        #expect(!run.isRunning && run.terminationStatus == 0, "\(ran)\n\(home.logTail(job: id))")

        // The runner printed the loss of every logged step from typed metrics, and the steps of
        // provisioning its cluster; the observer saw the same losses, the cluster and the end.
        let losses = ran.split(separator: "\n").filter { $0.hasPrefix("step ") && $0.contains(" loss ") }.map(String.init)
        #expect(losses.count >= 20 && losses.first?.hasPrefix("step 1 loss ") == true && losses.contains { $0.hasPrefix("step 20 loss ") }, "\(ran)")
        #expect(ran.contains("provisioning: ready: 2 node(s) on local"), "\(ran)")
        #expect(ran.hasSuffix("job \(id) succeeded\n"), "\(ran)")
        let seen = observed.stdout.split(separator: "\n").filter { $0.hasPrefix("observed step ") }.map { String($0.dropFirst("observed ".count)) }
        #expect(seen == losses, "observer: \(observed.stdout)")
        #expect(observed.stdout.contains("observed provisioning: Running on local"), "\(observed.stdout)")
        #expect(observed.stdout.hasSuffix("observed finished: succeeded\n"), "\(observed.stdout)")

        // One controller ran the job, start to end: the observer took nothing over.
        let events = try await home.store().events(job: id)
        #expect(events.filter { $0.kind == "controller" }.count == 1 && !events.contains { $0.kind == "reattached" }, "\(events.map(\.kind))")
    }

    @Test("Capstan.down refuses a cluster a job runs on, naming the job and --force; down(force: true) takes it down")
    func downBusy() async throws {
        let dir = TempDir("capstan-sdk-down")
        defer { dir.cleanup() }
        let capstan = try await Capstan(home: dir.path, agent: AgentBinary(local: BuildProducts.capstan))
        let report = try await capstan.up("spare", ResourceRequest())
        #expect(report.cluster.status == .running, "\(report)")
        // A job (not started: no controller) that runs on it.
        let job = JobRecord(id: "held-0a1b2c", name: "held", spec: "name: held\nrun: sleep 60\n", specFolder: dir.path, settings: "{}", clusterName: "spare", ownsCluster: false, storage: "file://\(dir.file("bucket"))/held-0a1b2c")
        try await capstan.state.store.insert(job)
        do {
            _ = try await capstan.down("spare")
            Issue.record("a busy cluster was taken down")
        } catch let e as CapstanError {
            #expect(e.code == .invalidRequest && e.message == "Cluster spare is not taken down: job held-0a1b2c (pending) runs on it.", "\(e)")
            #expect(e.hint == "Cancel it first (`capstan cancel held-0a1b2c`), or run `capstan down spare --force` to terminate the cluster under it.", "\(e)")
        }
        #expect(try await capstan.clusters().first { $0.name == "spare" }?.status == .running)
        #expect(try await capstan.down("spare", force: true).status == .terminated)
        // Down again (already terminated): no job check, idempotent.
        #expect(try await capstan.down("spare").status == .terminated)
    }
}
