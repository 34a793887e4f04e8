// A program that embeds Capstan: submits a job (the demo: examples/sft-tiny) on the home's
// providers — the local provider by default — and prints its loss from typed metric events;
// `observe` follows a job another process runs, read-only.
//
//   embedded run SPEC.yaml     submit and run the job here (its controller is this process)
//   embedded observe JOB       follow job JOB (id or name) until it ends, taking no control
//
// The home is $CAPSTAN_HOME (default ~/.capstan); the node agent is the `capstan` next to this
// program, $CAPSTAN_AGENT_BINARY, or the Capstan checkout's build folder.
import CapstanSDK
import Foundation
#if canImport(Glibc)
import Glibc
#endif

func show(_ event: JobEvent, _ prefix: String) {
    switch event {
    case .metrics(let point):
        if let loss = point.values["loss"] { print("\(prefix)step \(point.step) loss \(String(format: "%.4f", loss))") }
    case .provisioning(let line): print("\(prefix)provisioning: \(line)")
    case .status(let status, let message): print("\(prefix)\(status.rawValue): \(message)")
    case .checkpoint(let step, let bytes): print("\(prefix)checkpoint step \(step) (\(bytes) bytes)")
    case .finished(let job): print("\(prefix)finished: \(job.status.rawValue)")
    default: break
    }
    fflush(nil)
}

let args = Array(CommandLine.arguments.dropFirst())
guard args.count == 2, ["run", "observe"].contains(args[0]) else {
    FileHandle.standardError.write(Data("usage: embedded run SPEC.yaml | embedded observe JOB\n".utf8))
    exit(2)
}
do {
    let capstan = try await Capstan()
    if args[0] == "run" {
        let handle = try await capstan.submit(specFile: args[1])
        print("job \(handle.id)")
        fflush(nil)
        for await event in handle.events { show(event, "") }
        let job = try await handle.result()
        print("job \(job.id) \(job.status.rawValue)")
        exit(job.status == .succeeded ? 0 : 1)
    } else {
        var end: JobRecord?
        for try await event in capstan.observe(args[1]) {
            show(event, "observed ")
            if case .finished(let job) = event { end = job }
        }
        exit(end?.status == .succeeded ? 0 : 1)
    }
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    exit(1)
}
