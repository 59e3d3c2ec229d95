// libFuzzer target for HTTPRequestParser (public API only).
//
// Input: 2 config bytes (limits), 3 split-seed bytes, then the request bytes.
// Properties: no crash, hang or out-of-bounds access; every event and limit checked (Properties.swift);
// a rejection names a documented 4xx/5xx; the payload fed in pieces (FuzzSupport.forEachPiece) yields
// exactly the one-shot events and error; after a rejection every further feed throws the same error
// and emits nothing; buffered head bytes never exceed maxHeaderBytes.
import FuzzSupport
import RingsideHTTP

/// Limits picked by the two config bytes: the defaults or small values that the fuzzer can reach.
func limits(_ c: [UInt8]) -> HTTPLimits {
    var l = HTTPLimits()
    l.maxRequestLine = [8 * 1024, 16, 40, 100][Int(c[0] & 3)]
    l.maxHeaderBytes = [16 * 1024, 0, 64, 300][Int(c[0] >> 2 & 3)]
    l.maxHeaderCount = [100, 0, 1, 4][Int(c[0] >> 4 & 3)]
    l.maxBodyBytes = [1 << 30, 0, 20, Int.max][Int(c[0] >> 6 & 3)]
    l.maxChunkLine = [1024, 1, 6, 0][Int(c[1] & 3)]
    return l
}

/// Feeds `pieces` to a new parser; stops feeding new data at the first error but then checks that
/// two more feeds throw the same error and emit nothing.
func parse(_ limits: HTTPLimits, _ feedAll: ((UnsafeRawBufferPointer) -> Bool) -> Void) -> Outcome {
    var parser = HTTPRequestParser(limits: limits)
    var sink = Recorder()
    var error: HTTPParseError?
    feedAll { piece in
        do throws(HTTPParseError) {
            try parser.feed(piece, into: &sink)
        } catch let e {
            error = e
            return false
        }
        if parser.bufferedHeadBytes > limits.maxHeaderBytes || parser.bufferedHeadBytes < 0 {
            propertyFailedHTTP("bufferedHeadBytes \(parser.bufferedHeadBytes) > maxHeaderBytes")
        }
        return true
    }
    if let error {
        let before = sink.events.count
        for again in [[UInt8](), Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)] {
            var thrown: HTTPParseError?
            again.withUnsafeBytes { b in
                do throws(HTTPParseError) { try parser.feed(b, into: &sink) } catch let e { thrown = e }
            }
            if thrown != error { propertyFailedHTTP("feed after \(error) threw \(String(describing: thrown))") }
        }
        if sink.events.count != before { propertyFailedHTTP("events after a rejection") }
        if parser.isIdle { propertyFailedHTTP("dead parser reports idle") }
    }
    return Outcome(events: sink.events, error: error)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzInput(data, size, configBytes: 2)
    let l = limits(input.config)
    let whole = parse(l) { feed in _ = withExactCopy(input.payload, feed) }
    checkEvents(whole.events, l, complete: whole.error)
    let split = parse(l) { feed in forEachPiece(of: input.payload, seed: input.splitSeed, feed) }
    if split != whole {
        propertyFailedHTTP("split parse differs: one-shot \(whole.events.count) events, error \(String(describing: whole.error)); split \(split.events.count) events, error \(String(describing: split.error))")
    }
    return 0
}
