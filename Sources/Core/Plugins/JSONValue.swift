public import Foundation

/// Any JSON document: plugin configs, config schemas, free-form manifest fields.
public enum JSONValue: Sendable, Hashable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else if let o = try? c.decode([String: JSONValue].self) { self = .object(o) }
        else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "Not a JSON value")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n):
            if n.rounded() == n, abs(n) < 1e15 { try c.encode(Int64(n)) } else { try c.encode(n) }
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var doubleValue: Double? { if case .number(let n) = self { return n } else { return nil } }
    public var intValue: Int? { doubleValue.flatMap { Int(exactly: $0) } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }

    /// Compact JSON text.
    public var jsonString: String {
        let data = jsonData ?? (try? PluginWire.encoder.encode(self)) ?? Data("null".utf8)
        return String(decoding: data, as: UTF8.self)
    }
    public var description: String { jsonString }

    /// Decodes this value as `T` (e.g. a plugin's typed config).
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        try PluginWire.decoder.decode(T.self, from: jsonData ?? PluginWire.encoder.encode(self))
    }

    /// Parses JSON text; nil when it is not JSON (decode it with `JSONDecoder` then, for the
    /// error). Written by hand: a plugin's config may hold a whole catalog, and `JSONDecoder`
    /// finds a `JSONValue`'s kind by trying each in turn, an error thrown per wrong guess.
    public static func parse(_ data: Data) -> JSONValue? {
        data.withUnsafeBytes { raw in
            var r = OfferJSON.Reader(raw.bindMemory(to: UInt8.self))
            guard let v = r.value(), r.atEnd else { return nil }
            return v
        }
    }

    /// Compact JSON text, written by hand (numbers as ``encode(to:)`` writes them, object keys
    /// sorted); nil when a number is not finite, which `JSONEncoder` refuses.
    package var jsonData: Data? {
        var w = OfferJSON.Writer()
        guard w.value(self) else { return nil }
        return Data(w.bytes)
    }
}

extension OfferJSON.Writer {
    /// Writes `v`; false when it holds a number that is not finite.
    mutating func value(_ v: JSONValue) -> Bool {
        switch v {
        case .null: raw("null")
        case .bool(let b): if b { raw("true") } else { raw("false") }
        case .number(let n): guard (try? double(n)) != nil else { return false }
        case .string(let s): string(s)
        case .array(let a):
            bytes.append(UInt8(ascii: "["))
            for (k, item) in a.enumerated() {
                if k > 0 { bytes.append(UInt8(ascii: ",")) }
                guard value(item) else { return false }
            }
            bytes.append(UInt8(ascii: "]"))
        case .object(let o):
            bytes.append(UInt8(ascii: "{"))
            for (k, key) in o.keys.sorted().enumerated() {
                if k > 0 { bytes.append(UInt8(ascii: ",")) }
                string(key)
                bytes.append(UInt8(ascii: ":"))
                guard value(o[key]!) else { return false }
            }
            bytes.append(UInt8(ascii: "}"))
        }
        return true
    }
}

extension OfferJSON.Reader {
    /// Any JSON value.
    mutating func value() -> JSONValue? {
        switch peek() {
        case UInt8(ascii: "\""): return string().map(JSONValue.string)
        case UInt8(ascii: "{"):
            var o: [String: JSONValue] = [:]
            guard object({ key, r in
                guard let v = r.value() else { return false }
                o[key] = v
                return true
            }) else { return nil }
            return .object(o)
        case UInt8(ascii: "["):
            at += 1
            var a: [JSONValue] = []
            if take(UInt8(ascii: "]")) { return .array(a) }
            while true {
                guard let v = value() else { return nil }
                a.append(v)
                if take(UInt8(ascii: ",")) { continue }
                return take(UInt8(ascii: "]")) ? .array(a) : nil
            }
        case UInt8(ascii: "t"): return literal("true") ? .bool(true) : nil
        case UInt8(ascii: "f"): return literal("false") ? .bool(false) : nil
        case UInt8(ascii: "n"): return literal("null") ? .null : nil
        default: return double().map(JSONValue.number)
        }
    }
}

/// The JSON conventions of the plugin ABI: UTF-8, ISO 8601 dates, keys in any order.
public enum PluginWire {
    public static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        // Key sorting costs ~15% of encode time on every call; nothing on the wire needs it.
        e.outputFormatting = [.withoutEscapingSlashes]
        return e
    }()
    public static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }()

    /// Method names of the ABI's JSON protocol; see docs/plugin-abi.md for the shapes.
    public enum Method {
        public static let offers = "compute.offers"
        public static let launch = "compute.launch"
        public static let describe = "compute.describe"
        public static let terminate = "compute.terminate"
        public static let put = "storage.put"
        public static let get = "storage.get"
        public static let list = "storage.list"
        public static let head = "storage.head"
        public static let delete = "storage.delete"
        public static let ping = "plugin.ping"
    }

    // Request and response envelopes shared by host and plugin kit.
    public struct OffersResponse: Codable, Sendable { public var offers: [Offer]; public init(offers: [Offer]) { self.offers = offers } }
    public struct InstancesResponse: Codable, Sendable { public var instances: [Instance]; public init(instances: [Instance]) { self.instances = instances } }
    public struct TerminateRequest: Codable, Sendable { public var ids: [String]; public init(ids: [String]) { self.ids = ids } }
    public struct PutRequest: Codable, Sendable {
        public var location: String, file: String, key: String, options: PutOptions
        public init(location: String, file: String, key: String, options: PutOptions) { self.location = location; self.file = file; self.key = key; self.options = options }
    }
    public struct GetRequest: Codable, Sendable {
        public var location: String, key: String, file: String
        public init(location: String, key: String, file: String) { self.location = location; self.key = key; self.file = file }
    }
    public struct KeyRequest: Codable, Sendable {
        public var location: String, key: String
        public init(location: String, key: String) { self.location = location; self.key = key }
    }
    public struct ListRequest: Codable, Sendable {
        public var location: String, prefix: String
        public init(location: String, prefix: String) { self.location = location; self.prefix = prefix }
    }
    public struct ListResponse: Codable, Sendable { public var objects: [ObjectInfo]; public init(objects: [ObjectInfo]) { self.objects = objects } }
    public struct HeadResponse: Codable, Sendable { public var object: ObjectInfo?; public init(object: ObjectInfo?) { self.object = object } }
    public struct Empty: Codable, Sendable { public init() {} }
}

extension PluginWire {
    /// A decoding error in a few words (`missing field 'address'`), not Swift's debug text.
    package static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx):
            return "wrong type at '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted(let ctx):
            return ctx.codingPath.isEmpty ? "not JSON" : "bad value at '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'"
        default: return "\(error)"
        }
    }
}

extension Sequence where Element == UInt8 {
    /// Lower-case hex.
    package var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for b in self { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xF)]) }
        return String(decoding: out, as: UTF8.self)
    }
}

