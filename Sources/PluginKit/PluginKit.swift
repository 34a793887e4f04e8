public import CapstanCore
public import CapstanPluginABI
public import Foundation
public import Logging

/// What a plugin instance provides once created from its config.
public struct PluginServices: Sendable {
    /// The compute side, if the plugin provides one.
    public var compute: (any ComputeProvider)?
    /// Opens the object store at a bucket URI (`s3://bucket/prefix`), if the plugin provides storage.
    public var openStore: (@Sendable (_ location: String) throws -> any ObjectStore)?

    public init(compute: (any ComputeProvider)? = nil, openStore: (@Sendable (String) throws -> any ObjectStore)? = nil) {
        self.compute = compute
        self.openStore = openStore
    }
}

/// Everything the kit needs to export a Swift implementation through the C ABI.
public struct PluginDefinition: Sendable {
    public var manifest: PluginManifest
    /// Builds the services from the plugin's config section. `logger` writes through the host.
    public var make: @Sendable (_ config: JSONValue, _ logger: Logger) throws -> PluginServices

    public init(manifest: PluginManifest, make: @escaping @Sendable (JSONValue, Logger) throws -> PluginServices) {
        self.manifest = manifest
        self.make = make
    }
}

/// Exports a Swift ``ComputeProvider``/``ObjectStore`` as a Capstan plugin. A whole plugin is:
///
/// ```swift
/// import CapstanPluginABI
/// import CapstanProviders
///
/// @_cdecl("capstan_plugin_entry")
/// public func capstanPluginEntry() -> UnsafePointer<capstan_plugin> {
///     CapstanPluginKit.export(MyCloud.pluginDefinition)
/// }
/// ```
/// Each plugin library carries its own copy of the kit (SwiftPM links it statically), so the
/// kit's globals below are per plugin image.
public enum CapstanPluginKit {
    /// Registers `definition` (first call wins) and returns the process-lifetime function table.
    public static func export(_ definition: PluginDefinition) -> UnsafePointer<capstan_plugin> {
        exported.withLock { state in
            if let table = state.table { return UnsafePointer(table) }
            let manifestJSON = (try? PluginWire.encoder.encode(definition.manifest)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
            let table = UnsafeMutablePointer<capstan_plugin>.allocate(capacity: 1)
            table.initialize(to: capstan_plugin(
                abi_version: CAPSTAN_PLUGIN_ABI_VERSION,
                struct_size: UInt32(MemoryLayout<capstan_plugin>.size),
                name: UnsafePointer(strdup(definition.manifest.name)),
                manifest_json: kitManifest,
                create: kitCreate,
                invoke: kitInvoke,
                destroy: kitDestroy,
                free_string: kitFreeString))
            state.definition = definition
            state.manifestJSON = UnsafePointer(strdup(manifestJSON))
            state.table = table
            return UnsafePointer(table)
        }
    }

    struct Exported: @unchecked Sendable {
        var definition: PluginDefinition?
        var manifestJSON: UnsafePointer<CChar>?
        var table: UnsafeMutablePointer<capstan_plugin>?
    }
    static let exported = LockedBox(Exported())
}

/// One created plugin instance: the services plus a cache of opened stores.
public final class PluginKitInstance: Sendable {
    public let name: String
    public let services: PluginServices
    private let stores = LockedBox<[String: any ObjectStore]>([:])

    public init(name: String, services: PluginServices) {
        self.name = name
        self.services = services
    }

    /// Runs one ABI method in-process: decode the request, call the service, encode the result.
    /// The exported `invoke` is this plus the C callbacks; tests and benchmarks call it directly.
    public func handle(method: String, request: Data, progress: TransferProgressHandler?) async throws -> Data {
        func decode<T: Decodable>(_: T.Type) throws -> T {
            do { return try PluginWire.decoder.decode(T.self, from: request) } catch {
                throw CapstanError(.invalidRequest, "Plugin '\(name)' could not decode the request for '\(method)': \(error)")
            }
        }
        func encode<T: Encodable>(_ value: T) throws -> Data { try PluginWire.encoder.encode(value) }
        func compute() throws -> any ComputeProvider {
            guard let c = services.compute else { throw CapstanError(.unsupported, "Plugin '\(name)' does not provide compute.") }
            return c
        }
        func store(_ location: String) throws -> any ObjectStore {
            guard let open = services.openStore else { throw CapstanError(.unsupported, "Plugin '\(name)' does not provide storage.") }
            try ObjectKey.validateLocation(location)
            if let s = stores.withLock({ $0[location] }) { return s }
            let s = try open(location)
            stores.withLock { $0[location] = s }
            return s
        }
        switch method {
        case PluginWire.Method.ping:
            return Data("{}".utf8)
        case PluginWire.Method.offers:
            // A catalog can hold 100,000 offers: written by hand (OfferJSON), same JSON as
            // JSONEncoder would write, several times faster.
            return try OfferJSON.encodeResponse(try await compute().offers(for: decode(ResourceRequest.self)))
        case PluginWire.Method.launch:
            return try encode(PluginWire.InstancesResponse(instances: try await compute().launch(decode(LaunchRequest.self))))
        case PluginWire.Method.describe:
            return try encode(PluginWire.InstancesResponse(instances: try await compute().describe(decode(InstanceQuery.self))))
        case PluginWire.Method.terminate:
            return try encode(PluginWire.InstancesResponse(instances: try await compute().terminate(ids: decode(PluginWire.TerminateRequest.self).ids)))
        case PluginWire.Method.put:
            let r = try decode(PluginWire.PutRequest.self)
            return try encode(try await store(r.location).put(file: r.file, key: r.key, options: r.options, progress: progress))
        case PluginWire.Method.get:
            let r = try decode(PluginWire.GetRequest.self)
            return try encode(try await store(r.location).get(key: r.key, to: r.file, progress: progress))
        case PluginWire.Method.list:
            let r = try decode(PluginWire.ListRequest.self)
            return try encode(PluginWire.ListResponse(objects: try await store(r.location).list(prefix: r.prefix)))
        case PluginWire.Method.head:
            let r = try decode(PluginWire.KeyRequest.self)
            return try encode(PluginWire.HeadResponse(object: try await store(r.location).head(key: r.key)))
        case PluginWire.Method.delete:
            let r = try decode(PluginWire.KeyRequest.self)
            try await store(r.location).delete(key: r.key)
            return try encode(PluginWire.Empty())
        default:
            throw CapstanError(.unsupported, "Plugin '\(name)' has no method '\(method)'.", hint: "The host and plugin disagree on the protocol; update one of them.")
        }
    }
}


/// A swift-log handler that forwards to the host's `log` function.
struct HostLogHandler: LogHandler {
    let host: UnsafePointer<capstan_host>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let level: Int32 = switch event.level {
        case .trace: CAPSTAN_LOG_TRACE
        case .debug: CAPSTAN_LOG_DEBUG
        case .info: CAPSTAN_LOG_INFO
        case .notice: CAPSTAN_LOG_NOTICE
        case .warning: CAPSTAN_LOG_WARNING
        case .error, .critical: CAPSTAN_LOG_ERROR
        }
        var text = "\(event.message)"
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        if !merged.isEmpty { text += " " + merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") }
        text.withCString { host.pointee.log(host.pointee.host_ctx, level, $0) }
    }
}

extension HostLogHandler: @unchecked Sendable {}

private func errorJSON(_ error: any Error, plugin: String) -> String {
    let capstan = (error as? CapstanError) ?? CapstanError(.internalError, "Plugin '\(plugin)' failed: \(error)")
    return (try? PluginWire.encoder.encode(capstan)).map { String(decoding: $0, as: UTF8.self) }
        ?? #"{"code":"internal","message":"unencodable error"}"#
}

private let kitManifest: @convention(c) () -> UnsafePointer<CChar>? = {
    CapstanPluginKit.exported.withLock { $0.manifestJSON }
}

private let kitCreate: @convention(c) (UnsafePointer<CChar>?, UnsafePointer<capstan_host>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 = { config, host, outHandle, outError in
    guard let definition = CapstanPluginKit.exported.withLock({ $0.definition }) else { return 1 }
    let name = definition.manifest.name
    do {
        let text = config.map { String(cString: $0) } ?? "{}"
        // By hand when it parses (a config may hold a whole catalog); JSONDecoder for the error.
        let json = try JSONValue.parse(Data(text.utf8)) ?? PluginWire.decoder.decode(JSONValue.self, from: Data(text.utf8))
        let logger: Logger
        if let host, host.pointee.struct_size >= UInt32(MemoryLayout<capstan_host>.size), host.pointee.log != nil {
            logger = Logger(label: "capstan.plugin.\(name)") { _ in HostLogHandler(host: host) }
        } else {
            logger = Logger(label: "capstan.plugin.\(name)") { _ in SwiftLogNoOpLogHandler() }
        }
        let services = try definition.make(json, logger)
        let instance = PluginKitInstance(name: name, services: services)
        outHandle?.pointee = Unmanaged.passRetained(instance).toOpaque()
        return 0
    } catch {
        outError?.pointee = strdup(errorJSON(error, plugin: name))
        return 1
    }
}

private let kitInvoke: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?, UnsafeMutableRawPointer?, capstan_completion_fn?, capstan_progress_fn?) -> Void = { handle, method, request, ctx, completion, progress in
    guard let completion else { return }
    guard let handle, let method, let request else {
        #"{"code":"invalidRequest","message":"NULL handle, method or request"}"#.withCString { completion(ctx, CAPSTAN_STATUS_ERROR, $0) }
        return
    }
    let instance = Unmanaged<PluginKitInstance>.fromOpaque(handle).takeUnretainedValue()
    let methodName = String(cString: method)
    let body = Data(bytes: request, count: strlen(request))
    // The context is an opaque token of the host's; carry its bits across the task boundary.
    let token = UInt(bitPattern: ctx)
    let report: TransferProgressHandler? = progress.map { fn in
        { @Sendable p in fn(UnsafeMutableRawPointer(bitPattern: token), p.bytesDone, p.bytesTotal) }
    }
    // The ABI's invoke is asynchronous: the host owns the call through its completion callback.
    Task {
        var answer: (status: Int32, bytes: [UInt8])
        do {
            answer = (CAPSTAN_STATUS_OK, Array(try await instance.handle(method: methodName, request: body, progress: report)))
        } catch {
            answer = (CAPSTAN_STATUS_ERROR, Array(errorJSON(error, plugin: instance.name).utf8))
        }
        // The answer as a C string, without copying a large payload twice more (String, then
        // withCString): its bytes and a terminating NUL.
        answer.bytes.append(0)
        answer.bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { completion(UnsafeMutableRawPointer(bitPattern: token), answer.status, $0.baseAddress) }
        }
    }
}

private let kitDestroy: @convention(c) (UnsafeMutableRawPointer?) -> Void = { handle in
    guard let handle else { return }
    Unmanaged<PluginKitInstance>.fromOpaque(handle).release()
}

private let kitFreeString: @convention(c) (UnsafeMutablePointer<CChar>?) -> Void = { s in
    free(s)
}
