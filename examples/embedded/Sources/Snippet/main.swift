import CapstanSDK

// The home: $CAPSTAN_HOME, else ~/.capstan. The job: a spec file (docs/jobs.md).
let capstan = try await Capstan()
let job = try await capstan.submit(specFile: CommandLine.arguments[1])
for await event in job.events {
    if case .metrics(let point) = event, let loss = point.values["loss"] { print("step \(point.step) loss \(loss)") }
}
let record = try await job.result()
print("job \(record.id) \(record.status.rawValue)")
