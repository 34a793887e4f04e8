import CapstanCore
import CapstanProviders
import CapstanRuntime
import Foundation

extension JobService {
    /// Every `inputs:` entry must name objects that exist and that the nodes can read with the
    /// credentials they will get, checked before anything is provisioned: a typo costs an
    /// error, not a cluster. (`file://` inputs are checked on this machine: local nodes, or a
    /// filesystem the nodes share.)
    func checkInputs(_ spec: JobSpec) async throws {
        for input in spec.inputs {
            let what = "The job's input '\(input.name)' \(input.url)"
            if input.url.hasPrefix("file://") {
                let path = String(input.url.dropFirst("file://".count))
                guard FileManager.default.fileExists(atPath: path) else {
                    throw CapstanError(.invalidRequest, "\(what) does not exist: no file or folder \(path) on this machine.", hint: "Fix the path, or upload the data to a bucket and name it as s3://bucket/prefix/.")
                }
            }
            let opened: (store: any ObjectStore, prefix: String)
            do {
                if !input.url.hasPrefix("file://") { _ = try context.bucketAccess(JobInput.split(input.url).location) }
                opened = try input.store(access: nil, home: context.home, open: context.openBucket)
            } catch {
                throw CapstanError(.invalidRequest, "Cannot open the bucket of the job's input '\(input.name)' \(input.url): \((error as? CapstanError)?.message ?? "\(error)")", hint: "The nodes read it with the same credentials as the job's storage; see docs/inputs.md.")
            }
            do { _ = try await SourceCache.objects(opened.store, prefix: opened.prefix, location: input.url) } catch let e as CapstanError where e.code == .notFound {
                throw CapstanError(.invalidRequest, "\(what) does not exist: \(e.message)", hint: e.hint)
            }
        }
    }
}
