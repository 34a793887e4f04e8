import CapstanTrainer
import Foundation
import Testing

@Suite("Log line buffer")
struct LineBufferTests {
    @Test("lines split across chunks, and a UTF-8 character cut between them, come out whole")
    func chunks() {
        var b = LineBuffer()
        let bytes = Array("step 1 ✓\nstep 2 ✓\npartial".utf8)
        // Cut inside the first ✓ (3 bytes) and inside "step 2".
        let cut1 = 8, cut2 = 14
        #expect(b.feed(Data(bytes[..<cut1])) == [])
        #expect(b.feed(Data(bytes[cut1..<cut2])) == ["step 1 ✓"])
        #expect(b.feed(Data(bytes[cut2...])) == ["step 2 ✓"])
        #expect(b.flush() == "partial")
        #expect(b.flush() == nil)
        #expect(b.feed(Data("\n\na\n".utf8)) == ["", "", "a"])
    }

    @Test("a node log tail returns each node's new whole lines by offset; the unterminated rest only when final; a missing log has none")
    func nodeLogTail() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-tail-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let zero = dir + "/node-0.log", one = dir + "/node-1.log"
        var tail = NodeLogTail()
        #expect(tail.read(0, path: zero, final: false).isEmpty)
        FileManager.default.createFile(atPath: zero, contents: Data("a\nb\npart".utf8))
        FileManager.default.createFile(atPath: one, contents: Data("x\n".utf8))
        #expect(tail.read(0, path: zero, final: false) == ["a", "b"])
        #expect(tail.read(1, path: one, final: false) == ["x"])
        #expect(tail.read(0, path: zero, final: false).isEmpty)
        let h = try #require(FileHandle(forWritingAtPath: zero))
        try h.seekToEnd()
        try h.write(contentsOf: Data("ial\nc\nlast".utf8))
        try h.close()
        #expect(tail.read(0, path: zero, final: false) == ["partial", "c"])
        #expect(tail.read(0, path: zero, final: true) == ["last"])
        #expect(tail.read(0, path: zero, final: true).isEmpty)
        #expect(tail.read(1, path: one, final: true).isEmpty)
    }
}
