import CapstanCore
import CapstanRuntime
import Foundation

/// Workdirs sent with a launch (`POST /v1/uploads`, a tar stream): stored under
/// `<home>/server/uploads/<id>`, checked entry by entry before anything is unpacked.
struct Uploads: Sendable {
    let folder: String
    let maxBytes: Int64

    func path(_ id: String) -> String { folder + "/" + id }

    /// GNU tar, by absolute path.
    static var tar: String { Spawn.which("tar") ?? "/bin/tar" }

    static func validID(_ id: String) -> Bool { id.range(of: "^upl_[a-z0-9]{16}$", options: .regularExpression) != nil }

    func newID() -> String {
        "upl_" + String(UUID().uuidString.lowercased().filter(\.isHexDigit).prefix(16))
    }

    /// Unpacks the tar at `archive` into `<id>/tree` after checking every entry: plain files
    /// and folders only, relative, no `..`. The archive is removed either way.
    func unpack(_ archive: String, id: String) async throws {
        defer { unlink(archive) }
        // A plain (uncompressed) tar only: GNU tar would inflate gzip/xz/zstd on its own, and
        // then the upload limit would not bound what lands on the disk.
        let magic = FileHandle(forReadingAtPath: archive).flatMap { h -> Data? in
            defer { try? h.close() }
            return try? h.read(upToCount: 263)
        }
        guard let magic, magic.count >= 263, magic[257..<262].elementsEqual("ustar".utf8) else {
            throw CapstanError(.invalidRequest, "The uploaded workdir is not a tar archive (or is a compressed one).", hint: "Send the output of `tar -C WORKDIR -cf - .`, uncompressed.")
        }
        let listing = try await Spawn.onThread {
            try Spawn.runCapturing([Self.tar, "-tvf", archive, "--numeric-owner"], environment: ["LC_ALL": "C", "PATH": "/usr/bin:/bin"], timeout: 120)
        }
        guard listing.status == .exited(0) else {
            throw CapstanError(.invalidRequest, "The uploaded workdir is not a tar archive (\(String(decoding: listing.stderr.prefix(300), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))).", hint: "Send the output of `tar -C WORKDIR -cf - .`.")
        }
        let names = try await Spawn.onThread {
            try Spawn.runCapturing([Self.tar, "-tf", archive], environment: ["LC_ALL": "C", "PATH": "/usr/bin:/bin"], timeout: 120)
        }
        var unpacked: Int64 = 0
        for line in String(decoding: listing.stdout, as: UTF8.self).split(separator: "\n") {
            guard let type = line.first else { continue }
            unpacked += line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(2).first.flatMap { Int64($0) } ?? 0
            if unpacked > maxBytes {
                throw CapstanError(.invalidRequest, "The uploaded workdir would unpack to more than this server takes (\(maxBytes) bytes).", hint: "Leave large files out of the workdir, or raise the server's --max-upload-mb.")
            }
            guard type == "-" || type == "d" else {
                let kind = type == "l" ? "a symbolic link" : type == "h" ? "a hard link" : "a special file (\(type))"
                throw CapstanError(.invalidRequest, "The uploaded workdir holds \(kind): \(line.split(separator: " ", maxSplits: 5).last ?? Substring(line)).", hint: "Uploads carry plain files and folders only; pack with `tar -h` to copy what links point to.")
            }
        }
        for name in String(decoding: names.stdout, as: UTF8.self).split(separator: "\n") {
            let parts = name.split(separator: "/", omittingEmptySubsequences: true)
            if name.hasPrefix("/") || parts.contains("..") {
                throw CapstanError(.invalidRequest, "The uploaded workdir has an entry outside its folder: \(name).", hint: "Pack the folder itself: `tar -C WORKDIR -cf - .`.")
            }
        }
        let tree = path(id) + "/tree"
        try PrivateFile.createFolder(tree)
        let out = try await Spawn.onThread {
            try Spawn.runCapturing([Self.tar, "-xf", archive, "-C", tree, "--no-same-owner", "--no-same-permissions", "--delay-directory-restore"], environment: ["LC_ALL": "C", "PATH": "/usr/bin:/bin"], timeout: 600)
        }
        guard out.status == .exited(0) else {
            try? FileManager.default.removeItem(atPath: path(id))
            throw CapstanError(.io, "Cannot unpack the uploaded workdir: \(String(decoding: out.stderr.prefix(300), as: UTF8.self)).", hint: "Check the server's free space.")
        }
    }

    /// The folder a launch's spec is resolved against: the upload's tree placed at the spec's
    /// relative `workdir` (`.` → the folder itself; `src` → `<folder>/src`).
    func specFolder(upload id: String, workdir: String) throws -> String {
        guard Self.validID(id) else { throw CapstanError(.invalidRequest, "'\(id)' is not an upload id.", hint: "Use the id POST /v1/uploads answered.") }
        let root = path(id)
        let tree = root + "/tree"
        let spec = root + "/spec"
        if FileManager.default.fileExists(atPath: spec) { return spec }  // launched before (a retry)
        guard FileManager.default.fileExists(atPath: tree) else {
            throw CapstanError(.notFound, "No upload '\(id)' on this server.", hint: "Upload the workdir again (POST /v1/uploads).")
        }
        let parts = workdir.split(separator: "/").filter { $0 != "." && !$0.isEmpty }
        guard !workdir.hasPrefix("/"), !parts.contains("..") else {
            throw CapstanError(.invalidRequest, "The spec's workdir '\(workdir)' is not a relative folder inside the spec's folder.", hint: "Use a relative workdir (such as `.` or `src`) to send it with the launch.")
        }
        if parts.isEmpty {
            try FileManager.default.moveItem(atPath: tree, toPath: spec)
        } else {
            let target = spec + "/" + parts.joined(separator: "/")
            try PrivateFile.createFolder((target as NSString).deletingLastPathComponent)
            try FileManager.default.moveItem(atPath: tree, toPath: target)
        }
        return spec
    }
}
