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

    @Test("computed once, then read from the private memo for the same file; a changed file is hashed again; a memo that is not a digest is ignored")
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
