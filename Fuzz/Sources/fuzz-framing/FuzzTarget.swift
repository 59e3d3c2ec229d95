// libFuzzer target for the framing decoders (public API only).
//
// Input: 1 config byte (decoder, delimiter or prefix size and endianness, maximum frame size), 3
// split-seed bytes, then the stream. Properties: no crash or out-of-bounds access; the one-shot decode,
// the split decode (FuzzSupport.forEachPiece) and the reference model (Model.swift) agree on every
// frame, on the error and on the bytes left buffered; no frame exceeds the maximum.
import FuzzSupport
import RingsideProtocols

func decode<D: FrameDecoder & ~Copyable>(
    _ decoder: consuming D, _ feedAll: ((UnsafeRawBufferPointer) -> Bool) -> Void
) -> FrameOutcome {
    var decoder = decoder
    var out = FrameOutcome()
    feedAll { piece in
        do throws(FrameError) {
            try decoder.decode(piece) { out.frames.append(Array($0)) }
        } catch let e {
            out.error = e
            return false
        }
        return true
    }
    if out.error == nil { out.buffered = decoder.bufferedBytes }
    return out
}

func decode(_ config: DecoderConfig, _ feedAll: ((UnsafeRawBufferPointer) -> Bool) -> Void) -> FrameOutcome {
    switch config {
    case .line(let delimiter, let max):
        decode(LineDecoder(delimiter: delimiter, maxLineLength: max), feedAll)
    case .length(let prefix, let endianness, let max):
        decode(LengthPrefixedDecoder(prefixSize: prefix, endianness: endianness, maxFrameSize: max), feedAll)
    }
}

func summary(_ o: FrameOutcome) -> String {
    "\(o.frames.count) frames \(o.frames.map(\.count)), error \(String(describing: o.error)), buffered \(String(describing: o.buffered))"
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzInput(data, size, configBytes: 1)
    let config = DecoderConfig(input.config[0])
    let expected = model(config, Array(input.payload))
    let whole = decode(config) { feed in _ = withExactCopy(input.payload, feed) }
    if whole != expected { propertyFailed("one-shot: \(summary(whole)); model: \(summary(expected))") }
    let split = decode(config) { feed in forEachPiece(of: input.payload, seed: input.splitSeed, feed) }
    if split != expected { propertyFailed("split: \(summary(split)); model: \(summary(expected))") }
    return 0
}
