import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
@testable import CapstanTrainer
import Foundation
import Testing

/// The controller picks a node's transport by its ``NodeAccess`` (``NodeTransports``), never by
/// its provider's name, and the transport configures itself from it.
@Suite("Transport selection by node access")
struct TransportSelectionTests {
    let local = LocalTransport(agentExecutable: "/bin/true")
    let ssh = SSHTransport(client: SSHClient(folder: FileManager.default.temporaryDirectory.path + "/capstan-transport-selection-ssh"), agentBinary: "/bin/true", clusterKeys: ClusterKeys(folder: "/keys"))
    var transports: [any NodeTransport] { [local, ssh] }

    func node(_ provider: String, access: NodeAccess? = nil, user: String? = nil, pub: String? = nil, tags: [String: String] = [:], details: [String: String] = [:]) -> Instance {
        Instance(id: "n-1", provider: provider, instanceType: "t", region: "r", state: .running, publicAddress: pub, sshUser: user, tags: tags, details: details, access: access)
    }

    func pick(_ n: Instance) throws -> any NodeTransport { try NodeTransports.transport(for: n, among: transports) }

    @Test("ssh access gets the SSH transport whatever the provider is called, even 'local'")
    func sshAccess() throws {
        for provider in ["ssh", "local", "my-hpc", "aws"] {
            let n = node(provider, access: .ssh(SSHNodeAccess(address: "10.0.0.5", port: 2222, user: "me", key: .file("/k"), workRoot: "/scratch/c")))
            let t = try pick(n)
            #expect(t is SSHTransport, "\(provider)")
            #expect(try ssh.target(n) == SSHTarget(address: "10.0.0.5", port: 2222, user: "me", keyFile: "/k"))
            #expect(try ssh.layout(job: "j", attempt: 1, on: n).workdir == "/scratch/c/jobs/j/work")
        }
    }

    @Test("local access gets the local transport whatever the provider is called, and its folders")
    func localAccess() throws {
        for provider in ["local", "ssh", "sim"] {
            let n = node(provider, access: .local(LocalNodeAccess(folder: "/h/nodes/n-1", workdir: "/h/nodes/n-1/work")), user: "root", pub: "1.2.3.4")
            #expect(try pick(n) is LocalTransport, "\(provider)")
            let l = try local.layout(job: "j", attempt: 2, on: n)
            #expect(l.workdir == "/h/nodes/n-1/work" && l.stateDir == "/h/nodes/n-1/work/.capstan/j/attempt-2" && l.pidsFile == "/h/nodes/n-1/pids")
        }
    }

    @Test("a cloud instance without access: SSH to its public address with its cluster's key and known_hosts")
    func cloudDefault() throws {
        let n = node("lambda", user: "ubuntu", pub: "3.3.3.3", tags: [CapstanTags.clusterID: "c-1"])
        #expect(try pick(n) is SSHTransport)
        #expect(try ssh.target(n) == SSHTarget(address: "3.3.3.3", port: 22, user: "ubuntu", keyFile: "/keys/c-1/id_ed25519"))
        #expect(ssh.client(for: n).folder == "/keys/c-1")
        #expect(try ssh.root(n) == SSHTransport.defaultWorkRoot)
        // A key of its own (or the client's): Capstan's shared known_hosts, no cluster key.
        let own = node("aws", access: .ssh(SSHNodeAccess(address: "3.3.3.3", user: "ubuntu", key: .client)), tags: [CapstanTags.clusterID: "c-1"])
        #expect(try ssh.target(own).keyFile == nil && ssh.client(for: own).folder == FileManager.default.temporaryDirectory.path + "/capstan-transport-selection-ssh")
    }

    @Test("state rows of an earlier Capstan (details, no access) still reach their nodes")
    func legacyRows() throws {
        let l = node("local", details: ["folder": "/h/nodes/n-1", "workdir": "/h/nodes/n-1/work", "slot": "0"])
        #expect(try pick(l) is LocalTransport)
        #expect(try local.layout(job: "j", attempt: 1, on: l).pidsFile == "/h/nodes/n-1/pids")
        let s = node("ssh", user: "root", pub: "h1", details: ["host": "h1", "workRoot": "/w", "sshKey": "/k"])
        #expect(try pick(s) is SSHTransport)
        #expect(try ssh.target(s) == SSHTarget(address: "h1", port: 22, user: "root", keyFile: "/k"))
        #expect(try ssh.root(s) == "/w")
    }

    @Test("an unsupported kind, no access at all, or no transport for the kind: a CapstanError naming the node, the kind and what to do")
    func errors() throws {
        let future = node("hpc", access: .unsupported(kind: "k8s-exec", fields: .object(["kind": .string("k8s-exec")])), user: "u", pub: "p")
        let e = try #require(throws: CapstanError.self) { try pick(future) }
        #expect(e.code == .unsupported && e.provider == "hpc")
        #expect(e.message.contains("Node n-1 on hpc") && e.message.contains("'k8s-exec' access") && e.message.contains("local, ssh and slurm"), "\(e.message)")
        #expect(e.hint?.contains("supports 'k8s-exec' nodes") == true)

        let kindless = node("hpc", access: .unsupported(kind: "", fields: .object([:])))
        let k = try #require(throws: CapstanError.self) { try pick(kindless) }
        #expect(k.message.contains("names no kind") && k.hint?.contains("\"kind\"") == true, "\(k)")

        let none = node("sim")
        let n = try #require(throws: CapstanError.self) { try pick(none) }
        #expect(n.code == .unsupported && n.message.contains("No way to reach node n-1 on sim") && n.hint?.contains("access") == true, "\(n)")

        let localOnly = node("x", access: .ssh(SSHNodeAccess(address: "a", user: "u")))
        let m = try #require(throws: CapstanError.self) { try NodeTransports.transport(for: localOnly, among: [local]) }
        #expect(m.message.contains("no ssh transport"), "\(m)")
        // A transport handed a node of another kind refuses it plainly.
        #expect(throws: CapstanError.self) { try local.layout(job: "j", attempt: 1, on: localOnly) }
        #expect(throws: CapstanError.self) { try ssh.layout(job: "j", attempt: 1, on: node("local", access: .local(LocalNodeAccess(folder: "/f", workdir: "/w")))) }
    }
}
