public import Foundation

/// The spot-style preemption switch the sim cloud and the local provider share
/// (`preemptAfterSeconds`, `preemptNodes`): a running node is taken back this long after it
/// became runnable (launch + boot), once per node of a cluster — a node preempted before keeps
/// `details["preemptedAt"]`, even once terminated, so its replacement is left alone.
package struct PreemptionSwitch {
    package var afterSeconds: Double?
    package var nodes: [Int]?
    package var bootSeconds: Double

    package init(afterSeconds: Double?, nodes: [Int]?, bootSeconds: Double) {
        self.afterSeconds = afterSeconds
        self.nodes = nodes
        self.bootSeconds = bootSeconds
    }

    /// The instance's place in the launch that made it (what the provider knows of it: Capstan
    /// numbers a gang's nodes in the order its launch returns them, see `NodeIndices`).
    package static let launchIndex = "launchIndex"

    /// The node an instance serves, as far as the provider can tell: the node tag a one-node
    /// replacement was launched with, else its place in its gang's launch.
    package static func node(_ i: Instance) -> Int {
        i.tags[CapstanTags.node].flatMap(Int.init) ?? i.details[launchIndex].flatMap(Int.init) ?? Int.max
    }

    /// A node's place in its cluster: preempted at most once.
    package static func key(_ i: Instance) -> String { "\(i.tags[CapstanTags.clusterID] ?? i.id)/\(node(i))" }

    /// The nodes of `all` (the provider's every instance) due now, each with the moment the
    /// switch took it (a preemption is only seen at the next look, as by polling a cloud).
    package func due(in all: [Instance], now: Date = Date()) -> [(instance: Instance, at: Date)] {
        guard let afterSeconds else { return [] }
        var done = Set(all.filter { $0.details["preemptedAt"] != nil }.map(Self.key))
        var out: [(Instance, Date)] = []
        for i in all where i.state == .running && (nodes?.contains(Self.node(i)) ?? true) && !done.contains(Self.key(i)) {
            guard let launched = i.launchedAt else { continue }
            let at = launched.addingTimeInterval(bootSeconds + afterSeconds)
            guard now >= at else { continue }
            done.insert(Self.key(i))
            out.append((i, at))
        }
        return out
    }

    /// `i` as a preempted instance, taken at `at`.
    package static func preempted(_ i: Instance, at: Date) -> Instance {
        var p = i
        p.state = .preempted
        p.providerState = "preempted"
        p.stateReason = "Server.SpotInstanceTermination"
        p.details["preemptedAt"] = String(at.timeIntervalSince1970)
        return p
    }
}
