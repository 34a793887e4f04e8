// swift-tools-version: 6.1
// A program that embeds Capstan (docs/public-api.md): it depends on the Capstan package by path.
//   swift build --package-path examples/embedded
//   (cd /repo && swift build --product capstan)   # the node agent it runs jobs with
//   .build/debug/embedded run ../sft-tiny/job.yaml
// Its first build compiles Capstan's dependency graph again, in its own build folder (measured:
// 22 min on 2 cores shared with three other builds; a rebuild after a change here: 10 s).
// scripts/test.sh starts it in the background into .build-embedded before the tests run.
import PackageDescription

let package = Package(
    name: "embedded",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "capstan", path: "../.."),
    ],
    targets: [
        // Submits a job, prints its loss from typed metric events; `observe JOB` follows one read-only.
        .executableTarget(
            name: "embedded",
            dependencies: [.product(name: "CapstanSDK", package: "capstan")],
            path: "Sources/embedded"
        ),
        // The embedding example at the top of docs/public-api.md, exactly (a test checks they match).
        .executableTarget(
            name: "Snippet",
            dependencies: [.product(name: "CapstanSDK", package: "capstan")],
            path: "Sources/Snippet"
        ),
    ]
)
