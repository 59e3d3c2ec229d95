import Glibc

/// An IP address, IPv4 or IPv6, stored as 128 bits with IPv4 mapped into IPv6 (`::ffff:a.b.c.d`), the
/// form the engine counts per-address connections in. An IPv4-mapped IPv6 address and the IPv4 address
/// it maps are the same value.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible {
    /// The high 64 bits (network order: the first 8 bytes of the IPv6 form).
    public let high: UInt64
    /// The low 64 bits.
    public let low: UInt64

    /// The address of 128 bits, IPv4 mapped (`::ffff:a.b.c.d`).
    public init(high: UInt64, low: UInt64) { self.high = high; self.low = low }

    /// An IPv4 address from its 32 bits in host order (`0x7F000001` is 127.0.0.1).
    public init(ipv4 bits: UInt32) { high = 0; low = 0xFFFF_0000_0000 | UInt64(bits) }

    /// Parses numeric IPv4 (`192.0.2.1`) or IPv6 (`2001:db8::1`) text; nil for anything else.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { self.init(ipv4: UInt32(bigEndian: v4.s_addr)); return }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        self = withUnsafeBytes(of: &v6) { Self(ipv6: $0) }
    }

    /// An IPv6 address from its 16 bytes in network order.
    init(ipv6 bytes: UnsafeRawBufferPointer) {
        high = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        low = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
    }

    /// Whether this is an IPv4 address (or an IPv4-mapped IPv6 one).
    public var isIPv4: Bool { high == 0 && low >> 32 == 0xFFFF }

    /// The 32 bits of an IPv4 address (host order); nil for IPv6.
    public var ipv4: UInt32? { isIPv4 ? UInt32(truncatingIfNeeded: low) : nil }

    /// Dotted decimal for IPv4, RFC 5952 text for IPv6.
    public var description: String {
        if let v4 = ipv4 {
            return "\(v4 >> 24).\(v4 >> 16 & 0xFF).\(v4 >> 8 & 0xFF).\(v4 & 0xFF)"
        }
        var a = in6_addr()
        withUnsafeMutableBytes(of: &a) {
            $0.storeBytes(of: high.bigEndian, toByteOffset: 0, as: UInt64.self)
            $0.storeBytes(of: low.bigEndian, toByteOffset: 8, as: UInt64.self)
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &a, &text, socklen_t(text.count)) != nil else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A remote endpoint: an IP address and a TCP port.
public struct PeerAddress: Hashable, Sendable, CustomStringConvertible {
    public var ip: IPAddress
    public var port: UInt16

    public init(ip: IPAddress, port: UInt16) { self.ip = ip; self.port = port }

    /// `192.0.2.1:443`, `[2001:db8::1]:443`.
    public var description: String { ip.isIPv4 ? "\(ip):\(port)" : "[\(ip)]:\(port)" }

    /// The address in a `sockaddr_in`/`sockaddr_in6`; nil for other families.
    init?(sockaddr address: UnsafeRawPointer) {
        let family = Int32(address.load(as: sa_family_t.self))
        if family == AF_INET {
            let a = address.loadUnaligned(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!, as: UInt32.self)
            let p = address.loadUnaligned(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_port)!, as: UInt16.self)
            self.init(ip: IPAddress(ipv4: UInt32(bigEndian: a)), port: UInt16(bigEndian: p))
        } else if family == AF_INET6 {
            let off = MemoryLayout<sockaddr_in6>.offset(of: \.sin6_addr)!
            let p = address.loadUnaligned(fromByteOffset: MemoryLayout<sockaddr_in6>.offset(of: \.sin6_port)!, as: UInt16.self)
            self.init(ip: IPAddress(ipv6: UnsafeRawBufferPointer(start: address + off, count: 16)), port: UInt16(bigEndian: p))
        } else {
            return nil
        }
    }
}

/// A block of IP addresses in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or one address.
public struct AddressRange: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible {
    /// The first address of the block (host bits cleared).
    public let base: IPAddress
    /// Prefix length in the 128-bit (IPv4-mapped) space: an IPv4 `/n` is `96 + n`.
    public let prefixLength128: Int

    /// The block of `address` with a prefix of `prefixLength` bits (0...32 for IPv4, 0...128 for IPv6);
    /// nil when the length is out of range.
    public init?(_ address: IPAddress, prefixLength: Int) {
        let bits = address.isIPv4 ? 32 : 128
        guard (0...bits).contains(prefixLength) else { return nil }
        prefixLength128 = address.isIPv4 ? 96 + prefixLength : prefixLength
        let (mh, ml) = Self.mask(prefixLength128)
        base = IPAddress(high: address.high & mh, low: address.low & ml)
    }

    /// Parses `address` or `address/prefix` (IPv4 or IPv6); nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let ip = IPAddress(String(parts[0])) else { return nil }
        if parts.count == 1 {
            self.init(ip, prefixLength: ip.isIPv4 ? 32 : 128)
        } else {
            guard parts[1].allSatisfy(\.isASCII), let n = Int(parts[1]), parts[1].count <= 3 else { return nil }
            self.init(ip, prefixLength: n)
        }
    }

    /// The loopback blocks, `127.0.0.0/8` and `::1`.
    public static let loopback: [AddressRange] = [AddressRange("127.0.0.0/8")!, AddressRange("::1")!]

    /// Whether `address` lies in the block.
    @inline(__always) public func contains(_ address: IPAddress) -> Bool {
        let (mh, ml) = Self.mask(prefixLength128)
        return address.high & mh == base.high && address.low & ml == base.low
    }

    @inline(__always) static func mask(_ n: Int) -> (UInt64, UInt64) {
        let h: UInt64 = n >= 64 ? ~0 : (n == 0 ? 0 : ~0 << UInt64(64 - n))
        let l: UInt64 = n <= 64 ? 0 : (n >= 128 ? ~0 : ~0 << UInt64(128 - n))
        return (h, l)
    }

    /// `10.0.0.0/8`, `::1/128`.
    public var description: String {
        "\(base)/\(base.isIPv4 && prefixLength128 >= 96 ? prefixLength128 - 96 : prefixLength128)"
    }
}
