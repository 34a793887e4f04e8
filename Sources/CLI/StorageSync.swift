import ArgumentParser
import CapstanCore
import CapstanRuntime
import CapstanProviders
import CapstanStorage
import Foundation

extension StorageCommand {
    struct Sync: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "sync",
            abstract: "Make a bucket prefix hold a folder's files, or a folder hold a prefix's objects, copying only what is missing or changed.",
            discussion: """
                SRC and DST are a local folder and a bucket URI, either way round: sync ./data s3://bucket/data/ \
                uploads every file under ./data to s3://bucket/data/<path>; sync s3://bucket/data/ ./data downloads. \
                A file whose size and checksum (SHA-256, or an S3 object's MD5 ETag) match is skipped, so a sync cut \
                anywhere (kill -9 included) is resumed by running it again: every file is whole or absent. \
                Nothing is deleted at the destination.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Source: a local folder or a bucket URI prefix.") var source: String
        @Argument(help: "Destination: a bucket URI prefix or a local folder.") var destination: String
        @Option(help: "Files in flight at once.") var parallel = 8

        func run() async throws {
            try await reportingErrors {
                try await StorageCommand.transferTree(source, destination, onlyChanged: true, parallel: parallel, global: global)
            }
        }
    }

    /// `cp -r` (every file) and `sync` (only what differs) between a folder and a prefix.
    static func transferTree(_ source: String, _ destination: String, onlyChanged: Bool, parallel: Int, global: GlobalOptions) async throws {
        guard parallel >= 1, parallel <= 256 else { throw ValidationError("--parallel must be from 1 to 256 (got \(parallel)).") }
        let up = destination.contains("://"), down = source.contains("://")
        guard up != down else {
            throw ValidationError(up ? "Both '\(source)' and '\(destination)' are bucket URIs; one side must be a local folder." : "Neither '\(source)' nor '\(destination)' is a bucket URI (s3://bucket/prefix/, file:///path); one side must be.")
        }
        let registry = try global.loadRegistry()
        let (location, prefix) = try splitPrefix(up ? destination : source)
        let store = try registry.store(for: location)
        var transfer = TreeTransfer(store: store, direction: up ? .upload(folder: source, prefix: prefix) : .download(prefix: prefix, folder: destination), onlyChanged: onlyChanged, parallel: parallel)
        let display = TransferDisplay(label: onlyChanged ? "sync" : "cp -r", quiet: global.json)
        transfer.progress = { p, step in display.tree(p, step: step) }
        let faults = FaultPoints.fromEnvironment()
        transfer.afterFile = { faults.hit("storage-transfer", $0) }
        let s = try await display.around { try await transfer.run() }
        if global.json { try printJSON(s); return }
        print(String(format: "%d file(s) %@ (%.1f MiB in %.1f s, %.0f MiB/s), %d unchanged", s.transferred, up ? "uploaded" : "downloaded",
                     Double(s.bytes) / 1_048_576, s.seconds, Double(s.bytes) / 1_048_576 / max(s.seconds, 0.001), s.unchanged))
    }

    /// Splits a URI naming a prefix (a folder of objects) into the store and the prefix in it:
    /// `s3://bucket/a/b/` → (`s3://bucket`, `a/b/`). A `file://` path is the Capstan file
    /// bucket at it or around it (the nearest folder holding `.capstan-tmp`, where objects keep
    /// their checksums), else a bucket of its own.
    static func splitPrefix(_ uri: String) throws -> (location: String, prefix: String) {
        guard let r = uri.range(of: "://") else { throw ValidationError("'\(uri)' is not a bucket URI.") }
        try ObjectKey.validateLocation(uri)
        guard uri[..<r.lowerBound] == "file" else {
            let rest = uri[r.upperBound...]
            let parts = rest.split(separator: "/", maxSplits: 1)
            guard let bucket = parts.first else { throw ValidationError("'\(uri)' names no bucket.") }
            return ("\(uri[..<r.lowerBound])://\(bucket)", parts.count > 1 ? String(parts[1]) : "")
        }
        var path = String(uri[r.upperBound...])
        guard path.hasPrefix("/") else { throw ValidationError("'\(uri)' must be an absolute path, e.g. file:///data/bucket/run/.") }
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        guard let dir = FileObjectStore.enclosingBucket(of: path) else { return ("file://" + path, "") }
        return ("file://" + dir, dir == path ? "" : String(path.dropFirst(dir.count + 1)) + "/")
    }

    /// Where `cp URI DEST` writes: DEST, or DEST/<the object's name> when DEST is a folder
    /// (or ends with `/`).
    static func downloadPath(_ destination: String, key: String) -> String {
        var isDir: ObjCBool = false
        let folder = destination.hasSuffix("/") || (FileManager.default.fileExists(atPath: destination, isDirectory: &isDir) && isDir.boolValue)
        guard folder else { return destination }
        var d = destination
        while d.count > 1, d.hasSuffix("/") { d.removeLast() }
        return d + "/" + (key as NSString).lastPathComponent
    }
}
