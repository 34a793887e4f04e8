import CapstanCore
import Testing

@Suite("Node addresses (MASTER_ADDR)")
struct NodeAddressesTests {
    func node(_ id: String, _ provider: String = "aws", _ region: String = "us-east-1", priv: String? = nil, pub: String? = nil) -> Instance {
        Instance(id: id, provider: provider, instanceType: "t", region: region, state: .running, privateAddress: priv, publicAddress: pub)
    }

    @Test("one provider and region, every node with a private address: private addresses")
    func shared() {
        let a = NodeAddresses([node("a", priv: "10.0.0.5", pub: "3.3.3.3"), node("b", priv: "10.0.0.6", pub: "4.4.4.4")])
        #expect(a.usesPrivate && a.addresses == ["10.0.0.5", "10.0.0.6"] && a.master == "10.0.0.5")
        #expect(a.reason == "private addresses: all 2 nodes are on provider aws, region us-east-1: one network")
    }

    @Test("across regions, across providers, or a node without a private address: public addresses, and why")
    func split() {
        let regions = NodeAddresses([node("a", priv: "10.0.0.5", pub: "3.3.3.3"), node("b", "aws", "us-west-2", priv: "10.1.0.6", pub: "4.4.4.4")])
        #expect(!regions.usesPrivate && regions.addresses == ["3.3.3.3", "4.4.4.4"] && regions.reason == "public addresses: the nodes are in us-east-1 and us-west-2")
        let providers = NodeAddresses([node("a", priv: "10.0.0.5", pub: "3.3.3.3"), node("b", "gcp", "us-east-1", priv: "10.1.0.6", pub: "4.4.4.4")])
        #expect(providers.reason == "public addresses: the nodes are on aws and gcp")
        let missing = NodeAddresses([node("a", priv: "10.0.0.5", pub: "3.3.3.3"), node("b", pub: "4.4.4.4")])
        #expect(missing.addresses == ["3.3.3.3", "4.4.4.4"] && missing.reason == "public addresses: not every node has a private address")
        #expect(NodeAddresses([node("a", priv: "10.0.0.5")]).reason == "private address: a single node")
        #expect(NodeAddresses([]).master == nil)
    }
}
