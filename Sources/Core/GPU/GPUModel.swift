/// One GPU model as Capstan reasons about it: a canonical id plus the facts that decide whether
/// an offer fits a job (memory, form factor, interconnect).
///
/// Clouds name the same part differently: AWS says `H100` (with 81920 MiB), GCP
/// `nvidia-h100-80gb`, Lambda `gpu_8x_h100_sxm5`, RunPod and nvidia-smi `NVIDIA H100 80GB HBM3`.
/// ``GPUCatalog/normalize(_:memoryMiB:)`` maps each of those to the same `GPUModel`.
public struct GPUModel: Sendable, Hashable, Codable, CustomStringConvertible {
    /// How the GPU is attached to the board, which decides its interconnect.
    public struct FormFactor: Sendable, Hashable, Codable, CustomStringConvertible {
        public let name: String
        public init(_ name: String) { self.name = name }
        /// On an HGX/DGX baseboard with NVLink/NVSwitch between all GPUs.
        public static let sxm = FormFactor("SXM")
        /// A PCIe card; GPUs talk over PCIe (or pairwise bridges).
        public static let pcie = FormFactor("PCIe")
        /// PCIe cards paired by an NVLink bridge (H100 NVL, H200 NVL).
        public static let nvl = FormFactor("NVL")
        /// A CPU+GPU superchip (GH200, GB200).
        public static let superchip = FormFactor("Superchip")
        public var description: String { name }
        public init(from decoder: any Decoder) throws {
            name = try decoder.singleValueContainer().decode(String.self)
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            try c.encode(name)
        }
    }

    /// Canonical id, e.g. `H100-SXM`, `A100-40GB-PCIe`, `L40S`.
    public var id: String
    /// The family a user usually asks for: `H100`, `A100`, `L40S`.
    public var family: String
    public var vendor: String
    public var architecture: String
    /// Memory per GPU in GiB as marketed (80 for H100; clouds report 81920 MiB).
    public var memoryGiB: Int
    public var formFactor: FormFactor
    /// GPU-to-GPU bandwidth per GPU in GB/s (NVLink where present, else PCIe), when known.
    public var interconnectGBps: Int?
    /// Dense BF16 tensor throughput in TFLOP/s, when known (used for cost per TFLOP estimates).
    public var bf16TFLOPS: Double?

    public init(
        id: String, family: String, vendor: String = "NVIDIA", architecture: String,
        memoryGiB: Int, formFactor: FormFactor, interconnectGBps: Int? = nil, bf16TFLOPS: Double? = nil
    ) {
        self.id = id
        self.family = family
        self.vendor = vendor
        self.architecture = architecture
        self.memoryGiB = memoryGiB
        self.formFactor = formFactor
        self.interconnectGBps = interconnectGBps
        self.bf16TFLOPS = bf16TFLOPS
    }

    public var description: String { id }
}
