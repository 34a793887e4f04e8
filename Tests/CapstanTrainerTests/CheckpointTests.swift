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

@Suite("Checkpoint protocol")
struct CheckpointTests {
    /// Writes a complete (or, without `done`, an in-progress) checkpoint folder.
    func checkpoint(_ dir: TempDir, node: Int, step: Int, done: Bool = true) -> String {
        let folder = dir.file("node\(node)/ckpt/step-\(step)")
        dir.write("node\(node)/ckpt/step-\(step)/model.bin", "weights \(node) \(step)")
        dir.write("node\(node)/ckpt/step-\(step)/optimizer/state.pt", String(repeating: "o", count: 1000 + step))
        if done { dir.write("node\(node)/ckpt/step-\(step)/.done", "") }
        return folder
    }

    func store(_ dir: TempDir) throws -> CheckpointStore {
        CheckpointStore(store: try FileObjectStore(root: dir.file("bucket")), prefix: "jobs/j1/checkpoints")
    }

    @Test("two nodes upload their parts; the leader commits only when both are in")
    func twoNodes() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = try store(dir)
        try await cs.uploadPart(folder: checkpoint(dir, node: 0, step: 100), step: 100, node: 0)
        #expect(try await cs.commit(step: 100, job: "j1", attempt: 1, nodes: 2) == nil)
        #expect(try await cs.latestVerified() == nil)
        try await cs.uploadPart(folder: checkpoint(dir, node: 1, step: 100), step: 100, node: 1)
        let m = try #require(try await cs.commit(step: 100, job: "j1", attempt: 1, nodes: 2))
        #expect(m.parts.map(\.node) == [0, 1])
        #expect(m.parts[0].files.map(\.path) == ["model.bin", "optimizer/state.pt"])
        #expect(m.totalBytes == Int64(2 * ("weights 0 100".count + 1100)))
        #expect(try await cs.commit(step: 100, job: "j1", attempt: 1, nodes: 2) == m)  // idempotent
        #expect(try await cs.latestVerified()?.step == 100)
        #expect(CheckpointProtocol.completeSteps(in: dir.file("node0/ckpt")) == [100])
    }

    @Test("a folder without the marker is never uploaded")
    func unfinished() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let folder = checkpoint(dir, node: 0, step: 5, done: false)
        let e = await #expect(throws: CapstanError.self) { try await store(dir).uploadPart(folder: folder, step: 5, node: 0) }
        #expect(e?.message.contains("no .done marker") == true)
        #expect(CheckpointProtocol.completeSteps(in: dir.file("node0/ckpt")).isEmpty)
    }

    @Test("a cut upload or a damaged file is never used: the previous checkpoint is")
    func damaged() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = try store(dir)
        for step in [10, 20] {
            try await cs.uploadPart(folder: checkpoint(dir, node: 0, step: step), step: step, node: 0)
            _ = try await cs.commit(step: step, job: "j1", attempt: 1, nodes: 1)
        }
        // Step 30: the files went up, the process died before its part record and manifest.
        _ = try await FileObjectStore(root: dir.file("bucket")).put(file: checkpoint(dir, node: 0, step: 30) + "/model.bin", key: "jobs/j1/checkpoints/step-30/attempt-1/node-0/model.bin")
        #expect(try await cs.latestVerified()?.step == 20)
        // Step 20's weights change under its manifest (a foreign writer, bit rot).
        let evil = dir.write("evil", "not the weights")
        _ = try await FileObjectStore(root: dir.file("bucket")).put(file: evil, key: "jobs/j1/checkpoints/step-20/attempt-1/node-0/model.bin")
        #expect(try await cs.verified(step: 20) == nil)
        #expect(try await cs.latestVerified()?.step == 10)
        // A manifest that is not JSON only disqualifies its own step.
        _ = try await FileObjectStore(root: dir.file("bucket")).put(file: evil, key: "jobs/j1/checkpoints/step-40/manifest.json")
        #expect(try await cs.latestVerified()?.step == 10)
    }

    @Test("restore brings a node's part back, verified and marked complete")
    func restore() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = try store(dir)
        let src = checkpoint(dir, node: 0, step: 7)
        try await cs.uploadPart(folder: src, step: 7, node: 0, attempt: 2)
        let m = try #require(try await cs.commit(step: 7, job: "j1", attempt: 2, nodes: 1))
        try await cs.restore(m, node: 0, into: dir.file("resume"))
        #expect(FileManager.default.contentsEqual(atPath: src + "/optimizer/state.pt", andPath: dir.file("resume/optimizer/state.pt")))
        #expect(FileManager.default.fileExists(atPath: dir.file("resume/.done")))
        await #expect(throws: CapstanError.self) { try await cs.restore(m, node: 3, into: dir.file("x")) }
    }

    @Test("a sharded checkpoint (files under global/) restores whole on every node, on fewer or more nodes than wrote it; a global file in two parts is refused")
    func restoreGlobal() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = try store(dir)
        for node in 0..<2 {
            for rank in [2 * node, 2 * node + 1] {
                dir.write("node\(node)/ckpt/step-5/global/dcp/__\(rank)_0.distcp", "shard \(rank)")
                dir.write("node\(node)/ckpt/step-5/global/rng-rank\(rank).pt", "rng \(rank)")
            }
            if node == 0 { dir.write("node0/ckpt/step-5/global/dcp/.metadata", "index") }
            dir.write("node\(node)/ckpt/step-5/local.log", "node \(node)")
            dir.write("node\(node)/ckpt/step-5/.done", "")
            try await cs.uploadPart(folder: dir.file("node\(node)/ckpt/step-5"), step: 5, node: node)
        }
        let m = try #require(try await cs.commit(step: 5, job: "j1", attempt: 1, nodes: 2))
        // One node now (it lost one): every shard and every rank's RNG, and its own files.
        try await cs.restore(m, node: 0, into: dir.file("one"))
        let got = try #require(CheckpointProtocol.regularFiles(in: dir.file("one")))
        #expect(got == [".done", "global/dcp/.metadata", "global/dcp/__0_0.distcp", "global/dcp/__1_0.distcp", "global/dcp/__2_0.distcp", "global/dcp/__3_0.distcp",
                        "global/rng-rank0.pt", "global/rng-rank1.pt", "global/rng-rank2.pt", "global/rng-rank3.pt", "local.log"], "\(got)")
        #expect((try? String(contentsOfFile: dir.file("one/local.log"), encoding: .utf8)) == "node 0")
        // A third node (a bigger cluster): the job-wide files only.
        try await cs.restore(m, node: 2, into: dir.file("three"))
        #expect(CheckpointProtocol.regularFiles(in: dir.file("three"))?.contains("local.log") == false)
        #expect(CheckpointProtocol.regularFiles(in: dir.file("three"))?.filter { $0.hasPrefix("global/") }.count == 9)
        // The same job-wide path from two nodes: which one is the job's is unknowable.
        var twice = m
        twice.parts[1].files.append(m.parts[0].files.first { $0.path.hasPrefix("global/") }!)
        let e = await #expect(throws: CorruptCheckpoint.self) { try await cs.restore(twice, node: 0, into: dir.file("x")) }
        #expect(e?.reason.contains("for both node 0 and node 1") == true, "\(String(describing: e))")
    }

    @Test("a part left by a dead attempt is never mixed into a new attempt's manifest")
    func attemptsKeptApart() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = try store(dir)
        // Attempt 1: node 0 uploaded step 50, node 1 died before its part.
        try await cs.uploadPart(folder: checkpoint(dir, node: 0, step: 50), step: 50, node: 0, attempt: 1)
        // Attempt 2 writes step 50 again; node 1's part arrives first.
        try await cs.uploadPart(folder: checkpoint(dir, node: 1, step: 50), step: 50, node: 1, attempt: 2)
        #expect(try await cs.commit(step: 50, job: "j1", attempt: 2, nodes: 2) == nil)
        try await cs.uploadPart(folder: checkpoint(dir, node: 0, step: 50), step: 50, node: 0, attempt: 2)
        let m = try #require(try await cs.commit(step: 50, job: "j1", attempt: 2, nodes: 2))
        #expect(m.attempt == 2)
        #expect(try await cs.verified(step: 50) == m)
        try await cs.restore(m, node: 1, into: dir.file("r1"))
        #expect(FileManager.default.contentsEqual(atPath: dir.file("node1/ckpt/step-50/model.bin"), andPath: dir.file("r1/model.bin")))
    }

    @Test("a step with every part but no manifest (leader lost before the commit) is committed later")
    func commitComplete() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = try store(dir)
        try await cs.uploadPart(folder: checkpoint(dir, node: 0, step: 20), step: 20, node: 0, attempt: 1)
        try await cs.uploadPart(folder: checkpoint(dir, node: 1, step: 20), step: 20, node: 1, attempt: 1)
        try await cs.uploadPart(folder: checkpoint(dir, node: 0, step: 30), step: 30, node: 0, attempt: 1)  // node 1 never got there
        #expect(try await cs.latestVerified() == nil)
        #expect(try await cs.commitComplete(job: "j1", nodes: 2) == [20])
        #expect(try await cs.latestVerified()?.step == 20)
        #expect(try await cs.commitComplete(job: "j1", nodes: 2).isEmpty)
    }

    @Test("retention keeps the newest K and deletes older ones, manifest first")
    func retention() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = try store(dir)
        for step in [1, 2, 3, 4] {
            try await cs.uploadPart(folder: checkpoint(dir, node: 0, step: step), step: step, node: 0)
            _ = try await cs.commit(step: step, job: "j1", attempt: 1, nodes: 1)
        }
        #expect(try await cs.retain(keep: 2) == [1, 2])
        #expect(try await cs.committedSteps() == [3, 4])
        let keys = try await FileObjectStore(root: dir.file("bucket")).list(prefix: "jobs/j1/checkpoints/").map(\.key)
        #expect(!keys.contains { $0.contains("step-1/") || $0.contains("step-2/") })
        #expect(try await cs.retain(keep: 2).isEmpty)
    }

    @Test("a byte flipped under a manifest: the recorded checksums still match, restore says which step is corrupt, check() re-hashes, a recorded one is skipped")
    func flippedByte() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cs = try store(dir)
        for step in [20, 30] {
            try await cs.uploadPart(folder: checkpoint(dir, node: 0, step: step), step: step, node: 0)
            _ = try await cs.commit(step: step, job: "j1", attempt: 1, nodes: 1)
        }
        // Bit rot in the bucket: same size, so size and recorded SHA-256 still agree.
        let object = dir.file("bucket/jobs/j1/checkpoints/step-30/attempt-1/node-0/optimizer/state.pt")
        let h = try #require(FileHandle(forUpdatingAtPath: object))
        try h.seek(toOffset: 10)
        h.write(Data("X".utf8))
        try h.close()
        let m = try #require(try await cs.latestVerified())
        #expect(m.step == 30)  // the cheap check cannot see it
        let e = await #expect(throws: CorruptCheckpoint.self) { try await cs.restore(m, node: 0, into: dir.file("resume")) }
        #expect(e?.step == 30 && e?.reason.contains("optimizer/state.pt") == true && e?.reason.contains("SHA-256") == true)
        #expect(CheckpointStore.isCorruption(e!))
        #expect(!CheckpointStore.isCorruption(CapstanError(.transient, "connection reset")))
        // The real re-hash.
        let bad = try await cs.check(step: 30, scratch: dir.file("scratch"))
        #expect(!bad.ok && bad.reason?.contains("state.pt") == true && bad.attempt == 1)
        let good = try await cs.check(step: 20, scratch: dir.file("scratch"))
        #expect(good.ok && good.reason == nil && good.bytes == Int64("weights 0 20".count + 1020))
        #expect(try await cs.check(step: 99, scratch: dir.file("scratch")).ok == false)
        // Recorded, it is skipped by every later choice; its files stay.
        try await cs.markCorrupt(e!)
        #expect(try await cs.corruptSteps() == [30])
        #expect(try await cs.corruption(step: 30)?.reason == e?.reason)
        #expect(try await cs.latestVerified()?.step == 20)
        #expect(try await cs.committedSteps() == [20, 30])
    }
}
