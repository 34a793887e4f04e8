import CapstanCore
import CapstanStorage
import CapstanProviders
import CapstanTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Tree transfers: progress, and runs into one folder at once")
struct TreeTransferTests {
    /// A bucket holding `count` objects of 64 KiB–1 MiB under `tree/`.
    func bucket(_ dir: TempDir, count: Int) async throws -> FileObjectStore {
        let store = try FileObjectStore(root: dir.file("bucket"))
        for i in 0..<count {
            let src = dir.file("src-\(i)")
            try Data(repeating: UInt8(i), count: 65_536 * (1 + i % 16)).write(to: URL(fileURLWithPath: src))
            _ = try await store.put(file: src, key: "tree/d\(i % 4)/f\(i).bin", options: PutOptions(), progress: nil)
        }
        return store
    }

    @Test("another run's staging folder is left alone while its process lives, removed once it is gone or a day old; nothing below the top is touched")
    func leftovers() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let host = TreeTransfer.thisHost
        // A child that has ended: its pid is free (not reused this soon).
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        let live = TreeTransfer.stagingName(pid: getpid()), dead = TreeTransfer.stagingName(pid: child.processIdentifier)
        let elsewhere = TreeTransfer.stagingName(host: "other-host", pid: child.processIdentifier)
        let old = TreeTransfer.stagingName(host: "other-host", pid: 1)
        #expect(live.hasPrefix(".capstan-sync-\(TreeTransfer.safeHost(host))-\(getpid())-"))
        for name in [live, dead, elsewhere, old] { dir.write("down/\(name)/0/.capstan-get-1", "in flight") }
        dir.write("down/a/.capstan-get-fresh", "a run of an older version, in flight")
        dir.write("down/a/.capstan-get-stale", "cut a week ago")
        dir.write("down/a/file.bin", "data")
        let weekAgo = Date().addingTimeInterval(-7 * 86_400)
        for rel in ["down/\(old)", "down/a/.capstan-get-stale", "down/a/file.bin"] {
            try FileManager.default.setAttributes([.modificationDate: weekAgo], ofItemAtPath: dir.file(rel))
        }
        TreeTransfer.removeLeftovers(dir.file("down"))
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: dir.file("down")))
        #expect(left == [live, elsewhere, "a"], "\(left)")
        // Below the top nothing is touched (a big destination is never walked).
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: dir.file("down/a"))) == [".capstan-get-fresh", ".capstan-get-stale", "file.bin"])
        #expect(TreeTransfer.stale(".capstan-sync-bad-name", modified: Date()) == false)
    }

    @Test("a download starting while another into the same folder has a file in flight leaves that file alone; both finish whole, nothing of theirs left behind; progress adds up to the totals")
    func concurrentDownloads() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try await bucket(dir, count: 24)
        let seen = LockedBox<[TreeTransfer.Progress]>([])
        // The first run stops in the middle of a file (its temporary file on disk, not yet
        // renamed) until the second has started and cleaned up what it took for leftovers.
        let firstInFlight = DispatchSemaphore(value: 0), secondStarted = DispatchSemaphore(value: 0)
        let held = LockedBox(false), signalled = LockedBox(false)
        var a = TreeTransfer(store: store, direction: .download(prefix: "tree/", folder: dir.file("down")), onlyChanged: false, parallel: 3)
        a.progress = { p, step in
            if step != nil { seen.withLock { $0.append(p) } }
            guard step == nil, held.withLock({ h in defer { h = true }; return !h }) else { return }
            firstInFlight.signal()
            _ = secondStarted.wait(timeout: .now() + 60)
        }
        var b = TreeTransfer(store: store, direction: .download(prefix: "tree", folder: dir.file("down")), onlyChanged: false, parallel: 3)
        b.progress = { _, _ in
            if signalled.withLock({ s in defer { s = true }; return !s }) { secondStarted.signal() }
        }
        let first = a, second = b
        async let x = first.run()
        #expect(await Task.detached { firstInFlight.wait(timeout: .now() + 60) }.value == .success)
        let sb = try await second.run()
        let sa = try await x
        #expect(sa.transferred == 24 && sb.transferred == 24)
        let names = try FileManager.default.subpathsOfDirectory(atPath: dir.file("down"))
        #expect(names.filter { $0.hasSuffix(".bin") }.count == 24 && !names.contains { $0.contains(".capstan-") }, "\(names.filter { $0.contains(".capstan-") })")
        for i in [0, 7, 23] {
            #expect(FileManager.default.contents(atPath: dir.file("down/d\(i % 4)/f\(i).bin")) == Data(repeating: UInt8(i), count: 65_536 * (1 + i % 16)))
        }
        let last = try #require(seen.withLock { $0 }.max { $0.filesDone < $1.filesDone })
        #expect(seen.withLock { $0.count } == 24)
        let total: Int64 = (0..<24).reduce(0) { $0 + Int64(65_536 * (1 + $1 % 16)) }
        #expect(last.filesDone == 24 && last.filesTotal == 24)
        #expect(last.bytesDone == total && last.bytesMoved == total && last.bytesTotal == total)
    }
}
