import ArgumentParser
import CapstanAPI
import CapstanCore
import CapstanRuntime
import CapstanSDK
import CapstanSQLite
import CapstanProviders
import CapstanTrainer
import Foundation

struct OffersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "offers",
        abstract: "List capacity offers from every enabled provider, cheapest cluster first.",
        discussion: """
            Examples:
              capstan offers                                  everything, including this machine
              capstan offers --gpu H100 --gpus-per-node 8 --nodes 2 --spot
              capstan offers --gpu A100-80GB --max-price 30 --json
            """)

    @OptionGroup var global: GlobalOptions

    @OptionGroup var remote: ServerOptions

    @OptionGroup var resources: RequestOptions

    @Flag(help: "Also list the offers that were filtered out, with the reason.")
    var explain = false

    @Option(parsing: .unconditional, help: "Show at most this many offers (0: all).")
    var limit: Int = 20

    @Flag(help: "Ask every provider now instead of using offers cached in the last few minutes.")
    var refresh = false

    @Option(help: "Rank for this job spec's resources (its anyOf alternatives included) instead of --gpu, --nodes and the other request options.")
    var spec: String?

    func validate() throws {
        if limit < 0 { throw ValidationError("--limit must be 0 (all) or more, got \(limit).") }
        if spec != nil {
            // The spec's resources are the whole request: an option beside it would be dropped.
            let given = [
                ("--gpu", resources.gpu != nil), ("--gpus-per-node", resources.gpusPerNode != nil), ("--nodes", resources.nodes != 1),
                ("--spot", resources.spot), ("--spot-only", resources.spotOnly), ("--region", !resources.regions.isEmpty),
                ("--provider", !resources.providers.isEmpty), ("--max-price", resources.maxPrice != nil),
            ].filter(\.1).map(\.0)
            if !given.isEmpty {
                throw ValidationError("--spec takes the whole request from the job spec's resources (GPU, nodes, spot, regions, providers, price); leave out \(given.joined(separator: ", ")), or change the spec.")
            }
        }
    }

    /// The job spec's resources (`--spec`); nil without it.
    func specRequest() throws -> ResourceRequest? {
        try spec.map { try JobSpec.load(path: ($0 as NSString).expandingTildeInPath).resources }
    }

    var request: ResourceRequest { (try? specRequest()) ?? resources.request }

    func run() async throws {
        try await reportingErrors {
            // A spec that does not parse is bad input (exit 1, naming the file and line), not a
            // wrong command line (64).
            _ = try specRequest()
            if try await remote.run({ client in try render(try await client.offers(request, refresh: refresh)) }) { return }
            let registry = try global.loadRegistry()
            let store = try? await global.openState(registry).store
            let result = try await global.offerSearch(registry, store: store, refresh: refresh).run(request)
            try render(OffersResponse(result: result, problems: registry.problems.map { .init(provider: $0.provider, error: $0.error) }))
        }
    }

    /// What `offers` prints, here or from a server.
    func render(_ result: OffersResponse) throws {
        // No offer: exit 1, so `capstan offers … && capstan up …` stops here (docs/cli.md).
        if global.json { try printJSON(result); if result.offers.isEmpty { throw ExitCode(1) }; return }
        let problems = result.problems
        let shown = limit > 0 ? Array(result.offers.prefix(limit)) : result.offers
        if !shown.isEmpty {
            var table = TextTable(header: ["PROVIDER", "INSTANCE TYPE", "REGION", "GPU", "GPUS", "VCPUS", "MEM GiB", "$/H NODE", "$/H TOTAL", "MARKET", "AVAIL"], rightAligned: [4, 5, 6, 7, 8])
            for r in shown {
                let o = r.offer
                table.rows.append([
                    o.provider, o.instanceType, o.zone ?? o.region, o.gpu ?? o.gpuName ?? "-", "\(o.gpusPerNode)",
                    o.vcpus.map(String.init) ?? "-", o.memoryGiB.map { String(format: "%.0f", $0) } ?? "-",
                    String(format: "%.2f", r.pricePerNode), String(format: "%.2f", r.clusterPricePerHour),
                    r.spot ? "spot" : "on-demand", o.availability.rawValue,
                ])
            }
            print(table.render())
            if shown.count < result.offers.count { print("… \(result.offers.count - shown.count) more (use --limit 0 to see all)") }
            let best = shown[0]
            print("\nCheapest: \(best.offer.provider) \(best.offer.instanceType) in \(best.offer.zone ?? best.offer.region), "
                + String(format: "$%.2f/h for %d node(s)", best.clusterPricePerHour, best.nodes) + (best.spot ? " on spot." : " on demand."))
            if let i = best.alternative, let alt = request.anyOf?[i] { print("  Picked by anyOf[\(i)]: \(alt.description); if it has no capacity the next offer is tried, whichever alternative it fits.") }
            if result.offers.count > 1 {
                let next = result.offers[1]
                let gap = next.clusterPricePerHour - best.clusterPricePerHour
                let why = gap > 0 ? String(format: "$%.2f/h cheaper than", gap) : "same price as (ties go to better availability, then name)"
                print("  It won: \(why) the next, \(next.offer.provider) \(next.offer.instanceType) in \(next.offer.zone ?? next.offer.region)\(next.spot ? " (spot)" : "").")
            }
        }
        if explain, !result.rejected.isEmpty {
            print("\nFiltered out:")
            for r in result.rejected { print("  \(r.offer.id): \(r.reason)") }
        } else if !result.rejected.isEmpty {
            print("\(result.rejected.count) offer(s) filtered out (--explain shows why).")
        }
        let cached = result.providers.filter { $0.cachedAt != nil }
        if !cached.isEmpty, let oldest = cached.compactMap(\.cachedAt).min() {
            print("Offers from \(cached.map(\.provider).joined(separator: ", ")) are cached from \(humanDuration(Date().timeIntervalSince(oldest))) ago (--refresh asks again).")
        }
        for report in result.providers where report.error != nil {
            printError("warning: provider \(report.provider) gave no offers: \(report.error!)")
        }
        for p in problems {
            printError("warning: \(p.provider): \(p.error)")
        }
        if result.offers.isEmpty {
            printError(ErrorStyle.message("error: No offer matches \(describe(request))."))
            printError("  → " + (result.rejected.isEmpty ? "`capstan check` shows which providers are enabled and answer." : "--explain shows why each offer was filtered out; `capstan check` shows which providers answer."))
            throw ExitCode(1)
        }
    }

    func describe(_ r: ResourceRequest) -> String {
        var parts = ["\(r.nodes) node(s)"]
        if let g = r.gpusPerNode { parts.append("\(g) GPU(s) per node") }
        if let gpu = r.gpuDescription { parts.append("GPU \(gpu)") }
        if !r.regions.isEmpty { parts.append("regions \(r.regions.joined(separator: ","))") }
        if let p = r.maxPricePerHour { parts.append(String(format: "under $%.2f/h", p)) }
        parts.append(r.spot == .never ? "on demand" : r.spot == .only ? "spot only" : "spot allowed")
        return parts.joined(separator: ", ")
    }
}
