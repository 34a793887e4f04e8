public import CapstanCore
public import Foundation

/// Checks the `providers.<name>` sections of config.yaml against each provider's JSON Schema:
/// the built-in providers' (``LocalProvider``, SSH) and every plugin's manifest `configSchema`
/// alike, so every provider's settings get the same errors — the file and line, the setting's
/// full path, "did you mean" for an unknown key, "expected …, got …" for a wrong type — before
/// any provider is created.
///
/// The subset of JSON Schema understood: `type` (one name or a list), `properties`,
/// `additionalProperties` (false, true or a schema), `required`, `items`, `enum`, `minimum`,
/// `maximum`. An object schema that lists `properties` and says nothing of
/// `additionalProperties` is closed: in a config file an unknown key is a typo until shown
/// otherwise. `enabled` is accepted in every section.
public enum ConfigSchema {
    /// Throws a `.config` error for the first setting in a `providers.<name>` section that
    /// its schema refuses, and for a provider name that is a near miss of a known one
    /// (`simm` for `sim`). `schemas` maps every known provider name to its schema (nil: the
    /// provider takes anything). A name that is neither known nor close to one is left to the
    /// caller (a plugin that is not installed).
    public static func checkProviders(_ config: CapstanConfig, schemas: [String: JSONValue?]) throws {
        let r = reader(config)
        let known = schemas.keys.sorted()
        for name in inFileOrder(config.providers.keys, under: "providers", config) {
            let path = "providers.\(name)"
            guard let entry = schemas[name] else {
                if let close = YAMLReader.closest(to: name, among: known, maxDistance: max(1, min(2, name.count / 2))) {
                    throw r.bad("\(path): there is no provider or plugin named '\(name)' (did you mean '\(close)'?); known: \(known.joined(separator: ", "))", config.line(of: path))
                }
                continue
            }
            guard let schema = entry else { continue }
            try Checker(config: config, reader: r).check(config.providerConfig(name), schema, path, allowing: ["enabled"])
        }
    }

    /// `keys` of the mapping at `path`, in the order the file has them (so the first error
    /// reported is the first in the file).
    static func inFileOrder(_ keys: Dictionary<String, JSONValue>.Keys, under path: String, _ config: CapstanConfig) -> [String] {
        keys.sorted { (config.line(of: "\(path).\($0)") ?? .max, $0) < (config.line(of: "\(path).\($1)") ?? .max, $1) }
    }

    static func reader(_ config: CapstanConfig) -> YAMLReader {
        YAMLReader(kind: "config", source: config.source, hint: "See docs/configuration.md, and `capstan plugins inspect NAME` for a plugin's settings.")
    }

    struct Checker {
        let config: CapstanConfig
        let reader: YAMLReader

        func check(_ value: JSONValue, _ schema: JSONValue, _ path: String, allowing extra: Set<String> = []) throws {
            guard case .object(let s) = schema else { return }
            let line = config.line(of: path)
            let types = s["type"].map { t in t.stringValue.map { [$0] } ?? (t.arrayValue ?? []).compactMap(\.stringValue) } ?? []
            if !types.isEmpty, !types.contains(where: { Self.value(value, is: $0) }) {
                throw reader.bad("\(path): expected \(types.map(Self.describeType).joined(separator: " or ")), got \(Self.describe(value))", line)
            }
            if let options = s["enum"]?.arrayValue, !options.contains(value) {
                throw reader.bad("\(path): expected one of \(options.map(Self.describe).joined(separator: ", ")), got \(Self.describe(value))", line)
            }
            if let n = value.doubleValue {
                if let min = s["minimum"]?.doubleValue, n < min { throw reader.bad("\(path): must be at least \(Self.describe(.number(min))), got \(Self.describe(value))", line) }
                if let max = s["maximum"]?.doubleValue, n > max { throw reader.bad("\(path): must be at most \(Self.describe(.number(max))), got \(Self.describe(value))", line) }
            }
            switch value {
            case .object(let o):
                let properties: [String: JSONValue] = if case .object(let p) = s["properties"] { p } else { [:] }
                let additional = s["additionalProperties"]
                let closed = additional?.boolValue == false || (additional == nil && s["properties"] != nil)
                for key in ConfigSchema.inFileOrder(o.keys, under: path, config) where !extra.contains(key) {
                    if let sub = properties[key] {
                        try check(o[key]!, sub, "\(path).\(key)")
                    } else if closed {
                        throw reader.unknown("\(path).\(key)", properties.keys.sorted() + extra.sorted(), config.line(of: "\(path).\(key)"))
                    } else if let sub = additional, case .object = sub {
                        try check(o[key]!, sub, "\(path).\(key)")
                    }
                }
                for case .string(let key) in s["required"]?.arrayValue ?? [] where o[key] == nil {
                    throw reader.bad("\(path): the setting '\(key)' is required", line)
                }
            case .array(let items):
                guard let sub = s["items"] else { break }
                for (i, item) in items.enumerated() { try check(item, sub, "\(path)[\(i)]") }
            default: break
            }
        }

        static func value(_ v: JSONValue, is type: String) -> Bool {
            switch (type, v) {
            case ("integer", .number(let n)): return n.rounded() == n
            case ("number", .number), ("string", .string), ("boolean", .bool), ("array", .array), ("object", .object), ("null", .null): return true
            default: return false
            }
        }

        static func describeType(_ type: String) -> String {
            ["integer": "an integer", "number": "a number", "string": "text", "boolean": "true or false", "array": "a list", "object": "a mapping", "null": "null"][type] ?? type
        }

        static func describe(_ v: JSONValue) -> String {
            switch v {
            case .string(let s): return "'\(s)'"
            case .number(let n): return n.rounded() == n && abs(n) < 1e15 ? String(Int64(n)) : String(n)
            case .bool(let b): return String(b)
            case .null: return "nothing (null)"
            case .array: return "a list"
            case .object: return "a mapping"
            }
        }
    }
}
