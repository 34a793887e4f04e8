import Foundation

/// One moment of a task in progress, as `capstan` shows it: a label, how far it is (when the
/// total is known), what is done, the rate and the time so far.
public struct ProgressSnapshot: Sendable, Hashable {
    public var label: String
    /// Done over total, 0...1; nil while the total is unknown (no bar, no percentage).
    public var fraction: Double?
    /// What is done, e.g. `3/12 files`, `5.1 MiB/12.0 MiB`.
    public var counts: [String]
    /// e.g. `3.2 MiB/s`.
    public var rate: String?
    /// Seconds since the task started.
    public var elapsed: Double

    public init(label: String, fraction: Double?, counts: [String] = [], rate: String? = nil, elapsed: Double) {
        self.label = label
        self.fraction = fraction.map { $0.isFinite ? min(1, max(0, $0)) : 0 }
        self.counts = counts
        self.rate = rate
        self.elapsed = elapsed
    }
}

/// The text of a progress line (docs/cli.md, "Progress"): pure, no terminal and no clock, so
/// what a given state looks like at a given width is testable. The CLI's renderer
/// (Sources/CLI/Progress.swift) redraws it in place on a terminal and prints it as plain lines
/// elsewhere.
public enum ProgressText {
    /// Files and bytes of a copy; the rate is over the bytes actually moved (`moved`; a sync's
    /// unchanged files count as done but not as moved).
    public static func transfer(label: String, filesDone: Int, filesTotal: Int, bytesDone: Int64, bytesTotal: Int64, moved: Int64, elapsed: Double) -> ProgressSnapshot {
        let fraction: Double? = bytesTotal > 0 ? Double(bytesDone) / Double(bytesTotal) : filesTotal > 0 ? Double(filesDone) / Double(filesTotal) : nil
        var counts = ["\(filesDone)/\(filesTotal) file\(filesTotal == 1 ? "" : "s")"]
        if bytesTotal > 0 { counts.append("\(bytes(bytesDone))/\(bytes(bytesTotal))") }
        return ProgressSnapshot(label: label, fraction: fraction, counts: counts, rate: rate(bytes: moved, seconds: elapsed), elapsed: elapsed)
    }

    /// A count of things (`12/34 packages`, or `12 packages` while the total is unknown).
    public static func items(label: String, done: Int, total: Int?, noun: String, elapsed: Double) -> ProgressSnapshot {
        guard let total, total > 0 else { return ProgressSnapshot(label: label, fraction: nil, counts: done > 0 ? ["\(done) \(noun)"] : [], elapsed: elapsed) }
        return ProgressSnapshot(label: label, fraction: Double(min(done, total)) / Double(total), counts: ["\(min(done, total))/\(total) \(noun)"], elapsed: elapsed)
    }

    /// The line: `label [=====>    ]  42%  3/12 files  5.1 MiB/12.0 MiB  3.2 MiB/s  12s`.
    /// `width` (a terminal's columns) fits it in `width - 1` characters (the last column is
    /// left free so the terminal never wraps a line redrawn with `\r`): the bar shrinks (to
    /// 10), then goes, then the rate, the counts after the first and the label's end; nil is
    /// the plain form, without a bar.
    public static func line(_ s: ProgressSnapshot, width: Int? = nil) -> String {
        var tail: [String] = []
        if let f = s.fraction { tail.append(percent(f)) }
        let counts = s.counts
        func parts(counts n: Int, rate: Bool) -> [String] {
            tail + Array(counts.prefix(n)) + (rate ? s.rate.map { [$0] } ?? [] : []) + [duration(s.elapsed)]
        }
        guard let width else { return ([s.label] + parts(counts: counts.count, rate: true)).joined(separator: "  ") }
        let limit = max(8, width - 1)
        let full = parts(counts: counts.count, rate: true).joined(separator: "  ")
        if let f = s.fraction {
            // label + " " + bar + "  " + tail
            let space = limit - s.label.count - 3 - full.count
            if space >= 10 { return s.label + " " + bar(f, width: min(space, 32)) + "  " + full }
        }
        for (n, rate) in [(counts.count, true), (counts.count, false), (min(1, counts.count), false), (0, false)] {
            let rest = parts(counts: n, rate: rate).joined(separator: "  ")
            if s.label.count + 2 + rest.count <= limit { return s.label + "  " + rest }
            if n == 0 {
                // The label gives way last: cut with an ellipsis, then the whole line.
                let keep = limit - 2 - rest.count - 1
                if keep >= 4 { return String(s.label.prefix(keep)) + "…" + "  " + rest }
                return String((s.label + "  " + rest).prefix(limit))
            }
        }
        return String(s.label.prefix(limit))
    }

    /// `[=====>    ]`, `width` characters with the brackets (at least 3).
    public static func bar(_ fraction: Double, width: Int) -> String {
        let inner = max(1, width - 2)
        let f = fraction.isFinite ? min(1, max(0, fraction)) : 0
        let filled = Int((f * Double(inner)).rounded(.down))
        if filled >= inner { return "[" + String(repeating: "=", count: inner) + "]" }
        return "[" + String(repeating: "=", count: filled) + ">" + String(repeating: " ", count: inner - filled - 1) + "]"
    }

    /// ` 42%`: rounded down, so 100% means done.
    public static func percent(_ fraction: Double) -> String {
        let p = fraction.isFinite ? Int((min(1, max(0, fraction)) * 100).rounded(.down)) : 0
        let text = "\(p)%"
        return String(repeating: " ", count: max(0, 4 - text.count)) + text
    }

    /// `3.2 MiB/s`; nil before half a second or when nothing moved.
    public static func rate(bytes: Int64, seconds: Double) -> String? {
        guard seconds >= 0.5, bytes > 0 else { return nil }
        return self.bytes(Int64(Double(bytes) / seconds)) + "/s"
    }

    /// `512 B`, `5.3 KiB`, `256.0 MiB`, `1.2 GiB`.
    public static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f", v) + " " + units[i]
    }

    /// `3h12m`, `4m05s`, `12s`.
    public static func duration(_ seconds: Double) -> String {
        let s = Int(max(0, seconds.isFinite ? seconds : 0))
        if s >= 3600 { return "\(s / 3600)h\(String(format: "%02d", (s % 3600) / 60))m" }
        if s >= 60 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
        return "\(s)s"
    }
}
