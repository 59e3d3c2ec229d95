import Ringside
import Testing

/// Feeds `bytes` to a fresh parser in pieces cut at `cuts`; returns the header and the offset (in the
/// whole input) where the application's bytes start, or the error.
func parseProxy(_ bytes: [UInt8], cuts: [Int] = [], maximumLength: Int = ProxyHeaderParser.defaultMaximumLength)
    -> Result<(ProxyHeader, Int)?, ProxyHeaderError> {
    var parser = ProxyHeaderParser(maximumLength: maximumLength)
    var start = 0
    for end in (cuts.filter { $0 > 0 && $0 < bytes.count }.sorted() + [bytes.count]) {
        let piece = Array(bytes[start ..< end])
        let r = piece.withUnsafeBytes { b in Result { () throws(ProxyHeaderError) in try parser.parse(b) } }
        switch r {
        case .success(.complete(let h, let consumed)): return .success((h, start + consumed))
        case .success(.needMore): break
        case .failure(let e): return .failure(e)
        }
        start = end
    }
    return .success(nil)
}

func v1(_ s: String) -> [UInt8] { Array(s.utf8) }

let sig2: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

func peer(_ ip: String, _ port: UInt16) -> PeerAddress { PeerAddress(ip: IPAddress(ip)!, port: port) }

@Suite struct ProxyProtocolParserTests {
    @Test func v1TCP4() throws {
        let r = try parseProxy(v1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /")).get()
        #expect(r?.0 == .proxied(source: peer("192.0.2.1", 56324), destination: peer("198.51.100.2", 443)))
        #expect(r?.1 == 45)
    }

    @Test func v1TCP6() throws {
        let line = "PROXY TCP6 2001:db8::1 ::ffff:192.0.2.9 0 65535\r\n"
        let r = try parseProxy(v1(line)).get()
        #expect(r?.0 == .proxied(source: peer("2001:db8::1", 0), destination: peer("192.0.2.9", 65535)))
        #expect(r?.1 == line.utf8.count)
        // The longest legal line: two full-length IPv6 addresses, five-digit ports: 104 bytes.
        let long = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        #expect(try parseProxy(v1(long)).get()?.1 == long.utf8.count)
    }

    @Test func v1Unknown() throws {
        #expect(try parseProxy(v1("PROXY UNKNOWN\r\nx")).get()?.0 == .local)
        #expect(try parseProxy(v1("PROXY UNKNOWN\r\nx")).get()?.1 == 15)
        // Whatever follows UNKNOWN up to CRLF is ignored.
        let r = try parseProxy(v1("PROXY UNKNOWN ffff::1 whatever 1 2\r\n")).get()
        #expect(r?.0 == .local && r?.1 == 36)
    }

    @Test func v2ProxyIPv4AndIPv6() throws {
        let h4 = ProxyHeader.proxied(source: peer("203.0.113.7", 4242), destination: peer("192.0.2.1", 80))
        let b4 = h4.v2Bytes()
        #expect(b4.count == 28)
        #expect(try parseProxy(b4 + v1("data")).get()?.0 == h4)
        #expect(try parseProxy(b4 + v1("data")).get()?.1 == 28)
        let h6 = ProxyHeader.proxied(source: peer("2001:db8::7", 1), destination: peer("2001:db8::1", 443))
        let b6 = h6.v2Bytes()
        #expect(b6.count == 52)
        #expect(try parseProxy(b6).get()?.0 == h6)
    }

    @Test func v2LocalAndIgnoredFamilies() throws {
        #expect(try parseProxy(ProxyHeader.local.v2Bytes() + [1, 2]).get()?.1 == 16)
        #expect(try parseProxy(ProxyHeader.local.v2Bytes()).get()?.0 == .local)
        // LOCAL with a block (ignored, family byte included).
        #expect(try parseProxy(sig2 + [0x20, 0xFF, 0, 3, 9, 9, 9]).get()?.1 == 19)
        // PROXY over AF_UNIX: 216 bytes of addresses, ignored.
        let unix = sig2 + [0x21, 0x31, 0, 216] + [UInt8](repeating: 0x41, count: 216)
        let r = try parseProxy(unix + [7]).get()
        #expect(r?.0 == .local && r?.1 == 232)
        // PROXY over AF_UNSPEC.
        #expect(try parseProxy(sig2 + [0x21, 0x00, 0, 0]).get()?.0 == .local)
    }

    @Test func v2TLVsAreSkipped() throws {
        let h = ProxyHeader.proxied(source: peer("10.1.2.3", 5), destination: peer("10.0.0.1", 8080))
        // PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY "example.com", a NOOP of 300 bytes.
        let tlvs: [UInt8] = [0x01, 0, 2] + v1("h2") + [0x02, 0, 11] + v1("example.com") + [0x04, 1, 44] + [UInt8](repeating: 0, count: 300)
        let b = h.v2Bytes(tlvs: tlvs)
        let r = try parseProxy(b + v1("GET")).get()
        #expect(r?.0 == h && r?.1 == b.count)
    }

    @Test func incompleteNeedsMore() throws {
        #expect(try parseProxy(v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r")).get() == nil)
        #expect(try parseProxy(Array(ProxyHeader.local.v2Bytes().prefix(15))).get() == nil)
        #expect(try parseProxy([]).get() == nil)
    }

    static let malformed: [(String, [UInt8], ProxyHeaderError)] = [
        ("GET", v1("GET / HTTP/1.1\r\n"), .missingSignature),
        ("lower case", v1("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), .missingSignature),
        ("no space", v1("PROXYTCP4"), .missingSignature),
        ("v2 signature typo", [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x55], .missingSignature),
        ("LF without CR", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), .malformedV1),
        ("CR inside", v1("PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n"), .malformedV1),
        ("empty", v1("PROXY \r\n"), .malformedV1),
        ("tcp4", v1("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"), .malformedV1),
        ("UDP4", v1("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), .malformedV1),
        ("two spaces", v1("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), .malformedV1),
        ("trailing space", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), .malformedV1),
        ("missing port", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), .malformedV1),
        ("extra field", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), .malformedV1),
        ("v4 octet 256", v1("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"), .invalidAddress),
        ("v4 leading zero", v1("PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n"), .invalidAddress),
        ("v4 three parts", v1("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), .invalidAddress),
        ("v4 five parts", v1("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"), .invalidAddress),
        ("v4 empty part", v1("PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n"), .invalidAddress),
        ("v6 in TCP4", v1("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), .invalidAddress),
        ("v4 in TCP6", v1("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), .invalidAddress),
        ("bad v6", v1("PROXY TCP6 2001:db8:::1 ::1 1 2\r\n"), .invalidAddress),
        ("port 65536", v1("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), .invalidAddress),
        ("port leading zero", v1("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"), .invalidAddress),
        ("port sign", v1("PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n"), .invalidAddress),
        ("port six digits", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 000001\r\n"), .invalidAddress),
        ("v1 too long", v1("PROXY UNKNOWN" + String(repeating: "x", count: 100)), .tooLong(limit: 107)),
        ("v2 version 1", sig2 + [0x11, 0x11, 0, 12], .unsupportedVersion),
        ("v2 version 3", sig2 + [0x31, 0x11, 0, 12], .unsupportedVersion),
        ("v2 command 2", sig2 + [0x22, 0x11, 0, 12], .unsupportedCommand),
        ("v2 family 4", sig2 + [0x21, 0x41, 0, 12], .unsupportedFamily),
        ("v2 transport 3", sig2 + [0x21, 0x13, 0, 12], .unsupportedFamily),
        ("v2 INET short", sig2 + [0x21, 0x11, 0, 11], .truncatedAddresses),
        ("v2 INET6 short", sig2 + [0x21, 0x21, 0, 35], .truncatedAddresses),
        ("v2 UNIX short", sig2 + [0x21, 0x31, 0, 215], .truncatedAddresses),
        ("v2 too long", sig2 + [0x21, 0x11, 0x10, 0x00], .tooLong(limit: 4096)),
    ]

    @Test(arguments: malformed.indices) func malformedIsRefused(_ i: Int) {
        let (name, bytes, error) = Self.malformed[i]
        switch parseProxy(bytes) {
        case .failure(let e): #expect(e == error, "\(name)")
        case .success(let r): Issue.record("\(name): accepted \(String(describing: r))")
        }
        // Byte by byte, the same verdict.
        switch parseProxy(bytes, cuts: Array(1 ..< bytes.count)) {
        case .failure(let e): #expect(e == error, "\(name), byte by byte")
        case .success(let r): Issue.record("\(name), byte by byte: accepted \(String(describing: r))")
        }
    }

    @Test func errorIsFinal() {
        var p = ProxyHeaderParser()
        #expect(throws: ProxyHeaderError.missingSignature) { try v1("X").withUnsafeBytes { b in _ = try p.parse(b) } }
        #expect(throws: ProxyHeaderError.missingSignature) { try v1("PROXY UNKNOWN\r\n").withUnsafeBytes { b in _ = try p.parse(b) } }
    }

    @Test func maximumLengthIsConfigurable() throws {
        let b = ProxyHeader.proxied(source: peer("1.2.3.4", 1), destination: peer("5.6.7.8", 2)).v2Bytes(tlvs: [4, 0, 250] + [UInt8](repeating: 0, count: 250))
        #expect(b.count == 281)
        #expect(try parseProxy(b, maximumLength: 281).get()?.1 == 281)
        #expect(throws: ProxyHeaderError.tooLong(limit: 280)) { try parseProxy(b, maximumLength: 280).get() }
    }

    /// Every header at every split point (and byte by byte) gives what the one-shot parse gives.
    @Test func arbitrarySplits() throws {
        let headers: [[UInt8]] = [
            v1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"),
            v1("PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
            v1("PROXY UNKNOWN\r\n"),
            ProxyHeader.proxied(source: peer("203.0.113.7", 4242), destination: peer("192.0.2.1", 80)).v2Bytes(tlvs: [1, 0, 2, 0x68, 0x32]),
            ProxyHeader.proxied(source: peer("2001:db8::7", 1), destination: peer("2001:db8::1", 443)).v2Bytes(),
            ProxyHeader.local.v2Bytes(),
        ]
        for h in headers {
            let input = h + v1("GET / HTTP/1.1\r\n")
            let whole = try parseProxy(input).get()
            #expect(whole?.1 == h.count)
            for cut in 0 ... input.count {
                let split = try parseProxy(input, cuts: [cut]).get()
                #expect(split?.0 == whole?.0 && split?.1 == whole?.1, "cut at \(cut)")
            }
            for a in stride(from: 1, to: h.count, by: 3) {
                let split = try parseProxy(input, cuts: [a, a + 1, a + 7]).get()
                #expect(split?.0 == whole?.0 && split?.1 == whole?.1, "cuts at \(a)")
            }
            let bytewise = try parseProxy(input, cuts: Array(1 ..< input.count)).get()
            #expect(bytewise?.0 == whole?.0 && bytewise?.1 == whole?.1)
        }
    }

    @Test func signatureDetection() {
        func could(_ b: [UInt8]) -> Bool { b.withUnsafeBytes { ProxyHeaderParser.couldBeHeader($0) } }
        #expect(could([]))
        #expect(could(v1("PRO")))
        #expect(could(v1("PROXY TCP4")))
        #expect(could(Array(sig2.prefix(5))))
        #expect(could(sig2 + [0x21]))
        #expect(!could(v1("POST")))
        #expect(!could(v1("GET")))
        #expect(!could(v1("\r\nGET")))
    }

    @Test func addressesAndRanges() {
        #expect(IPAddress("127.0.0.1")?.description == "127.0.0.1")
        #expect(IPAddress("::ffff:10.0.0.1") == IPAddress("10.0.0.1"))
        #expect(IPAddress("2001:DB8::1")?.description == "2001:db8::1")
        #expect(IPAddress("1.2.3") == nil)
        #expect(IPAddress("example.com") == nil)
        #expect(peer("2001:db8::1", 80).description == "[2001:db8::1]:80")
        #expect(peer("192.0.2.1", 80).description == "192.0.2.1:80")
        let r = AddressRange("10.0.0.0/8")!
        #expect(r.contains(IPAddress("10.255.1.2")!))
        #expect(!r.contains(IPAddress("11.0.0.1")!))
        #expect(r.description == "10.0.0.0/8")
        #expect(AddressRange("10.1.2.3/8")?.description == "10.0.0.0/8")
        #expect(AddressRange("192.0.2.7")!.contains(IPAddress("192.0.2.7")!))
        #expect(!AddressRange("192.0.2.7")!.contains(IPAddress("192.0.2.8")!))
        let v6 = AddressRange("2001:db8::/32")!
        #expect(v6.contains(IPAddress("2001:db8:ffff::1")!))
        #expect(!v6.contains(IPAddress("2001:db9::1")!))
        #expect(!v6.contains(IPAddress("10.0.0.1")!))
        #expect(AddressRange("0.0.0.0/0")!.contains(IPAddress("203.0.113.9")!))
        #expect(!AddressRange("0.0.0.0/0")!.contains(IPAddress("2001:db8::1")!))
        #expect(AddressRange("::/0")!.contains(IPAddress("2001:db8::1")!))
        #expect(AddressRange("10.0.0.0/33") == nil)
        #expect(AddressRange("::1/129") == nil)
        #expect(AddressRange("10.0.0.0/") == nil)
        #expect(AddressRange("10.0.0.0/x") == nil)
        #expect(AddressRange.loopback.contains { $0.contains(IPAddress("127.8.9.10")!) })
        #expect(AddressRange.loopback.contains { $0.contains(IPAddress("::1")!) })
        #expect(!AddressRange.loopback.contains { $0.contains(IPAddress("::2")!) })
    }

    @Test func encodersRoundTrip() throws {
        let h = ProxyHeader.proxied(source: peer("192.0.2.1", 1234), destination: peer("192.0.2.2", 80))
        #expect(String(decoding: h.v1Bytes, as: UTF8.self) == "PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n")
        #expect(try parseProxy(h.v1Bytes).get()?.0 == h)
        #expect(try parseProxy(ProxyHeader.local.v1Bytes).get()?.0 == .local)
    }
}
