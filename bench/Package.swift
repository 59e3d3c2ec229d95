// swift-tools-version: 6.1
//
// Ringside benchmark package (separate from the root package so that the engine itself does not
// depend on SwiftNIO or the benchmark framework).
//
//   nio-echo       SwiftNIO echo server, one event loop (baseline for bench/echo-bench.sh)
//   nio-http       SwiftNIO HTTP/1.1 plaintext server, one event loop (baseline for wrk)
//   nio-https      the same behind NIOSSL (swift-nio-ssl), one event loop (peer of bench/https-wrk.sh)
//   hummingbird-http  Hummingbird 2 app serving /plaintext, one event loop (peer of async routes)
//   openapi-hummingbird  the OpenAPI example service (Examples/OpenAPIService) on Hummingbird through
//                  swift-openapi-hummingbird, one event loop (peer of ringside-openapi-example)
//   ringside-httptypes  the benchmark routes plus the same answers through swift-http-types (cost per request)
//   EngineMallocs  ordo-one/benchmark suite: mallocs per echoed message through the Ringside engine
//
//   cd bench && swift build -c release
//   swift package benchmark                               # run the suite
//   swift package benchmark thresholds check              # fail if mallocs grew (Thresholds/)
import PackageDescription

let package = Package(
    name: "RingsideBench",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Ringside", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.3"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", exact: "2.37.6"),
        // Default traits off: no swift-configuration, no full Foundation (not needed for /plaintext).
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", exact: "2.28.1", traits: []),
        .package(url: "https://github.com/hummingbird-project/swift-openapi-hummingbird.git", exact: "2.1.0"),
        .package(url: "https://github.com/apple/swift-openapi-runtime.git", exact: "1.13.4"),
        .package(url: "https://github.com/apple/swift-http-types.git", exact: "1.8.0"),
        // Only the malloc interposer trait: the default RuntimeInterposer trait (ARC counters on
        // Linux + Swift 6.3) is not needed for malloc counts.
        .package(url: "https://github.com/ordo-one/benchmark.git", exact: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .target(
            name: "NIOPeerSupport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/NIOPeerSupport"
        ),
        .executableTarget(
            name: "nio-echo",
            dependencies: [
                "NIOPeerSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/nio-echo"
        ),
        .executableTarget(
            name: "nio-http",
            dependencies: [
                "NIOPeerSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/nio-http"
        ),
        .executableTarget(
            name: "nio-https",
            dependencies: [
                "NIOPeerSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/nio-https"
        ),
        .executableTarget(
            name: "hummingbird-http",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Sources/hummingbird-http"
        ),
        .executableTarget(
            name: "openapi-hummingbird",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "OpenAPIHummingbird", package: "swift-openapi-hummingbird"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIItemsService", package: "Ringside"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Sources/openapi-hummingbird"
        ),
        .executableTarget(
            name: "ringside-httptypes",
            dependencies: [
                .product(name: "Ringside", package: "Ringside"),
                .product(name: "RingsideHTTP", package: "Ringside"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            path: "Sources/ringside-httptypes"
        ),
        .executableTarget(
            name: "EngineMallocs",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Ringside", package: "Ringside"),
                .product(name: "RingsideProtocols", package: "Ringside"),
                .product(name: "RingsideHTTP", package: "Ringside"),
                .product(name: "RingsideOpenAPI", package: "Ringside"),
                .product(name: "OpenAPIItemsService", package: "Ringside"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            path: "Benchmarks/EngineMallocs",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
