public import CapstanCore
import CapstanCloudKit
import CapstanRuntime
public import Foundation

extension ProviderRegistry {
    /// A job's `gs://` bucket for its nodes: `providers.gcp`'s service-account key
    /// (`credentialsFile`, else GOOGLE_APPLICATION_CREDENTIALS) and `storageEndpoint`, read and
    /// checked here, on the controller, before any agent gets them.
    func gcsAccess(for location: String, environment: [String: String]) throws -> BucketAccess {
        guard case .object(let o) = config.providerConfig("gcp") else { throw Self.noGCP(location) }
        var path: String?
        if case .string(let p)? = o["credentialsFile"] { path = p }
        guard let file = path ?? environment["GOOGLE_APPLICATION_CREDENTIALS"], !file.isEmpty else { throw Self.noGCP(location) }
        var endpoint = "https://storage.googleapis.com"
        if case .string(let e)? = o["storageEndpoint"] { endpoint = e }
        var allow = false
        if case .bool(let b)? = o["allowInsecureHTTP"] { allow = b }
        try CloudHTTP.checkEndpoint(endpoint, setting: "providers.gcp.storageEndpoint", allowInsecureHTTP: allow)
        let text = try CloudHTTP.readSecret(file, what: "GCP service-account key", provider: "gcp")
        _ = try ServiceAccountKey.parse(text, source: (file as NSString).expandingTildeInPath)
        return BucketAccess(location: location, gcs: BucketAccess.GCS(endpoint: endpoint, serviceAccountKey: text, allowInsecureHTTP: allow ? true : nil))
    }

    static func noGCP(_ location: String) -> CapstanError {
        CapstanError(.auth, "No GCP credentials for the job's bucket \(location): providers.gcp.credentialsFile is not set and GOOGLE_APPLICATION_CREDENTIALS is empty.", hint: "Name a service-account JSON key in providers.gcp.credentialsFile (docs/plugins/gcp.md).", provider: "gcp")
    }
}
