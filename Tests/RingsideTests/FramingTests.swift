import Glibc
import Ringside
import RingsideProtocols
import Synchronization
import Testing

/// Feeds `input` split at the given cut points and collects frames (copied) or the error.
private func run<D: FrameDecoder & ~Copyable>(_ decoder: inout D, _ input: [UInt8], cuts: [Int]) -> ([[UInt8]], FrameError?) {
    var frames: [[UInt8]] = []
    var bounds = [0] + cuts.filter { $0 > 0 && $0 < input.count }.sorted() + [input.count]
    bounds = Array(Set(bounds)).sorted()
    // Pieces are copied out first (typed throws through withUnsafeBytes trips the compiler).
    for k in 0..<(bounds.count - 1) {
        let piece = Array(input[bounds[k]..<bounds[k + 1]])
        do throws(FrameError) {
            try piece.withUnsafeBytes { p in
                let r: Result<Void, FrameError> = Result { () throws(FrameError) in
                    try decoder.decode(p) { frames.append(Array($0)) }
                }
                return r
            }.get()
        } catch {
            return (frames, error)
        }
    }
    return (frames, nil)
}

private func lengthPrefixed(_ payloads: [[UInt8]], size: Int, big: Bool) -> [UInt8] {
    var out: [UInt8] = []
    for p in payloads {
        for k in 0..<size {
            let shift = big ? 8 * (size - 1 - k) : 8 * k
            out.append(UInt8(truncatingIfNeeded: UInt64(p.count) >> UInt64(shift)))
        }
        out += p
    }
    return out
}

@Suite(.timeLimit(.minutes(1))) struct FramingTests {
    @Test func linesSurviveEverySplit() {
        let input = Array("alpha\nbb\n\nccc\r\nlast\n".utf8)
        let expected = ["alpha", "bb", "", "ccc\r", "last"].map { Array($0.utf8) }
        for a in 0...input.count {
            for b in a...input.count {
                var d = LineDecoder(maxLineLength: 16)
                let (frames, error) = run(&d, input, cuts: [a, b])
                #expect(error == nil && frames == expected, "cuts \(a), \(b)")
                #expect(d.bufferedBytes == 0)
            }
        }
        var bytewise = LineDecoder(delimiter: UInt8(ascii: "\n"), maxLineLength: 16)
        #expect(run(&bytewise, input, cuts: Array(0...input.count)).0 == expected)
    }

    @Test func lineLongerThanTheLimitIsRejectedWholeOrSplit() {
        let input = Array("ok\n0123456789abcdefX\nnever\n".utf8)
        for cut in 0...input.count {
            var d = LineDecoder(maxLineLength: 16)
            let (frames, error) = run(&d, input, cuts: [cut])
            #expect(error == .frameTooLarge(limit: 16), "cut \(cut)")
            #expect(frames == [Array("ok".utf8)])
        }
        var exact = LineDecoder(maxLineLength: 16)
        #expect(run(&exact, Array("0123456789abcdef\n".utf8), cuts: [5]).1 == nil)  // exactly at the limit
    }

    @Test func wholeFramesAreNotCopied() throws {
        var d = LineDecoder()
        let input = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 1)
        defer { input.deallocate() }
        input.copyBytes(from: Array("one\ntwo\n".utf8))
        let all = UnsafeRawBufferPointer(input)
        var frames = 0
        try d.decode(all) { frame in
            frames += 1
            let inside = frame.baseAddress! >= all.baseAddress! && frame.baseAddress! + frame.count <= all.baseAddress! + all.count
            #expect(inside, "a frame contiguous in the input must be a slice of it")
        }
        #expect(frames == 2)
        var l = LengthPrefixedDecoder(prefixSize: 2)
        let framed = UnsafeMutableRawBufferPointer.allocate(byteCount: 9, alignment: 1)
        defer { framed.deallocate() }
        framed.copyBytes(from: lengthPrefixed([Array("payload".utf8)], size: 2, big: true))
        try l.decode(UnsafeRawBufferPointer(framed)) { frame in #expect(frame.baseAddress! == UnsafeRawPointer(framed.baseAddress! + 2)) }
    }

    @Test(arguments: [1, 2, 4, 8], [true, false])
    func lengthPrefixedFramesSurviveEverySplit(prefix: Int, big: Bool) {
        let payloads: [[UInt8]] = [[], Array("x".utf8), Array(repeating: 7, count: 200), Array("hello".utf8)]
        let input = lengthPrefixed(payloads, size: prefix, big: big)
        for a in stride(from: 0, through: input.count, by: 3) {
            for b in stride(from: a, through: input.count, by: 7) {
                var d = LengthPrefixedDecoder(prefixSize: prefix, endianness: big ? .big : .little, maxFrameSize: 255)
                let (frames, error) = run(&d, input, cuts: [a, b])
                #expect(error == nil && frames == payloads, "prefix \(prefix) big \(big) cuts \(a), \(b)")
            }
        }
        var bytewise = LengthPrefixedDecoder(prefixSize: prefix, endianness: big ? .big : .little, maxFrameSize: 255)
        #expect(run(&bytewise, input, cuts: Array(0...input.count)).0 == payloads)
    }

    @Test func oversizedLengthIsRejectedFromTheHeaderAlone() {
        // The header announces 300 bytes against a 255-byte limit: rejected before any payload arrives.
        let header = lengthPrefixed([Array(repeating: 0, count: 300)], size: 2, big: true).prefix(2)
        var d = LengthPrefixedDecoder(prefixSize: 2, maxFrameSize: 255)
        #expect(run(&d, Array(header), cuts: [1]).1 == .frameTooLarge(limit: 255))
    }
}

/// Echoes each line back as a line; records framing errors.
private struct LineEcho: FrameHandler {
    let counter: Counter
    mutating func frame(_ frame: UnsafeRawBufferPointer, on connection: Connection) {
        try? FrameEncoder.writeLine(frame, to: connection)
    }
    mutating func frameError(_ error: FrameError, on connection: Connection) {
        if error == .frameTooLarge(limit: 64) { counter.errors.add(1, ordering: .relaxed) }
    }
}

private final class Counter: Sendable { let errors = Atomic<Int>(0) }

private struct LengthEcho: FrameHandler {
    mutating func frame(_ frame: UnsafeRawBufferPointer, on connection: Connection) {
        try? FrameEncoder.writeLengthPrefixed(frame, prefixSize: 2, endianness: .little, to: connection)
    }
}

@Suite(.serialized, .timeLimit(.minutes(1))) struct FramedServerTests {
    @Test(arguments: allBackends) func oversizedLineClosesOnlyThatConnection(_ backend: BackendKind) throws {
        let counter = Counter()
        try withServer(backend, handler: {
            FramedHandler(decoder: LineDecoder(maxLineLength: 64), handler: LineEcho(counter: counter))
        }) { server in
            let good = try TestClient(port: server.port)
            let bad = try TestClient(port: server.port)
            try good.send(Array("hello\nwor".utf8))
            #expect(try good.receive(exactly: 6) == Array("hello\n".utf8))
            try bad.send(Array(repeating: UInt8(ascii: "z"), count: 100))
            #expect(try bad.receiveUntilEOF().isEmpty, "the offender is closed")
            try good.send(Array("ld\n".utf8))
            #expect(try good.receive(exactly: 6) == Array("world\n".utf8), "the other client carries on")
            #expect(eventually { counter.errors.load(ordering: .relaxed) == 1 })
        }
    }

    @Test(arguments: allBackends) func lengthPrefixedEchoRoundTrips(_ backend: BackendKind) throws {
        try withServer(backend, handler: {
            FramedHandler(decoder: LengthPrefixedDecoder(prefixSize: 2, endianness: .little, maxFrameSize: 60000), handler: LengthEcho())
        }) { server in
            let c = try TestClient(port: server.port)
            let payloads = [randomBytes(50000, seed: 1), [], randomBytes(3, seed: 2)]
            let wire = lengthPrefixed(payloads, size: 2, big: false)
            for piece in stride(from: 0, to: wire.count, by: 7001) { try c.send(Array(wire[piece..<min(wire.count, piece + 7001)])) }
            #expect(try c.receive(exactly: wire.count) == wire)
        }
    }
}
