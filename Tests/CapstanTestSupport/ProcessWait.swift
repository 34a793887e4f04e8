public import Foundation

extension Process {
    /// Waits for the process to end on a thread of its own. `waitUntilExit()` in an async test
    /// holds one of Swift concurrency's cooperative threads (two on a 2-core machine) for as
    /// long as the child runs, and stalls every other test's timers and polls meanwhile.
    public func exited() async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                self.waitUntilExit()
                done.resume()
            }
        }
    }
}
