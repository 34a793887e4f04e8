package import CapstanCore
public import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension FaultPoints {
    /// Reads `CAPSTAN_TEST_CRASH_AT` (`point` or `point:N`) and kills the process with SIGKILL
    /// the N-th time it reaches the point. Debug builds only: a release build ignores it.
    package static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) -> FaultPoints {
        #if !DEBUG
        return .none
        #else
        guard let spec = env["CAPSTAN_TEST_CRASH_AT"], !spec.isEmpty else { return .none }
        let parts = spec.split(separator: ":")
        let point = String(parts[0])
        let occurrence = parts.count > 1 ? Int(parts[1]) ?? 1 : 1
        return FaultPoints { p, n in
            if p == point, n == occurrence { kill(getpid(), SIGKILL) }
        }
        #endif
    }
}
