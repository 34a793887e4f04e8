import CapstanCore
import CapstanProviders
import CapstanRuntime
import CapstanStorage
import CapstanTrainer
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Progress people can see (docs/cli.md, "Progress"): on a terminal a live line (bar,
// percentage, rate, elapsed time) redrawn in place with `\r`; piped or in a file, one plain
// line per step and never a `\r`. The text itself is ``ProgressText``'s (CapstanRuntime).

/// How a stream shows progress: live on a terminal (`TERM` other than `dumb`; colour unless
/// `NO_COLOR` is set), else plain. `CAPSTAN_PROGRESS=plain` asks for plain lines on a terminal too.
enum ProgressMode: Equatable {
    case live(color: Bool)
    case plain

    static func of(_ fd: Int32, environment: [String: String] = ProcessInfo.processInfo.environment) -> ProgressMode {
        guard isatty(fd) == 1, environment["TERM"] != "dumb", environment["CAPSTAN_PROGRESS"] != "plain" else { return .plain }
        return .live(color: (environment["NO_COLOR"] ?? "").isEmpty)
    }
}

/// One stream's lines and its live progress line. Everything a verb prints while progress is
/// live goes through ``print(_:)``, which clears the live line, prints, and redraws it under.
/// While a source is shown the line is also redrawn every second on its own (elapsed time).
final class ProgressLine: @unchecked Sendable {
    static let stdout = ProgressLine(fd: STDOUT_FILENO)
    static let stderr = ProgressLine(fd: STDERR_FILENO)

    let fd: Int32
    let mode: ProgressMode
    private let lock = NSLock()
    private var source: (@Sendable () -> ProgressSnapshot?)?
    private var tag: String?
    private var shown = false
    private var lastDraw: ContinuousClock.Instant?
    private var ticking = false

    init(fd: Int32, mode: ProgressMode? = nil) {
        self.fd = fd
        self.mode = mode ?? .of(fd)
    }

    var isLive: Bool { mode != .plain }
    /// Colours for this stream's lines (none when plain or under `NO_COLOR`).
    var style: TerminalStyle { TerminalStyle(enabled: mode == .live(color: true)) }

    /// Prints `text` as a line of its own (above the live line, which is redrawn under it).
    func print(_ text: String) {
        lock.withLock {
            var out = shown ? "\r\u{1B}[K" : ""
            shown = false
            out += text + "\n"
            if isLive, let snapshot = source?() {
                out += render(snapshot)
                shown = true
                lastDraw = .now
            }
            write(out)
        }
    }

    /// Shows progress from `source` (nil from it: nothing to show now): live, drawn now (at
    /// most ten times a second unless `force`) and every second; plain, nothing (a verb
    /// prints its steps with ``print(_:)``). `tag` names the source for ``clear(tag:)``.
    func show(tag: String? = nil, force: Bool = false, _ source: @escaping @Sendable () -> ProgressSnapshot?) {
        guard isLive else { return }
        lock.withLock {
            self.source = source
            self.tag = tag
            startTicker()
            if force || lastDraw.map({ ContinuousClock.now - $0 >= .milliseconds(100) }) ?? true { draw() }
        }
    }

    /// Clears the live line and stops showing progress (with `tag`: only that source's).
    func clear(tag: String? = nil) {
        lock.withLock {
            if let tag, tag != self.tag { return }
            source = nil
            self.tag = nil
            if shown { write("\r\u{1B}[K") }
            shown = false
        }
    }

    private func draw() {
        guard let snapshot = source?() else {
            if shown { write("\r\u{1B}[K") }
            shown = false
            return
        }
        write("\r\u{1B}[K" + render(snapshot))
        shown = true
        lastDraw = .now
    }

    private func render(_ s: ProgressSnapshot) -> String {
        let text = ProgressText.line(s, width: Self.columns(fd))
        let style = self.style
        guard style.enabled, text.hasPrefix(s.label) else { return text }
        return style.bold(s.label) + text.dropFirst(s.label.count)
    }

    private func startTicker() {
        guard !ticking else { return }
        ticking = true
        Thread.detachNewThread { [self] in
            while true {
                Thread.sleep(forTimeInterval: 1)
                lock.withLock { if source != nil { draw() } }
            }
        }
    }

    private func write(_ s: String) {
        if fd == STDOUT_FILENO {
            // Plain lines keep stdout's buffering (the verb flushes); a live line shows now.
            Swift.print(s, terminator: "")
            if isLive { fflush(nil) }
        } else {
            FileHandle.standardError.write(Data(s.utf8))
        }
    }

    /// The terminal's width in columns (`COLUMNS`, else 80, when it cannot be asked).
    static func columns(_ fd: Int32) -> Int {
        var size = winsize()
        if ioctl(fd, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        return Int(ProcessInfo.processInfo.environment["COLUMNS"] ?? "").flatMap { $0 > 0 ? $0 : nil } ?? 80
    }
}

/// A copy's progress (`storage cp`, `cp -r`, `sync`) on stderr: live, a bar over bytes with
/// files and rate; plain, one line per file copied (`cp -r`, `sync`) or per tenth of the bytes (`cp`).
final class TransferDisplay: @unchecked Sendable {
    let out: ProgressLine
    let label: String
    let quiet: Bool
    /// One file (`storage cp`): bytes only, no file count.
    let single: Bool
    private let lock = NSLock()
    private let start = ContinuousClock.now
    private var latest = TreeTransfer.Progress()
    private var lastDecile = -1

    init(label: String, quiet: Bool, single: Bool = false, out: ProgressLine = .stderr) {
        self.label = label
        self.quiet = quiet
        self.single = single
        self.out = out
    }

    func snapshot() -> ProgressSnapshot {
        let p = lock.withLock { latest }
        var s = ProgressText.transfer(label: label, filesDone: p.filesDone, filesTotal: p.filesTotal, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, moved: p.bytesMoved, elapsed: (ContinuousClock.now - start).seconds)
        if single { s.counts.removeFirst() }
        return s
    }

    /// A tree copy's callback: each step (a file done, or bytes moving within one).
    func tree(_ p: TreeTransfer.Progress, step: String?) {
        guard !quiet else { return }
        lock.withLock { latest = p }
        if out.isLive {
            out.show { [self] in snapshot() }
        } else if let step {
            out.print(step + "  (" + ProgressText.line(snapshot()).dropFirst(label.count + 2) + ")")
        }
    }

    /// One file's callback (`storage cp`).
    var file: TransferProgressHandler {
        { [self] p in
            guard !quiet, p.bytesTotal > 0 else { return }
            let decile: Int? = lock.withLock {
                latest = TreeTransfer.Progress(filesDone: p.bytesDone >= p.bytesTotal ? 1 : 0, filesTotal: 1, bytesDone: Int64(p.bytesDone), bytesTotal: Int64(p.bytesTotal), bytesMoved: Int64(p.bytesDone))
                let d = Int(p.bytesDone * 10 / p.bytesTotal)
                guard d > lastDecile else { return nil }
                lastDecile = d
                return d
            }
            if out.isLive {
                out.show { [self] in snapshot() }
            } else if decile != nil {
                out.print(ProgressText.line(snapshot()))
            }
        }
    }

    /// Runs the copy, then clears the live line (before the verb prints its result).
    func around<T>(_ body: () async throws -> T) async throws -> T {
        defer { if !quiet { out.clear() } }
        return try await body()
    }
}

/// The agents' ``PythonEnvProgress`` lines, as `launch` and `logs -f` show them: live, a bar
/// per build (the latest node's, with how many others are building); plain, one line when a
/// node starts installing. Its other node lines are printed as they are.
final class PythonEnvView: @unchecked Sendable {
    static let shared = PythonEnvView()

    private let lock = NSLock()
    private var building: [Int: (event: PythonEnvProgress, prefix: String, at: ContinuousClock.Instant)] = [:]
    private var phase: [Int: PythonEnvProgress.Phase] = [:]

    /// Takes a node's log line if it is a progress line (true), showing it on `out`.
    func handle(_ line: String, node: Int, prefix: String, out: ProgressLine, live: Bool) -> Bool {
        guard let e = PythonEnvProgress.parse(line) else { return false }
        let previous = lock.withLock { () -> PythonEnvProgress.Phase? in
            let was = phase[node]
            phase[node] = e.phase
            if e.phase == .collecting || e.phase == .installing { building[node] = (e, prefix, .now) } else { building[node] = nil }
            return was
        }
        if live && out.isLive {
            // A new phase is drawn at once, however soon after the last drawing.
            if lock.withLock({ building.isEmpty }) { out.clear() } else { out.show(force: previous != e.phase) { [self] in snapshot() } }
        } else if let text = Self.plain(e, previous: previous) {
            out.print(prefix + text)
        }
        return true
    }

    /// The plain line for a change of phase (nil: none): one per build, as it starts installing.
    static func plain(_ e: PythonEnvProgress, previous: PythonEnvProgress.Phase?) -> String? {
        guard e.phase == .installing, previous != .installing else { return nil }
        let n = e.total ?? 0
        return "python env: installing \(n) package\(n == 1 ? "" : "s") (" + ProgressText.duration(e.seconds) + " in)"
    }

    /// The live line: the latest node's build.
    func snapshot() -> ProgressSnapshot? {
        lock.withLock {
            guard let b = building.values.max(by: { $0.at < $1.at }) else { return nil }
            return Self.snapshot(b.event, prefix: b.prefix, others: building.count - 1, elapsed: b.event.seconds + (ContinuousClock.now - b.at).seconds)
        }
    }

    static func snapshot(_ e: PythonEnvProgress, prefix: String, others: Int, elapsed: Double) -> ProgressSnapshot {
        var label = prefix + "python env: " + e.phase.rawValue
        if let p = e.package { label += " " + p }
        if others > 0 { label += " (+\(others) node\(others == 1 ? "" : "s"))" }
        return ProgressText.items(label: label, done: e.done, total: e.phase == .installing ? e.total : nil, noun: "packages", elapsed: elapsed)
    }
}

/// Provisioning's steps while `launch` follows a job: on a terminal the latest step stays on
/// the live line with its elapsed time (the wait for nodes to boot ticks each second) until the
/// next line; piped, nothing (as before: the job's status lines say it).
enum ProvisioningView {
    static let tag = "provisioning"

    static func step(_ line: String, out: ProgressLine) {
        guard out.isLive else { return }
        let since = ContinuousClock.now
        out.show(tag: tag, force: true) { ProgressSnapshot(label: "  " + line, fraction: nil, elapsed: (ContinuousClock.now - since).seconds) }
    }

    /// Ends the step's live line (a line of the job's comes).
    static func end(out: ProgressLine) { out.clear(tag: tag) }
}
