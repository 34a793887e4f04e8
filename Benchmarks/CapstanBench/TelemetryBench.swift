import CapstanCore
import CapstanRuntime
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// CPU seconds (user + system) of this process, and of its reaped children, so far.
func cpuSeconds() -> (own: Double, children: Double) {
    func seconds(_ who: Int32) -> Double {
        var u = rusage()
        getrusage(__rusage_who_t(who), &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }
    return (seconds(RUSAGE_SELF.rawValue), seconds(RUSAGE_CHILDREN.rawValue))
}

/// The agent's telemetry overhead (docs/telemetry.md): the CPU one sample costs (/proc reads,
/// and an nvidia-smi run: a fake one printing 8 GPUs here, a real one where there is one), and
/// the agent's CPU % over a window with sampling at 5 s and at 1 s against the same window
/// without sampling, in this process. `CAPSTAN_BENCH_SECONDS` sets the window (default 20).
func telemetryBench() async throws {
    let window = Double(ProcessInfo.processInfo.environment["CAPSTAN_BENCH_SECONDS"] ?? "") ?? 20
    let dir = try scratchFolder("telemetry-bench")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let fake = dir + "/nvidia-smi"
    let lines = (0..<8).map { "echo \"\($0), NVIDIA H100 80GB HBM3, 97, 71234, 81559, 64, 612.25\"" }.joined(separator: "\n")
    try Data("#!/bin/sh\n\(lines)\n".utf8).write(to: URL(fileURLWithPath: fake))
    chmod(fake, 0o755)
    let real = Spawn.which("nvidia-smi")
    print("Telemetry overhead on the agent (\(real.map { "real nvidia-smi at \($0)" } ?? "fake nvidia-smi: a shell script printing 8 GPUs"); window \(Int(window)) s each)")

    // One sample, back to back.
    for (label, smi) in [("/proc only (no nvidia-smi)", nil), ("/proc + nvidia-smi", real ?? fake)] as [(String, String?)] {
        let s = TelemetrySampler(job: "bench", node: 0, attempt: 1, nvidiaSMI: smi)
        s.prime()
        let n = smi == nil ? 2000 : 100
        let before = cpuSeconds(), start = ContinuousClock.now
        for _ in 0..<n { _ = s.sampleBlocking() }
        let wall = (ContinuousClock.now - start).seconds, after = cpuSeconds()
        let own = (after.own - before.own) / Double(n) * 1000, kids = (after.children - before.children) / Double(n) * 1000
        print(String(format: "  one sample, %@: %.3f ms wall, %.3f ms CPU in the agent + %.3f ms in nvidia-smi", label, wall / Double(n) * 1000, own, kids))
    }

    // The agent's loop over a window, against the same window without it.
    func run(every: Double?) async -> (own: Double, children: Double) {
        let before = cpuSeconds(), start = ContinuousClock.now
        let loop = Task {
            guard let every else { return }
            let s = TelemetrySampler(job: "bench", node: 0, attempt: 1, nvidiaSMI: real ?? fake)
            s.prime()
            while !Task.isCancelled {
                guard (try? await Task.sleep(for: .seconds(every))) != nil else { return }
                _ = await s.sample()
            }
        }
        try? await Task.sleep(for: .seconds(window))
        loop.cancel()
        await loop.value
        let wall = (ContinuousClock.now - start).seconds, after = cpuSeconds()
        return ((after.own - before.own) / wall * 100, (after.children - before.children) / wall * 100)
    }
    let base = await run(every: nil)
    print(String(format: "  baseline, no sampling:        %.4f%% of one core", base.own))
    for every in [5.0, 1.0] {
        let w = await run(every: every)
        print(String(format: "  sampling every %.0f s:          %.4f%% of one core in the agent (+%.4f%% over baseline), +%.4f%% in nvidia-smi", every, w.own, w.own - base.own, w.children))
    }
}
