public import Foundation

/// Offers as JSON, fast: the `compute.offers` answer (`{"offers":[…]}`) and the offer cache's
/// arrays, written and read byte by byte instead of through `JSONEncoder`/`JSONDecoder`.
///
/// A large catalog is 100,000 offers; Foundation's coders spend most of a second each way on
/// that (a container and a boxed value per field), and an offer search does it three times (the
/// plugin encodes, the host decodes, the cache encodes again). The shape is exactly the one
/// `Offer`'s `Codable` conformance reads and writes — the same keys, absent optionals left out,
/// `availability` as its raw value, numbers as JSON numbers — so either side may be any other
/// JSON implementation (a plugin in C writes its answer with jansson).
///
/// Reading is strict about that shape and gives up (returns nil) on anything else: an unknown
/// availability, a fraction where an integer belongs, a missing field, malformed JSON. The caller
/// then decodes with `JSONDecoder`, which says precisely what is wrong — so the fast path never
/// changes what is accepted or what an error says. Unknown keys are skipped, as `JSONDecoder`
/// skips them.
public enum OfferJSON {
    // MARK: Writing

    /// `{"offers":[…]}`, the `compute.offers` answer. Throws (as `JSONEncoder` does) for a
    /// price or size that is not finite.
    public static func encodeResponse(_ offers: [Offer]) throws -> Data {
        var w = Writer()
        w.bytes.reserveCapacity(offers.count * 280 + 16)
        w.raw("{\"offers\":")
        try w.offers(offers)
        w.raw("}")
        return Data(w.bytes)
    }

    /// A JSON array of offers (the offer cache's column).
    public static func encode(_ offers: [Offer]) throws -> Data {
        var w = Writer()
        w.bytes.reserveCapacity(offers.count * 280 + 2)
        try w.offers(offers)
        return Data(w.bytes)
    }

    struct Writer {
        var bytes: [UInt8] = []

        mutating func raw(_ s: StaticString) {
            s.withUTF8Buffer { bytes.append(contentsOf: $0) }
        }

        mutating func offers(_ offers: [Offer]) throws {
            bytes.append(UInt8(ascii: "["))
            for (n, o) in offers.enumerated() {
                if n > 0 { bytes.append(UInt8(ascii: ",")) }
                try offer(o)
            }
            bytes.append(UInt8(ascii: "]"))
        }

        mutating func offer(_ o: Offer) throws {
            raw("{\"provider\":"); string(o.provider)
            raw(",\"instanceType\":"); string(o.instanceType)
            raw(",\"region\":"); string(o.region)
            if let v = o.zone { raw(",\"zone\":"); string(v) }
            if let v = o.gpuName { raw(",\"gpuName\":"); string(v) }
            if let v = o.gpu { raw(",\"gpu\":"); string(v) }
            raw(",\"gpusPerNode\":"); int(o.gpusPerNode)
            if let v = o.vcpus { raw(",\"vcpus\":"); int(v) }
            if let v = o.memoryGiB { raw(",\"memoryGiB\":"); try double(v) }
            if let v = o.onDemandPricePerHour { raw(",\"onDemandPricePerHour\":"); try double(v) }
            if let v = o.spotPricePerHour { raw(",\"spotPricePerHour\":"); try double(v) }
            raw(",\"availability\":"); string(o.availability.rawValue)
            if let v = o.maxNodes { raw(",\"maxNodes\":"); int(v) }
            raw(",\"details\":{")
            // Sorted, so the same offer is always the same bytes (dictionary order is random).
            for (n, key) in o.details.keys.sorted().enumerated() {
                if n > 0 { bytes.append(UInt8(ascii: ",")) }
                string(key)
                bytes.append(UInt8(ascii: ":"))
                string(o.details[key]!)
            }
            raw("}}")
        }

        mutating func int(_ v: Int) {
            bytes.append(contentsOf: String(v).utf8)
        }

        mutating func double(_ v: Double) throws {
            guard v.isFinite else {
                throw EncodingError.invalidValue(v, .init(codingPath: [], debugDescription: "Unable to encode Double.\(v) directly in JSON."))
            }
            // Whole numbers as integers (as JSONEncoder writes them); otherwise the shortest
            // text that reads back as the same Double.
            if v == v.rounded(), abs(v) < 1e15 {
                bytes.append(contentsOf: String(Int64(v)).utf8)
            } else {
                bytes.append(contentsOf: v.description.utf8)
            }
        }

        mutating func string(_ s: String) {
            bytes.append(UInt8(ascii: "\""))
            var s = s
            s.withUTF8 { utf8 in
                var start = 0
                for i in 0..<utf8.count {
                    let c = utf8[i]
                    guard c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") || c < 0x20 else { continue }
                    bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<i]))
                    bytes.append(UInt8(ascii: "\\"))
                    switch c {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"): bytes.append(c)
                    case 0x0A: bytes.append(UInt8(ascii: "n"))
                    case 0x0D: bytes.append(UInt8(ascii: "r"))
                    case 0x09: bytes.append(UInt8(ascii: "t"))
                    default:
                        let hex = Array("0123456789abcdef".utf8)
                        bytes.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(c >> 4)], hex[Int(c & 0xF)]])
                    }
                    start = i + 1
                }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start...]))
            }
            bytes.append(UInt8(ascii: "\""))
        }
    }

    // MARK: Reading

    /// The offers of a `compute.offers` answer (`{"offers":[…]}`, other keys skipped), or nil
    /// when `data` is not exactly that shape (decode with `JSONDecoder` then, for its error).
    public static func decodeResponse(_ data: Data) -> [Offer]? {
        data.withUnsafeBytes { raw in
            var r = Reader(raw.bindMemory(to: UInt8.self))
            var offers: [Offer]?
            guard r.object({ key, r in
                if key == "offers" { offers = r.offers(); return offers != nil }
                return r.skipValue()
            }), r.atEnd else { return nil }
            return offers
        }
    }

    /// A JSON array of offers, or nil when `data` is not exactly that.
    public static func decode(_ data: Data) -> [Offer]? {
        data.withUnsafeBytes { raw in
            var r = Reader(raw.bindMemory(to: UInt8.self))
            guard let offers = r.offers(), r.atEnd else { return nil }
            return offers
        }
    }

    /// A forward-only JSON reader over UTF-8 bytes. Every method returns nil/false on anything it
    /// does not expect; the caller then gives up.
    struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var at = 0

        init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        var atEnd: Bool {
            mutating get { skipSpace(); return at == bytes.count }
        }

        mutating func skipSpace() {
            while at < bytes.count {
                switch bytes[at] {
                case 0x20, 0x0A, 0x0D, 0x09: at += 1
                default: return
                }
            }
        }

        /// Consumes `c` (after white space) when it is next.
        mutating func take(_ c: UInt8) -> Bool {
            skipSpace()
            guard at < bytes.count, bytes[at] == c else { return false }
            at += 1
            return true
        }

        mutating func peek() -> UInt8? {
            skipSpace()
            return at < bytes.count ? bytes[at] : nil
        }

        /// An object: `member` is called with each key, the reader on its value, and must
        /// consume the value (false: give up).
        mutating func object(_ member: (String, inout Reader) -> Bool) -> Bool {
            rawObject { key, r in
                guard let name = Reader.text(key) else { return false }
                return member(name, &r)
            }
        }

        /// ``object(_:)`` with each key as its UTF-8 bytes (unescaped), so a caller that knows
        /// its keys matches them without making a String of each.
        mutating func rawObject(_ member: (UnsafeBufferPointer<UInt8>, inout Reader) -> Bool) -> Bool {
            guard take(UInt8(ascii: "{")) else { return false }
            if take(UInt8(ascii: "}")) { return true }
            while true {
                guard take(UInt8(ascii: "\"")) else { return false }
                let start = at
                while at < bytes.count, bytes[at] != UInt8(ascii: "\""), bytes[at] != UInt8(ascii: "\\"), bytes[at] >= 0x20 { at += 1 }
                guard at < bytes.count else { return false }
                let ok: Bool
                if bytes[at] == UInt8(ascii: "\"") {
                    let key = UnsafeBufferPointer(rebasing: bytes[start..<at])
                    at += 1
                    ok = take(UInt8(ascii: ":")) && member(key, &self)
                } else {
                    // An escaped key (rare): decoded, then handed over the same way.
                    at = start - 1
                    guard let key = string() else { return false }
                    let utf8 = Array(key.utf8)
                    ok = take(UInt8(ascii: ":")) && utf8.withUnsafeBufferPointer { member($0, &self) }
                }
                guard ok else { return false }
                if take(UInt8(ascii: ",")) { continue }
                return take(UInt8(ascii: "}"))
            }
        }

        /// `utf8` as a String; nil when it is not valid UTF-8. ASCII (almost every string in a
        /// catalog) takes the direct path.
        static func text(_ utf8: UnsafeBufferPointer<UInt8>) -> String? {
            var ascii = true
            for c in utf8 where c >= 0x80 { ascii = false; break }
            return ascii ? String(decoding: utf8, as: UTF8.self) : String(validating: utf8, as: UTF8.self)
        }

        /// Whether `key` is the ASCII text `name`.
        @inline(__always)
        static func same(_ key: UnsafeBufferPointer<UInt8>, _ name: StaticString) -> Bool {
            guard key.count == name.utf8CodeUnitCount else { return false }
            let expected = name.utf8Start
            for i in 0..<key.count where key[i] != expected[i] { return false }
            return true
        }

        mutating func offers() -> [Offer]? {
            guard take(UInt8(ascii: "[")) else { return nil }
            var out: [Offer] = []
            // A catalog's offers are ~250 bytes of JSON each: reserve once.
            out.reserveCapacity((bytes.count - at) / 200)
            if take(UInt8(ascii: "]")) { return out }
            while true {
                guard let o = offer() else { return nil }
                out.append(o)
                if take(UInt8(ascii: ",")) { continue }
                return take(UInt8(ascii: "]")) ? out : nil
            }
        }

        mutating func offer() -> Offer? {
            var provider: String?, instanceType: String?, region: String?, zone: String?, gpuName: String?, gpu: String?
            var gpusPerNode: Int?, vcpus: Int?, maxNodes: Int?
            var memoryGiB: Double?, onDemand: Double?, spot: Double?
            var availability: Offer.Availability?
            var details: [String: String]?
            let ok = rawObject { key, r in
                if Reader.same(key, "provider") { provider = r.string(); return provider != nil }
                if Reader.same(key, "instanceType") { instanceType = r.string(); return instanceType != nil }
                if Reader.same(key, "region") { region = r.string(); return region != nil }
                if Reader.same(key, "zone") { return r.optional(&zone) { $0.string() } }
                if Reader.same(key, "gpuName") { return r.optional(&gpuName) { $0.string() } }
                if Reader.same(key, "gpu") { return r.optional(&gpu) { $0.string() } }
                if Reader.same(key, "gpusPerNode") { gpusPerNode = r.int(); return gpusPerNode != nil }
                if Reader.same(key, "vcpus") { return r.optional(&vcpus) { $0.int() } }
                if Reader.same(key, "maxNodes") { return r.optional(&maxNodes) { $0.int() } }
                if Reader.same(key, "memoryGiB") { return r.optional(&memoryGiB) { $0.double() } }
                if Reader.same(key, "onDemandPricePerHour") { return r.optional(&onDemand) { $0.double() } }
                if Reader.same(key, "spotPricePerHour") { return r.optional(&spot) { $0.double() } }
                if Reader.same(key, "availability") { availability = r.availability(); return availability != nil }
                if Reader.same(key, "details") {
                    var d: [String: String] = [:]
                    guard r.object({ k, r in
                        guard let v = r.string() else { return false }
                        d[k] = v
                        return true
                    }) else { return false }
                    details = d
                    return true
                }
                return r.skipValue()
            }
            guard ok, let provider, let instanceType, let region, let gpusPerNode, let availability, let details else { return nil }
            return Offer(
                provider: provider, instanceType: instanceType, region: region, zone: zone, gpuName: gpuName, gpu: gpu,
                gpusPerNode: gpusPerNode, vcpus: vcpus, memoryGiB: memoryGiB, onDemandPricePerHour: onDemand,
                spotPricePerHour: spot, availability: availability, maxNodes: maxNodes, details: details)
        }

        /// An availability (its raw value), without making a String of it.
        mutating func availability() -> Offer.Availability? {
            skipSpace()
            guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { return nil }
            var end = at + 1
            while end < bytes.count, bytes[end] != UInt8(ascii: "\""), bytes[end] != UInt8(ascii: "\\") { end += 1 }
            guard end < bytes.count, bytes[end] == UInt8(ascii: "\"") else { return string().flatMap(Offer.Availability.init(rawValue:)) }
            let word = UnsafeBufferPointer(rebasing: bytes[(at + 1)..<end])
            let value: Offer.Availability? =
                Reader.same(word, "available") ? .available : Reader.same(word, "limited") ? .limited
                : Reader.same(word, "unavailable") ? .unavailable : Reader.same(word, "unknown") ? .unknown : nil
            if value != nil { at = end + 1 }
            return value
        }

        /// An optional field: `null` leaves it nil, anything else must read as `value`.
        mutating func optional<T>(_ field: inout T?, _ value: (inout Reader) -> T?) -> Bool {
            if peek() == UInt8(ascii: "n") { return literal("null") }
            field = value(&self)
            return field != nil
        }

        mutating func literal(_ word: StaticString) -> Bool {
            skipSpace()
            let n = word.utf8CodeUnitCount
            guard at + n <= bytes.count else { return false }
            let matches = word.withUTF8Buffer { w in (0..<n).allSatisfy { bytes[at + $0] == w[$0] } }
            if matches { at += n }
            return matches
        }

        mutating func string() -> String? {
            guard take(UInt8(ascii: "\"")) else { return nil }
            let start = at
            // The common case: no escapes, one slice.
            while at < bytes.count {
                let c = bytes[at]
                if c == UInt8(ascii: "\"") {
                    let s = Reader.text(UnsafeBufferPointer(rebasing: bytes[start..<at]))
                    at += 1
                    return s
                }
                if c == UInt8(ascii: "\\") { break }
                if c < 0x20 { return nil }
                at += 1
            }
            var out = Array(bytes[start..<at])
            while at < bytes.count {
                let c = bytes[at]
                at += 1
                switch c {
                case UInt8(ascii: "\""): return String(validating: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard at < bytes.count else { return nil }
                    let e = bytes[at]
                    at += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        guard var scalar = hex4() else { return nil }
                        if (0xD800..<0xDC00).contains(scalar) {
                            // A surrogate pair: the low half must follow.
                            guard at + 1 < bytes.count, bytes[at] == UInt8(ascii: "\\"), bytes[at + 1] == UInt8(ascii: "u") else { return nil }
                            at += 2
                            guard let low = hex4(), (0xDC00..<0xE000).contains(low) else { return nil }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        }
                        guard let u = Unicode.Scalar(scalar) else { return nil }
                        out.append(contentsOf: String(Character(u)).utf8)
                    default: return nil
                    }
                default:
                    if c < 0x20 { return nil }
                    out.append(c)
                }
            }
            return nil
        }

        mutating func hex4() -> UInt32? {
            guard at + 4 <= bytes.count else { return nil }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[at]
                at += 1
                let d: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
                default: return nil
                }
                v = v << 4 | UInt32(d)
            }
            return v
        }

        /// The text of a JSON number, validated against the JSON grammar.
        mutating func number() -> Substring? {
            skipSpace()
            let start = at
            if at < bytes.count, bytes[at] == UInt8(ascii: "-") { at += 1 }
            func digits(_ r: inout Reader) -> Int {
                let s = r.at
                while r.at < r.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(r.bytes[r.at]) { r.at += 1 }
                return r.at - s
            }
            let intDigits = digits(&self)
            guard intDigits > 0, intDigits == 1 || bytes[at - intDigits] != UInt8(ascii: "0") else { return nil }
            if at < bytes.count, bytes[at] == UInt8(ascii: ".") {
                at += 1
                guard digits(&self) > 0 else { return nil }
            }
            if at < bytes.count, bytes[at] == UInt8(ascii: "e") || bytes[at] == UInt8(ascii: "E") {
                at += 1
                if at < bytes.count, bytes[at] == UInt8(ascii: "+") || bytes[at] == UInt8(ascii: "-") { at += 1 }
                guard digits(&self) > 0 else { return nil }
            }
            return Substring(decoding: UnsafeBufferPointer(rebasing: bytes[start..<at]), as: UTF8.self)
        }

        /// An integer: digits only (a fraction or exponent gives up, and JSONDecoder decides).
        mutating func int() -> Int? {
            skipSpace()
            let start = at
            guard number() != nil else { return nil }
            var k = start
            let negative = bytes[k] == UInt8(ascii: "-")
            if negative { k += 1 }
            var value = 0
            while k < at {
                let d = bytes[k]
                guard d >= UInt8(ascii: "0"), d <= UInt8(ascii: "9") else { return nil }
                let (times, o1) = value.multipliedReportingOverflow(by: 10)
                let (sum, o2) = negative ? times.subtractingReportingOverflow(Int(d - UInt8(ascii: "0"))) : times.addingReportingOverflow(Int(d - UInt8(ascii: "0")))
                guard !o1, !o2 else { return nil }
                value = sum
                k += 1
            }
            return value
        }

        mutating func double() -> Double? {
            guard let text = number() else { return nil }
            return Double(text)
        }

        /// Skips one value of any kind.
        mutating func skipValue() -> Bool {
            switch peek() {
            case UInt8(ascii: "\""): return string() != nil
            case UInt8(ascii: "{"): return object { _, r in r.skipValue() }
            case UInt8(ascii: "["):
                at += 1
                if take(UInt8(ascii: "]")) { return true }
                while true {
                    guard skipValue() else { return false }
                    if take(UInt8(ascii: ",")) { continue }
                    return take(UInt8(ascii: "]"))
                }
            case UInt8(ascii: "t"): return literal("true")
            case UInt8(ascii: "f"): return literal("false")
            case UInt8(ascii: "n"): return literal("null")
            default: return number() != nil
            }
        }
    }
}
