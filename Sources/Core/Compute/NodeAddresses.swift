/// Which address each node of a cluster is reached at by the others — `MASTER_ADDR` is node
/// 0's — and why, for `capstan status` and the job's log.
///
/// Private addresses when the nodes share a network: every node has one and all are on the
/// same provider and region (a cloud's VPC; the local provider's loopback; the ssh provider's
/// hosts, whose private address the user declares or which defaults to the address Capstan
/// uses). Otherwise public addresses: traffic between regions or providers has no private
/// path.
public struct NodeAddresses: Sendable, Hashable {
    /// In node order; `addresses[0]` is `MASTER_ADDR`.
    public var addresses: [String]
    public var usesPrivate: Bool
    public var reason: String

    public init(_ nodes: [Instance]) {
        let providers = Set(nodes.map(\.provider)), regions = Set(nodes.map(\.region))
        let allPrivate = nodes.allSatisfy { $0.privateAddress != nil }
        if allPrivate && providers.count == 1 && regions.count == 1 {
            addresses = nodes.map { $0.privateAddress! }
            usesPrivate = true
            reason = nodes.count == 1
                ? "private address: a single node"
                : "private addresses: all \(nodes.count) nodes are on provider \(providers.first!), region \(regions.first!): one network"
        } else {
            addresses = nodes.map { $0.publicAddress ?? $0.privateAddress ?? "127.0.0.1" }
            usesPrivate = false
            let why = !allPrivate ? "not every node has a private address"
                : providers.count > 1 ? "the nodes are on \(providers.sorted().joined(separator: " and "))"
                : "the nodes are in \(regions.sorted().joined(separator: " and "))"
            reason = "public addresses: \(why)"
        }
    }

    public var master: String? { addresses.first }
}
