import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanTrainer
import Testing

@Suite("Env contract")
struct EnvContractTests {
    @Test("torchrun variables and Capstan's own, for a worker node")
    func variables() throws {
        let c = EnvContract(jobID: "j1", nodeRank: 1, nodeAddresses: ["127.0.0.2", "127.0.0.3"], gpusPerNode: 8, masterPort: 29501, checkpointDir: "/ck", resumeDir: "/resume", outputDir: "/out", attempt: 2)
        try c.validate()
        let v = c.variables
        #expect(v["MASTER_ADDR"] == "127.0.0.2")
        #expect(v["MASTER_PORT"] == "29501")
        #expect(v["NNODES"] == "2" && v["NODE_RANK"] == "1" && v["NPROC_PER_NODE"] == "8")
        #expect(v["CAPSTAN_NODE_IPS"] == "127.0.0.2,127.0.0.3")
        #expect(v["CAPSTAN_RESUME_DIR"] == "/resume")
        #expect(v["CAPSTAN_ATTEMPT"] == "2")
        #expect(v["CAPSTAN_JOB_ID"] == "j1" && v["CAPSTAN_CHECKPOINT_DIR"] == "/ck" && v["CAPSTAN_OUTPUT_DIR"] == "/out")
    }

    @Test("CPU nodes run one process; no resume dir on a first attempt")
    func cpu() {
        let v = EnvContract(jobID: "j", nodeRank: 0, nodeAddresses: ["127.0.0.2"], gpusPerNode: 0, checkpointDir: "/c", outputDir: "/o").variables
        #expect(v["NPROC_PER_NODE"] == "1")
        #expect(v["CAPSTAN_RESUME_DIR"] == nil)
    }

    @Test("inconsistent contracts are refused")
    func invalid() {
        #expect(throws: CapstanError.self) { try EnvContract(jobID: "j", nodeRank: 2, nodeAddresses: ["a", "b"], gpusPerNode: 1, checkpointDir: "/c", outputDir: "/o").validate() }
        #expect(throws: CapstanError.self) { try EnvContract(jobID: "j", nodeRank: 0, nodeAddresses: ["a"], gpusPerNode: 1, masterPort: 0, checkpointDir: "/c", outputDir: "/o").validate() }
    }
}
