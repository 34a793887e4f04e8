import CapstanCore
import Foundation
import Testing

/// ``NodeAccess`` on the wire (instances in state rows and plugins' answers) and
/// ``Instance/resolvedAccess``, the one place an instance without it gets its default.
@Suite("Node access")
struct NodeAccessTests {
    func decode<T: Decodable>(_ type: T.Type, _ json: String) throws -> T {
        try PluginWire.decoder.decode(T.self, from: Data(json.utf8))
    }

    func object(_ value: some Encodable) throws -> [String: JSONValue] {
        let v = try PluginWire.decoder.decode(JSONValue.self, from: PluginWire.encoder.encode(value))
        guard case .object(let o) = v else { Issue.record("not an object: \(v)"); return [:] }
        return o
    }

    func roundTrip(_ a: NodeAccess) throws -> NodeAccess {
        try PluginWire.decoder.decode(NodeAccess.self, from: PluginWire.encoder.encode(a))
    }

    @Test("local access: kind, folder and workdir on the wire; round trip")
    func local() throws {
        let a = NodeAccess.local(LocalNodeAccess(folder: "/h/nodes/n1", workdir: "/h/nodes/n1/work"))
        #expect(try object(a) == ["kind": .string("local"), "folder": .string("/h/nodes/n1"), "workdir": .string("/h/nodes/n1/work")])
        #expect(try roundTrip(a) == a)
        #expect(a.kind == "local" && a.networkInterface == nil)
    }

    @Test("ssh access: each key kind on the wire; round trip; defaults for a plugin's minimal object")
    func ssh() throws {
        let file = NodeAccess.ssh(SSHNodeAccess(address: "10.0.0.5", port: 2222, user: "root", key: .file("/k/id"), workRoot: "/scratch", interface: "eth1"))
        #expect(try object(file) == [
            "kind": .string("ssh"), "address": .string("10.0.0.5"), "port": .number(2222), "user": .string("root"),
            "key": .string("file"), "keyFile": .string("/k/id"), "workRoot": .string("/scratch"), "interface": .string("eth1"),
        ])
        #expect(file.networkInterface == "eth1")
        for key in [SSHNodeAccess.Key.cluster, .client, .file("/k/id")] {
            let a = NodeAccess.ssh(SSHNodeAccess(address: "h", user: "u", key: key))
            #expect(try roundTrip(a) == a)
        }
        #expect(try object(NodeAccess.ssh(SSHNodeAccess(address: "h", user: "u", key: .client)))["key"] == .string("client"))
        // What a plugin may send: address and user; port 22, the cluster's key, the default root.
        #expect(try decode(NodeAccess.self, #"{"kind":"ssh","address":"3.3.3.3","user":"ubuntu"}"#)
                == .ssh(SSHNodeAccess(address: "3.3.3.3", port: 22, user: "ubuntu", key: .cluster, workRoot: nil, interface: nil)))
        // A keyFile alone means a file key.
        #expect(try decode(NodeAccess.self, #"{"kind":"ssh","address":"h","user":"u","keyFile":"/k"}"#) == .ssh(SSHNodeAccess(address: "h", user: "u", key: .file("/k"))))
        // A known kind missing what it needs, or naming a key it does not know, is an error.
        #expect(throws: DecodingError.self) { try decode(NodeAccess.self, #"{"kind":"ssh","user":"u"}"#) }
        #expect(throws: DecodingError.self) { try decode(NodeAccess.self, #"{"kind":"ssh","address":"h","user":"u","key":"agent"}"#) }
        #expect(throws: DecodingError.self) { try decode(NodeAccess.self, #"{"kind":"ssh","address":"h","user":"u","key":"file"}"#) }
    }

    @Test("an unknown kind decodes as unsupported, kept verbatim; so does one without a kind")
    func unknown() throws {
        let json = #"{"kind":"k8s-exec","partition":"gpu","nodes":["a","b"],"account":{"id":7}}"#
        let a = try decode(NodeAccess.self, json)
        guard case .unsupported(let kind, let fields) = a else { Issue.record("decoded as \(a)"); return }
        #expect(kind == "k8s-exec" && a.kind == "k8s-exec")
        #expect(fields["partition"] == .string("gpu"))
        // Encodes back unchanged (a state row written by a newer Capstan survives this one).
        #expect(try object(a) == (try object(decode(JSONValue.self, json))))
        #expect(try roundTrip(a) == a)
        let none = try decode(NodeAccess.self, #"{"address":"h"}"#)
        #expect(none.kind == "" && none == .unsupported(kind: "", fields: .object(["address": .string("h")])))
        // Not even an object.
        #expect(try decode(NodeAccess.self, #""ssh""#) == .unsupported(kind: "", fields: .string("ssh")))
    }

    @Test("Instance: access is optional on the wire (old rows, plugins without it) and round-trips")
    func instance() throws {
        let old = #"{"id":"i-1","provider":"aws","instanceType":"g5","region":"us-east-1","state":"running","spot":false,"tags":{},"details":{}}"#
        let i = try decode(Instance.self, old)
        #expect(i.access == nil)
        #expect(try object(i)["access"] == nil)
        let withNull = #"{"id":"i-1","provider":"aws","instanceType":"g5","region":"us-east-1","state":"running","spot":false,"tags":{},"details":{},"access":null}"#
        #expect(try decode(Instance.self, withNull).access == nil)
        var n = i
        n.access = .ssh(SSHNodeAccess(address: "3.3.3.3", user: "ubuntu"))
        #expect(try object(n)["access"]?["kind"] == .string("ssh"))
        #expect(try decode(Instance.self, String(decoding: PluginWire.encoder.encode(n), as: UTF8.self)) == n)
        let future = #"{"id":"j","provider":"hpc","instanceType":"x","region":"r","state":"running","spot":false,"tags":{},"details":{},"access":{"kind":"k8s-exec","pod":"42"}}"#
        #expect(try decode(Instance.self, future).access?.kind == "k8s-exec")
        // A Slurm node (with and without a login node) round-trips; a Slurm access without its
        // job is malformed.
        for access in [
            NodeAccess.slurm(SlurmNodeAccess(job: "4711", node: "gpu-07", workRoot: "/shared/capstan")),
            .slurm(SlurmNodeAccess(job: "4711", node: "gpu-07", workRoot: "~/.capstan-slurm", slurmConf: "/etc/slurm/x.conf", login: SlurmLogin(address: "login1", port: 2222, user: "alice", key: "~/.ssh/id"))),
        ] {
            var s = i
            s.access = access
            #expect(try object(s)["access"]?["kind"] == .string("slurm"))
            #expect(try decode(Instance.self, String(decoding: PluginWire.encoder.encode(s), as: UTF8.self)) == s)
        }
        #expect(throws: DecodingError.self) { try decode(NodeAccess.self, #"{"kind":"slurm","node":"n","workRoot":"/w"}"#) }
    }

    func instance(_ provider: String, user: String? = nil, priv: String? = nil, pub: String? = nil, port: Int? = nil, details: [String: String] = [:], access: NodeAccess? = nil) -> Instance {
        Instance(id: "n", provider: provider, instanceType: "t", region: "r", state: .running, privateAddress: priv, publicAddress: pub, sshPort: port, sshUser: user, details: details, access: access)
    }

    @Test("resolvedAccess: the provider's access first; a cloud instance without it is SSH to its public address with the cluster's key")
    func resolved() {
        let given = NodeAccess.ssh(SSHNodeAccess(address: "a", user: "u", key: .client))
        #expect(instance("anything", user: "x", pub: "p", details: ["workdir": "/w", "folder": "/f"], access: given).resolvedAccess == given)
        #expect(instance("aws", user: "ubuntu", priv: "10.0.0.5", pub: "3.3.3.3").resolvedAccess
                == .ssh(SSHNodeAccess(address: "3.3.3.3", port: 22, user: "ubuntu", key: .cluster)))
        #expect(instance("lambda", user: "ubuntu", priv: "10.0.0.5", port: 2200).resolvedAccess
                == .ssh(SSHNodeAccess(address: "10.0.0.5", port: 2200, user: "ubuntu", key: .cluster)))
        // No login and no access: no way to reach it.
        #expect(instance("sim", priv: "10.0.0.5").resolvedAccess == nil)
        #expect(instance("aws", user: "ubuntu").resolvedAccess == nil)
    }

    @Test("resolvedAccess reads the details an earlier Capstan's local and ssh providers recorded")
    func legacy() {
        #expect(instance("local", priv: "127.0.0.2", details: ["slot": "0", "folder": "/h/nodes/n", "workdir": "/h/nodes/n/work"]).resolvedAccess
                == .local(LocalNodeAccess(folder: "/h/nodes/n", workdir: "/h/nodes/n/work")))
        #expect(instance("ssh", user: "root", priv: "10.0.0.9", pub: "h1", port: 22, details: ["host": "h1", "workRoot": "/w", "sshKey": "/k", "interface": "eth1"]).resolvedAccess
                == .ssh(SSHNodeAccess(address: "h1", user: "root", key: .file("/k"), workRoot: "/w", interface: "eth1")))
        // An ssh host without a key of its own logged in with the SSH client's, not a cluster key.
        #expect(instance("ssh", user: "root", pub: "h1", details: ["host": "h1", "workRoot": "/home/root/.capstan-node"]).resolvedAccess
                == .ssh(SSHNodeAccess(address: "h1", user: "root", key: .client, workRoot: "/home/root/.capstan-node")))
        // As before: another provider's free-form details never make its node a local folder,
        // and its nodes without an sshKey use the cluster's key.
        #expect(instance("lambda", user: "ubuntu", pub: "3.3.3.3", details: ["folder": "/f", "workdir": "/w", "workRoot": "/data"]).resolvedAccess
                == .ssh(SSHNodeAccess(address: "3.3.3.3", user: "ubuntu", key: .cluster, workRoot: "/data")))
        #expect(instance("sim", details: ["folder": "/f", "workdir": "/w"]).resolvedAccess == nil)
    }
}
