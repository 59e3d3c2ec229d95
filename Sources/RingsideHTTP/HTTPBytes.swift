/// A borrowed run of bytes inside a parser's buffer or a received buffer: valid only during the call it
/// was passed to. Comparisons never allocate; `string` does.
public struct HTTPBytes: CustomStringConvertible {
    public let buffer: UnsafeRawBufferPointer

    @inlinable public init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

    @inlinable public var count: Int { buffer.count }

    /// Exact byte equality with an ASCII literal.
    @inlinable public func equals(_ s: StaticString) -> Bool {
        guard s.utf8CodeUnitCount == buffer.count else { return false }
        return memcmpBytes(buffer.baseAddress, UnsafeRawPointer(s.utf8Start), buffer.count)
    }

    /// ASCII case-insensitive equality with a literal (header names, tokens).
    @inlinable public func equalsIgnoringCase(_ s: StaticString) -> Bool {
        guard s.utf8CodeUnitCount == buffer.count else { return false }
        guard let a = buffer.baseAddress else { return true }
        let p = s.utf8Start
        for i in 0..<buffer.count where asciiLower(a.load(fromByteOffset: i, as: UInt8.self)) != asciiLower(p[i]) {
            return false
        }
        return true
    }

    /// A copy as a String (allocates).
    public var string: String { String(decoding: buffer, as: UTF8.self) }
    public var description: String { string }
}

@inlinable func asciiLower(_ b: UInt8) -> UInt8 { (b >= 65 && b <= 90) ? b | 0x20 : b }

@inlinable func memcmpBytes(_ a: UnsafeRawPointer?, _ b: UnsafeRawPointer, _ n: Int) -> Bool {
    guard n > 0 else { return true }
    guard let a else { return false }
    for i in 0..<n where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) {
        return false
    }
    return true
}
