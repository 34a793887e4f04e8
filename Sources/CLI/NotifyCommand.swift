import ArgumentParser
import CapstanCore
import CapstanRuntime
import CapstanTrainer
import Foundation

/// `capstan notify test`: sends a test notification to a spec's (or config.yaml's) targets.
struct NotifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notify", abstract: "Notifications (docs/notifications.md).", subcommands: [NotifyTestCommand.self])
}

struct NotifyTestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Send a test notification to every target of a job spec's notify: (or config.yaml's default), signed as a real one.",
        discussion: "Secrets and Slack URLs are read from this process's environment and files, as a deliverer reads them. Exits 1 when a target did not answer 2xx.")

    @OptionGroup var global: GlobalOptions
    @Option(name: .customLong("job-spec"), help: "A job spec whose notify: to test (default: config.yaml's notify:).") var jobSpec: String?

    func run() async throws {
        try await reportingErrors {
            let config = try CapstanConfig.load(path: global.capstanHome.configFile)
            let spec: NotifySpec
            var name = "test"
            if let jobSpec {
                let job = try JobSpec.load(path: jobSpec)
                name = job.name
                guard let n = job.notify ?? config.notify, !n.isOff else {
                    throw CapstanError(.invalidRequest, "The job spec \(jobSpec) has no notify: targets, and config.yaml has no default.", hint: "Add notify: with webhooks or slack (docs/notifications.md).")
                }
                spec = n
            } else {
                guard let n = config.notify else {
                    throw CapstanError(.invalidRequest, "config.yaml (\(global.capstanHome.configFile)) has no notify: targets.", hint: "Pass --job-spec FILE, or add a default notify: to config.yaml (docs/notifications.md).")
                }
                spec = n
            }
            let results = await NotificationSender(settings: config.notifyDelivery).sendTest(spec, jobName: name)
            if global.json {
                try printJSON(results)
            } else {
                for r in results { print("\(r.delivered ? "ok  " : "FAIL") \(r.target): \(r.detail)") }
            }
            if results.contains(where: { !$0.delivered }) { throw ExitCode(1) }
        }
    }
}
