public import CapstanCore
public import CapstanRuntime
public import CapstanAWS
public import CapstanStorage
public import Foundation

/// What this machine has to offer as local capacity: CPU cores, memory, and NVIDIA GPUs as
/// `nvidia-smi` reports them.
public struct MachineResources: Sendable, Hashable, Codable {
    public struct GPU: Sendable, Hashable, Codable {
        /// As nvidia-smi names it, e.g. `NVIDIA H100 80GB HBM3`.
        public var name: String
        public var memoryMiB: Int
        /// Canonical id from ``GPUCatalog`` when known.
        public var model: String?
    }

    public var cpuCores: Int
    public var memoryGiB: Double
    public var gpus: [GPU]

    public init(cpuCores: Int, memoryGiB: Double, gpus: [GPU]) {
        self.cpuCores = cpuCores
        self.memoryGiB = memoryGiB
        self.gpus = gpus
    }

    /// Reads this machine. `nvidia-smi` is optional: without it (or without a driver) there are
    /// no GPUs. `CAPSTAN_NVIDIA_SMI` overrides the command (a path), for machines where it lives
    /// off the PATH.
    public static func detect(environment: [String: String] = ProcessInfo.processInfo.environment) -> MachineResources {
        let info = ProcessInfo.processInfo
        var gpus: [GPU] = []
        if let smi = environment["CAPSTAN_NVIDIA_SMI"] ?? Spawn.which("nvidia-smi", path: environment["PATH"]),
           let out = run(smi, ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"], timeout: 10) {
            gpus = parseNvidiaSMI(out)
        }
        return MachineResources(cpuCores: info.activeProcessorCount, memoryGiB: Double(info.physicalMemory) / 1_073_741_824, gpus: gpus)
    }

    /// Parses `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits` lines
    /// (`NVIDIA H200, 143771`). Lines that do not parse are skipped.
    public static func parseNvidiaSMI(_ text: String) -> [GPU] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            let parts = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count >= 2, !parts[0].isEmpty, let mem = Int(parts[1]) else { return nil }
            return GPU(name: parts[0], memoryMiB: mem, model: GPUCatalog.normalize(parts[0], memoryMiB: mem)?.id)
        }
    }

    /// Runs a short command and returns its stdout when it exits 0 within `timeout` seconds.
    static func run(_ exe: String, _ args: [String], timeout: Double) -> String? {
        guard let r = try? Spawn.runCapturing([exe] + args, timeout: timeout), !r.timedOut, r.status.succeeded else { return nil }
        return String(decoding: r.stdout, as: UTF8.self)
    }
}
