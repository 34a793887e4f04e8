import CapstanCore
import Foundation
import Testing

/// `capstan offers` across every cloud Capstan reaches, each on its test server: AWS (moto, the
/// built-in provider), GCP and RunPod (Swift plugins) and Lambda (the C plugin, built out of
/// tree), ranked together by total $/h.
@Suite("Offers across AWS, GCP, Lambda and RunPod", .serialized)
struct CloudOffersTests {
    struct Ranked: Decodable {
        var offer: Offer
        var spot: Bool
        var clusterPricePerHour: Double
    }
    struct Output: Decodable { var offers: [Ranked] }

    @Test("capstan offers --gpu H100 --gpus-per-node 8 --spot ranks all four clouds by total $/h, spot where allowed")
    func allClouds() async throws {
        let runpod = try await RunPodServer.start(); defer { runpod.stop() }
        let gcp = try await GCPServer(); defer { gcp.stop() }
        let lambda = try await LambdaEmulator(); defer { lambda.stop() }
        let home = TempDir("capstan-clouds"); defer { home.cleanup() }
        home.write("lambda-key", "api_key = \(LambdaEmulator.apiKey)\n")
        var config = "providers:\n  local:\n    enabled: false\n"
        config += "  lambda:\n    endpoint: \(lambda.endpoint)\n    apiKeyFile: \(home.file("lambda-key"))\n"
        config += try gcp.section(home: home)
        config += RunPodServer.section(runpod, home: home)
        config += AWSProvisioningTests.providerSection(home, endpoint: try TestServers.moto)
        home.write("config.yaml", config)
        let path = [try await LambdaPlugin.build(), GCPServer.pluginPath, RunPodServer.pluginPath].joined(separator: ":")
        let env = ["CAPSTAN_HOME": home.path, "CAPSTAN_PLUGIN_PATH": path]
        let args = ["offers", "--gpu", "H100", "--gpus-per-node", "8", "--spot", "--limit", "0"]
        let table = try await runProcess(BuildProducts.capstan, args, environment: env, timeout: 120)
        #expect(table.status == 0, "\(table.stderr)")
        // The transcript (docs/plugins/gcp.md quotes it).
        print("$ capstan \(args.joined(separator: " "))\n\(table.stdout)")
        // On demand only, for comparison (moto's spot price history answers $0.00 for p5).
        let onDemand = try await runProcess(BuildProducts.capstan, args.filter { $0 != "--spot" }, environment: env, timeout: 120)
        #expect(onDemand.status == 0, "\(onDemand.stderr)")
        print("$ capstan \(args.filter { $0 != "--spot" }.joined(separator: " "))\n\(onDemand.stdout)")
        let json = try await runProcess(BuildProducts.capstan, args + ["--json"], environment: env, timeout: 120)
        #expect(json.status == 0, "\(json.stderr)")
        let ranked = try JSONDecoder.iso.decode(Output.self, from: Data(json.stdout.utf8)).offers
        #expect(Set(ranked.map(\.offer.provider)) == ["aws", "gcp", "lambda", "runpod"], "\(Set(ranked.map(\.offer.provider)))")
        #expect(ranked.allSatisfy { $0.offer.gpu?.hasPrefix("H100") == true && $0.offer.gpusPerNode == 8 })
        // Ranked by total $/h (availability breaks ties), spot wherever it is cheaper.
        let prices = ranked.filter { $0.offer.availability != .unavailable }.map(\.clusterPricePerHour)
        #expect(prices == prices.sorted(), "\(prices)")
        #expect(ranked.first { $0.offer.provider == "runpod" }?.spot == true)
        #expect(ranked.first { $0.offer.provider == "gcp" }.map { $0.spot && $0.clusterPricePerHour == 35.40 } == true)
        #expect(ranked.first { $0.offer.provider == "lambda" }?.spot == false, "Lambda has no spot market")
    }
}
