import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing

@Suite("Checkpoint watcher")
struct CheckpointWatcherTests {
    func write(_ dir: TempDir, node: Int, step: Int, done: Bool = true) {
        dir.write("n\(node)/step-\(step)/model.bin", "w\(node)-\(step)")
        if done { dir.write("n\(node)/step-\(step)/.done", "") }
    }

    @Test("uploads each complete step once, skips unfinished ones, commits and keeps the last K")
    func singleNode() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = CheckpointStore(store: try FileObjectStore(root: dir.file("bucket")), prefix: "jobs/j/ckpt")
        let w = CheckpointWatcher(folder: dir.file("n0"), checkpoints: cs, job: "j", attempt: 1, node: 0, nodes: 1, keep: 2)
        write(dir, node: 0, step: 1)
        write(dir, node: 0, step: 2, done: false)
        #expect(try await w.runOnce() == [1])
        #expect(try await cs.committedSteps() == [1])
        #expect(try await w.runOnce().isEmpty)  // nothing new
        write(dir, node: 0, step: 2)
        write(dir, node: 0, step: 3)
        #expect(try await w.runOnce() == [2, 3])
        #expect(await w.committed == [1, 2, 3])
        #expect(try await cs.committedSteps() == [2, 3])  // keep 2
        #expect(try await cs.latestVerified()?.step == 3)
    }

    @Test("two nodes: the leader commits only after the other node's part is in")
    func twoNodes() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let store = try FileObjectStore(root: dir.file("bucket"))
        let cs = CheckpointStore(store: store, prefix: "jobs/j/ckpt")
        let leader = CheckpointWatcher(folder: dir.file("n0"), checkpoints: cs, job: "j", attempt: 1, node: 0, nodes: 2, keep: 3)
        let worker = CheckpointWatcher(folder: dir.file("n1"), checkpoints: cs, job: "j", attempt: 1, node: 1, nodes: 2, keep: 3)
        write(dir, node: 0, step: 10)
        write(dir, node: 1, step: 10)
        try await leader.runOnce()
        #expect(try await cs.committedSteps().isEmpty)
        try await worker.runOnce()
        #expect(try await cs.committedSteps().isEmpty)  // only the leader commits
        try await leader.runOnce()
        #expect(try await cs.committedSteps() == [10])
        #expect(try await cs.latestVerified()?.parts.map(\.node) == [0, 1])
    }

    @Test("running in the background: steps appear while it polls; cancellation stops it")
    func background() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = CheckpointStore(store: try FileObjectStore(root: dir.file("bucket")), prefix: "p")
        let w = CheckpointWatcher(folder: dir.file("n0"), checkpoints: cs, job: "j", attempt: 1, node: 0, nodes: 1, keep: 5, pollInterval: .milliseconds(20))
        let task = Task { await w.run() }
        for step in 1...3 {
            write(dir, node: 0, step: step)
            try await Task.sleep(for: .milliseconds(60))
        }
        var committed: [Int] = []
        let deadline = ContinuousClock.now + .seconds(30)  // a loaded machine may be slow to poll
        while committed.count < 3, ContinuousClock.now < deadline {
            committed = await w.committed
            try await Task.sleep(for: .milliseconds(20))
        }
        task.cancel()
        await task.value
        #expect(committed == [1, 2, 3])
    }
}
