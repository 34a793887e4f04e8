import CapstanCore
import CapstanRuntime

import Foundation
import Testing

@Suite("Errors")
struct CapstanErrorTests {
    @Test("round-trips through the wire format and says what to do")
    func roundTrip() throws {
        let e = CapstanError(.rateLimited, "Too many launches.", hint: "Wait and retry.", provider: "lambda", retryAfterSeconds: 10, cloudCode: "429")
        let back = try PluginWire.decoder.decode(CapstanError.self, from: PluginWire.encoder.encode(e))
        #expect(back == e)
        #expect(back.retryAfter == .seconds(10))
        #expect(e.description.contains("[lambda] Too many launches."))
        #expect(e.description.contains("Retry after 10.0 s."))
        #expect(e.description.contains("→ Wait and retry."))
        #expect(e.code.isRetryable && !e.code.movesToNextOffer)
        #expect(CapstanError.Code.capacity.movesToNextOffer)
    }

    @Test("an unknown code from a newer plugin degrades to a plugin failure")
    func unknownCode() throws {
        let json = #"{"code":"somethingNew","message":"x"}"#
        let e = try PluginWire.decoder.decode(CapstanError.self, from: Data(json.utf8))
        #expect(e.code == .pluginFailure)
    }
}

@Suite("Config")
struct ConfigTests {
    @Test("parses providers, plugin paths and storage")
    func parse() throws {
        let c = try CapstanConfig.parse("""
            providers:
              local:
                slots: 4
              sim:
                capacityFailures: 2
                noCapacityRegions: [sim-east-1]
              aws:
                enabled: false
            plugins:
              paths: [/opt/capstan/plugins]
              timeoutSeconds: 5
            storage:
              default: file:///data/bucket
            """)
        #expect(c.isEnabled("local", defaultOn: true))
        #expect(c.isEnabled("sim", defaultOn: false))
        #expect(!c.isEnabled("aws", defaultOn: true))
        #expect(!c.isEnabled("gcp", defaultOn: false))
        #expect(c.providerConfig("sim")["capacityFailures"]?.intValue == 2)
        #expect(c.providerConfig("aws")["enabled"] == nil)
        #expect(c.plugins.paths == ["/opt/capstan/plugins"])
        #expect(c.plugins.timeoutSeconds == 5)
        #expect(c.storage.defaultLocation == "file:///data/bucket")
    }

    @Test("an empty or missing file is the embedded default")
    func empty() throws {
        #expect(try CapstanConfig.parse("") == CapstanConfig())
        #expect(try CapstanConfig.load(path: "/nonexistent/config.yaml") == CapstanConfig())
    }

    @Test("unknown keys and bad values name the key and the line", arguments: [
        ("providers:\n  local: {}\nstorrage:\n  default: file:///x\n", "unknown key 'storrage'", 3),
        ("plugins:\n  timeoutSeconds: -3\n", "'plugins.timeoutSeconds' must be a positive number", 2),
        ("plugins:\n  path: [/x]\n", "unknown key 'plugins.path'", 2),
        ("storage:\n  default: /not/a/uri\n", "must be a bucket URI", 2),
        ("providers:\n  sim:\n    enabled: maybe\n", "'providers.sim.enabled' must be true or false", 3),
        ("providers: [a, b]\n", "'providers' must be a mapping", 1),
    ] as [(String, String, Int)])
    func invalid(text: String, message: String, line: Int) {
        let e = #expect(throws: CapstanError.self) { try CapstanConfig.parse(text, source: "config.yaml") }
        #expect(e?.code == .config)
        #expect(e?.message.contains(message) == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("config.yaml:\(line): ") == true, "\(e?.message ?? "")")
    }

    /// A plugin-style schema: what a manifest's configSchema looks like.
    static let cloudSchema = """
        {"type": "object", "properties": {
          "region": {"type": "string", "enum": ["east", "west"]},
          "timeoutSeconds": {"type": "number", "minimum": 1},
          "pools": {"type": "array", "items": {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}, "name": {"type": "string"}}}},
          "tags": {"type": "object", "additionalProperties": {"type": "string"}},
          "extra": {"type": "object"}
        }}
        """

    @Test("provider settings are checked against the provider's JSON Schema, with the file and line", arguments: [
        ("providers:\n  cloud:\n    regoin: east\n", "config.yaml:3: unknown key 'providers.cloud.regoin' (did you mean 'region'?)"),
        ("providers:\n  cloud:\n    region: north\n", "config.yaml:3: providers.cloud.region: expected one of 'east', 'west', got 'north'"),
        ("providers:\n  cloud:\n    timeoutSeconds: 0.5\n", "config.yaml:3: providers.cloud.timeoutSeconds: must be at least 1, got 0.5"),
        ("providers:\n  cloud:\n    timeoutSeconds: soon\n", "config.yaml:3: providers.cloud.timeoutSeconds: expected a number, got 'soon'"),
        ("providers:\n  cloud:\n    pools:\n      - size: 2\n      - name: big\n", "config.yaml:5: providers.cloud.pools[1]: the setting 'size' is required"),
        ("providers:\n  cloud:\n    pools:\n      - size: 2.5\n", "config.yaml:4: providers.cloud.pools[0].size: expected an integer, got 2.5"),
        ("providers:\n  cloud:\n    pools:\n      - {size: 2, nmae: x}\n", "config.yaml:4: unknown key 'providers.cloud.pools[0].nmae' (did you mean 'name'?)"),
        ("providers:\n  cloud:\n    tags:\n      team: ml\n      cost: [1]\n", "config.yaml:5: providers.cloud.tags.cost: expected text, got a list"),
        ("providers:\n  cloud: {}\n  clod:\n    region: east\n", "config.yaml:3: providers.clod: there is no provider or plugin named 'clod' (did you mean 'cloud'?)"),
        ("providers:\n  cloud:\n    enabled: false\n    region: [east]\n", "config.yaml:4: providers.cloud.region: expected text, got a list"),
    ] as [(String, String)])
    func schemaErrors(text: String, message: String) throws {
        let config = try CapstanConfig.parse(text, source: "config.yaml")
        let schema = try JSONDecoder().decode(JSONValue.self, from: Data(Self.cloudSchema.utf8))
        let e = #expect(throws: CapstanError.self) { try ConfigSchema.checkProviders(config, schemas: ["cloud": schema, "local": nil]) }
        #expect(e?.code == .config)
        #expect(e?.message.contains(message) == true, "\(e?.message ?? "")")
    }

    @Test("settings a schema allows pass; a provider with no schema takes anything; a far-off name is left to the caller")
    func schemaAccepts() throws {
        let text = """
            providers:
              cloud:
                enabled: true
                region: west
                timeoutSeconds: 3
                pools: [{size: 1}, {size: 4, name: big}]
                tags: {team: ml}
                extra: {anything: [1, 2], goes: true}
              local:
                whatever: 1
              lambda:
                apiKeyFile: ~/.key
            """
        let config = try CapstanConfig.parse(text, source: "config.yaml")
        #expect(config.line(of: "providers.cloud.pools[1].name") == 6)
        #expect(config.line(of: "providers.cloud.extra.anything[0]") == 8)
        let schema = try JSONDecoder().decode(JSONValue.self, from: Data(Self.cloudSchema.utf8))
        try ConfigSchema.checkProviders(config, schemas: ["cloud": schema, "local": nil])
    }

    @Test("malformed YAML is a config error, not a crash")
    func malformed() {
        let e = #expect(throws: CapstanError.self) { try CapstanConfig.parse("providers:\n  local: [unclosed\n", source: "config.yaml") }
        #expect(e?.code == .config)
        #expect(e?.message.contains("config.yaml") == true)
    }
}

/// A provider that answers after a delay, or fails.
struct ScriptedProvider: ComputeProvider {
    var name: String
    var delay: Duration = .zero
    var failure: CapstanError?
    var catalog: [Offer] = []
    func offers(for request: ResourceRequest) async throws -> [Offer] {
        try await Task.sleep(for: delay)
        if let failure { throw failure }
        return catalog
    }
    func launch(_ request: LaunchRequest) async throws -> [Instance] { throw CapstanError(.unsupported, "no") }
    func describe(_ query: InstanceQuery) async throws -> [Instance] { [] }
    func terminate(ids: [String]) async throws -> [Instance] { [] }
}

@Suite("Offer search")
struct OfferSearchTests {
    @Test("a slow and a failing provider degrade the answer but never block it")
    func degraded() async throws {
        let fast = ScriptedProvider(name: "fast", catalog: realisticCatalog.filter { $0.provider == "lambda" }.map { var o = $0; o.provider = "fast"; return o })
        let slow = ScriptedProvider(name: "slow", delay: .seconds(120), catalog: realisticCatalog)
        let broken = ScriptedProvider(name: "broken", failure: CapstanError(.auth, "bad key", cloudCode: "global/invalid-api-key"))
        let search = OfferSearch(providers: [fast, slow, broken], timeout: .milliseconds(300))
        let result = try await search.run(ResourceRequest(gpu: "H100"))
        // Not a timing test: the slow provider would answer with its offers after 120 s; its
        // timeout error below shows the search did not wait for it.
        #expect(result.ranked.map(\.offer.instanceType) == ["gpu_1x_h100_pcie", "gpu_8x_h100_sxm5"])
        #expect(result.providers.map(\.provider) == ["broken", "fast", "slow"])
        #expect(result.providers[0].error?.code == .auth)
        #expect(result.providers[0].error?.provider == "broken")
        #expect(result.providers[2].error?.code == .timeout)
        #expect(result.providers[1].error == nil && result.providers[1].offers == 2)
    }

    @Test("asking for a provider that is not enabled is an error")
    func unknownProvider() async {
        let search = OfferSearch(providers: [ScriptedProvider(name: "a")])
        await #expect(throws: CapstanError.self) { try await search.run(ResourceRequest(providers: ["zz"])) }
    }
}
