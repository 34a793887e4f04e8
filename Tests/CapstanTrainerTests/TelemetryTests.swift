import CapstanCore
import CapstanProviders
import CapstanStorage
import CapstanRuntime
import CapstanTestSupport
import CapstanTrainer
import Foundation
import Testing

/// The telemetry parsers on real-looking and broken input, the sampler on a fake `/proc` and
/// fake `nvidia-smi`s (working, failing, hanging), and the agent shipping samples in its status.
@Suite("Telemetry")
struct TelemetryTests {
    // MARK: nvidia-smi

    @Test("nvidia-smi CSV: every GPU, numbers as numbers, [N/A] and [Not Supported] as nil")
    func nvidiaSMI() {
        let text = """
            0, NVIDIA H100 80GB HBM3, 97, 71234, 81559, 64, 612.25
            1, NVIDIA H100 80GB HBM3, 0, 4, 81559, 31, 69.83
            2, Tesla T4, [N/A], 0, 15360, 45, [N/A]
            3, NVIDIA A10G, 12, 1024, 23028, [N/A], [Not Supported]

            """
        let gpus = TelemetryParsers.gpus(nvidiaSMI: text)
        #expect(gpus.count == 4)
        #expect(gpus[0] == GPUSample(index: 0, name: "NVIDIA H100 80GB HBM3", utilizationPercent: 97, memoryUsedMiB: 71234, memoryTotalMiB: 81559, temperatureC: 64, powerW: 612.25))
        #expect(gpus[1].utilizationPercent == 0 && gpus[1].powerW == 69.83)
        #expect(gpus[2] == GPUSample(index: 2, name: "Tesla T4", utilizationPercent: nil, memoryUsedMiB: 0, memoryTotalMiB: 15360, temperatureC: 45, powerW: nil))
        #expect(gpus[3].temperatureC == nil && gpus[3].powerW == nil && gpus[3].utilizationPercent == 12)
    }

    @Test("nvidia-smi CSV: error text, short lines, a bad index, nan and garbage values are skipped or nil, never a crash")
    func nvidiaSMIGarbage() {
        #expect(TelemetryParsers.gpus(nvidiaSMI: "").isEmpty)
        #expect(TelemetryParsers.gpus(nvidiaSMI: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n").isEmpty)
        #expect(TelemetryParsers.gpus(nvidiaSMI: "No devices were found\n").isEmpty)
        // Truncated, no index, a negative index, an empty name.
        #expect(TelemetryParsers.gpus(nvidiaSMI: "0, NVIDIA H100, 97, 71234\nx, H100, 1, 2, 3, 4, 5\n-1, H100, 1, 2, 3, 4, 5\n0, , 1, 2, 3, 4, 5\n").isEmpty)
        // Values that are not finite numbers are nil; a name with a comma is kept whole.
        let odd = TelemetryParsers.gpus(nvidiaSMI: "\u{FEFF}\n5, Weird, Inc. GPU, nan, inf, abc, , 1e3\r\n")
        #expect(odd == [GPUSample(index: 5, name: "Weird, Inc. GPU", utilizationPercent: nil, memoryUsedMiB: nil, memoryTotalMiB: nil, temperatureC: nil, powerW: 1000)])
    }

    // MARK: /proc/stat

    static let stat1 = """
        cpu  10132153 290696 3084719 46828483 16683 0 25195 0 0 0
        cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0
        intr 1462898 0 0 0
        ctxt 2345
        """
    // 400 ticks later: 300 busy (user 200, system 100), 100 idle (90 idle + 10 iowait).
    static let stat2 = """
        cpu  10132353 290696 3084819 46828573 16693 0 25195 0 0 0
        cpu0 1393480 32966 572156 13343382 6140 0 17875 0 0 0
        """

    @Test("/proc/stat: the all-CPUs line; percent busy between two readings, clamped to 0–100")
    func procStat() throws {
        let a = try #require(TelemetryParsers.cpuTimes(procStat: Self.stat1))
        let b = try #require(TelemetryParsers.cpuTimes(procStat: Self.stat2))
        #expect(a.idle == 46828483 + 16683)
        #expect(a.total == 10132153 + 290696 + 3084719 + 46828483 + 16683 + 0 + 25195 + 0)
        #expect(TelemetryParsers.cpuPercent(from: a, to: b) == 75)
        // No time passed, or the counters went back (a reboot): 0, never negative or NaN.
        #expect(TelemetryParsers.cpuPercent(from: a, to: a) == 0)
        #expect(TelemetryParsers.cpuPercent(from: b, to: a) == 0)
        // An old kernel's four fields.
        #expect(TelemetryParsers.cpuTimes(procStat: "cpu 1 2 3 4\n") == TelemetryParsers.CPUTimes(idle: 4, total: 10))
    }

    @Test("/proc/stat: no cpu line, or a garbled one, is nil")
    func procStatGarbage() {
        #expect(TelemetryParsers.cpuTimes(procStat: "") == nil)
        #expect(TelemetryParsers.cpuTimes(procStat: "cpu0 1 2 3 4\nintr 5\n") == nil)
        #expect(TelemetryParsers.cpuTimes(procStat: "cpu  1 2 x 4 5\n") == nil)
        #expect(TelemetryParsers.cpuTimes(procStat: "cpu  1 2\n") == nil)
        #expect(TelemetryParsers.cpuTimes(procStat: "cpu  -1 2 3 4\n") == nil)
    }

    // MARK: /proc/meminfo

    @Test("/proc/meminfo: used is total less available, in bytes; without MemAvailable, less free, buffers and cache")
    func procMeminfo() throws {
        let m = try #require(TelemetryParsers.memory(procMeminfo: """
            MemTotal:       16326604 kB
            MemFree:         2117436 kB
            MemAvailable:   10123456 kB
            Buffers:          301892 kB
            Cached:          7623040 kB
            HugePages_Total:       0
            """))
        #expect(m.total == 16326604 * 1024)
        #expect(m.used == (16326604 - 10123456) * 1024)
        let old = try #require(TelemetryParsers.memory(procMeminfo: "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n"))
        #expect(old.used == 600 * 1024 && old.total == 1000 * 1024)
    }

    @Test("/proc/meminfo: without MemTotal (or garbage) nil; used never below 0 or above total")
    func procMeminfoGarbage() throws {
        #expect(TelemetryParsers.memory(procMeminfo: "") == nil)
        #expect(TelemetryParsers.memory(procMeminfo: "MemFree: 100 kB\n") == nil)
        #expect(TelemetryParsers.memory(procMeminfo: "MemTotal: lots kB\n") == nil)
        let odd = try #require(TelemetryParsers.memory(procMeminfo: "MemTotal: 100 kB\nMemAvailable: 500 kB\n"))
        #expect(odd.used == 0)
    }

    // MARK: The sampler

    /// A fake /proc with `stat` and `meminfo`, and a script standing in for nvidia-smi.
    static func fakeMachine(_ dir: TempDir, nvidiaSMI script: String?) throws -> (proc: String, smi: String?) {
        dir.write("proc/stat", stat1)
        dir.write("proc/meminfo", "MemTotal: 2000 kB\nMemAvailable: 500 kB\n")
        guard let script else { return (dir.file("proc"), nil) }
        dir.write("bin/nvidia-smi", "#!/bin/sh\n" + script + "\n")
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.file("bin/nvidia-smi"))
        return (dir.file("proc"), dir.file("bin/nvidia-smi"))
    }

    @Test("sampler: CPU since the last reading, memory, and the GPUs of an nvidia-smi asked the documented query")
    func sampler() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        // The fake checks it was asked exactly the documented query, else prints garbage.
        let (proc, smi) = try Self.fakeMachine(dir, nvidiaSMI: """
            [ "$1" = "--query-gpu=index,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw" ] && [ "$2" = "--format=csv,noheader,nounits" ] || { echo "bad arguments: $*"; exit 6; }
            echo "0, NVIDIA H100 80GB HBM3, 97, 71234, 81559, 64, 612.25"
            echo "1, NVIDIA H100 80GB HBM3, [N/A], 10, 81559, [N/A], [N/A]"
            """)
        let s = TelemetrySampler(job: "j-1", node: 2, attempt: 3, nvidiaSMI: smi, procRoot: proc)
        s.prime()
        dir.write("proc/stat", Self.stat2)
        let t = await s.sample()
        #expect(t.job == "j-1" && t.node == 2 && t.attempt == 3)
        #expect(t.cpuPercent == 75)
        #expect(t.memoryTotalBytes == 2000 * 1024 && t.memoryUsedBytes == 1500 * 1024)
        #expect(t.gpus.map(\.index) == [0, 1])
        #expect(t.gpus[1].utilizationPercent == nil && t.gpus[1].memoryUsedMiB == 10)
        // Nothing changed since: 0 %.
        #expect(await s.sample().cpuPercent == 0)
    }

    @Test("sampler: a missing, failing or hanging nvidia-smi means no GPUs, never a failure")
    func samplerWithoutGPUs() async throws {
        for script in [nil, "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9", "exec sleep 30", "echo 'garbage, 1, 2'"] as [String?] {
            let dir = TempDir(); defer { dir.cleanup() }
            let (proc, smi) = try Self.fakeMachine(dir, nvidiaSMI: script)
            let s = TelemetrySampler(job: "j", node: 0, attempt: 1, nvidiaSMI: smi, nvidiaSMITimeout: 0.5, procRoot: proc)
            let t = await s.sample()
            #expect(t.gpus.isEmpty, "\(script ?? "none")")
            #expect(t.memoryTotalBytes == 2000 * 1024)
        }
        // No /proc at all: zeros.
        let none = TelemetrySampler(job: "j", node: 0, attempt: 1, nvidiaSMI: nil, procRoot: "/nonexistent")
        let t = await none.sample()
        #expect(t.cpuPercent == 0 && t.memoryTotalBytes == 0 && t.gpus.isEmpty)
    }

    @Test("sampler: this machine's real /proc gives memory and a CPU percent in 0–100")
    func realProc() async throws {
        let s = TelemetrySampler(job: "j", node: 0, attempt: 1, nvidiaSMI: nil)
        s.prime()
        let t = await s.sample()
        #expect(t.memoryTotalBytes > 0 && t.memoryUsedBytes > 0 && t.memoryUsedBytes <= t.memoryTotalBytes)
        #expect(t.cpuPercent >= 0 && t.cpuPercent <= 100)
    }

    // MARK: In the agent's status

    @Test("agent: its status carries the newest sample (telemetrySeconds); 0 turns sampling off; an old status without it decodes")
    func agentStatus() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let state = dir.file("state")
        var c = AgentConfig(
            job: "j-tele", attempt: 1, node: 0, nodes: 1, setup: [], run: "", environment: ["STATUS": state + "/status.json"],
            workdir: dir.file("work"), stateDir: state, checkpointDir: state + "/ckpt", outputDir: state + "/out",
            resumeDir: nil, resumeStep: nil, bucket: "file://" + dir.file("bucket"), keep: 2)
        c.heartbeatSeconds = 0.1
        c.checkpointPollSeconds = 0.1
        c.telemetrySeconds = 0.2
        // The command waits (up to a generous 120 s) for a heartbeat that carries a sample.
        c.run = "i=0; while ! grep -q '\"telemetry\"' \"$STATUS\"; do i=$((i+1)); [ $i -gt 1200 ] && exit 3; sleep 0.1; done"
        let bucket = try FileObjectStore(root: dir.file("bucket"))
        let s = await NodeAgent(config: c, bucket: bucket).run()
        #expect(s.succeeded, "\(s)")
        let onDisk = try PluginWire.decoder.decode(AgentStatus.self, from: Data(contentsOf: URL(fileURLWithPath: c.statusFile)))
        let t = try #require(onDisk.telemetry)
        #expect(t.job == "j-tele" && t.node == 0 && t.attempt == 1)
        #expect(t.memoryTotalBytes > 0)

        // Off: no sample, and the agent still runs its command.
        var off = c
        off.stateDir = dir.file("state-off")
        off.telemetrySeconds = 0
        off.run = "sleep 1"
        let o = await NodeAgent(config: off, bucket: bucket).run()
        #expect(o.succeeded)
        let offDisk = try PluginWire.decoder.decode(AgentStatus.self, from: Data(contentsOf: URL(fileURLWithPath: off.statusFile)))
        #expect(offDisk.telemetry == nil)

        // A status file written before telemetry existed (no `telemetry` key) still decodes.
        var json = try JSONSerialization.jsonObject(with: PluginWire.encoder.encode(onDisk)) as! [String: Any]
        json.removeValue(forKey: "telemetry")
        let old = try PluginWire.decoder.decode(AgentStatus.self, from: JSONSerialization.data(withJSONObject: json))
        #expect(old.telemetry == nil && old.heartbeat == onDisk.heartbeat)
    }

    @Test("job settings: telemetrySeconds defaults to 5; settings written before it existed keep their other values")
    func settings() throws {
        #expect(JobSettings().telemetrySeconds == 5)
        let old = try PluginWire.decoder.decode(JobSettings.self, from: Data(#"{"heartbeatTimeoutSeconds": 7, "pollSeconds": 0.25}"#.utf8))
        #expect(old.heartbeatTimeoutSeconds == 7 && old.pollSeconds == 0.25 && old.telemetrySeconds == 5 && old.exitGraceSeconds == 120)
        let set = try PluginWire.decoder.decode(JobSettings.self, from: Data(#"{"telemetrySeconds": 1}"#.utf8))
        #expect(set.telemetrySeconds == 1)
        let bad = #expect(throws: DecodingError.self) { try PluginWire.decoder.decode(JobSettings.self, from: Data(#"{"telemetrySeconds": "often"}"#.utf8)) }
        #expect(bad != nil)
    }
}
