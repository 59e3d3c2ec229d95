// libFuzzer target for the decompressors of RingsideCompression (public API only).
//
// Input: 1 config byte (bits 0-1: the format gzip / zlib / raw deflate / zstd; bits 2-3: the cap on the
// decompressed total, 0 / 1 KiB / 64 KiB / 1 MiB), 3 split-seed bytes, then the compressed bytes.
// Properties: no crash, leak or out-of-bounds access (ASan); the output handed out never exceeds the
// cap, and a cap overrun is reported as limitExceeded; the one-shot and the split feeds agree on
// success and, when both succeed, on every output byte and on whether the stream ended; a stream that
// decodes completely, compressed again and decoded, gives the same bytes.
import FuzzSupport
import RingsideCompression

struct Outcome: Equatable {
    var output: [UInt8] = []
    var ok = true
    var ended = false
    var overLimit = false
}

let formats: [CompressionFormat] = [.gzip, .zlib, .rawDeflate, .zstd]
let caps = [0, 1024, 64 * 1024, 1 << 20]

func decode(_ format: CompressionFormat, cap: Int, _ feedAll: ((UnsafeRawBufferPointer) -> Bool) -> Void) -> Outcome {
    var out = Outcome()
    let d: Decompressor
    do throws(CompressionError) {
        // A small window cap for zstd, so a frame cannot make the fuzzer allocate 8 MiB windows.
        d = try Decompressor(format: format, limit: cap, outputChunkSize: 512, windowLogMax: 20)
    } catch {
        propertyFailed("decompressor setup: \(error)")
    }
    feedAll { piece in
        do throws(CompressionError) {
            try d.decompress(piece) { bytes in
                out.output.append(contentsOf: bytes)
                if out.output.count > cap { propertyFailed("\(out.output.count) bytes handed out past the \(cap)-byte cap") }
                return true
            }
        } catch {
            out.ok = false
            if case .limitExceeded(let l) = error {
                if l != cap { propertyFailed("limitExceeded(\(l)) with cap \(cap)") }
                out.overLimit = true
            }
            return false
        }
        return true
    }
    if out.ok {
        do throws(CompressionError) { try d.finish(); out.ended = true } catch { out.ended = false }
        if d.totalOut != out.output.count { propertyFailed("totalOut \(d.totalOut) != \(out.output.count) handed out") }
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzInput(data, size, configBytes: 1)
    let format = formats[Int(input.config[0] & 3)]
    let cap = caps[Int((input.config[0] >> 2) & 3)]
    let whole = decode(format, cap: cap) { feed in _ = withExactCopy(input.payload, feed) }
    let split = decode(format, cap: cap) { feed in forEachPiece(of: input.payload, seed: input.splitSeed, feed) }
    if whole.ok != split.ok || (whole.ok && whole != split) {
        propertyFailed("\(format) cap \(cap): one-shot ok \(whole.ok) ended \(whole.ended) \(whole.output.count) bytes, split ok \(split.ok) ended \(split.ended) \(split.output.count) bytes")
    }
    guard whole.ok && whole.ended else { return 0 }
    // Round trip of what decoded.
    do throws(CompressionError) {
        let c = try Compressor(format: format, level: 1)
        var packed: [UInt8] = []
        try whole.output.withUnsafeBytes { b in
            Result { () throws(CompressionError) in try c.compress(b, flush: .finish) { packed.append(contentsOf: $0) } }
        }.get()
        let again = packed.withUnsafeBytes { b in decode(format, cap: cap) { feed in _ = withExactCopy(b, feed) } }
        if again.output != whole.output || !again.ended { propertyFailed("\(format): re-compressed output decodes differently") }
    } catch {
        propertyFailed("\(format): compressing decoded output: \(error)")
    }
    return 0
}
