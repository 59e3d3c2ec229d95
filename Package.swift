// swift-tools-version: 6.0
import PackageDescription

let strict: [SwiftSetting] = [
    .unsafeFlags(["-warnings-as-errors"], .when(configuration: .debug)),
]

let package = Package(
    name: "Ringside",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Ringside", targets: ["Ringside"]),
        .library(name: "RingsideProtocols", targets: ["RingsideProtocols"]),
        .library(name: "RingsideHTTP", targets: ["RingsideHTTP"]),
        .library(name: "RingsideTLS", targets: ["RingsideTLS"]),
        .library(name: "RingsideService", targets: ["RingsideService"]),
        .executable(name: "ringside", targets: ["ringside"]),
        .executable(name: "ringload", targets: ["ringload"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // `swift package generate-documentation` (make docs): the DocC catalogs of the library targets.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // Thin C face of Debian's liburing 2.3 (liburing-dev headers). liburing.so.2 itself is opened with
        // dlopen when a ring is first set up, so a binary that serves on epoll starts without it.
        .target(
            name: "CLiburing",
            path: "CLiburing",
            linkerSettings: [.linkedLibrary("dl")]
        ),
        // The engine: ring, buffer pool, io_uring and epoll backends, handler interface, server.
        .target(
            name: "Ringside",
            dependencies: [
                "CLiburing",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Debian's OpenSSL 3 (libssl-dev), as a system library: only RingsideTLS sees it.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // TLS 1.2/1.3 as a stream layer (OpenSSL behind an internal face, records straight into the
        // engine's send chunks through a custom BIO).
        .target(
            name: "RingsideTLS",
            dependencies: [
                "Ringside", "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Bundled protocols (echo first).
        .target(name: "RingsideProtocols", dependencies: ["Ringside"]),
        // HTTP/1.1: incremental parser, responses into pooled buffers, routes.
        .target(name: "RingsideHTTP", dependencies: ["Ringside"]),
        // Embedding: a swift-service-lifecycle `Service`, a swift-metrics reporter and an HTTP metrics
        // middleware (kept out of the core `Ringside` and `RingsideHTTP` targets so that the engine
        // itself depends on swift-log only).
        .target(
            name: "RingsideService",
            dependencies: [
                "Ringside", "RingsideHTTP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // `ringside serve`.
        .executableTarget(
            name: "ringside",
            dependencies: [
                "Ringside", "RingsideProtocols", "RingsideHTTP", "RingsideTLS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // An HTTP service embedding Ringside (README example).
        .executableTarget(
            name: "ringside-http-example",
            dependencies: ["Ringside", "RingsideHTTP"],
            path: "Examples/HTTPService"
        ),
        // Ringside in a ServiceGroup: HTTP benchmark routes, swift-log, Prometheus metrics on
        // `GET /metrics`, graceful shutdown on SIGTERM/SIGINT.
        .executableTarget(
            name: "ringside-service-example",
            dependencies: [
                "Ringside", "RingsideHTTP", "RingsideService",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/ServiceGroup",
            swiftSettings: strict
        ),
        // The bundled load generator, built on the engine's own client path.
        .executableTarget(
            name: "ringload",
            dependencies: [
                "Ringside", "CLiburing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // The load generator needs io_uring (its pacer and client rings call liburing's inline
            // helpers, which reach into the library), so it links liburing; the engine does not.
            linkerSettings: [.linkedLibrary("uring")]
        ),
        .testTarget(
            name: "RingsideTests",
            dependencies: [
                "Ringside", "RingsideProtocols", "RingsideHTTP", "CLiburing", "RingsideService", "RingsideTLS",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
