import CapstanCore
import CapstanTrainer
import Testing

@Suite("Job spec: inputs and image")
struct JobInputsSpecTests {
    @Test("inputs: name → bucket URI, sorted by name; image: a reference")
    func parses() throws {
        let spec = try JobSpec.parse("""
            run: python train.py
            inputs:
              tok: file:///data/tokenizer.json
              data: s3://bucket/corpus/v2/
              shards: gs://other/shards
            image: nvcr.io/nvidia/pytorch:24.05-py3
            """)
        #expect(spec.inputs == [JobInput(name: "data", url: "s3://bucket/corpus/v2/"), JobInput(name: "shards", url: "gs://other/shards"), JobInput(name: "tok", url: "file:///data/tokenizer.json")])
        #expect(spec.image == "nvcr.io/nvidia/pytorch:24.05-py3")
        #expect(JobInput.variable("data") == "CAPSTAN_INPUT_DATA")
        let (location, prefix) = JobInput.split("s3://bucket/corpus/v2/")
        #expect(location == "s3://bucket" && prefix == "corpus/v2/")
        #expect(JobInput.split("gs://other").prefix == "")
    }

    @Test("bad inputs and images are refused with the key, the line and what to write")
    func badInput() throws {
        let cases: [(String, String)] = [
            ("inputs: [s3://b/p/]", "'inputs' must be a mapping of name: bucket URI"),
            ("inputs: {data: data/train/}", "'inputs.data' must be a bucket URI: s3://bucket/prefix/, gs://bucket/prefix/ or file:///absolute/path, got 'data/train/'"),
            ("inputs: {data: ftp://host/x}", "the scheme ftp:// is not one Capstan fetches inputs from; use s3://, gs:// or file://"),
            ("inputs: {Data-1: s3://b/p/}", "'inputs.Data-1' is not an input name: use lower-case letters, digits and '_', starting with a letter, at most 32 (it becomes $CAPSTAN_INPUT_DATA_1)"),
            ("inputs: {data: s3:///p/}", "'inputs.data' is 's3:///p/': name the bucket, as s3://bucket/prefix/"),
            ("inputs: {data: file://relative/x}", "a file input names an absolute path on the nodes"),
            ("inputs: {data: s3://b/../x/}", "'..' path segment"),
            ("inputs: {data: {url: s3://b/p}}", "'inputs.data' must be a bucket URI like s3://bucket/prefix/"),
            ("image: 'nvcr.io/x y'", "'image' must be a container image reference like nvcr.io/nvidia/pytorch:24.05-py3"),
            ("image: ubuntu:24.04\npython: {requirements: [numpy]}", "'image' cannot go with 'python' or a recipe yet"),
        ]
        for (yaml, message) in cases {
            #expect {
                _ = try JobSpec.parse("run: ./train.sh\n" + yaml, source: "job.yaml")
            } throws: { error in
                let e = error as? CapstanError
                return e?.message.contains(message) == true && e?.message.contains("job.yaml:") == true
            }
        }
    }

    @Test("a container run: host network and IPC, GPUs by the runtime's own means, the job's folders mounted, env passed by name only")
    func containerArguments() {
        var run = ContainerRun(runtime: "/usr/bin/podman", image: "localhost/job:1", name: "capstan-j-a1-n0", mounts: ["/w", "/w/ckpt", "/w"], readOnlyMounts: ["/cache"], workdir: "/w", gpus: true)
        let script = ContainerRun.script(setup: ["pip install x"], run: "python -c 'print(1)'")
        #expect(script == "set -e\npip install x\nexec /bin/sh -c 'python -c '\\''print(1)'\\'''")
        let a = run.arguments(script: script, environment: ["SECRET_NAME", "MASTER_ADDR"])
        #expect(Array(a.prefix(9)) == ["/usr/bin/podman", "run", "--rm", "--name", "capstan-j-a1-n0", "--network", "host", "--ipc", "host"])
        #expect(a.contains("nvidia.com/gpu=all") && !a.contains("--gpus"))
        #expect(a.filter { $0 == "/w:/w" }.count == 1 && a.contains("/w/ckpt:/w/ckpt") && a.contains("/cache:/cache:ro"))
        #expect(a.suffix(4) == ["localhost/job:1", "/bin/sh", "-c", script])
        #expect(a.contains("MASTER_ADDR") && !a.contains { $0.contains("=") && !$0.hasPrefix("nvidia") })
        run.options = ["--runtime", "runc"]
        #expect(Array(run.arguments(script: "true", environment: []).dropFirst(9).prefix(2)) == ["--runtime", "runc"])
        run.runtime = "/usr/bin/docker"
        run.gpus = true
        #expect(run.arguments(script: "true", environment: []).contains("--gpus"))
        run.gpus = false
        #expect(!run.arguments(script: "true", environment: []).contains("--gpus"))
    }
}
