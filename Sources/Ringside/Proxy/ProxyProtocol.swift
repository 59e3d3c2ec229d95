import Glibc

/// What a PROXY protocol header (HAProxy's PROXY protocol, versions 1 and 2) says about a connection.
public enum ProxyHeader: Equatable, Sendable {
    /// The proxy relays a client: `source` is the client's address, `destination` the address the
    /// client connected to (v1 `TCP4`/`TCP6`, v2 `PROXY` over `AF_INET`/`AF_INET6`).
    case proxied(source: PeerAddress, destination: PeerAddress)
    /// The connection carries no client address: the connection's own endpoints apply (v1 `UNKNOWN`,
    /// v2 `LOCAL` such as a proxy's health check, v2 `PROXY` over `AF_UNSPEC` or `AF_UNIX`).
    case local
}

/// Why bytes are not an acceptable PROXY protocol header.
public enum ProxyHeaderError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The bytes start with neither the v1 (`PROXY `) nor the v2 signature.
    case missingSignature
    /// A v1 line that does not follow the grammar (`PROXY TCP4|TCP6|UNKNOWN ...\r\n`).
    case malformedV1
    /// A v1 address that is not a numeric address of the protocol's family, or a port outside 0...65535
    /// or with leading zeros.
    case invalidAddress
    /// Longer than allowed: a v1 line past 107 bytes, a v2 header past `maximumLength`.
    case tooLong(limit: Int)
    /// A v2 version other than 2.
    case unsupportedVersion
    /// A v2 command other than `LOCAL` and `PROXY`.
    case unsupportedCommand
    /// A v2 address family or transport outside the specification.
    case unsupportedFamily
    /// A v2 length too short for the addresses its family carries.
    case truncatedAddresses

    public var description: String {
        switch self {
        case .missingSignature: "no PROXY protocol signature"
        case .malformedV1: "malformed v1 header line"
        case .invalidAddress: "invalid address or port in the v1 header"
        case .tooLong(let limit): "header longer than \(limit) bytes"
        case .unsupportedVersion: "unsupported v2 version"
        case .unsupportedCommand: "unsupported v2 command"
        case .unsupportedFamily: "unsupported v2 address family or transport"
        case .truncatedAddresses: "v2 length too short for its addresses"
        }
    }
}

/// An incremental PROXY protocol header parser (v1 text and v2 binary): feed it the first bytes of a
/// connection in whatever pieces they arrive; it says when the header is complete and how many bytes of
/// the last piece it took (the rest is the application's). Pure and allocation-free: no system calls,
/// no heap, a fixed 108-byte buffer; v2 TLVs are skipped, never stored. An error is final.
///
/// ```swift
/// var parser = ProxyHeaderParser()
/// switch try parser.parse(bytes) {
/// case .needMore: break                       // wait for more input
/// case .complete(let header, let consumed):   // bytes[consumed...] is application data
///     ...
/// }
/// ```
public struct ProxyHeaderParser: Sendable {
    /// The most bytes of a v1 header, CRLF included (the specification's limit).
    public static let maximumV1Length = 107
    /// The most bytes of a v2 header accepted by default (16-byte fixed part, addresses and TLVs).
    public static let defaultMaximumLength = 4096

    /// What a call to ``parse(_:)`` found.
    public enum Progress: Equatable, Sendable {
        /// The header is not complete yet: every byte given was taken.
        case needMore
        /// The header is complete; it ended after `consumed` bytes of the piece just given.
        case complete(ProxyHeader, consumed: Int)
    }

    private enum State: UInt8, Sendable { case signature, v1, v2Fixed, v2Body, done, failed }

    private var state: State = .signature
    /// Bytes of the header taken so far.
    public private(set) var headerBytes = 0
    /// The v2 header's total length once its fixed part is read.
    private var v2Total = 0
    /// Buffer: the v1 line, or the v2 fixed part and addresses.
    private var buffer = InlineArray<108, UInt8>(repeating: 0)
    private var error: ProxyHeaderError? = nil
    private var result: ProxyHeader? = nil
    private let maximumLength: Int

    private static let v2Signature: InlineArray<12, UInt8> = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    private static let v1Signature: InlineArray<6, UInt8> = [0x50, 0x52, 0x4F, 0x58, 0x59, 0x20]  // "PROXY "

    /// A parser refusing v2 headers longer than `maximumLength` bytes (at least 232: the fixed part and
    /// the largest address block).
    public init(maximumLength: Int = ProxyHeaderParser.defaultMaximumLength) {
        self.maximumLength = max(maximumLength, 16 + 216)
    }

    /// Whether `prefix` could still be the start of a header (both signatures are checked); true for an
    /// empty prefix. Used to recognise a header sent where none is allowed.
    public static func couldBeHeader(_ prefix: UnsafeRawBufferPointer) -> Bool {
        var v1 = true, v2 = true
        for (i, b) in prefix.enumerated() {
            if i < 6 && v1Signature[i] != b { v1 = false }
            if i < 12 && v2Signature[i] != b { v2 = false }
            if !v1 && !v2 { return false }
            if i >= 12 { break }
        }
        return v1 || v2
    }

    /// Takes the next piece of the connection's first bytes.
    /// - Throws: ``ProxyHeaderError`` when the bytes cannot be a valid header (then on every later call).
    public mutating func parse(_ bytes: UnsafeRawBufferPointer) throws(ProxyHeaderError) -> Progress {
        if let error { throw error }
        if state == .done { return .complete(result!, consumed: 0) }
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            i += 1
            do throws(ProxyHeaderError) {
                if try take(b) { return .complete(result!, consumed: i) }
            } catch let e {
                error = e
                state = .failed
                throw e
            }
        }
        return .needMore
    }

    /// One byte; returns whether the header is complete.
    @inline(__always) private mutating func take(_ b: UInt8) throws(ProxyHeaderError) -> Bool {
        let at = headerBytes
        headerBytes += 1
        switch state {
        case .signature:
            // The first byte picks the version: 'P' (v1) or CR (v2).
            let v1 = buffer[0] == 0x50 || (at == 0 && b == 0x50)
            if v1 {
                guard Self.v1Signature[at] == b else { throw .missingSignature }
                buffer[at] = b
                if at == 5 { state = .v1 }
            } else {
                guard Self.v2Signature[at] == b else { throw .missingSignature }
                buffer[at] = b
                if at == 11 { state = .v2Fixed }
            }
            return false
        case .v1:
            guard at < Self.maximumV1Length else { throw .tooLong(limit: Self.maximumV1Length) }
            buffer[at] = b
            if b == 0x0A {
                guard buffer[at - 1] == 0x0D else { throw .malformedV1 }
                result = try parseV1(lineLength: at - 1)
                state = .done
                return true
            }
            return false
        case .v2Fixed:
            buffer[at] = b
            guard at == 15 else { return false }
            let version = buffer[12] >> 4, command = buffer[12] & 0x0F
            guard version == 2 else { throw .unsupportedVersion }
            guard command <= 1 else { throw .unsupportedCommand }
            v2Total = 16 + (Int(buffer[14]) << 8 | Int(buffer[15]))
            guard v2Total <= maximumLength else { throw .tooLong(limit: maximumLength) }
            if command == 1 {
                // LOCAL ignores the family byte; PROXY must name a family and transport of the specification.
                let family = buffer[13] >> 4, transport = buffer[13] & 0x0F
                guard family <= 3, transport <= 2 else { throw .unsupportedFamily }
                let needed = family == 1 ? 12 : family == 2 ? 36 : family == 3 ? 216 : 0
                guard v2Total - 16 >= needed else { throw .truncatedAddresses }
            }
            state = .v2Body
            if v2Total == 16 { return finishV2() }
            return false
        case .v2Body:
            if at < 16 + 36 { buffer[at] = b }
            if at + 1 == v2Total { return finishV2() }
            return false
        case .done, .failed:
            return false
        }
    }

    private mutating func finishV2() -> Bool {
        let command = buffer[12] & 0x0F, family = buffer[13] >> 4
        if command == 0 || (family != 1 && family != 2) {
            result = .local
        } else {
            result = withUnsafeBytes(of: buffer) { p in
                if family == 1 {
                    let src = IPAddress(ipv4: UInt32(bigEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
                    let dst = IPAddress(ipv4: UInt32(bigEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
                    return .proxied(source: PeerAddress(ip: src, port: Self.port(p, 24)),
                                    destination: PeerAddress(ip: dst, port: Self.port(p, 26)))
                }
                let src = IPAddress(ipv6: UnsafeRawBufferPointer(rebasing: p[16 ..< 32]))
                let dst = IPAddress(ipv6: UnsafeRawBufferPointer(rebasing: p[32 ..< 48]))
                return .proxied(source: PeerAddress(ip: src, port: Self.port(p, 48)),
                                destination: PeerAddress(ip: dst, port: Self.port(p, 50)))
            }
        }
        state = .done
        return true
    }

    private static func port(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt16 {
        UInt16(p[at]) << 8 | UInt16(p[at + 1])
    }

    // MARK: v1

    /// Parses the v1 line in `buffer[0..<length]` (CRLF excluded; "PROXY " already checked).
    private mutating func parseV1(lineLength length: Int) throws(ProxyHeaderError) -> ProxyHeader {
        try withUnsafeMutableBytes(of: &buffer) { (p: UnsafeMutableRawBufferPointer) throws(ProxyHeaderError) -> ProxyHeader in
            let line = UnsafeMutableRawBufferPointer(rebasing: p[0 ..< length])
            // Fields after "PROXY ", separated by single spaces.
            var fields: (Range<Int>, Range<Int>, Range<Int>, Range<Int>, Range<Int>) = (0..<0, 0..<0, 0..<0, 0..<0, 0..<0)
            var count = 0
            var start = 6
            var k = 6
            while k <= length {
                if k == length || line[k] == 0x20 {
                    let r = start ..< k
                    switch count {
                    case 0: fields.0 = r
                    case 1: fields.1 = r
                    case 2: fields.2 = r
                    case 3: fields.3 = r
                    case 4: fields.4 = r
                    default: break
                    }
                    count += 1
                    // UNKNOWN: whatever follows is ignored.
                    if count == 1 && Self.equals(line, r, "UNKNOWN") { return .local }
                    start = k + 1
                } else if line[k] == 0x0D || line[k] == 0x0A {
                    throw .malformedV1
                }
                k += 1
            }
            guard count == 5 else { throw .malformedV1 }
            let v6: Bool
            if Self.equals(line, fields.0, "TCP4") { v6 = false } else if Self.equals(line, fields.0, "TCP6") { v6 = true } else { throw .malformedV1 }
            guard !fields.1.isEmpty, !fields.2.isEmpty, !fields.3.isEmpty, !fields.4.isEmpty else { throw .malformedV1 }
            let src = try Self.address(p, fields.1, v6: v6)
            let dst = try Self.address(p, fields.2, v6: v6)
            let sp = try Self.decimalPort(line, fields.3)
            let dp = try Self.decimalPort(line, fields.4)
            return .proxied(source: PeerAddress(ip: src, port: sp), destination: PeerAddress(ip: dst, port: dp))
        }
    }

    private static func equals(_ line: UnsafeMutableRawBufferPointer, _ r: Range<Int>, _ s: StaticString) -> Bool {
        guard r.count == s.utf8CodeUnitCount else { return false }
        for j in 0 ..< r.count where line[r.lowerBound + j] != s.utf8Start[j] { return false }
        return true
    }

    /// A port: 1-5 decimal digits, no leading zero (but "0"), at most 65535.
    private static func decimalPort(_ line: UnsafeMutableRawBufferPointer, _ r: Range<Int>) throws(ProxyHeaderError) -> UInt16 {
        guard r.count <= 5, r.count == 1 || line[r.lowerBound] != 0x30 else { throw .invalidAddress }
        var v = 0
        for j in r {
            let d = Int(line[j]) - 0x30
            guard (0...9).contains(d) else { throw .invalidAddress }
            v = v * 10 + d
        }
        guard v <= 65535 else { throw .invalidAddress }
        return UInt16(v)
    }

    /// A numeric address of the line's family. The field is NUL-terminated in place (its separator is
    /// overwritten: the line is parsed once) for inet_pton, which neither allocates nor calls the kernel.
    private static func address(_ p: UnsafeMutableRawBufferPointer, _ r: Range<Int>, v6: Bool) throws(ProxyHeaderError) -> IPAddress {
        guard r.count <= (v6 ? 45 : 15), r.upperBound < p.count else { throw .invalidAddress }
        if !v6 {
            // Strict dotted decimal: four parts of 1-3 digits, no leading zeros, each at most 255.
            var value: UInt32 = 0, part = -1, digits = 0, parts = 0, leadingZero = false
            for j in r.lowerBound ... r.upperBound {
                let c = j < r.upperBound ? p[j] : 0x2E
                if c == 0x2E {
                    guard digits > 0, part <= 255, !(leadingZero && digits > 1) else { throw .invalidAddress }
                    value = value << 8 | UInt32(part)
                    parts += 1
                    part = -1; digits = 0
                } else {
                    let d = Int(c) - 0x30
                    guard (0...9).contains(d), digits < 3 else { throw .invalidAddress }
                    if digits == 0 { leadingZero = d == 0; part = 0 }
                    part = part * 10 + d
                    digits += 1
                }
            }
            guard parts == 4 else { throw .invalidAddress }
            return IPAddress(ipv4: value)
        }
        let saved = p[r.upperBound]
        p[r.upperBound] = 0
        defer { p[r.upperBound] = saved }
        var a = in6_addr()
        let ok = inet_pton(AF_INET6, p.baseAddress! + r.lowerBound, &a) == 1
        guard ok else { throw .invalidAddress }
        return withUnsafeBytes(of: &a) { IPAddress(ipv6: $0) }
    }
}

// MARK: encoding (clients, tests)

extension ProxyHeader {
    /// The v1 text header for this value (`PROXY TCP4 ...\r\n`, `PROXY UNKNOWN\r\n`): `TCP4` when both
    /// addresses are IPv4, else `TCP6` with IPv4 mapped.
    public var v1Bytes: [UInt8] {
        switch self {
        case .local: return Array("PROXY UNKNOWN\r\n".utf8)
        case .proxied(let s, let d):
            let v4 = s.ip.isIPv4 && d.ip.isIPv4
            func text(_ a: IPAddress) -> String { !v4 && a.isIPv4 ? "::ffff:\(a)" : "\(a)" }
            return Array("PROXY \(v4 ? "TCP4" : "TCP6") \(text(s.ip)) \(text(d.ip)) \(s.port) \(d.port)\r\n".utf8)
        }
    }

    /// The v2 binary header for this value (command `LOCAL` or `PROXY` over TCP; `AF_INET` when both
    /// addresses are IPv4, else `AF_INET6` with IPv4 mapped), followed by `tlvs` raw TLV bytes.
    public func v2Bytes(tlvs: [UInt8] = []) -> [UInt8] {
        var out: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
        var body: [UInt8] = []
        switch self {
        case .local:
            out += [0x20, 0x00]
        case .proxied(let s, let d):
            let v4 = s.ip.isIPv4 && d.ip.isIPv4
            func ip(_ a: IPAddress) -> [UInt8] {
                if v4 { return withUnsafeBytes(of: a.ipv4!.bigEndian, Array.init) }
                return withUnsafeBytes(of: a.high.bigEndian, Array.init) + withUnsafeBytes(of: a.low.bigEndian, Array.init)
            }
            out += [0x21, v4 ? 0x11 : 0x21]
            body = ip(s.ip) + ip(d.ip) + [UInt8(s.port >> 8), UInt8(s.port & 0xFF), UInt8(d.port >> 8), UInt8(d.port & 0xFF)]
        }
        body += tlvs
        out += [UInt8(body.count >> 8 & 0xFF), UInt8(body.count & 0xFF)]
        return out + body
    }
}
