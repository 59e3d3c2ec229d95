// swift-tools-version: 6.0
//
// Ringside fuzz targets (libFuzzer), kept out of the root package: they only build with
// `--sanitize=fuzzer` (libFuzzer supplies `main`). They link the real RingsideHTTP and RingsideProtocols
// modules from `..` and use their public API only.
//
//   fuzz-http-parser  HTTPRequestParser: arbitrary bytes in arbitrary splits, limits, split == one-shot
//   fuzz-framing      LineDecoder / LengthPrefixedDecoder: split == one-shot == a reference model
//   fuzz-proxy-protocol  ProxyHeaderParser (PROXY v1/v2): split == one-shot, limits, re-encoding round trip
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
            name: "fuzz-proxy-protocol",
            dependencies: ["FuzzSupport", .product(name: "Ringside", package: "Ringside")],
            path: "Sources/fuzz-proxy-protocol"
        ),
    ],
    swiftLanguageModes: [.v6]
)
