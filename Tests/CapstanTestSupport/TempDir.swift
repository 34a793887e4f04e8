import Foundation

/// A fresh folder under the system temp dir, removed by `cleanup()`. Shared by every test target.
public struct TempDir: Sendable {
    public let path: String

    public init(_ label: String = "capstan-test") {
        path = NSTemporaryDirectory() + "\(label)-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    public func file(_ name: String) -> String { path + "/" + name }

    /// Writes `content` to `name` (creating folders) and returns its path.
    @discardableResult
    public func write(_ name: String, _ content: String) -> String {
        let p = file(name)
        try! FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try! Data(content.utf8).write(to: URL(fileURLWithPath: p))
        return p
    }

    public func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}
