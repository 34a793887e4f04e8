import CapstanCore
import Testing

@Suite("GPU catalog")
struct GPUCatalogTests {
    // Real strings as clouds and drivers report them.
    @Test("normalizes real cloud and driver strings", arguments: [
        ("H100", 81920, "H100-SXM"),                         // AWS p5 GpuInfo
        ("A100", 40960, "A100-40GB-SXM"),                    // AWS p4d
        ("A100", 81920, "A100-80GB-SXM"),                    // AWS p4de
        ("A10G", 24576, "A10G"),                             // AWS g5
        ("L4", 23034, "L4"),                                 // AWS g6
        ("L40S", 46068, "L40S"),                             // AWS g6e
        ("H200", 143360, "H200"),                            // AWS p5e
        ("B200", 179200, "B200"),                            // AWS p6
        ("T4", 16384, "T4"),                                 // AWS g4dn
        ("V100", 16384, "V100-16GB"),                        // AWS p3
        ("V100", 32768, "V100-32GB"),                        // AWS p3dn
    ] as [(String, Int, String)])
    func awsStrings(name: String, memoryMiB: Int, expected: String) {
        #expect(GPUCatalog.normalize(name, memoryMiB: memoryMiB)?.id == expected)
    }

    @Test("normalizes names that carry their own variant", arguments: [
        ("nvidia-h100-80gb", "H100-SXM"),                    // GCP a3-highgpu
        ("nvidia-h100-mega-80gb", "H100-SXM"),               // GCP a3-megagpu
        ("nvidia-h200-141gb", "H200"),                       // GCP a3-ultragpu
        ("nvidia-a100-80gb", "A100-80GB-SXM"),               // GCP a2-ultragpu
        ("nvidia-tesla-a100", "A100-40GB-SXM"),              // GCP a2-highgpu
        ("nvidia-l4", "L4"),                                 // GCP g2
        ("nvidia-tesla-t4", "T4"),
        ("gpu_8x_h100_sxm5", "H100-SXM"),                    // Lambda
        ("gpu_1x_h100_pcie", "H100-PCIe"),
        ("gpu_8x_a100_80gb_sxm4", "A100-80GB-SXM"),
        ("gpu_1x_a100_sxm4", "A100-40GB-SXM"),
        ("gpu_1x_a10", "A10"),
        ("gpu_1x_gh200", "GH200"),
        ("gpu_8x_b200_sxm6", "B200"),
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),               // RunPod, nvidia-smi
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA A100 80GB PCIe", "A100-80GB-PCIe"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB-SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB-SXM"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA RTX A6000", "RTX-A6000"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("AMD Instinct MI300X", "MI300X"),
    ] as [(String, String)])
    func namedVariants(name: String, expected: String) {
        #expect(GPUCatalog.normalize(name)?.id == expected)
    }

    @Test("unknown strings are not guessed")
    func unknown() {
        #expect(GPUCatalog.normalize("NVIDIA Quadro K620") == nil)
        #expect(GPUCatalog.normalize("") == nil)
        // Memory far from any variant is refused rather than forced.
        #expect(GPUCatalog.normalize("H100", memoryMiB: 8192) == nil)
    }

    @Test("a family request matches every variant; a variant narrows it")
    func resolve() throws {
        #expect(try GPUCatalog.resolve("H100") == ["H100-SXM", "H100-PCIe", "H100-NVL"])
        #expect(try GPUCatalog.resolve("h100-sxm") == ["H100-SXM"])
        #expect(try GPUCatalog.resolve("H100 PCIe") == ["H100-PCIe"])
        #expect(try GPUCatalog.resolve("A100-80GB") == ["A100-80GB-SXM", "A100-80GB-PCIe"])
        #expect(try GPUCatalog.resolve("a100 40gb pcie") == ["A100-40GB-PCIe"])
    }

    @Test("an unknown GPU is a clear error listing the known ones")
    func resolveUnknown() {
        let error = #expect(throws: CapstanError.self) { try GPUCatalog.resolve("H1000") }
        #expect(error?.code == .invalidRequest)
        #expect(error?.message.contains("H1000") == true)
        #expect(error?.hint?.contains("H100") == true)
        let variant = #expect(throws: CapstanError.self) { try GPUCatalog.resolve("H100-40GB") }
        #expect(variant?.hint?.contains("H100-SXM") == true)
    }

    @Test("catalog facts hold: unique ids, memory and interconnect for the big parts")
    func facts() {
        let ids = GPUCatalog.models.map(\.id)
        #expect(Set(ids).count == ids.count)
        let h100 = GPUCatalog.model(id: "H100-SXM")
        #expect(h100?.memoryGiB == 80)
        #expect(h100?.formFactor == .sxm)
        #expect(h100?.interconnectGBps == 900)
        #expect(GPUCatalog.model(id: "H100-PCIe")?.formFactor == .pcie)
        #expect(GPUCatalog.model(id: "H200")?.memoryGiB == 141)
    }
}
