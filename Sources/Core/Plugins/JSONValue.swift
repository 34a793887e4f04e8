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
        let data = (try? PluginWire.encoder.encode(self)) ?? Data("null".utf8)
        return String(decoding: data, as: UTF8.self)
    }
    public var description: String { jsonString }

    /// Decodes this value as `T` (e.g. a plugin's typed config).
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        try PluginWire.decoder.decode(T.self, from: PluginWire.encoder.encode(self))
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

