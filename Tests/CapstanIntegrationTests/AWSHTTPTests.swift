import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Fixtures/http_script.py on 127.0.0.1: scripted answers, or a counting proxy; either way it
/// logs every request it got. Killed on ``stop()``.
final class HTTPScript: @unchecked Sendable {
    let dir = TempDir("capstan-http-script")
    let process = Process()
    let port: Int
    var url: String { "http://127.0.0.1:\(port)" }

    struct Log: Decodable {
        struct Request: Decodable {
            var time: Double
            var method: String
            var path: String
            var sha256: String
            var headers: [String: String]
        }
        var requests: [Request]
        var in_flight: Int
        var max_in_flight: Int
        /// Seconds between consecutive requests.
        var gaps: [Double] { zip(requests.dropFirst(), requests).map { $0.time - $1.time } }
    }

    /// Answers the Nth request with `script[N]` (the last item once it is used up).
    convenience init(script: [[String: Any]]) async throws {
        try await self.init(["--script", String(decoding: try JSONSerialization.data(withJSONObject: script), as: UTF8.self)])
    }

    /// Forwards to `upstream`, holding every request `hold` seconds.
    convenience init(upstream: String, hold: Double) async throws {
        try await self.init(["--upstream", upstream, "--hold", "\(hold)"])
    }

    /// Waits for the server's port without blocking a thread: a blocking wait would hold one of
    /// Swift concurrency's few threads and stall every other test's timers and I/O meanwhile.
    private init(_ args: [String]) async throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", BuildProducts.fixtures + "/http_script.py", "--port-file", dir.file("port")] + args
        // Never the test's own stdout/stderr: `swift test` waits for every holder of its pipes.
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        var found: Int?
        for _ in 0..<200 where found == nil {
            found = (try? String(contentsOfFile: dir.file("port"), encoding: .utf8)).flatMap { Int($0) }
            if found == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        guard let found else {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw CapstanError(.internalError, "http_script.py did not start within 10 s.")
        }
        port = found
    }

    func log() async throws -> Log {
        let url = URL(string: "\(url)/_log")!
        let data: Data = try await withCheckedThrowingContinuation { c in
            URLSession.shared.dataTask(with: url) { data, _, error in
                if let data { c.resume(returning: data) } else { c.resume(throwing: error ?? CapstanError(.io, "no answer from /_log")) }
            }.resume()
        }
        return try JSONDecoder().decode(Log.self, from: data)
    }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        dir.cleanup()
    }
}

/// AWSHTTP's retry loop against a server that answers what the test scripts, counting the tries
/// and timing the gaps between them.
@Suite("AWSHTTP retries and backoff (a scripted local server)")
struct AWSHTTPRetryTests {
    static let throttling = "<Response><Errors><Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error></Errors></Response>"
    static let slowDown = "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"

    /// A client of `server` that records every delay it chooses between tries (and waits it).
    func client(_ server: HTTPScript, retries: Int = 4, backoff: Backoff, delays: LockedBox<[Double]> = LockedBox([])) throws -> AWSHTTP {
        let signer = SigV4Signer(credentials: AWSCredentials(accessKeyID: "AKIDTEST", secretAccessKey: "not-a-secret"), region: "us-east-1", service: "ec2")
        var http = AWSHTTP(signer: signer, endpoint: try AWSEndpoint(url: server.url))
        http.maxRetries = retries
        http.backoff = backoff
        http.timeout = .seconds(20)
        http.pause = { d in
            delays.withLock { $0.append(d.seconds) }
            try await Task.sleep(for: d)
        }
        return http
    }

    @Test("503, 429, a 400 Throttling and a 503 SlowDown are retried, the same bytes each time, with growing delays, until the 200")
    func retriedUntilOK() async throws {
        let server = try await HTTPScript(script: [
            ["status": 503, "body": "Service Unavailable"],
            ["status": 429],
            ["status": 400, "body": Self.throttling],
            ["status": 503, "body": Self.slowDown],
            ["status": 200, "body": "<ok/>"],
        ])
        defer { server.stop() }
        let body = Data("Action=DescribeInstances&Version=2016-11-15".utf8)
        let delays = LockedBox<[Double]>([])
        let http = try client(server, retries: 4, backoff: Backoff(initial: .milliseconds(100), max: .seconds(2), jitter: 0), delays: delays)
        let r = try await http.send(method: "POST", path: "/", body: body)
        #expect(r.status == 200 && String(decoding: r.body, as: UTF8.self) == "<ok/>")
        let log = try await server.log()
        #expect(log.requests.count == 5, "\(log.requests.count) tries")
        #expect(log.requests.allSatisfy { $0.method == "POST" && $0.path == "/" && $0.sha256 == SigV4Signer.sha256Hex(body) })
        // Each try is signed afresh (a retry may cross a second boundary).
        #expect(log.requests.allSatisfy { $0.headers["Authorization"]?.hasPrefix("AWS4-HMAC-SHA256 Credential=AKIDTEST/") == true })
        // The delays chosen: 100, 200, 400, 800 ms without jitter. On the wire, the server saw
        // the tries at least that far apart (a busy machine may add to a wait, never take away).
        let chosen = delays.withLock { $0 }
        #expect(chosen.count == 4 && zip(chosen, [0.1, 0.2, 0.4, 0.8]).allSatisfy { abs($0 - $1) < 1e-6 }, "\(chosen)")
        for (i, gap) in log.gaps.enumerated() {
            #expect(gap >= chosen[i] * 0.95, "gap \(i): \(gap) s, the backoff chose \(chosen[i]) s")
        }
    }

    @Test("a server that keeps failing: maxRetries + 1 tries, then the last answer is returned")
    func givesUp() async throws {
        for retries in [0, 2] {
            let server = try await HTTPScript(script: [["status": 503, "body": Self.slowDown]])
            defer { server.stop() }
            let r = try await client(server, retries: retries, backoff: Backoff(initial: .milliseconds(20), max: .milliseconds(50))).send(method: "GET", path: "/bucket/key")
            #expect(r.status == 503 && AWSHTTP.errorCode(r.body)?.code == "SlowDown")
            #expect(try await server.log().requests.count == retries + 1, "maxRetries \(retries)")
        }
    }

    @Test("Retry-After is honoured over a shorter backoff")
    func retryAfter() async throws {
        let server = try await HTTPScript(script: [["status": 429, "headers": ["Retry-After": "1"]], ["status": 200]])
        defer { server.stop() }
        let delays = LockedBox<[Double]>([])
        let r = try await client(server, backoff: Backoff(initial: .milliseconds(10), max: .milliseconds(20)), delays: delays).send(method: "GET", path: "/")
        #expect(r.status == 200)
        let log = try await server.log()
        #expect(log.requests.count == 2)
        #expect(delays.withLock { $0 } == [1.0], "chose \(delays.withLock { $0 }); Retry-After said 1 s")
        let gap = try #require(log.gaps.first)
        #expect(gap >= 0.95, "waited \(gap) s; Retry-After said 1 s")
    }

    @Test("the delay between tries never exceeds the backoff's max (plus its jitter)")
    func backoffCapped() async throws {
        let server = try await HTTPScript(script: [["status": 500]])
        defer { server.stop() }
        // Uncapped, the delays would be 0.1, 0.2, 0.4, … 12.8 s (25.5 s in all); capped, each at
        // most 0.15 × 1.25 s (1.5 s in all).
        let backoff = Backoff(initial: .milliseconds(100), max: .milliseconds(150), jitter: 0.25)
        let delays = LockedBox<[Double]>([])
        let r = try await client(server, retries: 8, backoff: backoff, delays: delays).send(method: "GET", path: "/")
        #expect(r.status == 500)
        let log = try await server.log()
        #expect(log.requests.count == 9)
        // Every delay chosen is capped; the server saw the tries at least that far apart.
        let chosen = delays.withLock { $0 }
        #expect(chosen.count == 8 && chosen.allSatisfy { $0 >= 0.1 * 0.75 - 0.001 && $0 <= 0.15 * 1.25 + 0.001 }, "\(chosen)")
        for (i, gap) in log.gaps.enumerated() {
            #expect(gap >= chosen[i] * 0.95, "gap \(i): \(gap) s, the backoff chose \(chosen[i]) s")
        }
        // And the delays themselves, many draws: within the jitter of min(initial × 2ⁿ, max).
        for n in 0..<10 {
            let base = min(0.1 * pow(2, Double(n)), 0.15)
            for _ in 0..<200 {
                let d = backoff.delay(n).seconds
                #expect(d >= base * 0.75 - 0.001 && d <= base * 1.25 + 0.001, "delay(\(n)) = \(d)")
            }
        }
    }

    @Test("not retried: a 400 that is not throttling, a 403, a 404", arguments: [
        (400, "<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>bad</Message></Error></Errors></Response>"),
        (403, "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"),
        (404, "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"),
    ] as [(Int, String)])
    func notRetried(status: Int, body: String) async throws {
        let server = try await HTTPScript(script: [["status": status, "body": body], ["status": 200]])
        defer { server.stop() }
        let r = try await client(server, backoff: Backoff(initial: .milliseconds(10), max: .milliseconds(20))).send(method: "GET", path: "/x")
        #expect(r.status == status)
        #expect(try await server.log().requests.count == 1)
    }

    @Test("a connection dropped without an answer is retried; dropped every time, it is a transient error after maxRetries + 1 tries")
    func droppedConnection() async throws {
        let once = try await HTTPScript(script: [["close": true], ["status": 200, "body": "fine"]])
        defer { once.stop() }
        let r = try await client(once, backoff: Backoff(initial: .milliseconds(20), max: .milliseconds(50))).send(method: "GET", path: "/")
        #expect(r.status == 200)
        #expect(try await once.log().requests.count == 2)

        let always = try await HTTPScript(script: [["close": true]])
        defer { always.stop() }
        do {
            _ = try await client(always, retries: 2, backoff: Backoff(initial: .milliseconds(20), max: .milliseconds(50))).send(method: "GET", path: "/")
            Issue.record("a server that never answers gave a response")
        } catch let e as CapstanError {
            #expect(e.code == .transient && e.message.contains("failed"), "\(e)")
        }
        #expect(try await always.log().requests.count == 3)
    }
}
