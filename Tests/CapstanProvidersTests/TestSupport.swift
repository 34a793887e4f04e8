import Foundation

/// A fresh folder under the system temp dir, removed by `cleanup()`.
struct TempDir {
    let path: String
    init(_ label: String = "capstan") {
        path = NSTemporaryDirectory() + "\(label)-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    func write(_ name: String, _ content: String) -> String {
        let p = file(name)
        try! FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try! Data(content.utf8).write(to: URL(fileURLWithPath: p))
        return p
    }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}
