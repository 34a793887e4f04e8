import CapstanCore
import CapstanRuntime
import CapstanStorage
import CapstanTestSupport
@testable import CapstanTrainer
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

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
        // A memo file others may write is not believed either.
        try PrivateFile.write(Data(planted.utf8), to: memos + "/" + name)
        try FileManager.default.setAttributes([.posixPermissions: 0o666], ofItemAtPath: memos + "/" + name)
        #expect(try AgentBinaryDigest.sha256(of: binary, cache: LockedBox(nil), memoFolder: memos) == Self.firstBuild)
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

/// The Slurm provider's work root: the agent binary nodes run lives there.
@Suite("Slurm work root")
struct SlurmWorkRootTests {
    func mode(_ path: String) throws -> Int? { try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int }

    @Test("made owner-only (with bin/ and nodes/); one of this user's that others may write is made owner-only; a link to one is followed; one another user owns is refused, saying what to do")
    func privateRoot() throws {
        let dir = TempDir("capstan-slurm-root")
        defer { dir.cleanup() }
        let root = dir.file("fresh/capstan")
        try SlurmTransport.prepareRoot(root)
        for folder in [root, root + "/bin", root + "/nodes"] { #expect(try mode(folder) == 0o700, "\(folder)") }
        // This user's own, left open (an earlier version under umask 002): made owner-only.
        try FileManager.default.setAttributes([.posixPermissions: 0o775], ofItemAtPath: root + "/bin")
        try FileManager.default.setAttributes([.posixPermissions: 0o1777], ofItemAtPath: root)
        try SlurmTransport.prepareRoot(root)
        #expect(try mode(root) == 0o700 && mode(root + "/bin") == 0o700)
        // A link to it (a work root on scratch) is followed.
        try FileManager.default.createSymbolicLink(atPath: dir.file("link"), withDestinationPath: root)
        try SlurmTransport.prepareRoot(dir.file("link"))
        // Another user's folder is not a work root (this test runs as root, so it can give one away).
        guard getuid() == 0 else { return }
        let theirs = dir.file("theirs")
        try FileManager.default.createDirectory(atPath: theirs, withIntermediateDirectories: true)
        #expect(chown(theirs, 65534, 65534) == 0)
        do {
            try SlurmTransport.prepareRoot(theirs)
            Issue.record("another user's work root was accepted")
        } catch let e as CapstanError {
            #expect(e.code == .config && e.message.contains("is owned by another user") && e.hint?.contains("a folder of your own") == true, "\(e)")
        }
        #expect(!FileManager.default.fileExists(atPath: theirs + "/bin"))
        // A file is not a folder.
        dir.write("file", "x")
        #expect(throws: CapstanError.self) { try SlurmTransport.prepareRoot(dir.file("file")) }
    }
}
