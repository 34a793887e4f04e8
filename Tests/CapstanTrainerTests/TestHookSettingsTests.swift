import CapstanTrainer
import Testing

/// The test hooks exist in debug builds only (scripts/check-release-hooks.sh checks a release
/// build ignores them); these tests run on the debug build, where they must still work.
@Suite("Test hooks: forwarded to agents in debug builds")
struct TestHookSettingsTests {
    @Test("a debug build forwards CAPSTAN_TEST_CRASH_AT to local and SSH agents")
    func forwardedInDebug() {
        #if DEBUG
        #expect(AgentStatus.testHookSettings == ["CAPSTAN_TEST_CRASH_AT"])
        #expect(AgentStatus.inheritedSettings.contains("CAPSTAN_TEST_CRASH_AT"))
        #else
        #expect(AgentStatus.testHookSettings.isEmpty)
        #expect(!AgentStatus.inheritedSettings.contains { $0.hasPrefix("CAPSTAN_TEST_") })
        #endif
    }
}
