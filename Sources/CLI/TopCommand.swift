import ArgumentParser
import CapstanAPI
import CapstanCore
import CapstanTrainer
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `capstan top JOB`: a live view of a job's nodes (CPU, memory, each GPU) and progress, from
/// the telemetry its agents ship with their heartbeats (docs/telemetry.md).
struct TopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top", abstract: "A live view of a job's nodes: CPU, memory and each GPU's utilisation, memory, temperature and power, with its step, loss and tokens/s.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Job id or name.", completion: .custom(NameCompletion.jobs)) var job: String
    @Flag(help: "Print one frame and exit.") var once = false
    @Option(help: "Seconds between frames.") var interval: Double = 2

    func validate() throws {
        guard interval.isFinite, interval >= 0.2, interval <= 3600 else {
            throw ValidationError("--interval \(interval) is out of range: give seconds between 0.2 and 3600.")
        }
    }

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in
                try await loop { let j = try await client.job(job); return (j, try await client.telemetry(job: j.id)) }
            }) { return }
            let service = try await global.jobs()
            let store = service.context.store
            let first = try await requireJob(service, job)
            if !first.status.isFinished { try await service.ensureController(first.id) }
            try await loop {
                let j = try await requireJob(service, first.id)
                return (j, try await store.telemetry(job: j.id))
            }
        }
    }

    /// Prints a frame every ``interval`` until the job ends (a last frame then) or, with
    /// `--once`, one frame.
    func loop(_ read: () async throws -> (JobRecord, [NodeTelemetry])) async throws {
        let live = !once && !global.json && isatty(STDOUT_FILENO) == 1
        while true {
            let (j, nodes) = try await read()
            if global.json {
                try printJSON(TopFrame(job: JobJSON(job: j), nodes: nodes))
            } else {
                // A terminal is redrawn in place; a pipe gets one frame after another.
                if live { print("\u{1B}[H\u{1B}[2J", terminator: "") }
                print(TelemetryView.frame(job: j, nodes: nodes, now: Date()))
                if !once && !live { print("") }
            }
            flushStdout()
            if once || j.status.isFinished { return }
            try await Task.sleep(for: .seconds(interval))
        }
    }
}

/// What `top --json` prints for a frame.
struct TopFrame: Encodable {
    var job: JobJSON
    var nodes: [NodeTelemetry]
}

/// The text of `capstan top` and the usage column of `capstan jobs`.
enum TelemetryView {
    /// One frame: the job's status and progress, then a row per node and per GPU.
    static func frame(job j: JobRecord, nodes: [NodeTelemetry], now: Date) -> String {
        var head = "\(j.id)  \(j.status.rawValue)  attempt \(j.attempt)  restarts \(j.restarts)"
        if let m = j.metrics.flatMap({ MetricsPoint.parse($0) }) {
            head += "  step \(m.step)"
            if let loss = m.values["loss"] { head += "  loss " + MetricsPoint.short(loss) }
            if let tps = m.values["tokens_per_s"] { head += "  tokens/s " + MetricsPoint.short(tps, thousands: true) }
        }
        guard !nodes.isEmpty else {
            return head + "\n" + (j.status.isFinished ? "No telemetry was kept for this job." : "No telemetry yet: each node's agent sends its first sample a few seconds after it starts.")
        }
        var table = TextTable(header: ["NODE", "CPU", "MEMORY", "GPU", "UTIL", "GPU MEMORY", "TEMP", "POWER", "SAMPLED"], rightAligned: [1, 4, 6, 7])
        for n in nodes {
            let nodeCells = ["\(n.node)", percent(n.cpuPercent), memory(n.memoryUsedBytes, n.memoryTotalBytes)]
            let age = humanDuration(now.timeIntervalSince(n.sampledAt)) + " ago"
            if n.gpus.isEmpty {
                table.rows.append(nodeCells + ["-", "", "", "", "", age])
            }
            for (i, g) in n.gpus.enumerated() {
                table.rows.append((i == 0 ? nodeCells : ["", "", ""]) + [
                    "\(g.index) \(g.name)", g.utilizationPercent.map(percent) ?? "n/a", gpuMemory(g),
                    g.temperatureC.map { String(format: "%.0f°C", $0) } ?? "n/a", g.powerW.map { String(format: "%.0f W", $0) } ?? "n/a",
                    i == 0 ? age : "",
                ])
            }
        }
        return head + "\n" + table.render()
    }

    /// `gpu 97% 140/160G` (mean utilisation and total memory of every GPU of every node) where
    /// the nodes have GPUs, else `cpu 12%` (mean over the nodes); nil without samples.
    static func usage(_ nodes: [NodeTelemetry]) -> String? {
        guard !nodes.isEmpty else { return nil }
        let gpus = nodes.flatMap(\.gpus)
        if !gpus.isEmpty {
            let utils = gpus.compactMap(\.utilizationPercent)
            var s = "gpu " + (utils.isEmpty ? "n/a" : percent(utils.reduce(0, +) / Double(utils.count)))
            let used = gpus.compactMap(\.memoryUsedMiB), total = gpus.compactMap(\.memoryTotalMiB)
            if !used.isEmpty, !total.isEmpty {
                s += String(format: " %.0f/%.0fG", used.reduce(0, +) / 1024, total.reduce(0, +) / 1024)
            }
            return s
        }
        return "cpu " + percent(nodes.map(\.cpuPercent).reduce(0, +) / Double(nodes.count))
    }

    static func percent(_ v: Double) -> String { String(format: "%.0f%%", v) }

    static func memory(_ used: Int64, _ total: Int64) -> String {
        guard total > 0 else { return "n/a" }
        return String(format: "%.1f/%.1f GiB", Double(used) / 1_073_741_824, Double(total) / 1_073_741_824)
    }

    static func gpuMemory(_ g: GPUSample) -> String {
        switch (g.memoryUsedMiB, g.memoryTotalMiB) {
        case let (u?, t?): return String(format: "%.1f/%.1f GiB", u / 1024, t / 1024)
        case let (u?, nil): return String(format: "%.1f GiB", u / 1024)
        default: return "n/a"
        }
    }
}
