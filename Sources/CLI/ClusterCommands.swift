import ArgumentParser
import CapstanAPI
import CapstanCore
import CapstanRuntime
import CapstanSQLite
import CapstanProviders
import Foundation

struct UpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Provision a cluster on the cheapest offer that has capacity, failing over down the ranking.",
        discussion: """
            Examples:
              capstan up demo --nodes 2                      two local nodes on this machine
              capstan up train --gpu H100 --gpus-per-node 8 --nodes 2 --spot
              capstan up warm --nodes 2 --idle-minutes 30    terminated after 30 min without a job
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Cluster name (lower-case letters, digits, dashes).")
    var name: String
    @OptionGroup var resources: RequestOptions
    @Flag(help: "Ask every provider for fresh offers.") var refresh = false
    @Option(help: "Autostop: terminate the cluster after this many minutes without an unfinished job on it (checked by `capstan serve` every minute and by `capstan reconcile`).")
    var idleMinutes: Int?

    func validate() throws {
        do {
            try Provisioner.validate(name: name)
            try Provisioner.validate(idleMinutes: idleMinutes)
        } catch let e as CapstanError { throw ValidationError(e.description) }
    }

    func run() async throws {
        try await reportingErrors { try await provision() }
    }

    func provision() async throws {
        let json = global.json
        if try await remote.run({ client in
            if !json { print("Provisioning \(name)…") }
            try show(try await client.up(name: name, request: resources.request, refresh: refresh, idleMinutes: idleMinutes), json: json)
        }) { return }
        let registry = try global.loadRegistry()
        // A provider left out (plugin missing, refused its settings) is said up front, so "no
        // offer matches" is never the only clue.
        for p in registry.problems {
            var error = p.error
            error.provider = nil  // named already
            printError("warning: provider \(p.provider) is not in use: \(error)")
        }
        // Each line flushed: stdio buffers a file or pipe by block, and what `up` said must
        // survive a kill -9 of it.
        let steps = StepPrinter()
        let provisioner = try await global.provisioner(registry, progress: json ? nil : steps.callback)
        _ = await provisioner.reconcile()
        let request = resources.request
        if !json { print("Provisioning \(name)…"); flushStdout() }
        let search = global.offerSearch(registry, store: provisioner.store, refresh: refresh)
        let report: ProvisionReport
        do { report = try await provisioner.up(name: name, request: request, search: search, idleMinutes: idleMinutes) } catch {
            steps.finish()
            throw error
        }
        steps.finish()
        try show(report, json: json)
    }

    /// What `up` prints and exits with, here or on a server.
    func show(_ report: ProvisionReport, json: Bool) throws {
        if json { try printJSON(report) } else { render(report) }
        if report.cluster.status != .running { throw ExitCode(1) }
    }

    func render(_ report: ProvisionReport) {
        if !report.attempts.isEmpty {
            var table = TextTable(header: ["#", "OFFER", "MARKET", "$/H", "OUTCOME", "SECONDS"], rightAligned: [0, 3, 5])
            for (i, a) in report.attempts.enumerated() {
                table.rows.append(["\(i + 1)", a.offer.id, a.spot ? "spot" : "on-demand", String(format: "%.2f", a.clusterPricePerHour), a.outcome, String(format: "%.1f", a.seconds)])
            }
            print(table.render())
            // The errors below the table, by attempt number: a cloud's message would make the
            // OUTCOME column as wide as its longest sentence.
            for (i, a) in report.attempts.enumerated() {
                if let e = a.error { print("  #\(i + 1) \(e.code.name): \(e.message)") }
            }
        }
        let c = report.cluster
        if c.status == .running {
            print("\nCluster \(c.name) is running: \(c.nodes) node(s) on \(c.offer?.provider ?? "?") \(c.offer?.instanceType ?? "?"), \(dollars(c.pricePerHour ?? 0))/h\(c.spot ? " (spot)" : "").")
            for i in report.instances {
                print("  \(i.tags[CapstanTags.node].map { "node \($0)" } ?? "node") \(i.id)  \(i.privateAddress ?? i.publicAddress ?? "-")")
            }
            print("Stop it with: capstan down \(c.name)")
        } else {
            printError("error: cluster \(c.name) could not be provisioned: \(report.noOfferReason ?? c.lastError ?? "unknown")")
            printError("  → Try other GPUs, regions or --spot; `capstan offers --explain` shows what was filtered out.")
        }
    }
}

struct DownCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "down", abstract: "Terminate a cluster's instances.",
        discussion: "Refused while a job that has not ended runs on the cluster: cancel it first (`capstan cancel JOB`), or pass --force.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Cluster name.", completion: .custom(NameCompletion.clusters)) var name: String
    @Flag(help: "Terminate the cluster even while a job runs on it (the job loses its nodes).") var force = false

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in try render(try await client.down(name, force: force)) }) { return }
            let registry = try global.loadRegistry()
            let provisioner = try await global.provisioner(registry)
            let cluster = try await provisioner.down(name: name, force: force)
            _ = await provisioner.reconcile()
            try render(cluster)
        }
    }

    func render(_ cluster: Cluster) throws {
        if global.json { try printJSON(cluster); return }
        print("Cluster \(cluster.name) is \(cluster.status.rawValue).")
    }
}

struct MoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "move",
        abstract: "Move a running cluster to the cheapest other offer that fits its request (a whole new gang; the old one is terminated once the new one runs).",
        discussion: """
            What a job does by itself when a lost node cannot be replaced on its offer. A job on
            the cluster resumes on the new gang from its newest checkpoint.
            """)
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Argument(help: "Cluster name.", completion: .custom(NameCompletion.clusters)) var name: String
    @Flag(help: "Ask every provider for fresh offers.") var refresh = false

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in try render(try await client.move(name, refresh: refresh)) }) { return }
            let registry = try global.loadRegistry()
            let json = global.json
            let provisioner = try await global.provisioner(registry, progress: json ? nil : { @Sendable line in print("  " + line) })
            _ = await provisioner.reconcile()
            let report = try await provisioner.move(cluster: name, search: global.offerSearch(registry, store: provisioner.store, refresh: refresh))
            try render(report)
        }
    }

    func render(_ report: ProvisionReport) throws {
        if global.json { try printJSON(report); return }
        let c = report.cluster
        print("Cluster \(c.name) moved: \(c.nodes) node(s) on \(c.offer?.provider ?? "?") \(c.offer?.instanceType ?? "?") in \(c.offer.map { $0.zone ?? $0.region } ?? "?"), \(dollars(c.pricePerHour ?? 0))/h\(c.spot ? " (spot)" : "").")
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show clusters, their instances, price, uptime and cost so far (reconciling first).")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions
    @Flag(help: "Include terminated and failed clusters.") var all = false
    @Flag(help: "Do not reconcile with the providers first.") var noReconcile = false

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in try render(try await client.status(all: all, reconcile: !noReconcile)) }) { return }
            let registry = try global.loadRegistry()
            let provisioner = try await global.provisioner(registry)
            let report = noReconcile ? ReconcileReport() : await provisioner.reconcile()
            let now = Date()
            var rows: [ClusterStatusRow] = []
            let clusters = try await provisioner.store.clusters(includeFinished: all)
            // Every cluster's instances in one set query, not one query per cluster.
            let byCluster = try await provisioner.store.instances(clusters: clusters.map(\.id))
            for c in clusters {
                rows.append(ClusterStatusRow(cluster: c, instances: byCluster[c.id] ?? [], now: now))
            }
            try render(StatusResponse(clusters: rows, reconcile: report))
        }
    }

    /// What `status` prints, here or from a server.
    func render(_ status: StatusResponse) throws {
        let (rows, report) = (status.clusters, status.reconcile)
        do {
            if global.json {
                try printJSON(status)
                return
            }
            if report.didSomething {
                print("Reconciled: \(report.terminated.count) orphaned instance(s) terminated, \(report.recoveredClusters.count) interrupted cluster(s) recovered, \(report.failedClusters.count) cleaned up.")
            }
            for (p, e) in report.providerErrors.sorted(by: { $0.key < $1.key }) { printError("warning: could not list \(p)'s instances: \(e)") }
            if rows.isEmpty { print("No clusters\(all ? "" : " running"). Start one with: capstan up NAME --nodes 2"); return }
            var table = TextTable(header: ["NAME", "STATUS", "PROVIDER", "REGION", "NODES", "GPU", "$/H", "UPTIME", "COST", "AUTOSTOP"], rightAligned: [4, 6, 8])
            for r in rows {
                let c = r.cluster
                let gpu = c.offer.map { o in o.gpusPerNode > 0 ? "\(o.gpusPerNode)x\(o.gpu ?? o.gpuName ?? "?")" : "cpu" } ?? "-"
                table.rows.append([c.name, c.status.rawValue, c.offer?.provider ?? "-", c.offer.map { $0.zone ?? $0.region } ?? "-", "\(c.nodes)", gpu, c.pricePerHour.map { String(format: "%.2f", $0) } ?? "-", humanDuration(r.uptimeSeconds), dollars(r.costSoFar), c.idleMinutes.map { "idle \($0)m" } ?? "-"])
            }
            print(table.render())
            for r in rows where !r.instances.isEmpty {
                print("\n\(r.cluster.name):")
                var t = TextTable(header: ["  NODE", "INSTANCE", "STATE", "ADDRESS", "$/H"], rightAligned: [4])
                for i in r.instances {
                    // Why a node is not running, in its provider's words (a Slurm queue's reason and position).
                    let state = i.state.rawValue + (i.state == .running ? "" : i.instance.stateReason.map { " (\($0))" } ?? "")
                    t.rows.append(["  " + (i.instance.tags[CapstanTags.node] ?? "-"), i.id, state, i.instance.privateAddress ?? i.instance.publicAddress ?? "-", String(format: "%.2f", i.pricePerHour ?? 0)])
                }
                print(t.render())
                let live = r.instances.map(\.instance).filter { $0.state.isLive }
                    .sorted { Int($0.tags[CapstanTags.node] ?? "") ?? 0 < Int($1.tags[CapstanTags.node] ?? "") ?? 0 }
                if let master = NodeAddresses(live).master, !live.isEmpty {
                    print("  MASTER_ADDR \(master) — \(NodeAddresses(live).reason)")
                }
                if let e = r.cluster.lastError, r.cluster.status != .running { print("  last error: \(e)") }
            }
        }
    }
}

struct ReconcileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reconcile", abstract: "Compare every provider's Capstan instances with the state and repair the difference (terminate orphans).")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var remote: ServerOptions

    func run() async throws {
        try await reportingErrors {
            if try await remote.run({ client in try render(try await client.reconcile()) }) { return }
            let registry = try global.loadRegistry()
            let provisioner = try await global.provisioner(registry)
            var report = await provisioner.reconcile()
            // Autostop: clusters idle past their --idle-minutes go too.
            report.autostopped = await provisioner.stopIdleClusters()
            try render(report)
        }
    }

    func render(_ report: ReconcileReport) throws {
        if global.json { try printJSON(report); return }
        for name in report.autostopped ?? [] { print("autostop: terminated idle cluster \(name)") }
        print("adopted \(report.adopted.count), terminated \(report.terminated.count), recovered clusters \(report.recoveredClusters.count), cleaned-up clusters \(report.failedClusters.count), closed intents \(report.abandonedIntents.count), finished terminations \(report.finishedTerminations.count), rebuilt clusters \(report.rebuiltClusters.count)")
        for id in report.terminated { print("  terminated \(id)") }
        for (p, e) in report.providerErrors.sorted(by: { $0.key < $1.key }) { printError("warning: could not list \(p)'s instances: \(e)") }
    }
}
