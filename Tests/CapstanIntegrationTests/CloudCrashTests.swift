import CapstanCore
import CapstanAWS
import CapstanRuntime
import CapstanProviders
import Foundation
import Testing

/// kill -9 of `up` and of `down` on AWS (moto, built in) and Lambda (the C plugin), then
/// reconcile: the same check as the RunPod and GCP suites (killUpAndDownThenReconcile).
@Suite("kill -9 of up and down on AWS and Lambda", .serialized)
struct CloudCrashTests {
    @Test("AWS (moto): no live instance that no cluster owns")
    func aws() async throws {
        let moto = try TestServers.moto
        let ec2 = try EC2ComputeProvider(settings: { var s = AWSSettings(); s.endpoint = moto; s.regions = ["us-east-1"]; return s }(), credentials: TestServers.motoCredentials, defaultRegion: nil)
        try await killUpAndDownThenReconcile(
            provider: "aws", gpu: ["--gpu", "H100", "--gpus-per-node", "8"], makeHome: { AWSProvisioningTests.home(endpoint: moto) },
            env: { ["CAPSTAN_HOME": $0.path] }, owned: { try await ownedInstances(ec2, home: $0) })
    }

    @Test("Lambda (emulator): no live instance that no cluster owns")
    func lambda() async throws {
        let emulator = try await LambdaEmulator(faults: ["boot_seconds": 0.3, "terminate_seconds": 0.1]); defer { emulator.stop() }
        let dir = TempDir(); defer { dir.cleanup() }
        let plugin = try await LambdaPlugin.build()
        let compute = try await JobTests.LambdaPluginTests.provider(emulator, dir: dir)
        try await killUpAndDownThenReconcile(
            provider: "lambda", gpu: ["--gpu", "H100", "--gpus-per-node", "8"],
            makeHome: {
                let home = TempDir("capstan-lambda-crash")
                home.write("lambda-key", "api_key = \(LambdaEmulator.apiKey)\n")
                home.write("config.yaml", "providers:\n  local:\n    enabled: false\n  lambda:\n    endpoint: \(emulator.endpoint)\n    apiKeyFile: \(home.file("lambda-key"))\n")
                return home
            },
            env: { ["CAPSTAN_HOME": $0.path, "CAPSTAN_PLUGIN_PATH": plugin] }, owned: { try await ownedInstances(compute, home: $0) })
    }
}
