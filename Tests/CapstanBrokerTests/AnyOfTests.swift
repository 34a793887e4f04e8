import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanTesting
import CapstanProviders
import Foundation
import Testing

/// `resources.anyOf`: GPU alternatives ranked together by price, and the fall-back to the next
/// when the cheapest has no capacity.
@Suite("anyOf alternatives")
struct AnyOfTests {
    /// H100s cheapest in one region, A100s dearer in two, an L4 box cheaper than either.
    let catalog: [Offer] = [
        Offer(provider: "sim", instanceType: "sim.8xh100", region: "r-full", gpuName: "H100", gpusPerNode: 8, onDemandPricePerHour: 10, availability: .available),
        Offer(provider: "sim", instanceType: "sim.8xa100", region: "r-ok", gpuName: "nvidia-a100-80gb", gpusPerNode: 8, onDemandPricePerHour: 12, availability: .available),
        Offer(provider: "sim", instanceType: "sim.8xa100", region: "r-dear", gpuName: "nvidia-a100-80gb", gpusPerNode: 8, onDemandPricePerHour: 30, availability: .available),
        Offer(provider: "sim", instanceType: "sim.4xh100", region: "r-ok", gpuName: "H100", gpusPerNode: 4, onDemandPricePerHour: 5, availability: .available),
        Offer(provider: "sim", instanceType: "sim.1xl4", region: "r-ok", gpuName: "NVIDIA L4", gpusPerNode: 1, onDemandPricePerHour: 0.8, availability: .available),
        Offer(provider: "sim", instanceType: "sim.8xa100", region: "r-gone", gpuName: "nvidia-a100-80gb", gpusPerNode: 8, onDemandPricePerHour: 1, availability: .unavailable),
    ].map { $0.normalized() }

    let request = ResourceRequest(nodes: 2, anyOf: [.init(gpu: "H100", gpusPerNode: 8), .init(gpu: "A100-80GB", gpusPerNode: 8)])

    @Test("ranked together by cluster price; each offer says which alternative it fits; misses give the telling reason")
    func ranking() throws {
        let (ranked, rejected) = try OfferRanking.rank(catalog, for: request)
        #expect(ranked.map(\.offer.id) == ["sim/r-full/sim.8xh100", "sim/r-ok/sim.8xa100", "sim/r-dear/sim.8xa100"])
        #expect(ranked.map(\.alternative) == [0, 1, 1])
        #expect(ranked.map(\.clusterPricePerHour) == [20, 24, 60])
        let why = Dictionary(uniqueKeysWithValues: rejected.map { ($0.offer.id, $0.reason) })
        // The 4×H100 box matched the H100 entry's GPU: its count is why, not "not an A100".
        #expect(why["sim/r-ok/sim.4xh100"] == "4 GPU(s) per node, not 8")
        #expect(why["sim/r-gone/sim.8xa100"] == "no capacity reported")
        #expect(why["sim/r-ok/sim.1xl4"]?.contains("is not H100") == true)
        // Without anyOf nothing changes: no alternative marked.
        let plain = try OfferRanking.rank(catalog, for: ResourceRequest(gpu: "A100-80GB", gpusPerNode: 8))
        #expect(plain.ranked.map(\.offer.region) == ["r-ok", "r-dear"] && plain.ranked.allSatisfy { $0.alternative == nil })
    }

    @Test("at the same price the alternative listed first wins; an offer fitting two alternatives is ranked once, for the first")
    func ties() throws {
        let same = [
            Offer(provider: "b", instanceType: "a100", region: "r", gpuName: "nvidia-a100-80gb", gpusPerNode: 8, onDemandPricePerHour: 10, availability: .available),
            Offer(provider: "z", instanceType: "h100", region: "r", gpuName: "H100", gpusPerNode: 8, onDemandPricePerHour: 10, availability: .limited),
        ].map { $0.normalized() }
        let ranked = try OfferRanking.rank(same, for: request).ranked
        #expect(ranked.map(\.offer.provider) == ["z", "b"], "listed order beats availability and name at equal price")
        let overlapping = ResourceRequest(anyOf: [.init(gpu: "H100"), .init(gpu: "H100", gpusPerNode: 8)])
        let once = try OfferRanking.rank(same, for: overlapping).ranked
        #expect(once.map(\.offer.provider) == ["z"] && once[0].alternative == 0)
    }

    @Test("the search asks each provider once per alternative and pools the answers, each offer once")
    func search() async throws {
        let cloud = SimulatedCloud(configuration: .init(offers: catalog))
        let result = try await OfferSearch(providers: [cloud]).run(request)
        #expect(result.ranked.map(\.offer.id) == ["sim/r-full/sim.8xh100", "sim/r-ok/sim.8xa100", "sim/r-dear/sim.8xa100"])
        #expect(result.providers.map(\.provider) == ["sim"] && result.providers[0].error == nil)
        #expect(Set(result.rejected.map(\.offer.id)).count == result.rejected.count, "an offer is rejected once, not once per alternative")
        #expect(result.ranked.count + result.rejected.count == catalog.count)
        let bad = await #expect(throws: CapstanError.self) { try await OfferSearch(providers: [cloud]).run(ResourceRequest(anyOf: [])) }
        #expect(bad?.message == "anyOf is an empty list.")
    }

    @Test("the cheapest alternative has no capacity: the next one is launched; events and the report say which")
    func fallsBack() async throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cloud = SimulatedCloud(configuration: .init(offers: catalog, noCapacityRegions: ["r-full"]))
        let p = try makeProvisioner([cloud], dir: dir)
        let report = try await p.up(name: "train", request: request, search: OfferSearch(providers: [cloud]))
        #expect(report.attempts.map(\.offer.id) == ["sim/r-full/sim.8xh100", "sim/r-ok/sim.8xa100"])
        #expect(report.attempts.map(\.outcome) == ["capacity", "ready"])
        #expect(report.cluster.status == .running && report.cluster.offer?.gpu?.hasPrefix("A100-80GB") == true && report.cluster.pricePerHour == 24)
        #expect(report.instances.count == 2 && report.instances.allSatisfy { $0.region == "r-ok" })
        // The cluster keeps the whole request (a move later searches every alternative again).
        let stored = try await #require(try p.store.cluster(named: "train"))
        #expect(stored.request.anyOf == request.anyOf)
        let events = try await p.store.events(cluster: stored.id).map(\.message)
        #expect(events.contains("Cluster train requested: 2 node(s) of H100×8 or A100-80GB×8."), "\(events)")
        #expect(events.contains { $0.contains("Running on sim sim.8xa100 in r-ok, $24.00/h, anyOf[1]: A100-80GB×8.") }, "\(events)")
    }
}
