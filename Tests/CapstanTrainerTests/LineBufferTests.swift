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
}
