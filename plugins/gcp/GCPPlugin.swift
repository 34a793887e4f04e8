import CapstanCore
import CapstanPluginKit
import CapstanCloudKit
import Foundation
import Logging

/// The `gcp` plugin's definition (plugins/gcp/Plugin.swift exports it).
enum GCPPlugin {
    static let definition = PluginDefinition(
        manifest: PluginManifest(
            name: "gcp", version: "1.0.0",
            description: "Google Cloud: Compute Engine GPU VMs (A3 H100, A2 A100, G2 L4; on demand or SPOT) and Cloud Storage (gs://). Auth: a service-account JSON key (providers.gcp.credentialsFile or GOOGLE_APPLICATION_CREDENTIALS).",
            capabilities: [.compute, .storage],
            configSchema: .object([
                "type": .string("object"),
                "additionalProperties": .bool(false),
                "properties": .object([
                    "credentialsFile": .object(["type": .string("string"), "description": .string("Service-account JSON key (default: GOOGLE_APPLICATION_CREDENTIALS).")]),
                    "project": .object(["type": .string("string"), "description": .string("Project id (default: the key's project_id).")]),
                    "zones": .object(["type": .string("array"), "items": .object(["type": .string("string")]), "description": .string("Zones to offer (default: all).")]),
                    "endpoint": .object(["type": .string("string"), "description": .string("compute/v1 base URL (default https://compute.googleapis.com/compute/v1).")]),
                    "storageEndpoint": .object(["type": .string("string"), "description": .string("Cloud Storage base URL (default https://storage.googleapis.com).")]),
                    "sourceImage": .object(["type": .string("string"), "description": .string("Boot image (default: Deep Learning VM, CUDA 12.4, Ubuntu 22.04).")]),
                    "diskSizeGb": .object(["type": .string("integer"), "minimum": .number(10)]),
                    "prices": .object(["type": .string("object"), "description": .string("$/h overrides of the built-in price table (\(GCPPriceTable.date)): {machineType: {onDemand, spot}}.")]),
                    "allowInsecureHTTP": .object(["type": .string("boolean"), "description": .string("Allow plain http:// endpoints on another machine (default false: loopback only).")]),
                ]),
            ]),
            storageSchemes: ["gs"], offerCacheSeconds: 600),
        make: { config, logger in
            if case .object(let o) = config, let unknown = o.keys.sorted().first(where: { !GCPSettings.keys.contains($0) }) {
                throw CapstanError(.config, "Unknown key 'providers.gcp.\(unknown)'.", hint: "Known: \(GCPSettings.keys.sorted().joined(separator: ", ")).")
            }
            let settings: GCPSettings
            do { settings = try config.decode(GCPSettings.self) } catch {
                throw CapstanError(.config, "providers.gcp is invalid: \(PluginWire.describe(error)).", hint: "See `capstan plugins inspect gcp`.")
            }
            guard let file = settings.credentialsFile ?? ProcessInfo.processInfo.environment["GOOGLE_APPLICATION_CREDENTIALS"], !file.isEmpty else {
                throw CapstanError(.auth, "No GCP credentials: providers.gcp.credentialsFile is not set and GOOGLE_APPLICATION_CREDENTIALS is empty.", hint: "Download a service-account JSON key (IAM → Service accounts → Keys) and name it in providers.gcp.credentialsFile.", provider: "gcp")
            }
            let key = try ServiceAccountKey.load(file)
            guard let project = settings.project ?? key.project_id, !project.isEmpty else {
                throw CapstanError(.config, "No GCP project: providers.gcp.project is not set and the key file has no project_id.", provider: "gcp")
            }
            let auth = try GCPTokenSource(key: key, allowInsecureHTTP: settings.allowInsecureHTTP ?? false)
            let compute = try GCPCompute(settings: settings, project: project, auth: auth, logger: logger)
            let storageBase = settings.storageEndpoint ?? "https://storage.googleapis.com"
            return PluginServices(compute: compute, openStore: { location in
                try GCSStore(location: location, base: storageBase, auth: auth, allowInsecureHTTP: settings.allowInsecureHTTP ?? false)
            })
        })
}
