import CapstanCore
import Testing

/// A realistic catalog (published list prices, late 2026).
let realisticCatalog: [Offer] = [
    Offer(provider: "aws", instanceType: "p5.48xlarge", region: "us-east-1", gpuName: "H100", gpusPerNode: 8, vcpus: 192, onDemandPricePerHour: 98.32, spotPricePerHour: 34.03, availability: .unknown, details: ["gpuMemoryMiB": "81920"]),
    Offer(provider: "aws", instanceType: "p5.48xlarge", region: "us-west-2", gpuName: "H100", gpusPerNode: 8, vcpus: 192, onDemandPricePerHour: 98.32, spotPricePerHour: 12.12, availability: .unknown, details: ["gpuMemoryMiB": "81920"]),
    Offer(provider: "gcp", instanceType: "a3-highgpu-8g", region: "us-central1", gpuName: "nvidia-h100-80gb", gpusPerNode: 8, onDemandPricePerHour: 46.0, spotPricePerHour: 20.0),
    Offer(provider: "lambda", instanceType: "gpu_8x_h100_sxm5", region: "us-east-1", gpuName: "gpu_8x_h100_sxm5", gpusPerNode: 8, onDemandPricePerHour: 23.92, availability: .available),
    Offer(provider: "runpod", instanceType: "8x NVIDIA H100 80GB HBM3", region: "US-TX-3", gpuName: "NVIDIA H100 80GB HBM3", gpusPerNode: 8, onDemandPricePerHour: 23.92, spotPricePerHour: 21.52, availability: .limited),
    Offer(provider: "nebius", instanceType: "gpu-h100-sxm-8gpu", region: "eu-north1", gpuName: "H100 SXM", gpusPerNode: 8, onDemandPricePerHour: 23.60, spotPricePerHour: 10.00, availability: .available),
    Offer(provider: "lambda", instanceType: "gpu_1x_h100_pcie", region: "us-west-1", gpuName: "gpu_1x_h100_pcie", gpusPerNode: 1, onDemandPricePerHour: 2.49, availability: .available),
    Offer(provider: "gcp", instanceType: "a2-ultragpu-8g", region: "us-central1", gpuName: "nvidia-a100-80gb", gpusPerNode: 8, onDemandPricePerHour: 40.55, spotPricePerHour: 12.0),
    Offer(provider: "local", instanceType: "local-cpu", region: "local", gpusPerNode: 0, onDemandPricePerHour: 0, availability: .available, maxNodes: 8),
].map { $0.normalized() }

@Suite("Offer ranking")
struct OfferRankingTests {
    @Test("on demand: the cheapest 8xH100 cluster wins, ties broken by availability then name")
    func onDemand() throws {
        let (ranked, rejected) = try OfferRanking.rank(realisticCatalog, for: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2))
        #expect(ranked.map(\.offer.provider) == ["nebius", "lambda", "runpod", "gcp", "aws", "aws"])
        #expect(ranked.first?.clusterPricePerHour == 47.20)
        #expect(ranked.allSatisfy { !$0.spot })
        // lambda (available) beats runpod (limited) at the same $23.92.
        #expect(ranked[1].offer.provider == "lambda" && ranked[2].offer.provider == "runpod")
        #expect(rejected.count == 3)
        #expect(rejected.contains { $0.offer.instanceType == "gpu_1x_h100_pcie" && $0.reason.contains("1 GPU(s) per node, not 8") })
        #expect(rejected.contains { $0.offer.provider == "local" && $0.reason == "no GPU" })
    }

    @Test("spot allowed takes each offer's cheaper price; spot only drops offers without one")
    func spot() throws {
        let allowed = try OfferRanking.rank(realisticCatalog, for: ResourceRequest(gpu: "H100", gpusPerNode: 8, spot: .allowed)).ranked
        #expect(allowed.first?.offer.provider == "nebius")
        #expect(allowed.first?.spot == true)
        #expect(allowed.first?.pricePerNode == 10.00)
        #expect(allowed[1].offer.region == "us-west-2" && allowed[1].pricePerNode == 12.12)
        // Lambda has no spot market: with spot allowed it still competes on demand.
        #expect(allowed.contains { $0.offer.provider == "lambda" && !$0.spot })

        let only = try OfferRanking.rank(realisticCatalog, for: ResourceRequest(gpu: "H100", gpusPerNode: 8, spot: .only))
        #expect(!only.ranked.contains { $0.offer.provider == "lambda" })
        #expect(only.ranked.allSatisfy { $0.spot })
        #expect(only.rejected.contains { $0.offer.provider == "lambda" && $0.reason == "no spot price" })
        #expect(only.ranked.map(\.pricePerNode) == [10.00, 12.12, 20.0, 21.52, 34.03])
    }

    @Test("max price is for the whole cluster")
    func maxPrice() throws {
        let r = try OfferRanking.rank(realisticCatalog, for: ResourceRequest(gpu: "H100", gpusPerNode: 8, nodes: 2, maxPricePerHour: 48))
        #expect(r.ranked.map(\.offer.provider) == ["nebius", "lambda", "runpod"])
        #expect(r.rejected.contains { $0.offer.provider == "gcp" && $0.reason.contains("over the $48.00/h limit") })
    }

    @Test("variants, regions and providers filter")
    func filters() throws {
        let pcie = try OfferRanking.rank(realisticCatalog, for: ResourceRequest(gpu: "H100-PCIe")).ranked
        #expect(pcie.map(\.offer.instanceType) == ["gpu_1x_h100_pcie"])
        let region = try OfferRanking.rank(realisticCatalog, for: ResourceRequest(gpu: "H100", regions: ["us-west-2"])).ranked
        #expect(region.map(\.offer.id) == ["aws/us-west-2/p5.48xlarge"])
        let provider = try OfferRanking.rank(realisticCatalog, for: ResourceRequest(gpu: "A100", providers: ["gcp"])).ranked
        #expect(provider.map(\.offer.instanceType) == ["a2-ultragpu-8g"])
        // No GPU asked: everything with a price, CPU included, free local first.
        let any = try OfferRanking.rank(realisticCatalog, for: ResourceRequest()).ranked
        #expect(any.first?.offer.provider == "local")
        #expect(any.count == realisticCatalog.count)
    }

    @Test("bounded offers reject clusters larger than they can supply")
    func maxNodes() throws {
        let r = try OfferRanking.rank(realisticCatalog, for: ResourceRequest(nodes: 9, providers: ["local"]))
        #expect(r.ranked.isEmpty)
        #expect(r.rejected.contains { $0.reason == "only 8 node(s) available, 9 needed" })
    }

    @Test("ranking is deterministic whatever the input order")
    func deterministic() throws {
        let request = ResourceRequest(gpu: "H100", gpusPerNode: 8, spot: .allowed)
        let a = try OfferRanking.rank(realisticCatalog, for: request).ranked.map(\.offer.id)
        let b = try OfferRanking.rank(realisticCatalog.reversed(), for: request).ranked.map(\.offer.id)
        #expect(a == b)
    }

    @Test("invalid requests are refused before ranking")
    func invalid() {
        #expect(throws: CapstanError.self) { try OfferRanking.rank(realisticCatalog, for: ResourceRequest(gpu: "Z9")) }
        #expect(throws: CapstanError.self) { try OfferRanking.rank(realisticCatalog, for: ResourceRequest(nodes: 0)) }
        #expect(throws: CapstanError.self) { try OfferRanking.rank(realisticCatalog, for: ResourceRequest(maxPricePerHour: -1)) }
    }

    @Test("zero or negative GPUs per node is refused; leaving the count out accepts any", arguments: [0, -1, 65])
    func gpuCount(count: Int) throws {
        for gpu in ["H100", nil] as [String?] {
            let e = #expect(throws: CapstanError.self) { try ResourceRequest(gpu: gpu, gpusPerNode: count).validate() }
            #expect(e?.code == .invalidRequest)
            #expect(e?.message == "GPUs per node must be between 1 and 64, got \(count).", "\(e?.message ?? "")")
        }
        try ResourceRequest(gpu: "H100", gpusPerNode: 1).validate()
        try ResourceRequest(gpu: "H100").validate()
    }
}
