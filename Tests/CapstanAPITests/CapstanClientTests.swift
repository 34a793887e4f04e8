import CapstanAPI
import CapstanCore
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing

@Suite("NDJSON line splitting")
struct NDJSONSplitterTests {
    static let text = "{\"node\":0,\"line\":\"héllo wörld ✓\"}\n\n{\"node\":1,\"line\":\"b\"}\r\n{\"end\":{}}"

    @Test("every way of cutting the stream in two gives the same lines, a UTF-8 sequence cut included")
    func everySplit() throws {
        let bytes = Array(Self.text.utf8)
        let expected = ["{\"node\":0,\"line\":\"héllo wörld ✓\"}", "{\"node\":1,\"line\":\"b\"}", "{\"end\":{}}"]
        for cut in 0...bytes.count {
            var s = NDJSONSplitter()
            var lines = try s.feed(bytes[0..<cut]) + s.feed(bytes[cut...])
            if let last = s.finish() { lines.append(last) }
            #expect(lines.map { String(decoding: $0, as: UTF8.self) } == expected, "cut at \(cut)")
        }
    }

    @Test("one byte at a time")
    func byteByByte() throws {
        var s = NDJSONSplitter()
        var lines: [Data] = []
        for b in Self.text.utf8 { lines += try s.feed([b]) }
        #expect(lines.count == 2)
        #expect(s.pendingBytes == "{\"end\":{}}".utf8.count)
        #expect(s.finish().map { String(decoding: $0, as: UTF8.self) } == "{\"end\":{}}")
        #expect(s.finish() == nil)
    }

    @Test("a line longer than the limit is an error, not unbounded memory")
    func tooLong() {
        var s = NDJSONSplitter(maxLineBytes: 10)
        #expect(throws: NDJSONSplitter.LineTooLong.self) { try s.feed(Array(repeating: UInt8(ascii: "x"), count: 11)) }
    }
}

@Suite("server settings: --server, CAPSTAN_SERVER, tokens")
struct ServerSettingsTests {
    @Test("--server wins over CAPSTAN_SERVER; '' or nothing is embedded mode")
    func precedence() throws {
        let env = ["CAPSTAN_SERVER": "http://env.example:1"]
        #expect(try ServerSettings.resolve(serverOption: "http://opt.example:2", tokenFile: nil, environment: env)?.server.absoluteString == "http://opt.example:2")
        #expect(try ServerSettings.resolve(serverOption: nil, tokenFile: nil, environment: env)?.server.absoluteString == "http://env.example:1")
        #expect(try ServerSettings.resolve(serverOption: "", tokenFile: nil, environment: env) == nil)
        #expect(try ServerSettings.resolve(serverOption: nil, tokenFile: nil, environment: [:]) == nil)
        #expect(try ServerSettings.resolve(serverOption: nil, tokenFile: nil, environment: ["CAPSTAN_SERVER": ""]) == nil)
    }

    @Test("a trailing slash and /v1 are dropped; a path prefix is kept")
    func normalised() throws {
        #expect(try ServerSettings.parseServerURL("https://h.example/").absoluteString == "https://h.example")
        #expect(try ServerSettings.parseServerURL("http://h:8080/v1/").absoluteString == "http://h:8080")
        #expect(try ServerSettings.parseServerURL("HTTPS://h/capstan").absoluteString == "https://h/capstan")
    }

    @Test("bad URLs are refused with what to write instead", arguments: [
        ("localhost:8080", "not an http or https URL"), ("ftp://h", "not an http or https URL"), ("http://", "no host"),
        ("http://h:1/?x=1", "query or fragment"), ("not a url at all", "not"),
    ])
    func badURL(_ text: String, _ says: String) {
        do {
            _ = try ServerSettings.resolve(serverOption: text, tokenFile: nil, environment: [:])
            Issue.record("\(text) was accepted")
        } catch let e as CapstanError {
            #expect(e.code == .invalidRequest && e.message.contains(says) && e.hint != nil, "\(e)")
        } catch { Issue.record("\(error)") }
    }

    @Test("credentials in the URL are refused, and never repeated")
    func userInfo() {
        do {
            _ = try ServerSettings.resolve(serverOption: "https://me:s3cr3t-pw@h.example", tokenFile: nil, environment: [:])
            Issue.record("accepted")
        } catch let e as CapstanError {
            #expect(!e.description.contains("s3cr3t-pw") && e.description.contains("CAPSTAN_TOKEN"), "\(e)")
        } catch { Issue.record("\(error)") }
    }

    @Test("--token-file wins over CAPSTAN_TOKEN; bad tokens are refused without being shown")
    func tokens() throws {
        let dir = TempDir("capstan-token"); defer { dir.cleanup() }
        let file = dir.write("token", "  file-token-123\n")
        let env = ["CAPSTAN_SERVER": "http://h:1", "CAPSTAN_TOKEN": "env-token-456"]
        #expect(try ServerSettings.resolve(serverOption: nil, tokenFile: file, environment: env)?.token == "file-token-123")
        #expect(try ServerSettings.resolve(serverOption: nil, tokenFile: nil, environment: env)?.token == "env-token-456")
        let settings = try #require(try ServerSettings.resolve(serverOption: nil, tokenFile: nil, environment: env))
        #expect(!settings.description.contains("env-token-456"))

        let empty = dir.write("empty", "\n")
        #expect { try ServerSettings.resolve(serverOption: nil, tokenFile: empty, environment: env) } throws: { e in
            (e as? CapstanError)?.message.contains("is empty") == true
        }
        let spaced = dir.write("spaced", "two words-secret\n")
        #expect { try ServerSettings.resolve(serverOption: nil, tokenFile: spaced, environment: env) } throws: { e in
            let e = e as? CapstanError
            return e?.message.contains("cannot have") == true && e?.description.contains("words-secret") == false
        }
        #expect { try ServerSettings.resolve(serverOption: nil, tokenFile: dir.file("missing"), environment: env) } throws: { e in
            (e as? CapstanError)?.message.contains("Cannot read the token file") == true
        }
        // A token file without a server is a mistake worth saying.
        #expect(throws: CapstanError.self) { try ServerSettings.resolve(serverOption: "", tokenFile: file, environment: [:]) }
        // An unreadable CA file is said up front.
        #expect { try ServerSettings.resolve(serverOption: nil, tokenFile: nil, environment: env.merging(["CAPSTAN_SERVER_CA": dir.file("nope.pem")]) { $1 }) } throws: { e in
            (e as? CapstanError)?.message.contains("CAPSTAN_SERVER_CA") == true
        }
    }
}

@Suite("CapstanClient against a fake server")
struct CapstanClientTests {
    static let token = "tok-Very-Secret-0123456789"

    static func errorBody(_ code: String, _ message: String, hint: String? = nil) -> String {
        let e = CapstanError(CapstanError.Code.all(code), message, hint: hint)
        return String(decoding: try! CapstanAPI.encoder.encode(APIErrorBody(error: e)), as: UTF8.self)
    }

    @Test("a 401 is the server's error as it is; the token went in the header and is in no message, even one that echoes it")
    func unauthorized() async throws {
        let server = try FakeHTTPServer { _ in
            [FakeHTTPServer.response(401, "Unauthorized", body: Self.errorBody("auth", "Token \(Self.token) is not known.", hint: "Ask for a token."))]
        }
        defer { server.stop() }
        let client = try CapstanClient(server: URL(string: server.url)!, token: Self.token)
        do {
            _ = try await client.jobs()
            Issue.record("no error")
        } catch let e as CapstanError {
            #expect(e.code == .auth)
            #expect(e.message == "Token <token> is not known." && e.hint == "Ask for a token.", "\(e)")
            #expect(!e.description.contains(Self.token) && !"\(e)".contains(Self.token))
        }
        let seen = try #require(server.requests.first)
        #expect(seen.headers["authorization"] == "Bearer \(Self.token)")
        #expect(seen.method == "GET" && seen.target.hasPrefix("/v1/jobs?"), "\(seen.target)")
        #expect(!client.description.contains(Self.token))
    }

    @Test("every error answer decodes into the server's CapstanError, thrown as it is")
    func errorAnswers() async throws {
        let server = try FakeHTTPServer { _ in
            [FakeHTTPServer.response(404, "Not Found", body: Self.errorBody("notFound", "No job 'x'.", hint: "See `capstan jobs`."))]
        }
        defer { server.stop() }
        let client = try CapstanClient(server: URL(string: server.url)!, token: nil)
        await #expect { try await client.job("x") } throws: { e in
            e as? CapstanError == CapstanError(.notFound, "No job 'x'.", hint: "See `capstan jobs`.")
        }
    }

    @Test("an answer that is not the API's is a clear error naming the route and status", arguments: [
        (502, "text/html", "<html>Bad gateway</html>", "transient"),
        (404, "text/html", "<html>nope</html>", "internal"),
        (200, "application/json", "{\"hello\": 1}", "internal"),
        (200, "text/plain", "not json", "internal"),
        (302, "text/plain", "", "internal"),
    ])
    func unexpectedAnswers(status: Int, type: String, body: String, code: String) async throws {
        let server = try FakeHTTPServer { _ in [FakeHTTPServer.response(status, "Whatever", headers: ["Content-Type": type, "Location": "http://elsewhere/"], body: body)] }
        defer { server.stop() }
        let client = try CapstanClient(server: URL(string: server.url)!, token: Self.token)
        do {
            _ = try await client.status()
            Issue.record("no error")
        } catch let e as CapstanError {
            #expect(e.code.name == code, "\(e)")
            #expect(e.message.contains("GET /v1/clusters") && e.message.contains("HTTP \(status)") && e.message.contains(server.url), "\(e)")
            #expect(e.hint != nil)
        }
    }

    @Test("a server that cannot be reached: the error names it and says what to check")
    func unreachable() async throws {
        let url = "http://127.0.0.1:\(try FakeHTTPServer.closedPort())"
        let client = try CapstanClient(server: URL(string: url)!, token: Self.token)
        do {
            _ = try await client.reconcile()
            Issue.record("no error")
        } catch let e as CapstanError {
            #expect(e.message.contains(url) && e.message.contains("POST /v1/reconcile"), "\(e)")
            #expect(e.hint?.contains("capstan serve") == true && e.hint?.contains("CAPSTAN_SERVER") == true, "\(e)")
            #expect(!e.description.contains(Self.token))
        }
    }

    @Test("the logs stream reads NDJSON as it arrives, lines cut anywhere across writes")
    func logsStream() async throws {
        let job = JobRecord(id: "j-1", name: "j", spec: "run: true", specFolder: "/", settings: "{}", clusterName: "j-1", ownsCluster: true, storage: "file:///b")
        let end = String(decoding: try CapstanAPI.encoder.encode(LogStreamItem(end: job)), as: UTF8.self)
        let event = String(decoding: try CapstanAPI.encoder.encode(LogStreamItem(event: StateEvent(clusterID: nil, kind: "running", message: "Attempt 1 running."))), as: UTF8.self)
        let whole = "{\"node\":0,\"line\":\"héllo\"}\n" + event + "\n{\"node\":1,\"line\":\"second\"}\n" + end + "\n"
        let bytes = Array(whole.utf8)
        // Cut inside the é, inside a key, and just before a newline.
        let cuts = [13, 40, whole.utf8.count - 2]
        var pieces: [String] = []
        var from = 0
        for c in cuts + [bytes.count] {
            pieces.append(String(decoding: bytes[from..<c], as: UTF8.self))
            from = c
        }
        let server = try FakeHTTPServer { _ in
            // Raw bytes, so a cut UTF-8 sequence really arrives in two writes.
            var out = [Data("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n".utf8)]
            var from = 0
            for c in cuts + [bytes.count] { out.append(Data(bytes[from..<c])); from = c }
            return out
        }
        defer { server.stop() }
        let client = try CapstanClient(server: URL(string: server.url)!, token: Self.token)
        var items: [LogStreamItem] = []
        for try await item in client.logs("j-1", node: nil, follow: true, events: true) { items.append(item) }
        #expect(items.count == 4)
        #expect(items[0] == LogStreamItem(node: 0, line: "héllo"))
        #expect(items[1].event?.message == "Attempt 1 running.")
        #expect(items[1].jobEvent == .status(.running, "Attempt 1 running."))
        #expect(items[2] == LogStreamItem(node: 1, line: "second"))
        #expect(items[3].end?.id == "j-1")
        let target = try #require(server.requests.first?.target)
        #expect(target == "/v1/jobs/j-1/logs?follow=true&events=true", "\(target)")
    }

    @Test("a followed stream that breaks off is opened again and resumed without repeats; an unfollowed one is not")
    func resumed() async throws {
        let job = JobRecord(id: "j-2", name: "j", spec: "run: true", specFolder: "/", settings: "{}", clusterName: "j-2", ownsCluster: true, storage: "file:///b")
        let end = String(decoding: try CapstanAPI.encoder.encode(LogStreamItem(end: job)), as: UTF8.self)
        var first = StateEvent(clusterID: nil, kind: "running", message: "Running.")
        first.id = 7
        let event = String(decoding: try CapstanAPI.encoder.encode(LogStreamItem(event: first)), as: UTF8.self)
        let connections = Counter()
        let server = try FakeHTTPServer { _ in
            if connections.next() == 1 {
                // Cut off mid-line, before the end.
                return FakeHTTPServer.streamed(["{\"node\":0,\"line\":\"a\"}\n" + event + "\n{\"node\":1,\"line\":\"b\"}\n{\"node\":0,\"li"])
            }
            return FakeHTTPServer.streamed(["{\"node\":0,\"line\":\"a\"}\n" + event + "\n{\"node\":1,\"line\":\"b\"}\n{\"node\":0,\"line\":\"c\"}\n" + end + "\n"])
        }
        defer { server.stop() }
        let client = try CapstanClient(server: URL(string: server.url)!, token: nil)
        var items: [LogStreamItem] = []
        for try await item in client.logs("j-2", follow: true, events: true) { items.append(item) }
        #expect(items.compactMap(\.line) == ["a", "b", "c"], "\(items)")
        #expect(items.compactMap(\.event).count == 1 && items.last?.end?.id == "j-2")
        #expect(server.requests.count == 2)
    }

    @Test("a log stream line that is not an item is an error naming the route, not a crash")
    func badStreamLine() async throws {
        let server = try FakeHTTPServer { _ in FakeHTTPServer.streamed(["{\"node\":0,\"line\":\"ok\"}\n", "<html>\n"]) }
        defer { server.stop() }
        let client = try CapstanClient(server: URL(string: server.url)!, token: nil)
        var lines: [String] = []
        do {
            for try await item in client.logs("j", follow: false) { if let l = item.line { lines.append(l) } }
            Issue.record("no error")
        } catch let e as CapstanError {
            #expect(e.code == .internalError && e.message.contains("GET /v1/jobs/j/logs"), "\(e)")
        }
        #expect(lines == ["ok"])
    }

    @Test("job events map to what the embedded follower prints")
    func eventMapping() {
        func ev(_ kind: String, _ message: String) -> JobEvent? { LogStreamItem.jobEvent(StateEvent(clusterID: nil, kind: kind, message: message)) }
        #expect(ev("checkpoint", "Checkpoint step 20 committed (1234 bytes, attempt 1).") == .checkpoint(step: 20, bytes: 1234))
        #expect(ev("checkpoint", "Checkpoint step 3 had every part but no manifest; committed it.") == nil)
        #expect(ev("replaced", "Node 1 is now local-abc.") == .nodeReplaced(node: 1, instance: "local-abc"))
        #expect(ev("failed", "Job failed.") == .status(.failed, "Job failed."))
        #expect(ev("submitted", "Job x submitted.") == nil)
    }

    @Test("a workdir upload streams tar's output; a folder over the limit is refused before anything is sent")
    func upload() async throws {
        let dir = TempDir("capstan-upload"); defer { dir.cleanup() }
        dir.write("work/a.txt", "alpha\n")
        dir.write("work/sub/b.txt", String(repeating: "b", count: 300_000))
        let received = dir.file("received.tar")
        let server = try FakeHTTPServer { request in
            try? request.body.write(to: URL(fileURLWithPath: received))
            return [FakeHTTPServer.response(201, "Created", body: "{\"id\":\"up-1\",\"bytes\":\(request.body.count)}")]
        }
        defer { server.stop() }
        let client = try CapstanClient(server: URL(string: server.url)!, token: Self.token)
        let answer = try await client.upload(folder: dir.file("work"))
        #expect(answer.id == "up-1" && answer.bytes > 300_000)
        let request = try #require(server.requests.first)
        #expect(request.method == "POST" && request.target == "/v1/uploads" && request.headers["content-type"] == "application/x-tar")
        let archive = try Data(contentsOf: URL(fileURLWithPath: received))
        #expect(archive.count == Int(answer.bytes))
        // What arrived is the folder as tar packed it.
        let tar = Process()
        tar.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        tar.arguments = ["tar", "-tf", received]
        let out = Pipe()
        tar.standardOutput = out
        try tar.run()
        let names = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        tar.waitUntilExit()
        #expect(tar.terminationStatus == 0 && names.contains("./a.txt") && names.contains("./sub/b.txt"), "\(names)")

        await #expect { try await client.upload(folder: dir.file("work"), maxBytes: 1000) } throws: { e in
            let e = e as? CapstanError
            return e?.code == .invalidRequest && e?.message.contains("more than") == true && e?.hint?.contains("--max-upload-mb") == true
        }
        #expect(server.requests.count == 1, "the refused upload sent nothing")
        await #expect { try await client.upload(folder: dir.file("missing")) } throws: { e in
            (e as? CapstanError)?.message.contains("is not a folder") == true
        }
    }
}

extension CapstanError.Code {
    static func all(_ name: String) -> CapstanError.Code {
        try! JSONDecoder().decode(CapstanError.Code.self, from: Data("\"\(name)\"".utf8))
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func next() -> Int { lock.withLock { n += 1; return n } }
}
