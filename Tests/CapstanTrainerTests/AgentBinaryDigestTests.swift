import CapstanCore
import CapstanRuntime
import CapstanStorage
import CapstanTestSupport
@testable import CapstanTrainer
import Foundation
import Testing

/// The agent binary's SHA-256, remembered across processes for the same file.
@Suite("Agent binary digest")
struct AgentBinaryDigestTests {
    /// `printf '…' | sha256sum` of the two builds' contents.
    static let firstBuild = "f3adf3a4014af2dc15376ed0b22ac63cae9073430512bad33659b8f352c9fb30"
    static let secondBuild = "54240934fc3c1d7d137f54f99fbe6e133aa490330c0613ec8998d355437b5ec3"

    @Test("computed once, then read from the private memo for the same file; a changed file is hashed again; a memo that is not a digest, or in a folder others may write, is ignored")
    func memo() throws {
        let dir = TempDir("capstan-digest")
        defer { dir.cleanup() }
        let binary = dir.file("capstan")
        dir.write("capstan", "first build")
        let memos = dir.file("memos")
        let first = try AgentBinaryDigest.sha256(of: binary, cache: LockedBox(nil), memoFolder: memos)
        #expect(first == Self.firstBuild)
        let name = try #require(AgentBinaryDigest.identity(of: binary))
        #expect(try String(contentsOfFile: memos + "/" + name, encoding: .utf8) == first)
        #expect(try FileManager.default.attributesOfItem(atPath: memos)[.posixPermissions] as? Int == 0o700)
        // A new process (a fresh cache) believes the memo: shown by planting another digest.
        let planted = String(repeating: "a", count: 64)
        try PrivateFile.write(Data(planted.utf8), to: memos + "/" + name)
        #expect(try AgentBinaryDigest.sha256(of: binary, cache: LockedBox(nil), memoFolder: memos) == planted)
        // A memo folder others may write to is not believed (nor written to).
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: memos)
        #expect(try AgentBinaryDigest.sha256(of: binary, cache: LockedBox(nil), memoFolder: memos) == Self.firstBuild)
        #expect(try String(contentsOfFile: memos + "/" + name, encoding: .utf8) == planted)
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: memos)
        // A memo that is not a digest is ignored (and replaced).
        try PrivateFile.write(Data("garbage".utf8), to: memos + "/" + name)
        #expect(try AgentBinaryDigest.sha256(of: binary, cache: LockedBox(nil), memoFolder: memos) == first)
        // A rebuild (new content, size and time) has another identity: hashed again.
        dir.write("capstan", "second build, longer")
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: 5)], ofItemAtPath: binary)
        #expect(AgentBinaryDigest.identity(of: binary) != name)
        #expect(try AgentBinaryDigest.sha256(of: binary, cache: LockedBox(nil), memoFolder: memos) == Self.secondBuild)
        // No memo folder: still the digest.
        #expect(try AgentBinaryDigest.sha256(of: binary, cache: LockedBox(nil), memoFolder: nil) == Self.secondBuild)
        // A missing binary is a clear error.
        #expect(throws: CapstanError.self) { try AgentBinaryDigest.sha256(of: dir.file("nope"), cache: LockedBox(nil), memoFolder: memos) }
    }
}

/// The Slurm transport's work root: the agent binary nodes run lives there.
@Suite("Slurm work root")
struct SlurmWorkRootTests {
    @Test("made owner-only (with bin/ and nodes/) when missing; one others may write to is refused, saying what to do")
    func privateRoot() throws {
        let dir = TempDir("capstan-slurm-root")
        defer { dir.cleanup() }
        let root = dir.file("fresh/capstan")
        try SlurmTransport.prepareRoot(root)
        for folder in [root, root + "/bin", root + "/nodes"] {
            #expect(try FileManager.default.attributesOfItem(atPath: folder)[.posixPermissions] as? Int == 0o700, "\(folder)")
        }
        // An existing folder of one's own that others cannot write is fine as it is.
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: root)
        try SlurmTransport.prepareRoot(root)
        // A team's shared folder (1777) is not a work root.
        let shared = dir.file("shared")
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        try FileManager.default.setAttributes([.posixPermissions: 0o1777], ofItemAtPath: shared)
        do {
            try SlurmTransport.prepareRoot(shared)
            Issue.record("a world-writable work root was accepted")
        } catch let e as CapstanError {
            #expect(e.code == .config && e.message.contains("writable by other users (mode 1777)") && e.hint?.contains("a folder of your own in it") == true, "\(e)")
        }
        #expect(!FileManager.default.fileExists(atPath: shared + "/bin"))
        // A file is not a folder.
        dir.write("file", "x")
        #expect(throws: CapstanError.self) { try SlurmTransport.prepareRoot(dir.file("file")) }
    }
}
