import CapstanCore
import CapstanProviders
import CapstanTrainer
import Foundation
import Testing

@Suite("PluginRetry waits and GCS key redaction")
struct CloudFixesTests {
    @Test("retryAfter: huge, infinite, NaN and negative waits never trap; clamped to 0…3600 s")
    func retryAfterClamped() throws {
        let cases: [(Double, Duration?)] = [(1e300, .seconds(3600)), (.infinity, .seconds(3600)), (-.infinity, .zero), (.nan, nil), (-5, .zero), (2.5, .milliseconds(2500))]
        for (given, want) in cases {
            var e = CapstanError(.rateLimited, "x", retryAfterSeconds: given)
            #expect(e.retryAfter == want, "\(given)")
            e.retryAfterSeconds = given  // set after init, as a decoder does
            #expect(e.retryAfter == want, "\(given) (set)")
        }
        // From a plugin's JSON (1e300 is valid JSON).
        let json = #"{"code": "rateLimited", "message": "slow down", "retryAfterSeconds": 1e300}"#
        let decoded = try JSONDecoder().decode(CapstanError.self, from: Data(json.utf8))
        #expect(decoded.retryAfter == .seconds(3600))
    }

    @Test("the GCS key is redacted line by line, JSON-escaped (`\\/`) too, its short last line included; agent output is redacted before it is cut")
    func gcsKeyRedaction() throws {
        let lines = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC/KcwggSjAgEAAoIBAQC7", "q/5bXk+9PZ/aY3mHxE1lV0S2n8Z/abc", "Zm9v/Q=="]
        let pem = "-----BEGIN PRIVATE KEY-----\n" + lines.joined(separator: "\n") + "\n-----END PRIVATE KEY-----\n"
        let keyJSON = String(decoding: try JSONSerialization.data(withJSONObject: ["type": "service_account", "client_email": "a@b.iam.gserviceaccount.com", "private_key": pem]), as: UTF8.self)
        let secrets = AgentSecrets(bucket: BucketAccess(location: "gs://b", gcs: .init(endpoint: "https://storage.googleapis.com", serviceAccountKey: keyJSON)))
        // What an agent might print: the key as JSON writes it (`/` → `\/`), and raw.
        let escaped = lines.map { $0.replacingOccurrences(of: "/", with: "\\/") }.joined(separator: "\\n")
        let said = "oops: {\"private_key\": \"" + escaped + "\"} and raw " + lines.joined(separator: "\n")
        let out = secrets.redact(said)
        for l in lines {
            #expect(!out.contains(l) && !out.contains(l.replacingOccurrences(of: "/", with: "\\/")), "\(l) in \(out)")
        }
        // Cut after redaction: a cut through a key line would leave its tail unredacted.
        let long = String(repeating: "x", count: 480) + lines[0]
        let tail = String(secrets.redact(long).suffix(500))
        #expect(!tail.contains(String(lines[0].suffix(20))))
    }
}
