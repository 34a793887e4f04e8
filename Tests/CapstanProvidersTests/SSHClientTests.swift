import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
@testable import CapstanProviders
import Foundation
import Testing

@Suite("SSH client")
struct SSHClientTests {
    let t = SSHTarget(address: "10.0.0.5", port: 2222, user: "ubuntu", keyFile: "/k/id")

    @Test("ssh's arguments: batch mode, Capstan's own known_hosts recording first contact, a shared connection, the key by path")
    func arguments() {
        let args = SSHClient(folder: "/h/ssh").arguments(t)
        /// The values given with `flag` (`-o X`, `-i F`, `-p N`), in order.
        func values(_ flag: String) -> [String] {
            zip(args, args.dropFirst()).filter { $0.0 == flag }.map(\.1)
        }
        for o in ["BatchMode=yes", "StrictHostKeyChecking=accept-new", "UserKnownHostsFile=/h/ssh/known_hosts", "ControlMaster=auto", "ControlPath=/h/ssh/cm-%C", "IdentitiesOnly=yes"] {
            #expect(values("-o").contains(o), "\(o) is not given as an -o option: \(args)")
        }
        // The key by path with -i (and only that key), the port with -p, the destination last.
        #expect(values("-i") == ["/k/id"], "\(args)")
        #expect(values("-p") == ["2222"], "\(args)")
        #expect(args.last == "ubuntu@10.0.0.5", "\(args)")
        // Without a key file: no -i, nor IdentitiesOnly (ssh's agent and defaults apply).
        var keyless = t
        keyless.keyFile = nil
        let plain = SSHClient(folder: "/h/ssh").arguments(keyless)
        #expect(!plain.contains("-i") && !plain.contains("IdentitiesOnly=yes"), "\(plain)")
    }

    @Test("ssh's failures become typed errors that say what to do", arguments: [
        ("@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.", CapstanError.Code.auth, "not the one Capstan recorded"),
        ("ubuntu@10.0.0.5: Permission denied (publickey).", .auth, "was denied"),
        ("ssh: connect to host 10.0.0.5 port 2222: Connection timed out", .transient, "Cannot reach ubuntu@10.0.0.5:2222"),
        ("ssh: connect to host 10.0.0.5 port 2222: No route to host", .transient, "No route to host"),
        ("", .transient, "no answer within 30 s"),
        ("kex_exchange_identification: something odd", .io, "SSH to ubuntu@10.0.0.5:2222 failed"),
    ])
    func errors(stderr: String, code: CapstanError.Code, text: String) {
        let e = SSHClient.error(stderr, target: t, knownHosts: "/h/ssh/known_hosts", timeout: 30)
        #expect(e.code == code && e.message.contains(text), "\(e)")
    }

    @Test("remote words are single-quoted; the kill loop checks each pid's start time")
    func quoting() {
        #expect(SSHClient.quote("a b'c") == #"'a b'\''c'"#)
        let loop = SSHClient.killListed("/w/pids")
        #expect(loop.contains("/proc/$p/stat") && loop.contains("'/w/pids'"))
        #expect(SSHClient.killListed("~/.capstan-node/nodes/i/pids").contains(#""$HOME"/'.capstan-node/nodes/i/pids'"#))
    }

    @Test("every remote command runs with umask 077")
    func umask() {
        #expect(SSHClient.remoteCommand("cat f") == "umask 077; cat f")
    }

    @Test("an ssh host's default work root is in its login user's home; a home that is not an absolute path is an error, never /tmp")
    func defaultWorkRoot() throws {
        #expect(try SSHProvider.defaultWorkRoot(home: "/home/ubuntu", target: t) == "/home/ubuntu/.capstan-node")
        #expect(try SSHProvider.defaultWorkRoot(home: "/", target: t) == "/.capstan-node")
        for home in ["", "relative", "~"] {
            #expect {
                _ = try SSHProvider.defaultWorkRoot(home: home, target: t)
            } throws: { e in
                let e = e as? CapstanError
                return e?.code == .config && (e?.message.contains("the home folder of ubuntu there is '\(home)', not an absolute path") ?? false) && (e?.message.contains("workRoot") ?? false)
            }
        }
    }

    @Test("the connection socket fits a Unix socket path (108 bytes) under a long home: a short folder of this user's own, one per cluster folder")
    func controlPath() throws {
        let short = SSHClient(folder: "/tmp/capstan-s/ssh")
        #expect(short.controlPath == "/tmp/capstan-s/ssh/cm-%C")
        let base = TempDir("capstan-long-home-with-a-long-name")
        defer { base.cleanup() }
        let a = SSHClient(folder: base.file("ssh/clusters/a-cluster-with-a-rather-long-name-0123456789"))
        let b = SSHClient(folder: base.file("ssh/clusters/another-cluster-with-a-long-name-0123456789"))
        for c in [a, b] {
            // %C becomes 40 hex digits; ssh binds a temporary name 17 bytes longer first.
            let bound = c.controlPath.replacingOccurrences(of: "%C", with: String(repeating: "f", count: 40)) + ".XXXXXXXXXXXXXXXX"
            #expect(bound.utf8.count < 108, "\(bound)")
            let dir = (c.controlPath as NSString).deletingLastPathComponent
            let attributes = try FileManager.default.attributesOfItem(atPath: dir)
            #expect((attributes[.posixPermissions] as? Int) == 0o700 && (attributes[.ownerAccountID] as? Int).map { uid_t($0) } == getuid())
        }
        #expect(a.controlPath != b.controlPath)
    }
}
