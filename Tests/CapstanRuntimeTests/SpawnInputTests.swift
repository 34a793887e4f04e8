import CapstanCore
@testable import CapstanRuntime
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// How input that may hold credentials reaches a child (never through a file on disk).
@Suite("Spawn input")
struct SpawnInputTests {
    func temp(_ name: String) -> String { NSTemporaryDirectory() + "capstan-spawn-\(UUID().uuidString)-\(name)" }

    @Test("without memfd, big input goes through a pipe fed by a thread; a reader that leaves early ends it with EPIPE, not a SIGPIPE for this process")
    func fedPipe() throws {
        let input = Data(repeating: 0x43, count: 1_000_000)
        for (command, expected) in [("wc -c", "1000000\n"), ("head -c 10 > /dev/null; echo early", "early\n")] {
            let fd = try Spawn.inputHolding(input, forceFedPipe: true)
            defer { close(fd) }
            let out = temp("fed")
            defer { unlink(out) }
            var streams = Spawn.Streams(stdout: out, append: false)
            streams.stdinFD = fd
            let r = try Spawn.runBlocking(["/bin/sh", "-c", "readlink /proc/self/fd/0 >&2; " + command], streams: streams, timeout: 30)
            #expect(r.status == .exited(0))
            #expect(try String(contentsOfFile: out, encoding: .utf8).hasSuffix(expected))
        }
        Thread.sleep(forTimeInterval: 0.2)  // (the early reader's writer thread met EPIPE meanwhile; this process lives on)
    }

    @Test("what holds a child's input: a pipe up to the limit, an in-memory file beyond")
    func holders() throws {
        for (size, kind) in [(10, "pipe:"), (Spawn.pipedInputLimit + 1, "/memfd:capstan-stdin")] {
            let fd = try Spawn.inputHolding(Data(repeating: 0x44, count: size))
            defer { close(fd) }
            let link = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")
            #expect(link.hasPrefix(kind), "\(size): \(link)")
            #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
        }
    }
}
