import ArgumentParser
import CapstanCore
import CapstanRuntime
import CapstanSQLite

/// The options that make a ``ResourceRequest``, shared by `offers` and `up`. Numbers are
/// parsed unconditionally, so `--nodes -1` reaches the check below (and its message) instead
/// of being taken for a flag; the whole request is checked before anything is loaded or written.
struct RequestOptions: ParsableArguments {
    @Option(help: "GPU model: a family (H100, A100, L40S, …) or a variant (H100-SXM, A100-40GB).")
    var gpu: String?

    @Option(parsing: .unconditional, help: "GPUs per node (exact; leave out to accept any count).")
    var gpusPerNode: Int?

    @Option(parsing: .unconditional, help: "Nodes in the cluster.")
    var nodes: Int = 1

    @Flag(help: "Allow spot capacity where it is cheaper.")
    var spot = false

    @Flag(help: "Spot capacity only.")
    var spotOnly = false

    @Option(name: .customLong("region"), help: "Allowed region (repeatable).")
    var regions: [String] = []

    @Option(name: .customLong("provider"), help: "Only this provider (repeatable).")
    var providers: [String] = []

    @Option(parsing: .unconditional, help: "Ceiling on the whole cluster's price, $/h.")
    var maxPrice: Double?

    func validate() throws {
        if spot && spotOnly { throw ValidationError("--spot and --spot-only exclude each other.") }
        if nodes < 1 { throw ValidationError("--nodes must be at least 1, got \(nodes).") }
        if let g = gpusPerNode, g < 1 {
            throw ValidationError("--gpus-per-node must be at least 1, got \(g). Leave it out to accept any count.")
        }
        if let p = maxPrice, !(p > 0) { throw ValidationError("--max-price must be a positive $/h figure, got \(p).") }
        // Everything else (GPU names, upper bounds) by the same rules the library applies.
        do { try request.validate() } catch let e as CapstanError { throw ValidationError(e.description) }
    }

    var request: ResourceRequest {
        ResourceRequest(
            gpu: gpu, gpusPerNode: gpusPerNode, nodes: nodes, regions: regions,
            spot: spotOnly ? .only : (spot ? .allowed : .never), maxPricePerHour: maxPrice, providers: providers)
    }
}
