public import CapstanCore
public import CapstanRuntime
public import Foundation
public import Yams
import CapstanStorage

/// One entry of a job spec's `inputs:` (`data: s3://bucket/prefix/`): objects in a bucket that
/// every node's agent fetches into the machine's source cache (``SourceCache``: once per
/// machine, by content, read-only) before setup, exposed to the command as
/// `$CAPSTAN_INPUTS_DIR/<name>` and `$CAPSTAN_INPUT_<NAME>`.
public struct JobInput: Sendable, Hashable, Codable {
    /// Lower-case letters, digits and `_`, starting with a letter (`data`, `tokenizer_v2`).
    public var name: String
    /// `s3://bucket/prefix/`, `gs://bucket/prefix/` or `file:///absolute/path` (a path on every
    /// node: local nodes, a shared filesystem); a prefix or the key of one object.
    public var url: String

    public init(name: String, url: String) {
        self.name = name
        self.url = url
    }

    /// The schemes inputs come from.
    public static let schemes = ["s3", "gs", "file"]

    /// `CAPSTAN_INPUT_<NAME>`: the input's path on the node.
    public static func variable(_ name: String) -> String { "CAPSTAN_INPUT_" + name.uppercased() }

    /// The folder of links `<name>` → each input (`<agent state>/inputs`).
    public static let folderVariable = "CAPSTAN_INPUTS_DIR"

    /// A malformed name or URL: the message (the spec parser adds the file and line).
    public static func problem(name: String, url: String) -> String? {
        guard name.range(of: "^[a-z][a-z0-9_]{0,31}$", options: .regularExpression) != nil else {
            return "'inputs.\(name)' is not an input name: use lower-case letters, digits and '_', starting with a letter, at most 32 (it becomes $CAPSTAN_INPUT_\(name.uppercased().map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()))"
        }
        let forms = "a bucket URI: s3://bucket/prefix/, gs://bucket/prefix/ or file:///absolute/path"
        guard let sep = url.range(of: "://") else {
            return "'inputs.\(name)' must be \(forms), got '\(url)' (files that travel with the code belong in the workdir)"
        }
        let scheme = String(url[..<sep.lowerBound])
        guard schemes.contains(scheme) else {
            return "'inputs.\(name)' is '\(url)': the scheme \(scheme):// is not one Capstan fetches inputs from; use s3://, gs:// or file://"
        }
        do { try ObjectKey.validateLocation(url) } catch let e as CapstanError { return "'inputs.\(name)': \(e.message)" } catch { return "'inputs.\(name)': \(error)" }
        let rest = url[sep.upperBound...]
        if scheme == "file" {
            guard rest.hasPrefix("/"), rest.count > 1 else {
                return "'inputs.\(name)' is '\(url)': a file input names an absolute path on the nodes, like file:///data/tokenizer/"
            }
        } else {
            guard let bucket = rest.split(separator: "/").first, !bucket.isEmpty, !rest.hasPrefix("/") else {
                return "'inputs.\(name)' is '\(url)': name the bucket, as \(scheme)://bucket/prefix/"
            }
        }
        return nil
    }

    /// The store to open (`s3://bucket`; for `file://`, the enclosing Capstan file bucket —
    /// a folder holding `.capstan-tmp` — when there is one, else the folder itself or a file's
    /// folder) and the key or prefix in it. Touches the disk only for `file://`.
    public static func split(_ url: String) -> (location: String, prefix: String) {
        guard let sep = url.range(of: "://") else { return (url, "") }
        let scheme = url[..<sep.lowerBound]
        let rest = String(url[sep.upperBound...])
        if scheme == "file" {
            var path = rest
            while path.count > 1, path.hasSuffix("/") { path.removeLast() }
            let slash = rest.hasSuffix("/") ? "/" : ""
            if let dir = FileObjectStore.enclosingBucket(of: path, includingItself: false) {
                return ("file://" + dir, String(path.dropFirst(dir.count + 1)) + slash)
            }
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue {
                return ("file://" + LocalPath.folder(of: path), (path as NSString).lastPathComponent)
            }
            return ("file://" + path, "")
        }
        let bucket = rest.split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
        let prefix = rest.count > bucket.count + 1 ? String(rest.dropFirst(bucket.count + 1)) : ""
        return ("\(scheme)://\(bucket)", prefix)
    }
}

extension JobSpec {
    /// Parses `inputs:` (a mapping of name: URI).
    static func inputs(_ v: Node, _ r: YAMLReader) throws -> [JobInput] {
        guard let m = v.mapping else { throw r.bad("'inputs' must be a mapping of name: bucket URI, like {data: s3://bucket/prefix/}", v.mark?.line) }
        var out: [JobInput] = []
        for (k, v) in m {
            let name = try r.key(k)
            guard let url = v.scalar?.string, !url.isEmpty else { throw r.bad("'inputs.\(name)' must be a bucket URI like s3://bucket/prefix/", v.mark?.line) }
            if let problem = JobInput.problem(name: name, url: url) { throw r.bad(problem, v.mark?.line) }
            if out.contains(where: { $0.name == name }) { throw r.bad("'inputs.\(name)' is given twice", k.mark?.line) }
            out.append(JobInput(name: name, url: url))
        }
        return out.sorted { $0.name < $1.name }
    }
}

extension JobSpec {
    /// Parses `image:` (a container image reference: `nvcr.io/nvidia/pytorch:24.05-py3`).
    static func image(_ v: Node, _ r: YAMLReader) throws -> String {
        let s = try r.string(v, "image")
        guard s.count <= 255, s.range(of: "^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$", options: .regularExpression) != nil else {
            throw r.bad("'image' must be a container image reference like nvcr.io/nvidia/pytorch:24.05-py3 (letters, digits and . _ / : @ + -), got '\(s)'", v.mark?.line)
        }
        return s
    }
}
