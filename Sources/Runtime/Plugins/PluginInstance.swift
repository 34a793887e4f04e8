public import CapstanCore
public import CapstanPluginABI
public import Foundation
public import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One created instance of a plugin (`create(config)`), through which calls are made.
///
/// ``invoke(_:request:timeout:progress:)`` bridges the ABI's callback-based `invoke` to Swift
/// concurrency. It survives a misbehaving plugin: a completion that never comes is a
/// `.timeout` error, a second completion for the same call is ignored and logged, malformed JSON
/// is a `.pluginFailure` that quotes the start of what came back.
public final class PluginInstance: Sendable {
    public let library: PluginLibrary
    /// Default limit for a call without an explicit timeout.
    public let defaultTimeout: Duration
    nonisolated(unsafe) let handle: UnsafeMutableRawPointer?
    private let hostBox: HostBox
    let inFlight = LockedBox<Int>(0)

    public var name: String { library.name }

    init(library: PluginLibrary, config: JSONValue, logger: Logger, defaultTimeout: Duration = .seconds(60)) throws {
        self.library = library
        self.defaultTimeout = defaultTimeout
        let hostBox = HostBox(logger: logger, plugin: library.name)
        self.hostBox = hostBox
        var out: UnsafeMutableRawPointer?
        var errorJSON: UnsafeMutablePointer<CChar>?
        let status = config.jsonString.withCString { cfg in
            library.table.pointee.create(cfg, hostBox.host, &out, &errorJSON)
        }
        if status != 0 {
            var error = CapstanError(.config, "Plugin '\(library.name)' refused its configuration.", hint: "Check the providers.\(library.name) section of your config against `capstan plugins inspect \(library.name)`.", provider: library.name)
            if let errorJSON {
                let text = String(cString: errorJSON)
                library.table.pointee.free_string(errorJSON)
                if let decoded = try? PluginWire.decoder.decode(CapstanError.self, from: Data(text.utf8)) {
                    error = decoded.attributed(to: library.name)
                } else {
                    error.message += " It said: \(text.prefix(200))"
                }
            }
            throw error
        }
        self.handle = out
    }

    deinit {
        // The ABI requires no call in flight at destroy. A call that timed out may still be
        // running inside the plugin; then the handle is deliberately leaked rather than freed
        // under the plugin's feet.
        if inFlight.withLock({ $0 }) == 0 {
            if CompletionThread.isCurrent {
                // The last reference went away on the plugin's own thread, inside its completion
                // callback (``CallRegistry/finish`` avoids this for the call's own record; a
                // caller's progress handler could still do it). A plugin may join its threads in
                // destroy, so destroy runs elsewhere; the host box stays alive until it has.
                nonisolated(unsafe) let table = library.table
                nonisolated(unsafe) let handle = handle
                let box = hostBox
                DispatchQueue.global().async {
                    table.pointee.destroy(handle)
                    withExtendedLifetime(box) {}
                }
            } else {
                library.table.pointee.destroy(handle)
            }
        } else {
            hostBox.logger.warning("plugin instance not destroyed: calls still in flight", metadata: ["capstan.plugin": "\(name)"])
            // The plugin may still log through its host after we are gone: keep that alive too.
            _ = Unmanaged.passRetained(hostBox)
        }
    }

    /// Calls `method` with a JSON request and returns the JSON result.
    /// Throws the plugin's own ``CapstanError`` when it answers with an error.
    public func invoke(_ method: String, request: Data, timeout: Duration? = nil, progress: TransferProgressHandler? = nil) async throws -> Data {
        let limit = timeout ?? defaultTimeout
        let registry = CallRegistry.shared
        let id = registry.makeID()
        let pluginName = name
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Data, any Error>) in
                let timer = Task {
                    try? await Task.sleep(for: limit)
                    if !Task.isCancelled {
                        registry.finish(id, .failure(CapstanError(
                            .timeout, "Plugin '\(pluginName)' did not answer '\(method)' within \(limit).",
                            hint: "The cloud may be slow or the plugin stuck; raise plugins.timeoutSeconds in the config if calls legitimately take longer.",
                            provider: pluginName)))
                    }
                }
                registry.register(id, CallRegistry.Call(continuation: continuation, timer: timer, progress: progress, plugin: pluginName, method: method, instance: self))
                inFlight.withLock { $0 += 1 }
                // Cancelled before registration: onCancel found nothing to finish, so finish here.
                if Task.isCancelled {
                    registry.finish(id, .failure(CancellationError()))
                    return
                }
                let text = String(decoding: request, as: UTF8.self)
                text.withCString { req in
                    method.withCString { m in
                        library.table.pointee.invoke(handle, m, req, UnsafeMutableRawPointer(bitPattern: id), capstanCompletionThunk, capstanProgressThunk)
                    }
                }
            }
        } onCancel: {
            registry.finish(id, .failure(CancellationError()))
        }
    }

    /// Encodes `request`, invokes, and decodes the answer as `Response`.
    public func call<Request: Encodable, Response: Decodable>(
        _ method: String, _ request: Request, as: Response.Type = Response.self, timeout: Duration? = nil, progress: TransferProgressHandler? = nil
    ) async throws -> Response {
        let data = try PluginWire.encoder.encode(request)
        let answer = try await invoke(method, request: data, timeout: timeout, progress: progress)
        return try decode(answer, of: method)
    }

    /// Decodes a plugin's answer to `method`; malformed JSON is a `.pluginFailure` that quotes
    /// the start of the answer.
    public func decode<Response: Decodable>(_ answer: Data, of method: String, as: Response.Type = Response.self) throws -> Response {
        do {
            return try PluginWire.decoder.decode(Response.self, from: answer)
        } catch {
            let start = String(decoding: answer.prefix(120), as: UTF8.self)
            throw CapstanError(
                .pluginFailure, "Plugin '\(name)' returned malformed JSON for '\(method)' (\(PluginWire.describe(error))); it began: \(start)",
                hint: "This is a bug in the plugin \(library.path); report it to its author.", provider: name)
        }
    }
}

/// The `capstan_host` a plugin instance logs through; lives as long as the instance (or longer,
/// when the instance is leaked because a call never came back).
final class HostBox: @unchecked Sendable {
    let logger: Logger
    let plugin: String
    let host: UnsafeMutablePointer<capstan_host>

    init(logger: Logger, plugin: String) {
        self.logger = logger
        self.plugin = plugin
        host = .allocate(capacity: 1)
        host.initialize(to: capstan_host(
            abi_version: capstan_host_abi_version(), struct_size: UInt32(MemoryLayout<capstan_host>.size),
            host_ctx: nil, log: capstanLogThunk))
        // The host context must stay valid for as long as the plugin may call back: the box is
        // retained by its instance, and the pointer is unretained here.
        host.pointee.host_ctx = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        host.deinitialize(count: 1)
        host.deallocate()
    }
}

private let capstanLogThunk: @convention(c) (UnsafeMutableRawPointer?, Int32, UnsafePointer<CChar>?) -> Void = { ctx, level, message in
    guard let ctx, let message else { return }
    let box = Unmanaged<HostBox>.fromOpaque(ctx).takeUnretainedValue()
    let lvl: Logger.Level = switch level {
    case CAPSTAN_LOG_TRACE: .trace
    case CAPSTAN_LOG_DEBUG: .debug
    case CAPSTAN_LOG_INFO: .info
    case CAPSTAN_LOG_NOTICE: .notice
    case CAPSTAN_LOG_WARNING: .warning
    default: .error
    }
    box.logger.log(level: lvl, "\(String(cString: message))", metadata: ["capstan.plugin": "\(box.plugin)"])
}

/// Marks the threads that are delivering a plugin's completion, so that an instance whose last
/// reference goes away there is not destroyed on the plugin's own thread.
enum CompletionThread {
    nonisolated(unsafe) static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    static var isCurrent: Bool { pthread_getspecific(key) != nil }

    static func run(_ body: () -> Void) {
        let outer = pthread_getspecific(key)
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1))
        body()
        pthread_setspecific(key, outer)
    }
}

private let capstanCompletionThunk: capstan_completion_fn = { ctx, status, response in
    let id = UInt(bitPattern: ctx)
    CompletionThread.run {
        guard let response else {
            CallRegistry.shared.finish(id, .failure(CallRegistry.malformed("a NULL response")))
            return
        }
        let data = Data(bytes: response, count: strlen(response))
        if status == CAPSTAN_STATUS_OK {
            CallRegistry.shared.finish(id, .success(data))
        } else {
            CallRegistry.shared.finish(id, .failure(CallRegistry.decodeError(data)))
        }
    }
}

private let capstanProgressThunk: capstan_progress_fn = { ctx, done, total in
    CompletionThread.run {
        CallRegistry.shared.progress(UInt(bitPattern: ctx), TransferProgress(bytesDone: done, bytesTotal: total))
    }
}

/// Calls in flight, keyed by an integer the plugin gets as its `call_ctx`. A key is removed on
/// the first completion (or timeout or cancellation), so a late or repeated callback from a
/// plugin finds nothing and cannot resume a continuation twice.
final class CallRegistry: Sendable {
    static let shared = CallRegistry()

    struct Call {
        var continuation: CheckedContinuation<Data, any Error>
        var timer: Task<Void, Never>
        var progress: TransferProgressHandler?
        var plugin: String
        var method: String
        var instance: PluginInstance
    }
    private struct State {
        var next: UInt = 1
        var calls: [UInt: Call] = [:]
    }
    private let state = LockedBox(State())

    func makeID() -> UInt { state.withLock { s in defer { s.next &+= 1 }; return s.next } }

    func register(_ id: UInt, _ call: Call) {
        state.withLock { $0.calls[id] = call }
    }

    func finish(_ id: UInt, _ result: Result<Data, any Error>) {
        // The call's record, with its reference to the instance, is gone once `settle` returns:
        // the caller, who holds its own reference, wakes after that, so the last reference goes
        // away on the caller's side, not on the plugin's thread inside its completion (where
        // destroy could not join that thread).
        guard let (continuation, outcome) = settle(id, result) else { return }
        continuation.resume(with: outcome)
    }

    /// Removes call `id` and settles its bookkeeping; nil when it is late, repeated or unknown.
    private func settle(_ id: UInt, _ result: Result<Data, any Error>) -> (CheckedContinuation<Data, any Error>, Result<Data, any Error>)? {
        guard let call = state.withLock({ $0.calls.removeValue(forKey: id) }) else { return nil }
        call.timer.cancel()
        call.instance.inFlight.withLock { $0 -= 1 }
        // A timeout leaves the call running in the plugin; keep the count so destroy waits.
        if case .failure(let e as CapstanError) = result, e.code == .timeout {
            call.instance.inFlight.withLock { $0 += 1 }
        }
        if case .failure(let error as CapstanError) = result { return (call.continuation, .failure(error.attributed(to: call.plugin))) }
        return (call.continuation, result)
    }

    func progress(_ id: UInt, _ p: TransferProgress) {
        let handler = state.withLock { $0.calls[id]?.progress }
        handler?(p)
    }

    static func malformed(_ what: String) -> CapstanError {
        CapstanError(.pluginFailure, "Plugin answered with \(what).", hint: "This is a bug in the plugin; report it to its author.")
    }

    static func decodeError(_ data: Data) -> CapstanError {
        if var e = try? PluginWire.decoder.decode(CapstanError.self, from: data) {
            e.retryAfterSeconds = CapstanError.clampedRetryAfter(e.retryAfterSeconds)
            return e
        }
        return malformed("an error that is not a Capstan error document: \(String(decoding: data.prefix(120), as: UTF8.self))")
    }
}
