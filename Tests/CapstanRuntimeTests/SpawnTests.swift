import CapstanCore
import CapstanRuntime
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Spawning processes")
struct SpawnTests {
    func temp(_ name: String) -> String { NSTemporaryDirectory() + "capstan-spawn-\(UUID().uuidString)-\(name)" }

    @Test("runBlocking: stdin from a file, stdout and stderr to files, exit codes and signals")
    func streams() throws {
        let input = temp("in"), out = temp("out"), err = temp("err")
        defer { for f in [input, out, err] { unlink(f) } }
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: input))
        let r = try Spawn.runBlocking(["/bin/sh", "-c", "tr a-z A-Z; echo oops >&2; exit 3"], streams: .init(stdin: input, stdout: out, stderr: err, append: false), timeout: 30)
        #expect(r.status == .exited(3) && !r.timedOut)
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "HELLO\n")
        #expect(try String(contentsOfFile: err, encoding: .utf8) == "oops\n")
        let captured = try Spawn.runCapturing(["/bin/sh", "-c", "tr a-z A-Z; echo oops >&2"], input: Data("hi\n".utf8), timeout: 30)
        #expect(captured.status == .exited(0) && captured.stdout == Data("HI\n".utf8) && captured.stderr == Data("oops\n".utf8))
        let killed = try Spawn.runBlocking(["/bin/sh", "-c", "kill -9 $$"], streams: .init(), timeout: 30)
        #expect(killed.status == .signaled(SIGKILL) && killed.status.code == 137)
        #expect(throws: CapstanError.self) { try Spawn.runBlocking(["/nonexistent/tool"], streams: .init(), timeout: 5) }
    }

    @Test("small input reaches the child through a pipe, not a file: its stdin is a FIFO, and start(input:) feeds a detached child")
    func pipedInput() async throws {
        let captured = try Spawn.runCapturing(["/bin/sh", "-c", "readlink /proc/self/fd/0; cat"], input: Data("secret-ish\n".utf8), timeout: 30)
        let lines = String(decoding: captured.stdout, as: UTF8.self).split(separator: "\n")
        #expect(lines.first?.hasPrefix("pipe:") == true && lines.last == "secret-ish", "\(lines)")
        let out = temp("out")
        defer { unlink(out) }
        let pid = try Spawn.start(["/bin/sh", "-c", "readlink /proc/self/fd/0; cat"], environment: ["PATH": "/usr/bin:/bin"], output: out, input: Data("for the agent\n".utf8))
        #expect(await Spawn.wait(pid) == .exited(0))
        let text = try String(contentsOfFile: out, encoding: .utf8)
        #expect(text.hasPrefix("pipe:") && text.hasSuffix("for the agent\n"), "\(text)")
        // Bigger input still works (through an in-memory file: see bigInputNeverOnDisk).
        let big = Data(repeating: 65, count: 100_000)
        #expect(try Spawn.runCapturing(["/bin/sh", "-c", "wc -c"], input: big, timeout: 30).stdout == Data("100000\n".utf8))
    }

    @Test("input over the pipe limit never touches the disk either: the child's stdin is an in-memory file, and no file in TMPDIR ever holds it while the child runs (raw bytes)")
    func bigInputNeverOnDisk() async throws {
        // A credential with bytes that are not UTF-8, inside 200 kB of input.
        let secret = Data("capstan-secret-".utf8) + Data([0xff, 0xfe, 0x00, 0x80, 0xc3]) + Data(UUID().uuidString.utf8)
        let input = Data(repeating: 0x41, count: 100_000) + secret + Data(repeating: 0x42, count: 100_000)
        let tmp = FileManager.default.temporaryDirectory.path
        // The child says what its stdin is and how much it read, then waits while TMPDIR is scanned.
        let child = Task.detached {
            try Spawn.runCapturing(["/bin/sh", "-c", "readlink /proc/self/fd/0; wc -c; sleep 1"], input: input, timeout: 30)
        }
        var holding: Set<String> = []
        let end = Date().addingTimeInterval(0.9)
        while Date() < end {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? [] where name.hasPrefix("capstan-") {
                if FileManager.default.contents(atPath: tmp + "/" + name)?.range(of: secret) != nil { holding.insert(name) }
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        let r = try await child.value
        let lines = String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(holding.isEmpty, "the input was on disk in \(holding.sorted())")
        #expect(lines.count == 2 && !lines[0].hasPrefix(tmp) && (lines[0].hasPrefix("/memfd:") || lines[0].hasPrefix("pipe:")), "stdin was \(lines)")
        #expect(lines.last?.trimmingCharacters(in: .whitespaces) == "\(input.count)", "\(lines)")
    }

    @Test("runBlocking: past its timeout the child is stopped and timedOut is set")
    func timeout() throws {
        let r = try Spawn.runBlocking(["/bin/sleep", "30"], streams: .init(), timeout: 0.3)
        #expect(r.timedOut && r.status == .signaled(SIGTERM))
        // One that ignores SIGTERM gets SIGKILL (3 s: time for the shell to set its trap first).
        let stubborn = try Spawn.runBlocking(["/bin/sh", "-c", "trap '' TERM; sleep 30"], streams: .init(), timeout: 3)
        #expect(stubborn.timedOut && stubborn.status == .signaled(SIGKILL))
    }

    @Test("a child inherits only fds 0–2, whatever this process has open")
    func noLeakedDescriptors() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let out = temp("fds"); defer { unlink(out) }
        _ = try Spawn.runBlocking(["/bin/ls", "/proc/self/fd"], streams: .init(stdout: out, append: false), timeout: 30)
        let listed = try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n").compactMap { Int32($0) }
        // 0–2 and the one ls opened to read the folder.
        #expect(listed.filter { $0 > 2 }.count <= 1 && !listed.contains(fds[0]) && !listed.contains(fds[1]), "\(listed)")
    }

    @Test("runs at once do not wait for each other: quick ones end while slow ones that close their inherited fds still run")
    func concurrentRunsIndependent() async throws {
        // Foundation's Process on Linux notices an exit through a socket the child inherits,
        // then waits for that child in a blocking waitpid on its one manager thread. A child
        // that closes inherited descriptors as it starts (OpenSSH does) holds that thread for
        // its whole life, and no other Process's exit is noticed meanwhile: with the slow child
        // below, 18 of 20 quick Foundation runs returned only when it was killed. The SSH
        // transport's parallel status reads met exactly this.
        let slowDone = LockedBox(false)
        let quickTimes = try await withThrowingTaskGroup(of: Bool?.self) { group in
            for i in 0..<24 {
                group.addTask {
                    try await Spawn.onThread {
                        if i % 4 == 0 {
                            _ = try Spawn.runBlocking(["/usr/bin/env", "python3", "-c", "import os, time; os.closerange(3, 65536); time.sleep(30)"], streams: .init(), timeout: 15)
                            slowDone.withLock { $0 = true }
                            return nil
                        }
                        let r = try Spawn.runBlocking(["/bin/true"], streams: .init(), timeout: 30)
                        return r.status == .exited(0) && !slowDone.withLock { $0 }
                    }
                }
            }
            return try await group.reduce(into: [Bool]()) { if let ok = $1 { $0.append(ok) } }
        }
        #expect(quickTimes.count == 18 && quickTimes.allSatisfy { $0 }, "\(quickTimes.filter { !$0 }.count) of 18 quick runs returned only after a slow one ended")
    }
}
