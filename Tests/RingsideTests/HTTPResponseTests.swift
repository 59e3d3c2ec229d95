@testable import RingsideHTTP
import Testing

/// The response head's guard against header injection: a header line whose name or value holds a CR
/// or LF is dropped (`ByteBuffer.appendHeader`), found eight bytes at a time (`containsLineBreak`).
@Suite struct HTTPResponseTests {
    private func naive(_ bytes: [UInt8]) -> Bool { bytes.contains(13) || bytes.contains(10) }

    @Test func lineBreakScanMatchesAByteLoopAtEveryLengthAndPosition() {
        // Near misses around CR (0x0D) and LF (0x0A), and their high-bit twins, which a word trick
        // could confuse with them.
        let fillers: [UInt8] = [0x20, 0x09, 0x0B, 0x0C, 0x0E, 0x8A, 0x8D, 0x00, 0xFF, 0x7F, 0x41]
        for length in 0...40 {
            for filler in fillers {
                var bytes = [UInt8](repeating: filler, count: length)
                bytes.withUnsafeBytes { #expect(containsLineBreak($0) == false, "length \(length) filler \(filler)") }
                for position in 0..<length {
                    for breakByte: UInt8 in [13, 10] {
                        bytes[position] = breakByte
                        bytes.withUnsafeBytes { b in
                            #expect(containsLineBreak(b) == naive(bytes), "length \(length) \(breakByte) at \(position)")
                        }
                        bytes[position] = filler
                    }
                }
            }
        }
        // Not at offset 0 of an allocation (unaligned words).
        let padded: [UInt8] = [0x41, 0x41, 0x41] + Array("Content-Type-Long-Name".utf8) + [13]
        padded.withUnsafeBytes { b in
            #expect(containsLineBreak(UnsafeRawBufferPointer(rebasing: b[3...])))
            #expect(!containsLineBreak(UnsafeRawBufferPointer(rebasing: b[3..<(b.count - 1)])))
        }
    }

    @Test func headerLinesWithALineBreakAreDroppedOthersAppended() {
        let buffer = ByteBuffer(capacity: 64)
        func append(_ name: String, _ value: String) {
            Array(name.utf8).withUnsafeBytes { n in Array(value.utf8).withUnsafeBytes { v in buffer.appendHeader(n, v) } }
        }
        append("X-Long-Header-Name", "a value of more than eight bytes")
        append("X-Injected", "ok\r\nSet-Cookie: evil=1")
        append("X-Also\n", "value")
        append("X-Short", "v\r")
        append("Content-Type", "text/plain")
        let text = String(decoding: buffer.bytes, as: UTF8.self)
        #expect(text == "X-Long-Header-Name: a value of more than eight bytes\r\nContent-Type: text/plain\r\n")
    }

    @Test func asyncHeaderFieldsDropLinesWithALineBreak() {
        // Small (up to 15 UTF-8 bytes) and large strings are stored differently; both are read in place.
        let long = "X-Long-Header-Name: a value with a line\r\nbreak"
        let sliced = String(long.dropFirst(20).prefix(19))  // "a value with a line"
        var fields = HTTPHeaderFields([("X-A", "ok"), ("X-Bad", "a\r\nSet-Cookie: evil=1"), ("X\nY", "v"),
                                       ("X-Long-Header-Name", "more than eight bytes\r")])
        fields.add("X-Sliced", sliced)
        fields.add("X-Sliced-Break", String(long.dropFirst(20)))
        #expect(fields.count == 2)
        #expect(fields["X-A"] == "ok")
        #expect(fields["X-Sliced"] == "a value with a line")
        #expect(!fields.contains("X-Bad") && !fields.contains("X-Long-Header-Name") && !fields.contains("X-Sliced-Break"))
    }
}
