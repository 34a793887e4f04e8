import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanStorage
import CapstanAWS
import CapstanTesting
import CapstanPluginKit
import CapstanProviders
import Foundation
import Testing

@Suite("AWS credential chain")
struct AWSCredentialChainTests {
    func files(_ dir: TempDir) -> [String: String] {
        _ = dir.write("credentials", """
            [default]
            aws_access_key_id = AKIDDEFAULT
            aws_secret_access_key = secretdefault
            # a comment
            [training]
            aws_access_key_id=AKIDTRAINING
            aws_secret_access_key=secrettraining
            aws_session_token = tok
            """)
        _ = dir.write("config", """
            [default]
            region = eu-west-1
            [profile training]
            region = us-west-2
            [profile cfgonly]
            aws_access_key_id = AKIDCFG
            aws_secret_access_key = secretcfg
            """)
        return ["HOME": dir.path, "AWS_SHARED_CREDENTIALS_FILE": dir.file("credentials"), "AWS_CONFIG_FILE": dir.file("config")]
    }

    @Test("environment keys win; then AWS_PROFILE or the named profile; then [default]")
    func precedence() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        var env = files(dir)
        #expect(try AWSCredentialChain(environment: env).credentials().accessKeyID == "AKIDDEFAULT")
        #expect(AWSCredentialChain(environment: env).region() == "eu-west-1")
        env["AWS_PROFILE"] = "training"
        let t = try AWSCredentialChain(environment: env).credentials()
        #expect(t.accessKeyID == "AKIDTRAINING" && t.sessionToken == "tok")
        #expect(AWSCredentialChain(environment: env).region() == "us-west-2")
        #expect(try AWSCredentialChain(environment: env, profile: "cfgonly").credentials().accessKeyID == "AKIDCFG")
        env["AWS_ACCESS_KEY_ID"] = "AKIDENV"
        env["AWS_SECRET_ACCESS_KEY"] = "secretenv"
        env["AWS_REGION"] = "ap-south-1"
        #expect(try AWSCredentialChain(environment: env).credentials().accessKeyID == "AKIDENV")
        #expect(AWSCredentialChain(environment: env).region() == "ap-south-1")
        // An explicit profile beats environment keys.
        #expect(try AWSCredentialChain(environment: env, profile: "training").credentials().accessKeyID == "AKIDTRAINING")
    }

    @Test("no credentials: an auth error that says where it looked, without secrets")
    func missing() {
        let dir = TempDir(); defer { dir.cleanup() }
        let e = #expect(throws: CapstanError.self) { try AWSCredentialChain(environment: ["HOME": dir.path], profile: "ghost").credentials() }
        #expect(e?.code == .auth)
        #expect(e?.hint?.contains(dir.path + "/.aws/credentials") == true)
    }
}

@Suite("XML reader")
struct XMLTests {
    @Test("elements, entities, CDATA, namespaces, self-closing tags")
    func parse() throws {
        let xml = try XMLElement.parse(Data("""
            <?xml version="1.0" encoding="UTF-8"?>
            <DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
              <requestId>r-1</requestId>
              <reservationSet><item><instancesSet>
                <item><instanceId>i-1</instanceId><tagSet><item><key>a&amp;b</key><value>&lt;x&gt; &#233;</value></item></tagSet><empty/></item>
                <item><instanceId>i-2</instanceId><note><![CDATA[<raw> & text]]></note></item>
              </instancesSet></item></reservationSet>
            </DescribeInstancesResponse>
            """.utf8))
        #expect(xml.name == "DescribeInstancesResponse")
        let items = xml.path("reservationSet", "item", "instancesSet", "item")
        #expect(items.map { $0.value("instanceId") } == ["i-1", "i-2"])
        #expect(items[0].path("tagSet", "item").first?.value("key") == "a&b")
        #expect(items[0].path("tagSet", "item").first?.value("value") == "<x> é")
        #expect(items[0]["empty"] != nil)
        #expect(items[1].value("note") == "<raw> & text")
        #expect(xml.descendants("instanceId").count == 2)
    }

    @Test("error bodies of EC2 and S3 give their code")
    func errors() {
        let ec2 = Data("<Response><Errors><Error><Code>InsufficientInstanceCapacity</Code><Message>No capacity.</Message></Error></Errors><RequestID>x</RequestID></Response>".utf8)
        #expect(AWSHTTP.errorCode(ec2)?.code == "InsufficientInstanceCapacity")
        let s3 = Data("<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>bad</Message></Error>".utf8)
        #expect(AWSHTTP.errorCode(s3)?.code == "SignatureDoesNotMatch")
    }

    @Test("a cut response is a transient error, not a crash", arguments: ["<a><b>x</a>", "<a>", "<a><b></b"])
    func malformed(text: String) {
        let e = #expect(throws: CapstanError.self) { try XMLElement.parse(Data(text.utf8)) }
        #expect(e?.code == .transient)
    }
}
