public import CapstanCore
public import CapstanRuntime
public import Foundation

/// One metrics line of a job: a JSON object on its own line with a whole `step` and numbers
/// (`{"step": 120, "loss": 4.37, "lr": 0.0011, "tokens_per_s": 6100}`), as the built-in
/// recipe prints them and any command may. Lines with an `event` key are events, not metrics.
public struct MetricsPoint: Sendable, Hashable, Codable {
    public var step: Int
    public var attempt: Int?
    public var values: [String: Double]

    public init(step: Int, attempt: Int? = nil, values: [String: Double]) {
        self.step = step
        self.attempt = attempt
        self.values = values
    }

    /// The point a log line carries, else nil.
    public static func parse(_ line: some StringProtocol) -> MetricsPoint? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("{"), trimmed.hasSuffix("}"),
              let object = try? JSONDecoder().decode([String: JSONValue].self, from: Data(trimmed.utf8)),
              object["event"] == nil, case .number(let s)? = object["step"], s >= 0, s == s.rounded(), s < 1e15 else { return nil }
        var values: [String: Double] = [:]
        for (k, v) in object where k != "step" && k != "attempt" && k != "rank" {
            if case .number(let n) = v { values[k] = n }
        }
        guard !values.isEmpty else { return nil }
        var attempt: Int?
        if case .number(let a)? = object["attempt"] { attempt = Int(a) }
        return MetricsPoint(step: Int(s), attempt: attempt, values: values)
    }

    /// Every point of a log, in order; where a restarted attempt ran a step again, its point
    /// replaces the old one (the curve is the run that counts).
    public static func read(log path: String) -> [MetricsPoint] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        var byStep: [Int: MetricsPoint] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            if let p = parse(line) { byStep[p.step] = p }
        }
        return byStep.values.sorted { $0.step < $1.step }
    }

    /// "step 120 · loss 4.3715 · 6.1k tok/s" for listings.
    public var summary: String {
        var parts = ["step \(step)"]
        if let loss = values["loss"] { parts.append("loss " + Self.short(loss)) }
        if let tps = values["tokens_per_s"] { parts.append(Self.short(tps, thousands: true) + " tok/s") }
        return parts.joined(separator: " · ")
    }

    public static func short(_ x: Double, thousands: Bool = false) -> String {
        if thousands, x >= 10_000 { return String(format: "%.0fk", x / 1000) }
        if thousands, x >= 1000 { return String(format: "%.1fk", x / 1000) }
        if x != 0, abs(x) < 0.001 || abs(x) >= 100_000 { return String(format: "%.3g", x) }
        return String(format: "%.4g", x)
    }

    /// A text chart of `key` over the steps: `width` columns (each the mean of its steps),
    /// `height` rows, the value range on the left, the step range below.
    public static func chart(_ points: [MetricsPoint], key: String = "loss", width: Int = 60, height: Int = 12) -> String? {
        let series = points.compactMap { p in p.values[key].map { (p.step, $0) } }.filter { $0.1.isFinite }
        guard let first = series.first, let last = series.last, series.count >= 2 else { return nil }
        let cols = min(width, series.count)
        var sums = [Double](repeating: 0, count: cols), counts = [Int](repeating: 0, count: cols)
        let span = max(1, last.0 - first.0)
        for (step, v) in series {
            let c = min(cols - 1, (step - first.0) * cols / (span + 1))
            sums[c] += v
            counts[c] += 1
        }
        let column: [Double?] = zip(sums, counts).map { $1 > 0 ? $0 / Double($1) : nil }
        let values = column.compactMap { $0 }
        guard let lo = values.min(), let hi = values.max() else { return nil }
        let range = hi > lo ? hi - lo : 1
        var grid = [[Character]](repeating: [Character](repeating: " ", count: cols), count: height)
        for (c, v) in column.enumerated() {
            guard let v else { continue }
            let row = height - 1 - Int(((v - lo) / range * Double(height - 1)).rounded())
            grid[row][c] = "*"
        }
        let labels = (0..<height).map { r -> String in
            r == 0 ? short(hi) : r == height - 1 ? short(lo) : ""
        }
        let pad = labels.map(\.count).max() ?? 0
        var out = ["\(key) by step"]
        for r in 0..<height {
            out.append(String(repeating: " ", count: pad - labels[r].count) + labels[r] + " |" + String(grid[r]))
        }
        out.append(String(repeating: " ", count: pad) + " +" + String(repeating: "-", count: cols))
        let from = "step \(first.0)", to = "step \(last.0)"
        out.append(String(repeating: " ", count: pad + 2) + from + String(repeating: " ", count: max(1, cols - from.count - to.count)) + to)
        return out.joined(separator: "\n")
    }
}
