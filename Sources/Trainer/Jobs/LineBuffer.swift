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

/// Tails the node logs of a job by offset: each ``read(_:path:final:)`` returns the whole lines
/// written to that node's log since the last read (`final`: the unterminated rest too). What
/// `capstan logs` prints and the server's log stream sends, from the same files.
public struct NodeLogTail: Sendable {
    private var offsets: [Int: UInt64] = [:]
    private var buffers: [Int: LineBuffer] = [:]

    public init() {}

    /// The new lines of node `node`'s log at `path`; a log not written yet has none.
    public mutating func read(_ node: Int, path: String, final: Bool) -> [String] {
        var lines: [String] = []
        if let h = FileHandle(forReadingAtPath: path) {
            defer { try? h.close() }
            try? h.seek(toOffset: offsets[node] ?? 0)
            if let data = try? h.readToEnd(), !data.isEmpty {
                offsets[node, default: 0] += UInt64(data.count)
                lines = buffers[node, default: LineBuffer()].feed(data)
            }
        }
        if final, let rest = buffers[node]?.flush() { lines.append(rest) }
        return lines
    }
}
