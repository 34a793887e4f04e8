import CapstanCore
import Foundation
import Testing

/// OfferJSON must read and write exactly what `Offer`'s Codable conformance does, and give up
/// (nil) wherever JSONDecoder would answer differently.
@Suite("Offer JSON (fast path)")
struct OfferJSONTests {
    /// Offers with every optional set and unset, awkward strings and numbers.
    static let awkward: [Offer] = realisticCatalog + [
        Offer(provider: "odd", instanceType: "quote\"back\\slash/tab\tnl\ncr\r", region: "ünïcödé-😀", zone: nil, gpuName: "\u{01}ctl\u{1f}", gpusPerNode: -1,
              vcpus: nil, memoryGiB: 0.1 + 0.2, onDemandPricePerHour: 1e-7, spotPricePerHour: 123_456_789_012.5, availability: .unavailable, maxNodes: 0,
              details: ["b": "2", "a": "é\"", "": ""]),
        Offer(provider: "big", instanceType: "x", region: "r", zone: "z", gpusPerNode: 0, memoryGiB: 2048, onDemandPricePerHour: 1e20, spotPricePerHour: -0.0),
    ]

    @Test("writes what JSONDecoder reads back as the same offers, and reads JSONEncoder's output")
    func roundTrips() throws {
        let fast = try OfferJSON.encode(Self.awkward)
        #expect(try PluginWire.decoder.decode([Offer].self, from: fast) == Self.awkward)
        #expect(OfferJSON.decode(fast) == Self.awkward)
        let foundation = try PluginWire.encoder.encode(Self.awkward)
        #expect(OfferJSON.decode(foundation) == Self.awkward)
        let response = try OfferJSON.encodeResponse(Self.awkward)
        #expect(try PluginWire.decoder.decode(PluginWire.OffersResponse.self, from: response).offers == Self.awkward)
        #expect(OfferJSON.decodeResponse(response) == Self.awkward)
        #expect(OfferJSON.decodeResponse(try PluginWire.encoder.encode(PluginWire.OffersResponse(offers: Self.awkward))) == Self.awkward)
        // The same offers are always the same bytes.
        #expect(try OfferJSON.encode(Self.awkward) == fast)
    }

    @Test("a generated 100,000-offer catalog round-trips")
    func largeCatalog() throws {
        var offers: [Offer] = []
        for i in 0..<100_000 {
            offers.append(Offer(provider: "p\(i % 7)", instanceType: "t\(i)", region: "r\(i % 23)", zone: i % 2 == 0 ? "z\(i % 3)" : nil, gpuName: "H100", gpusPerNode: [1, 8][i % 2],
                                onDemandPricePerHour: Double(i) / 7, spotPricePerHour: i % 3 == 0 ? nil : Double(i) / 13, availability: .available, details: i % 5 == 0 ? ["k": "\(i)"] : [:]))
        }
        let data = try OfferJSON.encodeResponse(offers)
        #expect(OfferJSON.decodeResponse(data) == offers)
    }

    @Test("reads what other writers send: white space, key order, nulls, escapes, unknown keys")
    func otherWriters() {
        let text = """
            { "extra": [1, {"a": null}, "x", true, false, -1.5e3],
              "offers" : [ { "details" : { "k\\u00e9" : "v\\ud83d\\ude00\\n" }, "availability":"limited",
                "gpusPerNode" : 2 , "region":"r", "instanceType":"t\\/1", "provider":"c",
                "zone": null, "vcpus": null, "onDemandPricePerHour": 1.25E+1, "unknown": {"deep": [[]]} } ] }
            """
        let offers = OfferJSON.decodeResponse(Data(text.utf8))
        #expect(offers == [Offer(provider: "c", instanceType: "t/1", region: "r", gpusPerNode: 2, onDemandPricePerHour: 12.5, availability: .limited, details: ["ké": "v😀\n"])])
        #expect(offers == (try? PluginWire.decoder.decode(PluginWire.OffersResponse.self, from: Data(text.utf8)))?.offers)
    }

    @Test("gives up where JSONDecoder decides: bad shapes, bad JSON, fractions for integers")
    func givesUp() {
        let good = #"{"provider":"p","instanceType":"t","region":"r","gpusPerNode":1,"availability":"available","details":{}}"#
        #expect(OfferJSON.decode(Data("[\(good)]".utf8))?.count == 1)
        for bad in [
            "[\(good)",                                        // unterminated
            "[\(good)] x",                                     // trailing garbage
            "[\(good.replacingOccurrences(of: "\"gpusPerNode\":1", with: "\"gpusPerNode\":1.5"))]",
            "[\(good.replacingOccurrences(of: "\"gpusPerNode\":1", with: "\"gpusPerNode\":01"))]",
            "[\(good.replacingOccurrences(of: "available", with: "plenty"))]",
            "[\(good.replacingOccurrences(of: ",\"details\":{}", with: ""))]",     // details missing
            "[\(good.replacingOccurrences(of: "\"r\"", with: "7"))]",              // region not text
            "[\(good.replacingOccurrences(of: "\"r\"", with: "\"a\u{01}b\""))]",   // raw control character
            "[\(good.replacingOccurrences(of: "\"r\"", with: "\"\\ud800\""))]",    // lone surrogate
            "{}",
        ] {
            #expect(OfferJSON.decode(Data(bad.utf8)) == nil, "\(bad)")
        }
        #expect(OfferJSON.decodeResponse(Data(#"{"offers":{}}"#.utf8)) == nil)
        #expect(OfferJSON.decodeResponse(Data(#"{"other":[]}"#.utf8)) == nil)
    }

    @Test("JSONValue: parsed and written by hand as JSONDecoder/JSONEncoder read and write it")
    func jsonValue() throws {
        let text = #" {"a": [1, 2.5, -3e2, true, false, null, "x\"y\u00e9"], "b": {"c": {}, "d": []}, "e": 1e300, "f": "" } "#
        let parsed = try #require(JSONValue.parse(Data(text.utf8)))
        #expect(parsed == (try PluginWire.decoder.decode(JSONValue.self, from: Data(text.utf8))))
        #expect(try PluginWire.decoder.decode(JSONValue.self, from: Data(parsed.jsonString.utf8)) == parsed)
        #expect(JSONValue.parse(Data(parsed.jsonString.utf8)) == parsed)
        #expect(try parsed.decode(JSONValue.self) == parsed)
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "tru", "01", "\"unterminated", "1 2"] {
            #expect(JSONValue.parse(Data(bad.utf8)) == nil, "\(bad)")
        }
        // A number JSON cannot carry: written as JSONEncoder would (it cannot, so `null`).
        #expect(JSONValue.array([.number(.infinity)]).jsonString == "null")
    }

    @Test("refuses to write a price that is not finite, as JSONEncoder does")
    func notFinite() {
        #expect(throws: EncodingError.self) { try OfferJSON.encode([Offer(provider: "p", instanceType: "t", region: "r", gpusPerNode: 1, onDemandPricePerHour: .nan)]) }
    }
}
