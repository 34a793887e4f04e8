public import Foundation

/// Paces transfers to an average rate: each ``reserve(_:)`` waits until the bytes reserved
/// before it have had their time at `bytesPerSecond`, so callers in parallel share one cap.
///
/// The first reservation goes at once; a burst is at most one reservation (one multipart part).
public final class BandwidthLimiter: @unchecked Sendable {
    public let bytesPerSecond: Double
    private let lock = NSLock()
    private var nextFree: ContinuousClock.Instant?

    /// A limiter at `bytesPerSecond` (> 0).
    public init(bytesPerSecond: Double) {
        precondition(bytesPerSecond > 0, "a bandwidth limit must be positive")
        self.bytesPerSecond = bytesPerSecond
    }

    /// A limiter for `options`, or nil when they set no cap.
    public convenience init?(_ options: PutOptions) {
        guard let rate = options.maxBytesPerSecond, rate > 0 else { return nil }
        self.init(bytesPerSecond: Double(rate))
    }

    /// Waits for this caller's turn to send `bytes`; throws only when the task is cancelled.
    public func reserve(_ bytes: Int) async throws {
        let now = ContinuousClock.now
        let start = slot(for: bytes, at: now)
        if start > now { try await Task.sleep(until: start, clock: .continuous) }
    }

    /// Books `bytes` asked for at `now` and returns when they may start: at `now` if the link
    /// is idle, else when the bytes booked before have had their time. Idle time is not banked.
    public func slot(for bytes: Int, at now: ContinuousClock.Instant) -> ContinuousClock.Instant {
        lock.withLock {
            let start = max(now, nextFree ?? now)
            nextFree = start + .seconds(Double(max(0, bytes)) / bytesPerSecond)
            return start
        }
    }
}
