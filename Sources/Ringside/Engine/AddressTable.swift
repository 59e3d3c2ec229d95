import Glibc

/// Open connections per remote address, for `maxConnectionsPerAddress`: an open-addressing hash
/// table sized at start (twice the connection cap, a power of two), so counting costs no allocation.
///
/// Invariants: every key with a non-zero count sits in the probe sequence of its hash without an empty
/// entry before it; removal shifts later entries back (no tombstones); there are never more keys than
/// connections, so the table is at most half full.
struct AddressTable: ~Copyable {
    private let high: UnsafeMutablePointer<UInt64>
    private let low: UnsafeMutablePointer<UInt64>
    private let counts: UnsafeMutablePointer<Int32>   // 0: empty entry
    private let mask: Int

    init(connections: Int) {
        var n = 16
        while n < connections * 2 { n <<= 1 }
        mask = n - 1
        high = .allocate(capacity: n); high.initialize(repeating: 0, count: n)
        low = .allocate(capacity: n); low.initialize(repeating: 0, count: n)
        counts = .allocate(capacity: n); counts.initialize(repeating: 0, count: n)
    }

    deinit { high.deallocate(); low.deallocate(); counts.deallocate() }

    @inline(__always) private func home(_ h: UInt64, _ l: UInt64) -> Int {
        var x = h &* 0x9E37_79B9_7F4A_7C15 ^ l &* 0xC2B2_AE3D_27D4_EB4F
        x ^= x >> 29
        return Int(truncatingIfNeeded: x) & mask
    }

    /// The entry holding the key, or the empty entry where it would go.
    @inline(__always) private func find(_ h: UInt64, _ l: UInt64) -> Int {
        var i = home(h, l)
        while counts[i] != 0 && (high[i] != h || low[i] != l) { i = (i + 1) & mask }
        return i
    }

    /// Counts one more connection from the address unless it already has `limit`; returns whether it
    /// was admitted.
    mutating func admit(_ h: UInt64, _ l: UInt64, limit: Int) -> Bool {
        let i = find(h, l)
        if counts[i] >= Int32(clamping: limit) { return false }
        if counts[i] == 0 { high[i] = h; low[i] = l }
        counts[i] += 1
        return true
    }

    /// Forgets one connection from the address.
    mutating func release(_ h: UInt64, _ l: UInt64) {
        var i = find(h, l)
        guard counts[i] > 0 else { return }
        counts[i] -= 1
        guard counts[i] == 0 else { return }
        // Backward-shift deletion: move later entries of the run into the hole where their home allows.
        var j = i
        while true {
            j = (j + 1) & mask
            if counts[j] == 0 { return }
            let k = home(high[j], low[j])
            // Entry j may move to i if its home is not in the cyclic range (i, j].
            let between = i <= j ? (k > i && k <= j) : (k > i || k <= j)
            if !between {
                high[i] = high[j]; low[i] = low[j]; counts[i] = counts[j]
                counts[j] = 0
                i = j
            }
        }
    }

    /// Open connections counted for the address (tests).
    func count(_ h: UInt64, _ l: UInt64) -> Int { Int(counts[find(h, l)]) }

    /// A 128-bit key for a socket address: IPv6 as is, IPv4 mapped (::ffff:a.b.c.d). Nil for other
    /// families (not counted).
    static func key(_ addr: UnsafeRawPointer) -> (UInt64, UInt64)? {
        let family = Int32(addr.load(as: sa_family_t.self))
        if family == AF_INET {
            let a = addr.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!, as: UInt32.self)
            return (0, 0xFFFF_0000_0000 | UInt64(UInt32(bigEndian: a)))
        }
        if family == AF_INET6 {
            let off = MemoryLayout<sockaddr_in6>.offset(of: \.sin6_addr)!
            let h = UInt64(bigEndian: addr.loadUnaligned(fromByteOffset: off, as: UInt64.self))
            let l = UInt64(bigEndian: addr.loadUnaligned(fromByteOffset: off + 8, as: UInt64.self))
            return (h, l)
        }
        return nil
    }
}
