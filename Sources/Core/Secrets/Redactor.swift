public import Foundation

/// Replaces secret values in a byte stream with `<redacted>`, including values that arrive
/// split across two reads and values that span lines (a PEM key).
///
/// Feed it the stream in chunks: ``feed(_:)`` returns what is safe to write now, every
/// complete secret in it replaced, and keeps back only the tail that could still
/// become the start of a secret (so an ordinary line is written at once, not at the next line
/// end). ``finish()`` returns what is left at the end of the stream.
public struct Redactor: Sendable {
    /// The secrets, longest first (one that contains another is redacted whole).
    public let secrets: [Data]
    var held = Data()

    public static let mark = Data("<redacted>".utf8)

    public init(_ secrets: [String]) {
        self.secrets = Set(secrets.filter { !$0.isEmpty }).map { Data($0.utf8) }.sorted { $0.count > $1.count }
    }

    public var isEmpty: Bool { secrets.isEmpty }

    /// The bytes of `chunk` (after what was kept back) that are safe to write.
    public mutating func feed(_ chunk: Data) -> Data {
        guard !secrets.isEmpty else { return chunk }
        var data = held
        data.append(chunk)
        let cut = data.index(data.startIndex, offsetBy: Self.safeCut(data, secrets: secrets))
        held = Data(data[cut...])
        return Self.redact(Data(data[..<cut]), secrets)
    }

    /// What was kept back, redacted (the stream ended: it can no longer become a secret).
    public mutating func finish() -> Data {
        defer { held = Data() }
        return Self.redact(held, secrets)
    }

    /// `text` with every one of this redactor's secrets replaced by `<redacted>` (a whole
    /// text, not a stream: nothing is held back).
    public func redact(_ text: String) -> String {
        secrets.isEmpty ? text : String(decoding: Self.redact(Data(text.utf8), secrets), as: UTF8.self)
    }

    /// `bytes` with every occurrence of each of `secrets` replaced by `<redacted>`.
    public static func redact(_ bytes: Data, _ secrets: [Data]) -> Data {
        var out = bytes
        for needle in secrets where !needle.isEmpty {
            var from = out.startIndex
            while from < out.endIndex, let r = out.range(of: needle, in: from..<out.endIndex) {
                out.replaceSubrange(r, with: mark)
                from = r.lowerBound + mark.count
            }
        }
        return out
    }

    /// How much of `data` (a stream's bytes so far) can be redacted and written now: all but
    /// the longest tail that is a proper prefix of a secret (it may become one with the next
    /// bytes), and never cutting through a whole secret.
    public static func safeCut(_ data: Data, secrets: [Data]) -> Int {
        var cut = data.count - openTail(of: data, secrets: secrets)
        var moved = true
        while moved {
            moved = false
            for needle in secrets where needle.count > 1 {
                // An occurrence across the cut: the cut moves to its start.
                let from = max(0, cut - needle.count + 1)
                let to = min(data.count, cut + needle.count - 1)
                guard from < cut, cut < to,
                      let r = Data(data.dropFirst(from).prefix(to - from)).range(of: needle) else { continue }
                let start = from + r.lowerBound
                if start < cut {
                    cut = start
                    moved = true
                }
            }
        }
        return cut
    }

    /// The length of the longest tail of `data` that is a proper prefix of one of `secrets`
    /// (0: no secret can start in what has been seen without being complete in it).
    public static func openTail(of data: Data, secrets: [Data]) -> Int {
        var longest = 0
        let bytes = [UInt8](data.suffix((secrets.map(\.count).max() ?? 1) - 1))
        for s in secrets where s.count > 1 {
            let needle = [UInt8](s)
            var k = min(needle.count - 1, bytes.count)
            while k > longest {
                if bytes[(bytes.count - k)...].elementsEqual(needle[..<k]) {
                    longest = k
                    break
                }
                k -= 1
            }
        }
        return longest
    }
}
