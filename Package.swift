// swift-tools-version: 6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "capstan",
    platforms: [.macOS(.v15)],
    products: [
        // The SDK: depend on these to embed Capstan in a Swift program.
        .library(name: "CapstanCore", targets: ["CapstanCore"]),
        .library(name: "CapstanProviders", targets: ["CapstanProviders"]),
        .library(name: "CapstanTrainer", targets: ["CapstanTrainer"]),
        // The public C ABI every plugin includes (capstan_plugin.h).
        .library(name: "CapstanPluginABI", targets: ["CapstanPluginABI"]),
        .executable(name: "capstan", targets: ["capstan"]),
        .executable(name: "capstan-bench", targets: ["CapstanBench"]),
        // Plugins: one dynamic library per cloud, loaded at run time with dlopen.
        .library(name: "CapstanPluginSim", type: .dynamic, targets: ["CapstanPluginSim"]),
        .library(name: "CapstanPluginAWS", type: .dynamic, targets: ["CapstanPluginAWS"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .target(
            name: "CapstanPluginABI",
            path: "Sources/PluginABI"
        ),
        .target(
            name: "CapstanCore",
            dependencies: [
                "CapstanPluginABI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Sources/Core",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanProviders",
            dependencies: [
                "CapstanCore",
                "CapstanPluginABI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/Providers",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanTrainer",
            dependencies: [
                "CapstanCore", "CapstanProviders",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Sources/Trainer",
            // The recipes' Python, compiled into the binary: a node gets it from the agent itself.
            resources: [.embedInCode("Recipes/sft.py")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "capstan",
            dependencies: [
                "CapstanCore", "CapstanProviders", "CapstanTrainer", "CapstanPluginABI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/CLI",
            // The public plugin header (a link to Sources/PluginABI's), for `capstan plugins sdk`.
            resources: [.embedInCode("Resources/capstan_plugin.h")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "CapstanBench",
            dependencies: ["CapstanCore", "CapstanProviders"],
            path: "Benchmarks/CapstanBench",
            swiftSettings: swiftSettings
        ),
        // plugins/<cloud>: each is its own dynamic library; nothing else links it.
        .target(
            name: "CapstanPluginSim",
            dependencies: ["CapstanProviders", "CapstanCore", "CapstanPluginABI"],
            path: "plugins/sim",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanPluginAWS",
            dependencies: ["CapstanProviders", "CapstanCore", "CapstanPluginABI"],
            path: "plugins/aws",
            swiftSettings: swiftSettings
        ),
        // Helpers every test target shares (temp folders).
        .target(
            name: "CapstanTestSupport",
            path: "Tests/CapstanTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CapstanCoreTests",
            dependencies: ["CapstanCore"],
            path: "Tests/CapstanCoreTests",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CapstanProvidersTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanProviders", .product(name: "Logging", package: "swift-log")],
            path: "Tests/CapstanProvidersTests",
            swiftSettings: swiftSettings
        ),
        // Provisioning, failover, reconcile and the state store, in process (SimulatedCloud, LocalProvider).
        .testTarget(
            name: "CapstanBrokerTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanProviders"],
            path: "Tests/CapstanBrokerTests",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CapstanTrainerTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanProviders", "CapstanTrainer"],
            path: "Tests/CapstanTrainerTests",
            swiftSettings: swiftSettings
        ),
        // Loads real plugin .so files and runs the built CLI. Never depends on a plugin target.
        .testTarget(
            name: "CapstanIntegrationTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanProviders", .product(name: "Logging", package: "swift-log")],
            path: "Tests/CapstanIntegrationTests",
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
    ]
)
