import CapstanCore
import Foundation
import Testing

/// ``Redactor``: a stream fed in any chunks comes out as the whole stream redacted at once,
/// and nothing of a secret is let out before it is known not to be one.
@Suite("Redactor")
struct RedactorTests {
    static func feed(_ text: String, secrets: [String], cuts: [Int]) -> (out: String, early: [String]) {
        var r = Redactor(secrets)
        let bytes = Array(text.utf8)
        var out = Data()
        var early: [String] = []
        var last = 0
        for cut in cuts.sorted() + [bytes.count] where cut >= last {
            out.append(r.feed(Data(bytes[last..<cut])))
            early.append(String(decoding: out, as: UTF8.self))
            last = cut
        }
        out.append(r.finish())
        return (String(decoding: out, as: UTF8.self), early)
    }

    @Test("a secret split at every position over two writes is redacted whole, and no prefix of it is written early")
    func everySplit() {
        let secret = "s3cr3t-VALUE-42"
        let text = "token=\(secret)\nnext line\n"
        for cut in 0...text.utf8.count {
            let (out, early) = Self.feed(text, secrets: [secret], cuts: [cut])
            #expect(out == "token=<redacted>\nnext line\n", "cut \(cut): \(out)")
            for e in early { #expect(!e.contains("s3cr3t-V"), "cut \(cut) let out \(e)") }
        }
    }

    @Test("multi-line secrets (a PEM key), secrets that contain each other, overlapping self-prefixes")
    func awkwardSecrets() {
        let pem = "-----BEGIN KEY-----\nAAAABBBB\nCCCC\n-----END KEY-----"
        #expect(Self.feed("key:\n\(pem)\ndone\n", secrets: [pem], cuts: [10, 25, 40]).out == "key:\n<redacted>\ndone\n")
        // One contains the other: the longer one is redacted whole.
        #expect(Self.feed("a=abcdefgh-long b=abcdefgh\n", secrets: ["abcdefgh", "abcdefgh-long"], cuts: [7]).out == "a=<redacted> b=<redacted>\n")
        // A secret whose start repeats in it ("abcab"): the held tail and a whole one across a cut.
        for cut in 0...12 {
            let (out, early) = Self.feed("xxabcabcabyy", secrets: ["abcabcab"], cuts: [cut])
            #expect(out == "xx<redacted>yy", "cut \(cut): \(out)")
            for e in early { #expect(!e.contains("abcab"), "cut \(cut) let out \(e)") }
        }
    }

    @Test("an ordinary line is written at once: nothing is held back that cannot start a secret")
    func noNeedlessHolding() {
        var r = Redactor(["secret-value"])
        #expect(r.feed(Data("step 5 loss 1.2\n".utf8)) == Data("step 5 loss 1.2\n".utf8))
        #expect(r.feed(Data("partial line, no end".utf8)) == Data("partial line, no end".utf8))
        // "secr" could be the start of the secret: held until known.
        #expect(r.feed(Data("then secr".utf8)) == Data("then ".utf8))
        #expect(r.feed(Data("et? no\n".utf8)) == Data("secret? no\n".utf8))
        #expect(r.finish().isEmpty)
    }

    @Test("random streams in random chunks: the same bytes as redacting the whole stream at once")
    func randomChunks() {
        var rng = SystemRandomNumberGenerator()
        let secrets = ["aab", "abab", "ba-ba-ba", "xyzzy"]
        let alphabet = Array("ab-xyz\n")
        for _ in 0..<300 {
            let text = String((0..<Int.random(in: 0..<80, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
            let whole = String(decoding: Redactor.redact(Data(text.utf8), Redactor(secrets).secrets), as: UTF8.self)
            let cuts = (0..<Int.random(in: 0..<6, using: &rng)).map { _ in Int.random(in: 0...text.utf8.count, using: &rng) }
            #expect(Self.feed(text, secrets: secrets, cuts: cuts).out == whole, "\(text) cut at \(cuts)")
        }
    }
}
