// libFuzzer target for the static-file path check (HTTPStaticPath.normalize, public API).
//
// Input: the raw (percent-encoded) part of a request path after the static prefix.
// Properties: no crash or out-of-bounds access; an accepted path never names anything outside the root:
// it does not start with "/", has no empty (but a trailing), ".", ".." or hidden segment, no NUL or
// backslash, and is valid UTF-8; it is exactly the percent-decoding of the input (a reference decoder);
// percent-encoding every byte of it again and checking gives the same path (decoding happens once),
// within the 4096-byte raw limit.
import FuzzSupport
import RingsideHTTP

/// The reference decoder: nil on an invalid escape.
func referenceDecode(_ b: [UInt8]) -> [UInt8]? {
    func hex(_ c: UInt8) -> UInt8? {
        if c >= 48 && c <= 57 { return c - 48 }
        if c >= 65 && c <= 70 { return c - 55 }
        if c >= 97 && c <= 102 { return c - 87 }
        return nil
    }
    var out: [UInt8] = []
    var i = 0
    while i < b.count {
        if b[i] == 37 {
            guard i + 2 < b.count, let h = hex(b[i + 1]), let l = hex(b[i + 2]) else { return nil }
            out.append(h << 4 | l); i += 3
        } else {
            out.append(b[i]); i += 1
        }
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let raw = Array(UnsafeBufferPointer(start: data, count: size))
    let result = raw.withUnsafeBytes { HTTPStaticPath.normalize($0) }
    guard let path = result else { return 0 }
    let bytes = Array(path.utf8)
    if referenceDecode(raw) != bytes { propertyFailed("accepted \(raw) as \(path), not its decoding") }
    if bytes.first == 47 { propertyFailed("absolute path accepted: \(path)") }
    if bytes.contains(0) || bytes.contains(92) { propertyFailed("NUL or backslash accepted: \(path)") }
    let segments = bytes.split(separator: 47, omittingEmptySubsequences: false)
    for (k, s) in segments.enumerated() {
        if s.isEmpty && !(k == segments.count - 1 && k > 0) && !bytes.isEmpty { propertyFailed("empty segment in \(path)") }
        if s.first == 46 { propertyFailed("dot or hidden segment in \(path)") }
    }
    let reencoded = bytes.flatMap { b -> [UInt8] in
        let h = Array("0123456789ABCDEF".utf8)
        return b == 47 ? [47] : [37, h[Int(b >> 4)], h[Int(b & 15)]]
    }
    guard reencoded.count <= 4096 else { return 0 }  // past the length limit: refused, as it should be
    let again = reencoded.withUnsafeBytes { HTTPStaticPath.normalize($0) }
    if again != path { propertyFailed("re-encoded \(path) normalised to \(again ?? "nil")") }
    return 0
}
