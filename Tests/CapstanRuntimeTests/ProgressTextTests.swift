import CapstanRuntime
import Testing

@Suite("Progress lines: the text for given numbers and widths")
struct ProgressTextTests {
    let copy = ProgressText.transfer(label: "sync", filesDone: 3, filesTotal: 12, bytesDone: 5 << 20, bytesTotal: 12 << 20, moved: 4 << 20, elapsed: 2)

    @Test("a transfer at 80 columns: bar, percentage, files, bytes, rate, elapsed, in 79 characters")
    func transferLine() {
        let line = ProgressText.line(copy, width: 80)
        #expect(line.hasPrefix("sync [========>") && line.hasSuffix("]   41%  3/12 files  5.0 MiB/12.0 MiB  2.0 MiB/s  2s"), "\(line)")
        #expect(line.count <= 79)
        // The bar takes the room left, up to 32 columns.
        #expect(ProgressText.line(copy, width: 200).contains("[" + String(repeating: "=", count: 12) + ">" + String(repeating: " ", count: 17) + "]"))
    }

    @Test("narrow terminals: the bar shrinks, then goes, then the rate, the later counts and the label's end; never wider than width - 1")
    func narrow() {
        #expect(ProgressText.line(copy, width: 67) == "sync [===>    ]   41%  3/12 files  5.0 MiB/12.0 MiB  2.0 MiB/s  2s")
        #expect(ProgressText.line(copy, width: 66) == "sync   41%  3/12 files  5.0 MiB/12.0 MiB  2.0 MiB/s  2s")
        #expect(ProgressText.line(copy, width: 50) == "sync   41%  3/12 files  5.0 MiB/12.0 MiB  2s")
        #expect(ProgressText.line(copy, width: 30) == "sync   41%  3/12 files  2s")
        let long = ProgressSnapshot(label: "[node 0] python env: installing transformers", fraction: 0.5, counts: ["17/34 packages"], elapsed: 75)
        #expect(ProgressText.line(long, width: 40) == "[node 0] python env: inst…   50%  1m15s")
        for width in [1, 8, 20, 33, 47, 80, 120] {
            #expect(ProgressText.line(copy, width: width).count <= max(8, width - 1))
            #expect(ProgressText.line(long, width: width).count <= max(8, width - 1))
        }
    }

    @Test("plain form (not a terminal): no bar and no width limit; an unknown total has no percentage")
    func plain() {
        #expect(ProgressText.line(copy) == "sync   41%  3/12 files  5.0 MiB/12.0 MiB  2.0 MiB/s  2s")
        let collecting = ProgressText.items(label: "python env: collecting", done: 7, total: nil, noun: "packages", elapsed: 4.9)
        #expect(ProgressText.line(collecting) == "python env: collecting  7 packages  4s")
        #expect(!ProgressText.line(collecting, width: 80).contains("["))
        #expect(ProgressText.line(ProgressText.items(label: "x", done: 40, total: 34, noun: "packages", elapsed: 0)) == "x  100%  34/34 packages  0s")
    }

    @Test("bars, percentages, rates, sizes and durations at their edges")
    func pieces() {
        #expect(ProgressText.bar(0, width: 12) == "[>         ]")
        #expect(ProgressText.bar(0.999, width: 12) == "[=========>]")
        #expect(ProgressText.bar(1, width: 12) == "[==========]")
        #expect(ProgressText.bar(.nan, width: 5) == "[>  ]")
        #expect(ProgressText.percent(0.996) == " 99%" && ProgressText.percent(1) == "100%" && ProgressText.percent(-1) == "  0%")
        #expect(ProgressText.rate(bytes: 1 << 20, seconds: 0.2) == nil)
        #expect(ProgressText.rate(bytes: 0, seconds: 10) == nil)
        #expect(ProgressText.rate(bytes: 3 << 20, seconds: 2) == "1.5 MiB/s")
        #expect(ProgressText.bytes(512) == "512 B" && ProgressText.bytes(1536) == "1.5 KiB")
        #expect(ProgressText.duration(59.9) == "59s" && ProgressText.duration(61) == "1m01s" && ProgressText.duration(3 * 3600 + 720) == "3h12m" && ProgressText.duration(-.infinity) == "0s")
        // No files at all: no bar, no percentage.
        let empty = ProgressText.transfer(label: "cp -r", filesDone: 0, filesTotal: 0, bytesDone: 0, bytesTotal: 0, moved: 0, elapsed: 0)
        #expect(ProgressText.line(empty, width: 80) == "cp -r  0/0 files  0s")
    }
}
