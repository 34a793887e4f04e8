package import CapstanCore
public import Foundation

/// A small XML reader for AWS responses (EC2 Query API, S3 REST): elements, text, entities,
/// CDATA; attributes and namespaces are ignored. Kept in-tree so the agent binary needs no
/// libxml2.
package struct XMLElement: Sendable, Hashable {
    package var name: String
    package var children: [XMLElement]
    package var text: String

    /// The first child called `name`.
    package subscript(_ name: String) -> XMLElement? { children.first { $0.name == name } }

    /// Every child called `name`.
    package func all(_ name: String) -> [XMLElement] { children.filter { $0.name == name } }

    /// Follows a path of child names (`["reservationSet", "item"]`), collecting every match.
    package func path(_ names: String...) -> [XMLElement] {
        var level = [self]
        for n in names { level = level.flatMap { $0.all(n) } }
        return level
    }

    /// Text of the child `name`, trimmed; nil when absent.
    package func value(_ name: String) -> String? { self[name]?.text.trimmingCharacters(in: .whitespacesAndNewlines) }

    /// Every element (depth first) called `name`, at any depth.
    package func descendants(_ name: String) -> [XMLElement] {
        children.flatMap { ($0.name == name ? [$0] : []) + $0.descendants(name) }
    }

    /// Parses a document; throws `.transient` (a cut response) on malformed XML.
    package static func parse(_ data: Data) throws -> XMLElement {
        var p = XMLScanner(bytes: [UInt8](data))
        guard let root = try p.document() else {
            throw CapstanError(.transient, "Empty XML response.")
        }
        return root
    }
}

struct XMLScanner {
    let bytes: [UInt8]
    var i = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    func malformed(_ why: String) -> CapstanError {
        CapstanError(.transient, "Malformed XML response (\(why) at byte \(i)).", hint: "The response was cut or is not XML; retry.")
    }

    mutating func document() throws -> XMLElement? {
        var stack: [XMLElement] = []
        var root: XMLElement?
        var text = [UInt8]()
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "<") {
                if hasPrefix("<![CDATA[") {
                    i += 9
                    let start = i
                    while i + 2 < bytes.count, !(bytes[i] == 93 && bytes[i + 1] == 93 && bytes[i + 2] == 62) { i += 1 }
                    text += bytes[start..<min(i, bytes.count)]
                    i += 3
                    continue
                }
                if !stack.isEmpty { stack[stack.count - 1].text += decode(text) }
                text.removeAll()
                if hasPrefix("<?") { try skip(until: "?>"); continue }
                if hasPrefix("<!--") { try skip(until: "-->"); continue }
                if hasPrefix("<!") { try skip(until: ">"); continue }
                if hasPrefix("</") {
                    i += 2
                    let name = readName()
                    try skip(until: ">")
                    guard let done = stack.popLast(), done.name == name else { throw malformed("unexpected </\(name)>") }
                    if stack.isEmpty { root = done } else { stack[stack.count - 1].children.append(done) }
                    continue
                }
                i += 1
                let name = readName()
                guard !name.isEmpty else { throw malformed("empty tag name") }
                var selfClosing = false
                // Skip attributes (quoted values may contain '>').
                while i < bytes.count, bytes[i] != UInt8(ascii: ">") {
                    if bytes[i] == UInt8(ascii: "\"") || bytes[i] == UInt8(ascii: "'") {
                        let q = bytes[i]; i += 1
                        while i < bytes.count, bytes[i] != q { i += 1 }
                    } else if bytes[i] == UInt8(ascii: "/") {
                        selfClosing = true
                    }
                    i += 1
                }
                guard i < bytes.count else { throw malformed("unterminated <\(name)") }
                i += 1
                let element = XMLElement(name: name, children: [], text: "")
                if selfClosing {
                    if stack.isEmpty { root = element } else { stack[stack.count - 1].children.append(element) }
                } else {
                    stack.append(element)
                }
            } else {
                text.append(bytes[i])
                i += 1
            }
        }
        guard stack.isEmpty else { throw malformed("unclosed <\(stack.last!.name)>") }
        return root
    }

    func hasPrefix(_ s: String) -> Bool {
        let p = Array(s.utf8)
        return i + p.count <= bytes.count && Array(bytes[i..<(i + p.count)]) == p
    }

    mutating func skip(until s: String) throws {
        let p = Array(s.utf8)
        while i + p.count <= bytes.count {
            if Array(bytes[i..<(i + p.count)]) == p { i += p.count; return }
            i += 1
        }
        throw malformed("missing '\(s)'")
    }

    mutating func readName() -> String {
        let start = i
        while i < bytes.count {
            let c = bytes[i]
            if c == 32 || c == 9 || c == 10 || c == 13 || c == UInt8(ascii: ">") || c == UInt8(ascii: "/") { break }
            i += 1
        }
        let raw = String(decoding: bytes[start..<i], as: UTF8.self)
        // Drop a namespace prefix.
        if let colon = raw.lastIndex(of: ":") { return String(raw[raw.index(after: colon)...]) }
        return raw
    }

    func decode(_ raw: [UInt8]) -> String {
        let s = String(decoding: raw, as: UTF8.self)
        guard s.contains("&") else { return s }
        var out = ""
        var rest = Substring(s)
        while let amp = rest.firstIndex(of: "&") {
            out += rest[..<amp]
            guard let semi = rest[amp...].firstIndex(of: ";") else { out += rest[amp...]; return out }
            let entity = rest[rest.index(after: amp)..<semi]
            switch entity {
            case "amp": out += "&"
            case "lt": out += "<"
            case "gt": out += ">"
            case "quot": out += "\""
            case "apos": out += "'"
            default:
                if entity.hasPrefix("#x"), let v = UInt32(entity.dropFirst(2), radix: 16), let u = UnicodeScalar(v) { out.unicodeScalars.append(u) }
                else if entity.hasPrefix("#"), let v = UInt32(entity.dropFirst()), let u = UnicodeScalar(v) { out.unicodeScalars.append(u) }
                else { out += rest[amp...semi] }
            }
            rest = rest[rest.index(after: semi)...]
        }
        return out + rest
    }
}

extension String {
    /// Escapes text for an XML body.
    var xmlEscaped: String {
        replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
