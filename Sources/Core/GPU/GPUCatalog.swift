/// The GPUs Capstan knows, and the rules that turn any cloud's GPU string into one of them.
public enum GPUCatalog {
    // Figures: vendor datasheets (dense BF16, NVLink per-GPU bandwidth).
    public static let models: [GPUModel] = [
        .init(id: "B200", family: "B200", architecture: "Blackwell", memoryGiB: 180, formFactor: .sxm, interconnectGBps: 1800, bf16TFLOPS: 2250),
        .init(id: "GB200", family: "GB200", architecture: "Blackwell", memoryGiB: 186, formFactor: .superchip, interconnectGBps: 1800, bf16TFLOPS: 2500),
        .init(id: "H200", family: "H200", architecture: "Hopper", memoryGiB: 141, formFactor: .sxm, interconnectGBps: 900, bf16TFLOPS: 989),
        .init(id: "H200-NVL", family: "H200", architecture: "Hopper", memoryGiB: 141, formFactor: .nvl, interconnectGBps: 900, bf16TFLOPS: 835),
        .init(id: "GH200", family: "GH200", architecture: "Hopper", memoryGiB: 96, formFactor: .superchip, interconnectGBps: 900, bf16TFLOPS: 989),
        .init(id: "H100-SXM", family: "H100", architecture: "Hopper", memoryGiB: 80, formFactor: .sxm, interconnectGBps: 900, bf16TFLOPS: 989),
        .init(id: "H100-PCIe", family: "H100", architecture: "Hopper", memoryGiB: 80, formFactor: .pcie, interconnectGBps: 128, bf16TFLOPS: 756),
        .init(id: "H100-NVL", family: "H100", architecture: "Hopper", memoryGiB: 94, formFactor: .nvl, interconnectGBps: 600, bf16TFLOPS: 835),
        .init(id: "A100-80GB-SXM", family: "A100", architecture: "Ampere", memoryGiB: 80, formFactor: .sxm, interconnectGBps: 600, bf16TFLOPS: 312),
        .init(id: "A100-80GB-PCIe", family: "A100", architecture: "Ampere", memoryGiB: 80, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 312),
        .init(id: "A100-40GB-SXM", family: "A100", architecture: "Ampere", memoryGiB: 40, formFactor: .sxm, interconnectGBps: 600, bf16TFLOPS: 312),
        .init(id: "A100-40GB-PCIe", family: "A100", architecture: "Ampere", memoryGiB: 40, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 312),
        .init(id: "L40S", family: "L40S", architecture: "Ada", memoryGiB: 48, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 362),
        .init(id: "L40", family: "L40", architecture: "Ada", memoryGiB: 48, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 181),
        .init(id: "L4", family: "L4", architecture: "Ada", memoryGiB: 24, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 121),
        .init(id: "A10G", family: "A10G", architecture: "Ampere", memoryGiB: 24, formFactor: .pcie, interconnectGBps: 32, bf16TFLOPS: 70),
        .init(id: "A10", family: "A10", architecture: "Ampere", memoryGiB: 24, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 125),
        .init(id: "A40", family: "A40", architecture: "Ampere", memoryGiB: 48, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 150),
        .init(id: "RTX-A6000", family: "RTX-A6000", architecture: "Ampere", memoryGiB: 48, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 155),
        .init(id: "RTX-4090", family: "RTX-4090", architecture: "Ada", memoryGiB: 24, formFactor: .pcie, interconnectGBps: 64, bf16TFLOPS: 165),
        .init(id: "V100-16GB", family: "V100", architecture: "Volta", memoryGiB: 16, formFactor: .sxm, interconnectGBps: 300, bf16TFLOPS: nil),
        .init(id: "V100-32GB", family: "V100", architecture: "Volta", memoryGiB: 32, formFactor: .sxm, interconnectGBps: 300, bf16TFLOPS: nil),
        .init(id: "T4", family: "T4", architecture: "Turing", memoryGiB: 16, formFactor: .pcie, interconnectGBps: 32, bf16TFLOPS: nil),
        .init(id: "MI300X", family: "MI300X", vendor: "AMD", architecture: "CDNA3", memoryGiB: 192, formFactor: .sxm, interconnectGBps: 896, bf16TFLOPS: 1307),
    ]

    /// Looks a model up by canonical id (case-insensitive).
    public static func model(id: String) -> GPUModel? {
        models.first { $0.id.lowercased() == id.lowercased() }
    }

    /// The families, in catalog order (for help texts and "did you mean").
    public static var families: [String] {
        var seen = Set<String>()
        return models.compactMap { seen.insert($0.family).inserted ? $0.family : nil }
    }

    /// Maps a cloud's or a driver's GPU string to a model, or nil when it names no known GPU.
    ///
    /// - Parameters:
    ///   - name: `H100`, `nvidia-h100-80gb`, `gpu_8x_h100_sxm5`, `NVIDIA H100 80GB HBM3`, …
    ///   - memoryMiB: memory per GPU when the cloud reports it apart from the name (AWS GpuInfo);
    ///     it picks the variant (A100 40 vs 80 GB) when the name does not.
    /// Where the string leaves the form factor open, the variant clouds rent in 8-GPU boxes is
    /// assumed (SXM for H100 and A100), since that is what an unqualified name means on every
    /// cloud that reports one.
    public static func normalize(_ name: String, memoryMiB: Int? = nil) -> GPUModel? {
        // Catalogs repeat a handful of strings thousands of times: remember each answer.
        let key = NormalizeKey(name: name, memoryMiB: memoryMiB)
        if let hit = normalizeCache.withLock({ $0[key] }) { return hit }
        let model = computeNormalize(name, memoryMiB: memoryMiB)
        normalizeCache.withLock { cache in
            if cache.count > 4096 { cache.removeAll() }
            cache[key] = .some(model)
        }
        return model
    }

    struct NormalizeKey: Hashable { var name: String; var memoryMiB: Int? }
    static let normalizeCache = LockedBox<[NormalizeKey: GPUModel?]>([:])

    static func computeNormalize(_ name: String, memoryMiB: Int?) -> GPUModel? {
        guard let parsed = ParsedGPUName(name) else { return nil }
        let memoryGiB = parsed.memoryGiB ?? memoryMiB.map { Double($0) / 1024 }
        let candidates = models.filter { $0.family == parsed.family }
        return pick(from: candidates, form: parsed.formFactor, memoryGiB: memoryGiB, exactMemory: parsed.memoryGiB != nil)
    }

    /// Resolves what a user typed (`--gpu H100`, `a100-80gb`, `H100-PCIe`) to the set of models
    /// that satisfy it: a family matches all its variants, a form factor or memory narrows it.
    /// Throws a ``CapstanError`` with code `.invalidRequest` naming the known GPUs when unknown.
    public static func resolve(_ request: String) throws -> Set<String> {
        if let exact = model(id: request) { return [exact.id] }
        guard let parsed = ParsedGPUName(request) else {
            throw CapstanError(
                .invalidRequest, "Unknown GPU '\(request)'.",
                hint: "Use one of: \(families.joined(separator: ", ")) (optionally with a variant, e.g. H100-SXM, A100-40GB).")
        }
        var matches = models.filter { $0.family == parsed.family }
        if let form = parsed.formFactor { matches = matches.filter { $0.formFactor == form } }
        if let gib = parsed.memoryGiB {
            matches = matches.filter { abs(Double($0.memoryGiB) - gib) <= Double($0.memoryGiB) * 0.15 }
        }
        guard !matches.isEmpty else {
            let variants = models.filter { $0.family == parsed.family }.map(\.id).joined(separator: ", ")
            throw CapstanError(
                .invalidRequest, "No \(parsed.family) variant matches '\(request)'.",
                hint: "Known \(parsed.family) variants: \(variants).")
        }
        return Set(matches.map(\.id))
    }

    static func pick(from candidates: [GPUModel], form: GPUModel.FormFactor?, memoryGiB: Double?, exactMemory: Bool) -> GPUModel? {
        guard !candidates.isEmpty else { return nil }
        var pool = candidates
        if let form {
            let f = pool.filter { $0.formFactor == form }
            if !f.isEmpty { pool = f }
        } else {
            // Unqualified names mean the boxed variant (SXM) where one exists.
            let f = pool.filter { $0.formFactor == .sxm }
            if !f.isEmpty { pool = f }
        }
        if let memoryGiB {
            // Reported memory is below the marketed figure (ECC, reserved): pick the nearest.
            let best = pool.min { abs(Double($0.memoryGiB) - memoryGiB) < abs(Double($1.memoryGiB) - memoryGiB) }
            if let best {
                let tolerance = exactMemory ? 0.15 : 0.25
                if abs(Double(best.memoryGiB) - memoryGiB) <= Double(best.memoryGiB) * tolerance { return best }
                return nil
            }
        }
        // No memory hint: the smallest-memory variant of that form is the conservative guess
        // (GCP's `nvidia-tesla-a100` and Lambda's `a100_sxm4` are the 40 GB part).
        return pool.min { $0.memoryGiB < $1.memoryGiB }
    }
}

/// The pieces of a GPU string: family, form factor and memory, whatever separators and vendor
/// words surround them.
struct ParsedGPUName {
    var family: String
    var formFactor: GPUModel.FormFactor?
    var memoryGiB: Double?

    private static let familyTokens: [String: String] = [
        "b200": "B200", "gb200": "GB200", "h200": "H200", "gh200": "GH200", "h100": "H100",
        "a100": "A100", "l40s": "L40S", "l40": "L40", "l4": "L4", "a10g": "A10G", "a10": "A10",
        "a40": "A40", "a6000": "RTX-A6000", "4090": "RTX-4090", "v100": "V100", "t4": "T4",
        "mi300x": "MI300X",
    ]

    init?(_ raw: String) {
        let lowered = raw.lowercased()
        var tokens: [String] = []
        var current = ""
        for ch in lowered {
            if ch.isLetter || ch.isNumber { current.append(ch) } else if !current.isEmpty {
                tokens.append(current); current = ""
            }
        }
        if !current.isEmpty { tokens.append(current) }

        var family: String?
        var form: GPUModel.FormFactor?
        var memory: Double?
        var sawHBM3 = false
        var sawMega = false
        for token in tokens {
            if let f = Self.familyTokens[token], family == nil { family = f; continue }
            // Families glued to a memory size, e.g. "a100-80gb" splits fine, but "h100sxm" does not.
            if token.hasPrefix("sxm") { form = .sxm; continue }
            if token == "pcie" || token == "pci" { form = .pcie; continue }
            if token == "nvl" { form = .nvl; continue }
            if token == "mega" { sawMega = true; continue }
            if token.hasPrefix("hbm3") { sawHBM3 = true; continue }
            if token.hasSuffix("gb"), let n = Double(token.dropLast(2)) { memory = n; continue }
        }
        guard let family else { return nil }
        if form == nil, sawMega || (sawHBM3 && family == "H100") {
            // GCP a3-mega and the HBM3 part are both the SXM5 board; PCIe H100 uses HBM2e.
            form = .sxm
        }
        self.family = family
        self.formFactor = form
        self.memoryGiB = memory
    }
}
