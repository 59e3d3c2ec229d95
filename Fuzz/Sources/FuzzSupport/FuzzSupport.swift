/// Shared pieces of the fuzz targets: the input layout (config bytes, split seed, payload), the split
/// schedule, and exact-size heap copies of every piece so AddressSanitizer flags any read past it.

/// A fuzz input: `configBytes` configuration bytes, then 3 bytes of split seed, then the payload.
/// Shorter inputs are padded with zeros (an input of a few bytes is still a valid case).
public struct FuzzInput {
    public let config: [UInt8]
    public let splitSeed: UInt32
    public let payload: UnsafeRawBufferPointer

    public init(_ data: UnsafePointer<UInt8>, _ size: Int, configBytes: Int) {
        let all = UnsafeRawBufferPointer(start: data, count: size)
        func byte(_ i: Int) -> UInt8 { i < size ? all[i] : 0 }
        config = (0..<configBytes).map(byte)
        splitSeed = UInt32(byte(configBytes)) | UInt32(byte(configBytes + 1)) << 8
            | UInt32(byte(configBytes + 2)) << 16
        let start = min(size, configBytes + 3)
        payload = UnsafeRawBufferPointer(rebasing: all[start...])
    }
}

/// Calls `body` with `bytes` copied into a heap block of exactly `bytes.count` bytes (none for an
/// empty buffer: a nil base address, as an empty receive may have).
public func withExactCopy<R>(_ bytes: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    guard bytes.count > 0, let src = bytes.baseAddress else {
        return body(UnsafeRawBufferPointer(start: nil, count: 0))
    }
    let copy = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 1)
    defer { copy.deallocate() }
    copy.copyMemory(from: src, byteCount: bytes.count)
    return body(UnsafeRawBufferPointer(start: copy, count: bytes.count))
}

/// Feeds `payload` to `body` in pieces chosen by `seed`, each piece an exact-size copy; an empty piece
/// now and then. The low 2 bits pick the piece size range (1, 1...4, 1...32, 1...512), the rest seed
/// an xorshift generator. `body` returns false to stop early.
public func forEachPiece(of payload: UnsafeRawBufferPointer, seed: UInt32,
                        _ body: (UnsafeRawBufferPointer) -> Bool) {
    let maxPiece = [1, 4, 32, 512][Int(seed & 3)]
    var state = (seed >> 2) | 0x8000_0000          // xorshift32 must not start at 0
    func next() -> UInt32 {
        state ^= state << 13
        state ^= state >> 17
        state ^= state << 5
        return state
    }
    var at = 0
    while at < payload.count {
        let r = next()
        if r & 15 == 0 {
            // An empty receive between pieces.
            guard withExactCopy(UnsafeRawBufferPointer(start: nil, count: 0), body) else { return }
            continue
        }
        let size = min(payload.count - at, 1 + Int((r >> 4) % UInt32(maxPiece)))
        let piece = UnsafeRawBufferPointer(rebasing: payload[at ..< at + size])
        guard withExactCopy(piece, body) else { return }
        at += size
    }
}

/// Stops the process with a message libFuzzer keeps beside the reproducer.
public func propertyFailed(_ message: String, file: StaticString = #file, line: UInt = #line) -> Never {
    print("PROPERTY VIOLATED: \(message)")
    fatalError(message, file: file, line: line)
}

/// Hex for messages.
public func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
        .joined()
}
