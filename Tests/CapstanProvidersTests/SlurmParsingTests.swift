import CapstanCore
import CapstanProviders
import Foundation
import Testing

@Suite("Slurm: reading sinfo, squeue and sbatch")
struct SlurmParsingTests {
    @Test("host lists expand like Slurm's (ranges, zero padding, several groups)")
    func hostLists() {
        #expect(SlurmParsing.expandHostList("node[1-3]") == ["node1", "node2", "node3"])
        #expect(SlurmParsing.expandHostList("gpu[07-09,12],login1") == ["gpu07", "gpu08", "gpu09", "gpu12", "login1"])
        #expect(SlurmParsing.expandHostList("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"])
        #expect(SlurmParsing.expandHostList("single") == ["single"])
        #expect(SlurmParsing.expandHostList("") == [])
    }

    @Test("GRES: typed and untyped GPUs, socket lists, other resources, (null)")
    func gres() {
        #expect(SlurmParsing.parseGres("gpu:h100:8(S:0-1)") == [.init(name: "gpu", type: "h100", count: 8)])
        #expect(SlurmParsing.parseGres("gpu:4,nvme:1") == [.init(name: "gpu", type: nil, count: 4), .init(name: "nvme", type: nil, count: 1)])
        #expect(SlurmParsing.parseGres("gpu:a100:2(S:0,1),shard:8") == [.init(name: "gpu", type: "a100", count: 2), .init(name: "shard", type: nil, count: 8)])
        #expect(SlurmParsing.parseGres("(null)").isEmpty)
    }

    @Test("durations: minutes, MM:SS, H:MM:SS, days; infinite is none")
    func durations() {
        #expect(SlurmParsing.parseDuration("30") == 1800)
        #expect(SlurmParsing.parseDuration("30:00") == 1800)
        #expect(SlurmParsing.parseDuration("4:00:00") == 14400)
        #expect(SlurmParsing.parseDuration("2-00:00:00") == 172_800)
        #expect(SlurmParsing.parseDuration("1-12") == 129_600)
        #expect(SlurmParsing.parseDuration("1-00:30") == 88_200)
        for none in ["infinite", "UNLIMITED", "NOT_SET", "INVALID", "", "soon"] { #expect(SlurmParsing.parseDuration(none) == nil, "\(none)") }
    }

    @Test("sinfo nodes: default partition, states, addresses; a line of another shape is an error quoting it")
    func nodes() throws {
        let text = """
            node1|debug*|gpu:h100:1|idle|infinite|1|1024|10.199.4.11
            node2|debug*|gpu:h100:1|alloc|infinite|1|1024|10.199.4.12
            node3|short|(null)|drain*|30:00|64|515000+|node3
            """
        let nodes = try SlurmParsing.parseNodes(text)
        #expect(nodes.map(\.node) == ["node1", "node2", "node3"])
        #expect(nodes[0].isDefaultPartition && nodes[0].partition == "debug" && nodes[0].isIdle && nodes[0].isUsable && nodes[0].address == "10.199.4.11")
        #expect(!nodes[1].isIdle && nodes[1].isUsable)
        #expect(!nodes[2].isUsable && nodes[2].gres.isEmpty && nodes[2].timeLimitSeconds == 1800 && nodes[2].memoryMiB == 515_000)
        do {
            _ = try SlurmParsing.parseNodes("NODELIST PARTITION\nnode1 debug")
            Issue.record("a header line was read as a node")
        } catch let e as CapstanError {
            #expect(e.message.contains("'NODELIST PARTITION'") && e.hint?.contains("SINFO_FORMAT") == true, "\(e)")
        }
    }

    @Test("squeue jobs: node lists, reasons, time left, Capstan's comment (and others' ignored)")
    func jobs() throws {
        let tags = ["capstan:cluster": "my cluster", "capstan:intent": "k;1=2", "team": "ml/α"]
        let comment = SlurmParsing.encodeComment(tags)
        #expect(!comment.contains(" ") && comment.hasPrefix("capstan;"))
        #expect(SlurmParsing.decodeComment(comment) == tags)
        #expect(SlurmParsing.decodeComment("nightly backup") == nil)
        #expect(SlurmParsing.decodeComment("capstanish;a=b") == nil)
        let text = """
            41|capstan-c1|RUNNING|2|node[1-2]|None|1-00:00:00|debug|\(comment)
            42|capstan-c2|PENDING|1||Resources|30:00|short|\(SlurmParsing.encodeComment([:]))
            43|theirs|RUNNING|1|node3|None|UNLIMITED|debug|a|b comment
            """
        let jobs = try SlurmParsing.parseJobs(text)
        #expect(jobs.count == 3)
        #expect(jobs[0].nodes == ["node1", "node2"] && jobs[0].timeLeftSeconds == 86400 && jobs[0].tags == tags)
        #expect(jobs[1].nodes.isEmpty && jobs[1].reason == "Resources" && jobs[1].tags == [:])
        #expect(jobs[2].tags == nil && jobs[2].timeLeftSeconds == nil)
        #expect(throws: CapstanError.self) { try SlurmParsing.parseJobs("JOBID NAME STATE") }
    }

    @Test("Slurm job states as instance states; sbatch --parsable output")
    func states() throws {
        #expect(SlurmParsing.instanceState("PENDING") == .pending && SlurmParsing.instanceState("CONFIGURING") == .pending)
        #expect(SlurmParsing.instanceState("RUNNING") == .running)
        #expect(SlurmParsing.instanceState("PREEMPTED") == .preempted && SlurmParsing.instanceState("REQUEUED") == .preempted)
        for gone in ["CANCELLED", "COMPLETED", "TIMEOUT", "NODE_FAIL", "FAILED", "COMPLETING"] { #expect(SlurmParsing.instanceState(gone) == .terminated, "\(gone)") }
        #expect(try SlurmParsing.parseSubmitted("4711\n") == "4711")
        #expect(try SlurmParsing.parseSubmitted("4711;cluster-a") == "4711")
        #expect(throws: CapstanError.self) { try SlurmParsing.parseSubmitted("sbatch: error: Batch job submission failed") }
    }

    @Test("pending reasons Slurm never clears (a partition, account or QOS limit) against those that pass (resources, priority, a node back soon)")
    func hopelessReasons() {
        for never in ["PartitionTimeLimit", "AccountNotAllowed", "InvalidQOS", "QOSMaxWallDurationPerJobLimit", "DependencyNeverSatisfied", "BadConstraints, more detail"] {
            #expect(SlurmParsing.isHopeless(reason: never), "\(never)")
        }
        for waits in ["Resources", "Priority", "ReqNodeNotAvail, UnavailableNodes:node2", "PartitionNodeLimit", "PartitionConfig", "JobHeldAdmin", "Dependency", "None", ""] {
            #expect(!SlurmParsing.isHopeless(reason: waits), "\(waits)")
        }
    }
}
