public import Foundation

/// Splits newline-delimited JSON that arrives in arbitrary chunks into its lines: a line cut
/// between chunks (anywhere, a UTF-8 sequence included) is kept until its newline comes. Empty
/// lines and a `\r` before the newline are dropped. A line longer than `maxLineBytes` is an
/// error rather than unbounded memory.
public struct NDJSONSplitter: Sendable {
    private var pending: [UInt8] = []
    public let maxLineBytes: Int

    public init(maxLineBytes: Int = 16 << 20) { self.maxLineBytes = maxLineBytes }

    /// A line went past ``maxLineBytes`` without a newline.
    public struct LineTooLong: Error, Sendable { public var bytes: Int }

    /// Adds `chunk`; returns the complete lines it ends (without their newline).
    public mutating func feed<Bytes: Sequence>(_ chunk: Bytes) throws -> [Data] where Bytes.Element == UInt8 {
        var lines: [Data] = []
        for byte in chunk {
            if byte == 0x0A {
                if let line = take() { lines.append(line) }
            } else {
                pending.append(byte)
                if pending.count > maxLineBytes { throw LineTooLong(bytes: pending.count) }
            }
        }
        return lines
    }

    /// The last line if it had no newline; the splitter is empty afterwards.
    public mutating func finish() -> Data? { take() }

    /// Bytes held for a line not yet complete.
    public var pendingBytes: Int { pending.count }

    private mutating func take() -> Data? {
        defer { pending.removeAll(keepingCapacity: true) }
        var end = pending.count
        if end > 0, pending[end - 1] == 0x0D { end -= 1 }
        let line = pending[0..<end]
        guard !line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) else { return nil }
        return Data(line)
    }
}
