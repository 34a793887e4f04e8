import CapstanProviders
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import Foundation
import Testing

/// AWS's published Signature Version 4 vectors: the signature test suite (service "service",
/// 2015-08-30T12:36:00Z) and the S3 documentation's examples (2013-05-24).
@Suite("SigV4")
struct SigV4Tests {
    let suite = SigV4Signer(credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"), region: "us-east-1", service: "service")
    let suiteDate = Date(timeIntervalSince1970: 1_440_938_160)  // 20150830T123600Z
    let s3 = SigV4Signer(credentials: AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), region: "us-east-1", service: "s3")
    let s3Date = Date(timeIntervalSince1970: 1_369_353_600)  // 20130524T000000Z

    func authorization(_ signed: SignedRequest) -> String? { signed.headers.first { $0.0 == "Authorization" }?.1 }

    @Test("test-suite vectors", arguments: [
        ("get-vanilla", "GET", "/", [] as [(String, String)], "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("get-vanilla-query-order-key-case", "GET", "/", [("Param2", "value2"), ("Param1", "value1")], "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
        ("post-vanilla", "POST", "/", [], "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        ("get-utf8", "GET", "/ሴ", [], "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
        ("get-unreserved", "GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", [], "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    ] as [(String, String, String, [(String, String)], String)])
    func testSuite(name: String, method: String, path: String, query: [(String, String)], signature: String) {
        let signed = suite.sign(SigV4Request(method: method, host: "example.amazonaws.com", path: path, query: query), payloadHash: SigV4Signer.emptyPayloadHash, date: suiteDate)
        #expect(authorization(signed) == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=\(signature)", "\(name)\n\(signed.canonicalRequest)")
    }

    @Test("the canonical request of get-utf8 encodes the path once")
    func canonicalUTF8() {
        let signed = suite.sign(SigV4Request(method: "GET", host: "example.amazonaws.com", path: "/ሴ"), payloadHash: SigV4Signer.emptyPayloadHash, date: suiteDate)
        #expect(signed.canonicalRequest.hasPrefix("GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n"))
        #expect(signed.url == "https://example.amazonaws.com/%E1%88%B4")
    }

    @Test("S3 documentation: GET object with a range, header-signed")
    func s3Get() {
        let signed = s3.sign(SigV4Request(method: "GET", host: "examplebucket.s3.amazonaws.com", path: "/test.txt", headers: [("Range", "bytes=0-9")]), payloadHash: SigV4Signer.emptyPayloadHash, date: s3Date)
        #expect(authorization(signed) == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(signed.headers.contains { $0.0 == "x-amz-content-sha256" && $0.1 == SigV4Signer.emptyPayloadHash })
    }

    @Test("S3 documentation: presigned GET, 24 hours")
    func s3Presign() {
        let url = s3.presign(SigV4Request(method: "GET", host: "examplebucket.s3.amazonaws.com", path: "/test.txt"), expires: 86400, date: s3Date)
        #expect(url == "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    }

    @Test("a session token is sent and signed; the secret never appears")
    func sessionToken() {
        var signer = suite
        signer.credentials.sessionToken = "TOKEN/with+chars"
        let signed = signer.sign(SigV4Request(method: "GET", host: "example.amazonaws.com"), payloadHash: SigV4Signer.emptyPayloadHash, date: suiteDate)
        #expect(signed.headers.contains { $0.0 == "x-amz-security-token" && $0.1 == "TOKEN/with+chars" })
        #expect(authorization(signed)?.contains("SignedHeaders=host;x-amz-date;x-amz-security-token") == true)
        #expect(!signed.canonicalRequest.contains(signer.credentials.secretAccessKey))
        #expect(!"\(signer.credentials)".contains("wJalr"))
        let presigned = signer.presign(SigV4Request(method: "GET", host: "b.s3.amazonaws.com", path: "/k"), expires: 60, date: suiteDate)
        #expect(presigned.contains("X-Amz-Security-Token=TOKEN%2Fwith%2Bchars"))
    }

    @Test("query values are encoded per RFC 3986, keys with spaces and slashes in S3 paths")
    func encoding() {
        #expect(SigV4Signer.encode("a b+c/d=e~") == "a%20b%2Bc%2Fd%3De~")
        #expect(SigV4Signer.encode("jobs/step 1/x", keepSlash: true) == "jobs/step%201/x")
        let signed = s3.sign(SigV4Request(method: "GET", host: "h", path: "/bucket/a b/ö.bin", query: [("prefix", "a/b c"), ("list-type", "2")]), payloadHash: SigV4Signer.unsignedPayload, date: s3Date)
        #expect(signed.url == "https://h/bucket/a%20b/%C3%B6.bin?list-type=2&prefix=a%2Fb%20c")
    }
}
