import ArgumentParser
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanProviders
import Foundation

struct StorageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "Copy, list and delete objects in your buckets (file://, s3://, … through the storage plugins).",
        subcommands: [Copy.self, Sync.self, List.self, Remove.self])

    /// Splits `s3://bucket/a/b.bin` into the store location (`s3://bucket`) and the key (`a/b.bin`).
    static func split(_ uri: String) throws -> (location: String, key: String) {
        guard let r = uri.range(of: "://") else { throw ValidationError("'\(uri)' is not a bucket URI.") }
        // Before any look at the disk: no '.' or '..' segment anywhere, so nothing a URI
        // names can lie outside its bucket.
        try ObjectKey.validateLocation(uri)
        let scheme = uri[..<r.lowerBound]
        let rest = uri[r.upperBound...]
        if scheme == "file" {
            // A file bucket is a folder: the nearest enclosing folder that already is one (it
            // holds .capstan-tmp), else the object's own folder.
            let path = String(rest)
            guard path.hasPrefix("/"), !path.hasSuffix("/") else { throw ValidationError("'\(uri)' must name an object by absolute path, e.g. file:///data/bucket/run/model.bin.") }
            var dir = LocalPath.folder(of: path)
            while dir != "/" && !dir.isEmpty {
                if FileManager.default.fileExists(atPath: dir + "/.capstan-tmp") {
                    return ("file://" + dir, String(path.dropFirst(dir.count + 1)))
                }
                dir = LocalPath.folder(of: dir)
            }
            let parent = LocalPath.folder(of: path)
            return ("file://" + parent, (path as NSString).lastPathComponent)
        }
        let parts = rest.split(separator: "/", maxSplits: 1)
        guard let bucket = parts.first else { throw ValidationError("'\(uri)' names no bucket.") }
        return ("\(scheme)://\(bucket)", parts.count > 1 ? String(parts[1]) : "")
    }

    struct Copy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cp", abstract: "Upload a file to a bucket URI, or download an object to a file or into a folder; -r: a whole folder or prefix.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Source: a local file or a bucket URI.") var source: String
        @Argument(help: "Destination: a bucket URI or a local file.") var destination: String
        @Option(name: .customLong("part-size-mib"), help: "Multipart part size in MiB.") var partSizeMiB: Int?
        @Option(help: "Parts in flight at once.") var concurrency: Int?
        @Option(name: .customLong("max-bandwidth-mib"), help: "Upload at most this many MiB/s on average (network stores).") var maxBandwidthMiB: Double?
        @Flag(help: "Fail instead of overwriting an existing object.") var noClobber = false
        @Flag(name: .shortAndLong, help: "Copy a folder to a prefix or a prefix to a folder (every file; `sync` skips unchanged ones).") var recursive = false
        @Option(help: "With -r: files in flight at once.") var parallel = 8

        func run() async throws {
            try await reportingErrors {
                if recursive { return try await StorageCommand.transferTree(source, destination, onlyChanged: false, parallel: parallel, global: global) }
                let registry = try global.loadRegistry()
                let start = ContinuousClock.now
                let reporter = TransferDisplay(label: destination.contains("://") ? "upload" : "download", quiet: global.json, single: true)
                let info: ObjectInfo = try await reporter.around {
                    if destination.contains("://") {
                        let (location, key) = try StorageCommand.split(destination)
                        let store = try registry.store(for: location)
                        if let m = maxBandwidthMiB, !(m > 0) { throw ValidationError("--max-bandwidth-mib must be above 0 (got \(m)).") }
                        let options = PutOptions(ifNoneMatch: noClobber, partSize: partSizeMiB.map { $0 << 20 }, concurrency: concurrency, maxBytesPerSecond: maxBandwidthMiB.map { Int64($0 * 1_048_576) })
                        // Test hook: `CAPSTAN_TEST_CRASH_AT=storage-upload-progress:N` kills the copy at
                        // its N-th progress report (in a multipart upload, once N parts are recorded).
                        let faults = FaultPoints.fromEnvironment(), show = reporter.file
                        return try await store.put(file: source, key: key.isEmpty ? (source as NSString).lastPathComponent : key, options: options) { p in
                            show(p)
                            faults.hit("storage-upload-progress")
                        }
                    }
                    let (location, key) = try StorageCommand.split(source)
                    return try await registry.store(for: location).get(key: key, to: StorageCommand.downloadPath(destination, key: key), progress: reporter.file)
                }
                let seconds = (ContinuousClock.now - start).seconds
                if global.json { try printJSON(info); return }
                print(String(format: "%@ %.1f MiB in %.1f s (%.0f MiB/s), sha256 %@", info.key, Double(info.size) / 1_048_576, seconds, Double(info.size) / 1_048_576 / max(seconds, 0.001), info.sha256 ?? "-"))
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List objects under a bucket URI prefix.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Bucket URI with an optional prefix, e.g. s3://bucket/jobs/.") var uri: String

        func run() async throws {
            try await reportingErrors {
                try ObjectKey.validateLocation(uri)
                let registry = try global.loadRegistry()
                let (location, prefix) = try StorageCommand.splitPrefix(uri)
                let objects = try await registry.store(for: location).list(prefix: prefix)
                if global.json { try printJSON(objects); return }
                for o in objects { print(String(format: "%12lld  %@", o.size, o.key)) }
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete an object.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Object URI.") var uri: String

        func run() async throws {
            try await reportingErrors {
                let (location, key) = try StorageCommand.split(uri)
                try await global.loadRegistry().store(for: location).delete(key: key)
            }
        }
    }
}
