import CapstanCore
import Foundation
import Testing

@Suite("Bandwidth limiter")
struct BandwidthLimiterTests {
    @Test("parts are spaced by their size over the rate; idle time is not banked into a burst")
    func schedule() {
        let l = BandwidthLimiter(bytesPerSecond: 10)
        let t0 = ContinuousClock.now
        #expect(l.slot(for: 10, at: t0) == t0)                       // idle link: at once
        #expect(l.slot(for: 20, at: t0) == t0 + .seconds(1))         // after the first 10 bytes
        #expect(l.slot(for: 5, at: t0 + .milliseconds(500)) == t0 + .seconds(3))
        // Long idle: the next part goes when asked, and the one after waits its full share.
        let later = t0 + .seconds(60)
        #expect(l.slot(for: 10, at: later) == later)
        #expect(l.slot(for: 10, at: later) == later + .seconds(1))
    }

    @Test("options without a cap make no limiter; a cap makes one at that rate")
    func fromOptions() {
        #expect(BandwidthLimiter(PutOptions()) == nil)
        #expect(BandwidthLimiter(PutOptions(maxBytesPerSecond: 0)) == nil)
        #expect(BandwidthLimiter(PutOptions(maxBytesPerSecond: 5 << 20))?.bytesPerSecond == Double(5 << 20))
    }

    @Test("PutOptions carry the cap across the plugin wire; an older host's JSON without it decodes")
    func wire() throws {
        let o = PutOptions(partSize: 5 << 20, maxBytesPerSecond: 1 << 20)
        #expect(try PluginWire.decoder.decode(PutOptions.self, from: PluginWire.encoder.encode(o)) == o)
        let old = try PluginWire.decoder.decode(PutOptions.self, from: Data(#"{"metadata":{},"ifNoneMatch":false}"#.utf8))
        #expect(old.maxBytesPerSecond == nil)
    }
}
