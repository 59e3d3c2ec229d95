// libFuzzer target for the PROXY protocol header parser (public API only).
//
// Input: 1 config byte (the v2 length limit), 3 split-seed bytes, then a connection's first bytes.
// Properties: no crash or out-of-bounds access; the one-shot parse and the split parse
// (FuzzSupport.forEachPiece) agree on the header, on where the application's bytes start and on the
// error; a complete header never exceeds its version's limit; a parsed header, encoded again (v1 or v2,
// as it came) and parsed, is the same header.
import FuzzSupport
import Ringside

struct Outcome: Equatable {
    var header: ProxyHeader?
    /// Offset in the whole input where the application's bytes start.
    var end: Int?
    var error: ProxyHeaderError?
}

func parse(limit: Int, _ feedAll: ((UnsafeRawBufferPointer) -> Bool) -> Void) -> Outcome {
    var parser = ProxyHeaderParser(maximumLength: limit)
    var out = Outcome()
    var offset = 0
    feedAll { piece in
        do throws(ProxyHeaderError) {
            if case .complete(let h, let consumed) = try parser.parse(piece) {
                out.header = h
                out.end = offset + consumed
                return false
            }
        } catch let e {
            out.error = e
            return false
        }
        offset += piece.count
        return true
    }
    return out
}

func reparse(_ bytes: [UInt8]) -> Outcome {
    bytes.withUnsafeBytes { b in parse(limit: 65551) { feed in _ = feed(b) } }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzInput(data, size, configBytes: 1)
    let limit = [ProxyHeaderParser.defaultMaximumLength, 232, 300, 65551][Int(input.config[0] & 3)]
    let whole = parse(limit: limit) { feed in _ = withExactCopy(input.payload, feed) }
    let split = parse(limit: limit) { feed in forEachPiece(of: input.payload, seed: input.splitSeed, feed) }
    if whole != split { propertyFailed("one-shot \(whole) != split \(split)") }
    guard let header = whole.header, let end = whole.end else { return 0 }
    let v1 = input.payload.first == UInt8(ascii: "P")
    if end > input.payload.count || (v1 && end > ProxyHeaderParser.maximumV1Length) || (!v1 && end > max(limit, 232)) {
        propertyFailed("header of \(end) bytes (input \(input.payload.count), limit \(limit), v1 \(v1))")
    }
    let again = reparse(v1 ? header.v1Bytes : header.v2Bytes())
    if again.header != header { propertyFailed("re-encoded \(header) parsed as \(again)") }
    return 0
}
