public import CapstanCore
public import CapstanRuntime
public import CapstanAWS
public import CapstanStorage
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The processes of a local node: recorded in a file one per line as `pid starttime` by
/// whoever starts them (the node agent, for itself, its commands and every descendant they
/// spawn — torchrun starts its workers in sessions of their own), and killed when the node goes
/// away. The start time (from `/proc/PID/stat`) makes a recorded pid that the kernel has since
/// given to another process harmless: it is not the one recorded, so it is left alone.
public enum NodeProcesses {
    /// `(parent pid, start time in clock ticks since boot)` of `pid`, nil when it is gone —
    /// a zombie (dead, not yet reaped) counts as gone.
    static func stat(_ pid: pid_t) -> (parent: pid_t, start: UInt64)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // After "pid (comm)": state, ppid, … ; starttime is field 22 of the line.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, fields[0] != "Z", let parent = pid_t(fields[1]), let start = UInt64(fields[19]) else { return nil }
        return (parent, start)
    }

    /// When `pid` started (clock ticks since boot), nil when it is gone.
    public static func startTime(of pid: pid_t) -> UInt64? { stat(pid)?.start }

    /// Appends `pid` with its start time to `file`.
    public static func record(_ pid: pid_t, in file: String) {
        guard let start = startTime(of: pid) else { return }
        AppendFile.append("\(pid) \(start)\n", to: file)
    }

    /// Every live (not zombie) process in process group `pgid`.
    public static func groupMembers(_ pgid: pid_t) -> [pid_t] {
        var out: [pid_t] = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let p = pid_t(name), let text = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8),
                  let close = text.lastIndex(of: ")") else { continue }
            // After "pid (comm)": state, ppid, pgrp, …
            let fields = text[text.index(after: close)...].split(separator: " ")
            if fields.count > 2, fields[0] != "Z", pid_t(fields[2]) == pgid { out.append(p) }
        }
        return out
    }

    /// Every live descendant of `pid` (children, their children, …).
    public static func descendants(of pid: pid_t) -> [pid_t] {
        var children: [pid_t: [pid_t]] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let p = pid_t(name), let s = stat(p) else { continue }
            children[s.parent, default: []].append(p)
        }
        var out: [pid_t] = []
        var queue = children[pid] ?? []
        while let p = queue.popLast() {
            out.append(p)
            queue.append(contentsOf: children[p] ?? [])
        }
        return out
    }

    /// Kills (SIGKILL, with its process group) every process recorded in `file` that is still
    /// the process recorded. Lines with a bare pid (written before start times were recorded)
    /// are killed as they are.
    public static func killAll(in file: String) {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return }
        for line in text.split(whereSeparator: \.isNewline) {
            let parts = line.split(separator: " ")
            guard let first = parts.first, let pid = pid_t(first), pid > 1 else { continue }
            if parts.count > 1 {
                guard let recorded = UInt64(parts[1]), startTime(of: pid) == recorded else { continue }
            }
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
        }
    }
}
