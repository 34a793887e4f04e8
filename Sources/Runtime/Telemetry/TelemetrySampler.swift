public import CapstanCore

public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The parsers behind ``TelemetrySampler``: pure functions over the text of `nvidia-smi`'s CSV,
/// `/proc/stat` and `/proc/meminfo`, so each is tested on real-looking (and broken) input.
public enum TelemetryParsers {
    /// The fields asked of `nvidia-smi --query-gpu=…`, in the order ``gpus(nvidiaSMI:)`` reads them.
    public static let nvidiaSMIFields = "index,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"
    /// The arguments after `nvidia-smi`.
    public static let nvidiaSMIArguments = ["--query-gpu=\(nvidiaSMIFields)", "--format=csv,noheader,nounits"]

    /// The GPUs in `nvidia-smi --query-gpu=<nvidiaSMIFields> --format=csv,noheader,nounits`
    /// output: one line each, `0, NVIDIA H100 80GB HBM3, 97, 71234, 81559, 64, 612.25`.
    /// A value of `[N/A]` (or `[Not Supported]`, or anything else that is not a finite number)
    /// is nil; a line without an integer index and all seven fields (an error message, a
    /// truncated line) is skipped.
    public static func gpus(nvidiaSMI text: String) -> [GPUSample] {
        var out: [GPUSample] = []
        for raw in text.split(whereSeparator: \.isNewline) {
            let fields = raw.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard fields.count >= 7, let index = Int(fields[0]), index >= 0 else { continue }
            // The name is everything between the index and the five numbers (a name may hold a comma).
            let numbers = fields.suffix(5).map(number)
            let name = fields[1..<(fields.count - 5)].joined(separator: ", ")
            guard !name.isEmpty else { continue }
            out.append(GPUSample(index: index, name: name, utilizationPercent: numbers[0], memoryUsedMiB: numbers[1], memoryTotalMiB: numbers[2], temperatureC: numbers[3], powerW: numbers[4]))
        }
        return out
    }

    /// A finite number, or nil (`[N/A]`, `[Not Supported]`, empty, garbage, `nan`, `inf`).
    static func number(_ s: String) -> Double? {
        guard let v = Double(s), v.isFinite else { return nil }
        return v
    }

    /// The machine's CPU time counters, from `/proc/stat`'s first (`cpu `) line, in clock ticks.
    public struct CPUTimes: Sendable, Hashable {
        /// Idle and waiting for I/O.
        public var idle: UInt64
        /// Everything: user, nice, system, idle, iowait, irq, softirq, steal.
        public var total: UInt64
        public init(idle: UInt64, total: UInt64) {
            self.idle = idle
            self.total = total
        }
    }

    /// The all-CPUs line of `/proc/stat`; nil when it has none that parses.
    public static func cpuTimes(procStat text: String) -> CPUTimes? {
        for line in text.split(whereSeparator: \.isNewline) {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.first == "cpu" else { continue }
            // user nice system idle iowait irq softirq steal (guest and guest_nice are in user and nice already).
            let values = f.dropFirst().prefix(8).map { UInt64($0) }
            guard values.count >= 4, !values.contains(nil) else { return nil }
            let v = values.map { $0! }
            let idle = v[3] + (v.count > 4 ? v[4] : 0)
            return CPUTimes(idle: idle, total: v.reduce(0, +))
        }
        return nil
    }

    /// The whole machine's CPU use between two readings, 0–100 (0 when no time passed or the
    /// counters went backwards).
    public static func cpuPercent(from a: CPUTimes, to b: CPUTimes) -> Double {
        guard b.total > a.total, b.idle >= a.idle else { return 0 }
        let total = Double(b.total - a.total), idle = Double(b.idle - a.idle)
        return min(100, max(0, (total - idle) / total * 100))
    }

    /// Memory in use (MemTotal less MemAvailable; on a kernel without MemAvailable, less
    /// MemFree, Buffers and Cached) and in all, bytes; nil without MemTotal.
    public static func memory(procMeminfo text: String) -> (used: Int64, total: Int64)? {
        var kB: [String: Int64] = [:]
        for line in text.split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = String(line[..<colon])
            guard let value = line[line.index(after: colon)...].split(separator: " ").first.flatMap({ Int64($0) }) else { continue }
            kB[key] = value
        }
        guard let total = kB["MemTotal"], total > 0 else { return nil }
        let available = kB["MemAvailable"] ?? ((kB["MemFree"] ?? 0) + (kB["Buffers"] ?? 0) + (kB["Cached"] ?? 0))
        let used = min(total, max(0, total - available))
        return (used * 1024, total * 1024)
    }
}

/// Samples this machine for ``NodeTelemetry``: CPU (from `/proc/stat` deltas) and memory
/// (`/proc/meminfo`) everywhere, GPUs through `nvidia-smi` where it is on `PATH`. Never fails:
/// a missing, failing or hanging `nvidia-smi` (killed after ``nvidiaSMITimeout``) means no
/// GPUs in that sample; a machine without `/proc` reports zeros.
public final class TelemetrySampler: Sendable {
    public let job: String
    public let node: Int
    public let attempt: Int
    /// The `nvidia-smi` run, found on `PATH` when the sampler was made; nil: none.
    public let nvidiaSMI: String?
    public let nvidiaSMITimeout: Double
    let procRoot: String
    let previous = LockedBox<TelemetryParsers.CPUTimes?>(nil)

    /// A sampler that runs the `nvidia-smi` on `PATH`, if there is one.
    public convenience init(job: String, node: Int, attempt: Int) {
        self.init(job: job, node: node, attempt: attempt, nvidiaSMI: Spawn.which("nvidia-smi"))
    }

    /// With the `nvidia-smi` to run (nil: none) and where `/proc` is (tests).
    package init(job: String, node: Int, attempt: Int, nvidiaSMI: String?, nvidiaSMITimeout: Double = 5, procRoot: String = "/proc") {
        self.job = job
        self.node = node
        self.attempt = attempt
        self.nvidiaSMI = nvidiaSMI
        self.nvidiaSMITimeout = nvidiaSMITimeout
        self.procRoot = procRoot
    }

    /// Reads the CPU counters now, so that the first ``sample()`` reports the CPU use since
    /// (not since boot).
    public func prime() {
        let now = readCPU()
        previous.withLock { $0 = now }
    }

    /// One sample, taken on a thread of its own (never the cooperative pool): the CPU use since
    /// the last sample (or ``prime()``), memory now, and the GPUs.
    public func sample() async -> NodeTelemetry {
        (try? await Spawn.onThread { [self] in sampleBlocking() }) ?? NodeTelemetry(job: job, node: node, attempt: attempt, sampledAt: Date(), cpuPercent: 0, memoryUsedBytes: 0, memoryTotalBytes: 0)
    }

    /// ``sample()`` on the calling thread.
    public func sampleBlocking() -> NodeTelemetry {
        let cpu = readCPU()
        let before = previous.withLock { p -> TelemetryParsers.CPUTimes? in
            defer { p = cpu ?? p }
            return p
        }
        let percent = (before.flatMap { a in cpu.map { TelemetryParsers.cpuPercent(from: a, to: $0) } }) ?? 0
        let memory = (try? String(contentsOfFile: procRoot + "/meminfo", encoding: .utf8)).flatMap(TelemetryParsers.memory(procMeminfo:))
        return NodeTelemetry(
            job: job, node: node, attempt: attempt, sampledAt: Date(), cpuPercent: percent,
            memoryUsedBytes: memory?.used ?? 0, memoryTotalBytes: memory?.total ?? 0, gpus: readGPUs())
    }

    func readCPU() -> TelemetryParsers.CPUTimes? {
        (try? String(contentsOfFile: procRoot + "/stat", encoding: .utf8)).flatMap(TelemetryParsers.cpuTimes(procStat:))
    }

    /// The GPUs `nvidia-smi` lists; none when it is missing, fails or runs past its timeout.
    func readGPUs() -> [GPUSample] {
        guard let nvidiaSMI else { return [] }
        guard let run = try? Spawn.runCapturing([nvidiaSMI] + TelemetryParsers.nvidiaSMIArguments, timeout: nvidiaSMITimeout),
              !run.timedOut, run.status == .exited(0) else { return [] }
        return TelemetryParsers.gpus(nvidiaSMI: String(decoding: run.stdout, as: UTF8.self))
    }
}
