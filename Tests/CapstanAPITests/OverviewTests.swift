import CapstanAPI
import CapstanCore
import Foundation
import Testing

@Suite("The dashboard's overview rows")
struct OverviewTests {
    func job(metrics: String?) -> JobRecord {
        var j = JobRecord(id: "ft-abc123", name: "ft", spec: "name: ft\nrun: x\n", specFolder: "/tmp", settings: "{}", clusterName: "ft-abc123", ownsCluster: true, storage: "file:///tmp/b", createdAt: Date(timeIntervalSince1970: 1_790_000_000.25))
        j.status = .running
        j.attempt = 2
        j.restarts = 1
        j.metrics = metrics
        return j
    }

    @Test("a job's row takes step, total, loss and tokens/s from its newest metrics line")
    func fromMetrics() {
        let row = OverviewJob(job(metrics: #"{"step": 120, "loss": 2.5, "tokens_per_s": 6100.5, "total_steps": 500, "lr": 0.001}"#), nodes: 2, cost: 1.25)
        #expect(row.step == 120 && row.totalSteps == 500 && row.loss == 2.5 && row.tokensPerSecond == 6100.5)
        #expect(row.nodes == 2 && row.cost == 1.25 && row.attempt == 2 && row.restarts == 1 && row.status == .running && row.cluster == "ft-abc123")
        #expect(OverviewJob(job(metrics: #"{"step": 7, "loss": 1, "max_steps": 90}"#), nodes: nil, cost: nil).totalSteps == 90)
    }

    @Test("a missing, malformed or non-numeric metrics line leaves the fields empty instead of failing the overview")
    func badMetrics() {
        for line in [nil, "", "not json", #"{"step": "ten", "loss": "low"}"#, #"{"step": 1.5}"#, "[1, 2]", #"{"step": 1e300}"#] {
            let row = OverviewJob(job(metrics: line), nodes: nil, cost: nil)
            #expect(row.totalSteps == nil && row.loss == nil && row.tokensPerSecond == nil, "\(line ?? "nil")")
            #expect(row.step == nil, "\(line ?? "nil")")
        }
    }

    @Test("the overview round-trips through the API's JSON")
    func roundTrip() throws {
        let o = OverviewResponse(generatedAt: Date(timeIntervalSince1970: 1_790_000_000.5), clusters: [], jobs: [OverviewJob(job(metrics: #"{"step": 1, "loss": 3}"#), nodes: 2, cost: nil)])
        let back = try CapstanAPI.decoder.decode(OverviewResponse.self, from: CapstanAPI.encoder.encode(o))
        #expect(back == o)
    }
}
