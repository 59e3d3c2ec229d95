import RingsideProtocols

/// Which decoder, with which parameters (picked by the config byte).
enum DecoderConfig {
    case line(delimiter: UInt8, max: Int)
    case length(prefix: Int, endianness: LengthPrefixedDecoder.Endianness, max: Int)

    init(_ c: UInt8) {
        if c & 1 == 0 {
            self = .line(delimiter: c & 8 == 0 ? 0x0A : 0x00, max: [4096, 0, 1, 8][Int(c >> 1 & 3)])
        } else {
            self = .length(prefix: [1, 2, 4, 8][Int(c >> 1 & 3)], endianness: c & 8 == 0 ? .big : .little,
                           max: [4096, 0, 3, 300][Int(c >> 4 & 3)])
        }
    }
}

/// What decoding a stream produced: the frames, the error if any, and the bytes left buffered.
struct FrameOutcome: Equatable {
    var frames: [[UInt8]] = []
    var error: FrameError?
    /// `bufferedBytes` at the end (nil after an error: unspecified then).
    var buffered: Int?
}

/// The reference: the documented behaviour, written as plainly as possible over the whole input.
func model(_ config: DecoderConfig, _ input: [UInt8]) -> FrameOutcome {
    var out = FrameOutcome()
    switch config {
    case .line(let delimiter, let max):
        var line: [UInt8] = []
        for b in input {
            if b == delimiter {
                out.frames.append(line)
                line = []
            } else {
                line.append(b)
                if line.count > max {
                    out.error = .frameTooLarge(limit: max)
                    return out
                }
            }
        }
        out.buffered = line.count
    case .length(let prefix, let endianness, let max):
        var i = 0
        while true {
            guard input.count - i >= prefix else {
                out.buffered = input.count - i
                return out
            }
            var length: UInt64 = 0
            for k in 0..<prefix {
                let b = UInt64(input[i + k])
                length |= endianness == .big ? b << UInt64(8 * (prefix - 1 - k)) : b << UInt64(8 * k)
            }
            i += prefix
            guard length <= UInt64(max) else {
                out.error = .frameTooLarge(limit: max)
                return out
            }
            guard input.count - i >= Int(length) else {
                out.buffered = input.count - i
                return out
            }
            out.frames.append(Array(input[i ..< i + Int(length)]))
            i += Int(length)
        }
    }
    return out
}
