public import CapstanCore
public import Foundation
public import Yams

/// Errors for hand-parsed YAML documents (config.yaml, job specs): every message names the
/// document, the file and, where known, the line; unknown keys get a "did you mean".
/// Shared by Capstan's modules (`package` access), not public API.
package struct YAMLReader: Sendable {
    /// What the document is, for messages: "config", "job spec".
    package let kind: String
    package let source: String
    /// Where the keys are documented.
    package let hint: String

    package init(kind: String, source: String, hint: String) {
        self.kind = kind
        self.source = source
        self.hint = hint
    }

    package func bad(_ what: String, _ line: Int?) -> CapstanError {
        CapstanError(.config, CapstanError.sentence("Invalid \(kind) \(source)\(line.map { ":\($0)" } ?? ""): \(what)"), hint: hint)
    }

    package func unknown(_ key: String, _ known: [String], _ line: Int?) -> CapstanError {
        let leaf = key.split(separator: ".").last.map(String.init) ?? key
        let suggestion = Self.closest(to: leaf, among: known, maxDistance: 3).map { " (did you mean '\($0)'?)" } ?? ""
        return bad("unknown key '\(key)'\(suggestion); known: \(known.joined(separator: ", "))", line)
    }

    package func key(_ n: Node) throws -> String {
        guard let k = n.string else { throw bad("keys must be strings", n.mark?.line) }
        return k
    }

    package func string(_ n: Node, _ key: String) throws -> String {
        guard case .scalar(let s) = n else { throw bad("'\(key)' must be text", n.mark?.line) }
        return s.string
    }

    /// One text or a list of them (`setup: make` or `setup: [make, make test]`); `what`
    /// completes "'key' must be …" in the error.
    package func strings(_ n: Node, _ key: String, _ what: String) throws -> [String] {
        if let s = n.string { return [s] }
        guard let seq = n.sequence else { throw bad("'\(key)' must be \(what)", n.mark?.line) }
        return try seq.map { try string($0, key) }
    }

    /// Parses `text` into its root node; a YAML syntax error becomes a `bad` error.
    package func compose(_ text: String) throws -> Node? {
        do { return try Yams.compose(yaml: text) } catch {
            throw bad("\(error)".replacingOccurrences(of: "\n", with: " "), nil)
        }
    }

    /// The entry of `known` nearest to `word` when at most `maxDistance` edits away, for
    /// "did you mean".
    package static func closest(to word: String, among known: [String], maxDistance: Int) -> String? {
        known.min { distance($0, word) < distance($1, word) }.flatMap { distance($0, word) <= maxDistance ? $0 : nil }
    }

    /// Levenshtein distance, for "did you mean".
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a.lowercased()), b = Array(b.lowercased())
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count)
        for i in 1...a.count {
            var cur = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }
}
