import CapstanCore
import CapstanTestSupport
import Foundation
import Testing

/// Bad input files and values are data errors (exit 1, `error:` naming the file and line or
/// the name), not command-line errors (64): docs/cli.md, Exit codes.
extension CLITests {
    @Test("offers --spec with a spec that does not parse exits 1 naming the file and line; a wrong command line stays 64")
    func offersBadSpec() async throws {
        let home = TempDir(); defer { home.cleanup() }
        let bad = home.write("specs/bad.yaml", "name: bad\nresources:\n  nodes: two\nrun: x\n")
        let r = try await capstan(["offers", "--spec", bad], home: home)
        #expect(r.status == 1, "\(r.status) \(r.stderr)")
        #expect(r.stderr.hasPrefix("error: ") && r.stderr.contains("\(bad):3"), "\(r.stderr)")
        let missing = try await capstan(["offers", "--spec", home.file("specs/none.yaml")], home: home)
        #expect(missing.status == 1 && missing.stderr.contains("Cannot read job spec \(home.file("specs/none.yaml"))"), "\(missing.stderr)")
        let both = try await capstan(["offers", "--spec", bad, "--gpu", "H100"], home: home)
        #expect(both.status == 64 && both.stderr.contains("leave out --gpu"), "\(both.status) \(both.stderr)")
        // Every other request option too: beside a spec it would be dropped without a word.
        let good = home.write("specs/good.yaml", "name: good\nresources: {nodes: 2}\nrun: x\n")
        let nodes = try await capstan(["offers", "--spec", good, "--nodes", "4", "--spot", "--max-price", "9"], home: home)
        #expect(nodes.status == 64 && nodes.stderr.contains("leave out --nodes, --spot, --max-price, or change the spec."), "\(nodes.status) \(nodes.stderr)")
    }

    @Test("launch refuses a secret shorter than 8 characters, naming it and why, never printing its value; nothing is launched")
    func shortSecretAtLaunch() async throws {
        let home = TempDir(); defer { home.cleanup() }
        let spec = home.write("job/job.yaml", "name: short\nsecrets: [TINY_TOKEN]\nrun: echo hi\nstorage: file://\(home.file("bucket"))\n")
        let r = try await capstan(["launch", spec, "--detach"], home: home, env: ["TINY_TOKEN": "q7x"])
        #expect(r.status == 1, "\(r.status) \(r.stderr)")
        #expect(r.stderr.contains("error: The job's secret TINY_TOKEN is shorter than 8 characters"), "\(r.stderr)")
        #expect(!r.stderr.contains("q7x") && !r.stdout.contains("q7x"))
        let jobs = try await capstan(["jobs", "--json"], home: home)
        #expect(jobs.status == 0, "\(jobs.stderr)")
        let list = try JSONSerialization.jsonObject(with: Data(jobs.stdout.utf8)) as? [Any]
        #expect(list?.isEmpty == true, "\(jobs.stdout)")
    }
}
