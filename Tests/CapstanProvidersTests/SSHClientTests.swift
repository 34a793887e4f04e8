import CapstanCore
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
    }
}
