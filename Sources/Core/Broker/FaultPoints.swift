public import Foundation

/// A test hook: named points in `up`, `down`, `reconcile`, node replacement and the agent
/// where a fault can be injected. The CLI's `CAPSTAN_TEST_CRASH_AT=point[:N]` SIGKILLs the
/// process the N-th time (default 1st) it reaches `point` — how the chaos tests prove that a
/// crash anywhere leaks nothing.
package struct FaultPoints: Sendable {
    package var hit: @Sendable (_ point: String, _ occurrence: Int) -> Void
    private let counts = LockedBox<[String: Int]>([:])
    package init(hit: @escaping @Sendable (String, Int) -> Void) { self.hit = hit }
    package static let none = FaultPoints { _, _ in }

    /// Reaches `point` once more (counted per point in this process).
    package func hit(_ point: String) {
        let n = counts.withLock { c -> Int in
            c[point, default: 0] += 1
            return c[point]!
        }
        hit(point, n)
    }

    /// Every point the provisioner reaches, in the order a lifecycle meets them. (`replace.*`
    /// are the `up.*` launch points of a one-node replacement.)
    package static let provisioning: [String] = [
        "up.created", "up.searched", "up.before-launch", "up.after-launch", "up.recorded", "up.waiting", "up.cleanup", "up.ready",
        "down.marked", "down.listed", "down.terminated", "down.recorded",
        "reconcile.listed", "reconcile.locked", "reconcile.finishing", "reconcile.recovering", "reconcile.rebuilt",
        "reconcile.terminating", "reconcile.terminated",
        "replace.retired", "replace.before-launch", "replace.after-launch", "replace.recorded", "replace.waiting", "replace.ready",
        "move.retired-first", "move.before-launch", "move.after-launch", "move.recorded", "move.waiting", "move.cleanup", "move.launched", "move.retired",
        "reconcile.moving",
    ]
}
