public import Foundation

/// Splits a byte stream that arrives in arbitrary chunks (log tails) into lines, keeping an
/// unterminated last line — and a UTF-8 sequence cut between chunks — until it is complete.
public struct LineBuffer: Sendable {
    private var pending = Data()

    public init() {}

    /// Adds `data`; returns the lines it completes, without their newline.
    public mutating func feed(_ data: Data) -> [String] {
        pending.append(data)
        guard let last = pending.lastIndex(of: 0x0A) else { return [] }
        let complete = pending[pending.startIndex..<last]
        pending = Data(pending[pending.index(after: last)...])
        return complete.split(separator: 0x0A, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The unterminated rest, if there is one; the buffer is empty afterwards.
    public mutating func flush() -> String? {
        defer { pending = Data() }
        return pending.isEmpty ? nil : String(decoding: pending, as: UTF8.self)
    }
}
