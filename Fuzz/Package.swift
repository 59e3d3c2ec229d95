// swift-tools-version: 6.0
//
// Ringside fuzz targets (libFuzzer), kept out of the root package: they only build with
// `--sanitize=fuzzer` (libFuzzer supplies `main`). They link the real Ringside modules from `..` and use
// their public API only, except fuzz-connection-state, which compiles the engine's internal
// ConnectionState.swift itself (see its target below).
//
//   fuzz-http-parser  HTTPRequestParser: arbitrary bytes in arbitrary splits, limits, split == one-shot
//   fuzz-framing      LineDecoder / LengthPrefixedDecoder: split == one-shot == a reference model
//   fuzz-proxy-protocol  ProxyHeaderParser (PROXY v1/v2): split == one-shot, limits, re-encoding round trip
//   fuzz-static-path  HTTPStaticPath.normalize: nothing accepted escapes the root; decoding happens once
//   fuzz-inflate      gzip/zlib/raw deflate/zstd decompression with a cap: split == one-shot, cap kept, round trip
//   fuzz-connection-state  ConnectionState (internal to Ringside): random event sequences against a
//                     harness that plays the driver, the backend and the chunk pool
//
//   make fuzz          (FUZZ_SECONDS=600 in total; see scripts/fuzz.sh)
//   make fuzz-ci       (30 s per target)
//   cd Fuzz && swift build --sanitize=fuzzer --sanitize=address --scratch-path .build-fuzz
import PackageDescription

let package = Package(
    name: "RingsideFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Ringside", path: ".."),
    ],
    targets: [
        // Input layout, split schedules, exact-size copies (so ASan sees reads past a piece).
        .target(name: "FuzzSupport", path: "Sources/FuzzSupport"),
        .executableTarget(
            name: "fuzz-http-parser",
            dependencies: ["FuzzSupport", .product(name: "RingsideHTTP", package: "Ringside")],
            path: "Sources/fuzz-http-parser"
        ),
        .executableTarget(
            name: "fuzz-framing",
            dependencies: ["FuzzSupport", .product(name: "RingsideProtocols", package: "Ringside")],
            path: "Sources/fuzz-framing"
        ),
        .executableTarget(
            name: "fuzz-inflate",
            dependencies: ["FuzzSupport", .product(name: "RingsideCompression", package: "Ringside")],
            path: "Sources/fuzz-inflate"
        ),
        .executableTarget(
            name: "fuzz-proxy-protocol",
            dependencies: ["FuzzSupport", .product(name: "Ringside", package: "Ringside")],
            path: "Sources/fuzz-proxy-protocol"
        ),
        .executableTarget(
            name: "fuzz-static-path",
            dependencies: ["FuzzSupport", .product(name: "RingsideHTTP", package: "Ringside")],
            path: "Sources/fuzz-static-path"
        ),
        // The one exception to "public API only": ConnectionState is internal, so this target compiles
        // the engine's own file (Sources/fuzz-connection-state/ConnectionState.swift is a symlink to
        // ../Sources/Ringside/Engine/ConnectionState.swift, never a copy) beside the harness, and takes
        // the public types it names (CloseReason, ServerStats, Errno) from Ringside.
        .executableTarget(
            name: "fuzz-connection-state",
            dependencies: ["FuzzSupport", .product(name: "Ringside", package: "Ringside")],
            path: "Sources/fuzz-connection-state"
        ),
    ],
    swiftLanguageModes: [.v6]
)
