import CapstanTrainer
import Foundation
import Testing

@Suite("pip's output read into progress, and the agent's progress lines")
struct PipProgressTests {
    /// pip 23.2's output for a wheel folder install (measured), and for the index.
    static let offline = """
        Looking in links: /opt/wheels, .
        Processing ./alpha-1.0-py3-none-any.whl (from -r /v/capstan-requirements.txt (line 1))
        Processing ./beta-1.0-py3-none-any.whl (from alpha==1.0->-r /v/capstan-requirements.txt (line 1))
        Installing collected packages: beta, alpha
        Successfully installed alpha-1.0 beta-1.0
        """
    static let index = """
        Collecting requests==2.31.0 (from -r /v/capstan-requirements.txt (line 1))
          Downloading requests-2.31.0-py3-none-any.whl.metadata (4.6 kB)
        Collecting charset-normalizer<4,>=2 (from requests==2.31.0->-r /v/capstan-requirements.txt (line 1))
          Using cached charset_normalizer-3.3.2-cp311-cp311-manylinux_2_17_x86_64.whl.metadata (33 kB)
        Requirement already satisfied: urllib3<3,>=1.21.1 in /usr/lib/python3/dist-packages (from requests==2.31.0) (2.0.7)
        Collecting git+https://token123@example.com/org/private.git
        """

    @Test("collecting, then installing N, then installed N; names only, never a URL")
    func phases() {
        var p = PipProgress()
        p.feed(text: Self.index)
        #expect(p.collected == 3 && p.toInstall == nil && p.installed == nil)
        #expect(p.latest == nil, "a URL requirement gives no name: \(p.latest ?? "")")
        var e = p.event(node: 1, seconds: 4.25, installedNow: 0)
        #expect(e == PythonEnvProgress(node: 1, phase: .collecting, done: 3, total: nil, seconds: 4.25))
        p.feed("Installing collected packages: idna, charset-normalizer, requests")
        e = p.event(node: 1, seconds: 6, installedNow: 1)
        #expect(e.phase == .installing && e.done == 1 && e.total == 3 && e.package == nil)
        // More unpacked than announced (an upgrade's old copy): capped at the total.
        #expect(p.event(node: 1, seconds: 6, installedNow: 9).done == 3)
        p.feed("Successfully installed charset-normalizer-3.3.2 idna-3.6 requests-2.31.0")
        #expect(p.installed == 3 && p.event(node: 1, seconds: 7, installedNow: 0).done == 3)

        var w = PipProgress()
        w.feed(text: Self.offline)
        #expect(w.collected == 2 && w.toInstall == 2 && w.installed == 2 && w.latest == nil)
        var half = PipProgress()
        half.feed(text: Self.offline.components(separatedBy: "\n").prefix(3).joined(separator: "\n"))
        #expect(half.collected == 2 && half.latest == "beta")
        var failed = PipProgress()
        failed.feed(text: "Looking in links: /w\nERROR: Could not find a version that satisfies the requirement nope==9 (from versions: none)\nERROR: No matching distribution found for nope==9\n")
        #expect(failed.errors.count == 2 && failed.collected == 0)
    }

    @Test("the progress line is one JSON object that parses back; other lines are not progress")
    func line() throws {
        let e = PythonEnvProgress(node: 0, phase: .installing, done: 12, total: 34, seconds: 8.06, package: "numpy")
        #expect(e.line == #"{"event": "python_env", "node": 0, "phase": "installing", "done": 12, "total": 34, "seconds": 8.1, "package": "numpy"}"#)
        var back = try #require(PythonEnvProgress.parse(e.line))
        back.seconds = e.seconds
        #expect(back == e)
        let collecting = PythonEnvProgress(node: 2, phase: .collecting, done: 0, total: nil, seconds: 0.5)
        #expect(collecting.line == #"{"event": "python_env", "node": 2, "phase": "collecting", "done": 0, "seconds": 0.5}"#)
        #expect(PythonEnvProgress.parse(collecting.line)?.total == nil)
        for other in [#"{"event": "checkpoint_uploaded", "step": 3, "node": 0, "seconds": 0.1, "bytes": 9}"#, #"{"step": 3, "loss": 1.5}"#,
                      "python_env", #"{"event": "python_env", "node": 0, "phase": "dancing", "done": 1, "seconds": 1}"#, "{not json \"python_env\""] {
            #expect(PythonEnvProgress.parse(other) == nil, "\(other)")
        }
    }
}
