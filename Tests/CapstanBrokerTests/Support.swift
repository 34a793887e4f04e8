import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
@_exported import CapstanTestSupport

/// A provisioner over `providers` with a fresh store, fast backoff and a fast waiter.
func makeProvisioner(_ providers: [any ComputeProvider], dir: TempDir) throws -> Provisioner {
    var options = ProvisionOptions()
    options.backoff = Backoff(initial: .milliseconds(5), max: .milliseconds(20))
    options.waitMinDelay = .milliseconds(10)
    options.waitMaxDelay = .milliseconds(50)
    options.readyTimeout = .seconds(10)
    return Provisioner(providers: providers, store: try SQLiteStateStore(path: dir.file("state/capstan.db")), locks: ClusterLocks(folder: dir.file("state/locks")), options: options)
}

/// A three-region catalog where each region is a little dearer than the last.
let threeRegions: [Offer] = [("r-east", 20.0), ("r-west", 21.0), ("r-eu", 22.0)].map { region, price in
    Offer(provider: "sim", instanceType: "sim.8xh100", region: region, gpuName: "H100", gpusPerNode: 8, onDemandPricePerHour: price, spotPricePerHour: price / 2, availability: .available, details: ["gpuMemoryMiB": "81920"])
}
