// swift-tools-version: 6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    // `import X` is internal: only `public import` lets a module's public API show X's types.
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "capstan",
    platforms: [.macOS(.v15)],
    products: [
        // The SDK: depend on these to embed Capstan in a Swift program (docs/public-api.md).
        // The pure core: domain types, protocols, errors, GPU catalog, ranking, state machines.
        .library(name: "CapstanCore", targets: ["CapstanCore"]),
        // The runtime on a POSIX machine: config files, plugin host, processes, locks, keys.
        .library(name: "CapstanRuntime", targets: ["CapstanRuntime"]),
        // The embedded state store (SQLite) behind CapstanCore's repository protocols.
        .library(name: "CapstanSQLite", targets: ["CapstanSQLite"]),
        // The shared state store (PostgreSQL) and database leases, for `capstan serve` and replicas.
        .library(name: "CapstanPostgres", targets: ["CapstanPostgres"]),
        .library(name: "CapstanProviders", targets: ["CapstanProviders"]),
        .library(name: "CapstanAWS", targets: ["CapstanAWS"]),
        .library(name: "CapstanStorage", targets: ["CapstanStorage"]),
        .library(name: "CapstanTrainer", targets: ["CapstanTrainer"]),
        // The control plane's HTTP API: its bodies, and the client the CLI uses with CAPSTAN_SERVER.
        .library(name: "CapstanAPI", targets: ["CapstanAPI"]),
        // `capstan serve`: the control plane (HTTP API, job supervision, cluster loops).
        .library(name: "CapstanServer", targets: ["CapstanServer"]),
        // Test doubles: the simulated cloud (with fault switches) and its preemption switch.
        .library(name: "CapstanTesting", targets: ["CapstanTesting"]),
        // What a Swift plugin links: CapstanCore and the C ABI, nothing else.
        .library(name: "CapstanPluginKit", targets: ["CapstanPluginKit"]),
        // The public C ABI every plugin includes (capstan_plugin.h).
        .library(name: "CapstanPluginABI", targets: ["CapstanPluginABI"]),
        // Capstan in one value (`Capstan(home:)`): the CLI's wiring, for a program that embeds it.
        .library(name: "CapstanSDK", targets: ["CapstanSDK"]),
        .executable(name: "capstan", targets: ["capstan"]),
        .executable(name: "capstan-bench", targets: ["CapstanBench"]),
        // Plugins: one dynamic library per cloud, loaded at run time with dlopen.
        .library(name: "CapstanPluginSim", type: .dynamic, targets: ["CapstanPluginSim"]),
        .library(name: "CapstanPluginAWS", type: .dynamic, targets: ["CapstanPluginAWS"]),
        .library(name: "CapstanPluginRunPod", type: .dynamic, targets: ["CapstanPluginRunPod"]),
        .library(name: "CapstanPluginGCP", type: .dynamic, targets: ["CapstanPluginGCP"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .target(
            name: "CapstanPluginABI",
            path: "Sources/PluginABI"
        ),
        // Pure: no GRDB, no Yams, no POSIX (Tests/CapstanCoreTests/ModuleGraphTests checks it).
        .target(
            name: "CapstanCore",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Core",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanRuntime",
            dependencies: [
                "CapstanCore", "CapstanPluginABI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Sources/Runtime",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanSQLite",
            dependencies: [
                "CapstanCore", "CapstanRuntime",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Sources/SQLite",
            swiftSettings: swiftSettings
        ),
        // PostgreSQL: the same repository protocols on a shared database, and leases (LockService).
        .target(
            name: "CapstanPostgres",
            dependencies: [
                "CapstanCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            path: "Sources/Postgres",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanPluginKit",
            dependencies: [
                "CapstanCore", "CapstanPluginABI",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/PluginKit",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanTesting",
            dependencies: [
                "CapstanCore", "CapstanPluginKit", "CapstanStorage",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Testing",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanAWS",
            dependencies: [
                "CapstanCore", "CapstanRuntime", "CapstanPluginKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/Providers/AWS",
            swiftSettings: swiftSettings
        ),
        // The embedded bucket: objects as files on disk (atomic puts, SHA-256 checked).
        .target(
            name: "CapstanStorage",
            dependencies: [
                "CapstanCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Sources/Providers/Storage",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanProviders",
            dependencies: [
                "CapstanCore", "CapstanRuntime", "CapstanAWS", "CapstanStorage", "CapstanCloudKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Sources/Providers",
            exclude: ["AWS", "Storage"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanTrainer",
            dependencies: [
                "CapstanCore", "CapstanRuntime", "CapstanProviders", "CapstanStorage",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
                // Notifications: the outbox's deliverer POSTs webhooks (Sources/Trainer/Notify).
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/Trainer",
            // The recipes' Python, compiled into the binary: a node gets it from the agent itself.
            resources: [.embedInCode("Recipes/sft.py")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanAPI",
            dependencies: [
                "CapstanCore", "CapstanTrainer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Sources/API",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanServer",
            dependencies: [
                "CapstanCore", "CapstanRuntime", "CapstanProviders", "CapstanTrainer", "CapstanAPI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/Server",
            swiftSettings: swiftSettings
        ),
        // `Capstan(home:)`: registry, state, provisioner, transports and jobs wired as the CLI does.
        .target(
            name: "CapstanSDK",
            dependencies: [
                "CapstanCore", "CapstanRuntime", "CapstanSQLite", "CapstanPostgres", "CapstanProviders", "CapstanTrainer",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/SDK",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "capstan",
            dependencies: [
                "CapstanSDK",
                "CapstanCore", "CapstanRuntime", "CapstanSQLite", "CapstanProviders", "CapstanAWS", "CapstanStorage", "CapstanTrainer", "CapstanPluginABI", "CapstanAPI", "CapstanServer", "CapstanPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/CLI",
            // The public plugin header (a link to Sources/PluginABI's), for `capstan plugins sdk`.
            resources: [.embedInCode("Resources/capstan_plugin.h"), .embedInCode("Resources/lsan-swift-host.supp")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "CapstanBench",
            dependencies: ["CapstanCore", "CapstanRuntime", "CapstanSQLite", "CapstanPostgres", "CapstanProviders", "CapstanTesting", "CapstanPluginKit", "CapstanStorage", .product(name: "Logging", package: "swift-log")],
            path: "Benchmarks/CapstanBench",
            swiftSettings: swiftSettings
        ),
        // plugins/<cloud>: each is its own dynamic library; nothing else links it. A Swift
        // plugin links CapstanPluginKit (Core + the C ABI) and its provider's own module.
        .target(
            name: "CapstanPluginSim",
            dependencies: ["CapstanPluginKit", "CapstanTesting", "CapstanPluginABI"],
            path: "plugins/sim",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanPluginAWS",
            dependencies: ["CapstanPluginKit", "CapstanAWS", "CapstanPluginABI"],
            path: "plugins/aws",
            swiftSettings: swiftSettings
        ),
        // The HTTP client the RunPod and GCP plugins share (one try per call; endpoint checks),
        // and Cloud Storage (gs://) with its service-account tokens: the gcp plugin's store and
        // the built-in client a job's nodes open a gs:// bucket with.
        .target(
            name: "CapstanCloudKit",
            dependencies: [
                "CapstanCore", "CapstanAWS",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/CloudKit",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanPluginRunPod",
            dependencies: ["CapstanPluginKit", "CapstanCore", "CapstanCloudKit", "CapstanPluginABI", .product(name: "Logging", package: "swift-log")],
            path: "plugins/runpod",
            exclude: ["emulator"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CapstanPluginGCP",
            dependencies: [
                "CapstanPluginKit", "CapstanCore", "CapstanCloudKit", "CapstanPluginABI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "plugins/gcp",
            exclude: ["emulator"],
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
            dependencies: ["CapstanCore", "CapstanRuntime"],
            path: "Tests/CapstanCoreTests",
            swiftSettings: swiftSettings
        ),
        // Config files, processes, keys, locks (CapstanRuntime).
        .testTarget(
            name: "CapstanRuntimeTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanRuntime"],
            path: "Tests/CapstanRuntimeTests",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CapstanProvidersTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanRuntime", "CapstanSQLite", "CapstanProviders", "CapstanAWS", "CapstanTesting", "CapstanPluginKit", "CapstanStorage", .product(name: "Logging", package: "swift-log")],
            path: "Tests/CapstanProvidersTests",
            swiftSettings: swiftSettings
        ),
        // Provisioning, failover, reconcile and the state store, in process (SimulatedCloud, LocalProvider).
        .testTarget(
            name: "CapstanBrokerTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanRuntime", "CapstanSQLite", "CapstanProviders", "CapstanAWS", "CapstanTesting", "CapstanPluginKit", "CapstanStorage"],
            path: "Tests/CapstanBrokerTests",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CapstanTrainerTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanRuntime", "CapstanSQLite", "CapstanProviders", "CapstanAWS", "CapstanTesting", "CapstanPluginKit", "CapstanStorage", "CapstanTrainer"],
            path: "Tests/CapstanTrainerTests",
            swiftSettings: swiftSettings
        ),
        // The state store conformance suite (SQLite and PostgreSQL) and database leases, on a
        // real PostgreSQL (scripts/test-servers.sh starts one: CAPSTAN_TEST_POSTGRES_URL).
        .testTarget(
            name: "CapstanPostgresTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanSQLite", "CapstanPostgres", .product(name: "Logging", package: "swift-log"), .product(name: "PostgresNIO", package: "postgres-nio")],
            path: "Tests/CapstanPostgresTests",
            swiftSettings: swiftSettings
        ),
        // The control plane's client: NDJSON streams, settings, errors, uploads (no server needed).
        .testTarget(
            name: "CapstanAPITests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanTrainer", "CapstanAPI"],
            path: "Tests/CapstanAPITests",
            swiftSettings: swiftSettings
        ),
        // Loads real plugin .so files and runs the built CLI. Never depends on a plugin target.
        .testTarget(
            name: "CapstanIntegrationTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanRuntime", "CapstanSQLite", "CapstanProviders", "CapstanAWS", "CapstanTesting", "CapstanPluginKit", "CapstanStorage", "CapstanPostgres", .product(name: "Logging", package: "swift-log"),
                "CapstanSDK"],
            path: "Tests/CapstanIntegrationTests",
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
        // `/metrics`: the exposition rendered from a store (CapstanServer in process).
        .testTarget(
            name: "CapstanMetricsTests",
            dependencies: ["CapstanTestSupport", "CapstanCore", "CapstanRuntime", "CapstanSQLite", "CapstanTrainer", "CapstanServer"],
            path: "Tests/CapstanMetricsTests",
            swiftSettings: swiftSettings
        ),
    ]
)
