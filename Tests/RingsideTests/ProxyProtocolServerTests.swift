import Glibc
@testable import Ringside
import Testing

/// Says who it thinks the peer is (`Connection.peerAddress` and a newline) when opened, then echoes.
struct WhoAmIEcho: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    mutating func opened(on connection: Connection) {
        try? connection.write(Array("\(connection.peerAddress.map { "\($0.ip)" } ?? "nil")\n".utf8))
    }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        do { try connection.send(bytes) } catch { connection.abort() }
    }
}

extension TestClient {
    /// Reads up to and including the first newline.
    func receiveLine() throws -> String {
        var line: [UInt8] = []
        while line.last != 0x0A { line += try receive(exactly: 1) }
        return String(decoding: line.dropLast(), as: UTF8.self)
    }
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct ProxyProtocolServerTests {
    static func proxied(_ ip: String, _ port: UInt16 = 40000) -> ProxyHeader {
        let source = IPAddress(ip)!
        return .proxied(source: PeerAddress(ip: source, port: port),
                        destination: PeerAddress(ip: IPAddress(source.isIPv4 ? "127.0.0.1" : "::1")!, port: 1))
    }

    func withProxyServer(_ backend: BackendKind, configure: (inout ServerConfiguration) -> Void = { _ in },
                         _ body: (RunningServer) throws -> Void) throws {
        try withServer(backend, configure: { c in
            c.proxyProtocol = ProxyProtocolConfiguration()
            configure(&c)
        }, handler: { WhoAmIEcho() }, body)
    }

    @Test(arguments: allBackends) func clientAddressReachesTheHandler(_ backend: BackendKind) throws {
        try withProxyServer(backend) { server in
            // v1, header and data in one send.
            let a = try TestClient(port: server.port)
            try a.send(Self.proxied("203.0.113.7").v1Bytes + Array("hi".utf8))
            #expect(try a.receiveLine() == "203.0.113.7")
            #expect(try a.receive(exactly: 2) == Array("hi".utf8))
            // v2 over IPv6, byte by byte.
            let b = try TestClient(port: server.port)
            for byte in Self.proxied("2001:db8::42").v2Bytes(tlvs: [1, 0, 2, 0x68, 0x32]) { try b.send([byte]) }
            #expect(try b.receiveLine() == "2001:db8::42")
            try b.send(Array("yo".utf8))
            #expect(try b.receive(exactly: 2) == Array("yo".utf8))
            // v2 LOCAL (a health check): the socket's own address.
            let c = try TestClient(port: server.port, bindTo: "127.0.0.3")
            try c.send(ProxyHeader.local.v2Bytes())
            #expect(try c.receiveLine() == "127.0.0.3")
            #expect(eventually { server.stats.proxyHeadersAccepted == 3 })
        }
    }

    @Test(arguments: allBackends) func malformedHeaderFromTrustedProxyCloses(_ backend: BackendKind) throws {
        try withProxyServer(backend) { server in
            let bad = try TestClient(port: server.port)
            try bad.send(Array("PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\nhello".utf8))
            #expect(closedByServer(bad, within: 3))
            // No header at all from a trusted proxy is refused too (the handler never sees "GET").
            let none = try TestClient(port: server.port)
            try none.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
            #expect(closedByServer(none, within: 3))
            // End of input in the middle of a header.
            let cut = try TestClient(port: server.port)
            try cut.send(Array("PROXY TCP4 1.2".utf8))
            cut.shutdownWrite()
            #expect(closedByServer(cut, within: 3))
            #expect(eventually { server.stats.proxyHeadersRejected == 3 })
            #expect(server.stats.proxyHeadersAccepted == 0)
        }
    }

    @Test(arguments: allBackends) func incompleteHeaderIsClosedAtTheDeadline(_ backend: BackendKind) throws {
        try withProxyServer(backend, configure: { $0.proxyProtocol!.headerTimeout = .milliseconds(300) }) { server in
            let slow = try TestClient(port: server.port)
            try slow.send(Array("PROXY TCP4 ".utf8))
            let start = ContinuousClock.now
            #expect(closedByServer(slow, within: 3))
            let took = start.duration(to: .now)
            #expect(took >= .milliseconds(200) && took < .seconds(2), "cut off after \(took)")
            #expect(eventually { server.stats.proxyHeaderTimeouts == 1 })
        }
    }

    @Test(arguments: allBackends) func untrustedSourcesAreServedDirectlyAndMayNotSendHeaders(_ backend: BackendKind) throws {
        try withProxyServer(backend, configure: { $0.proxyProtocol!.trustedProxies = [AddressRange("127.0.0.2")!] }) { server in
            // An untrusted client without a header: served, with its own address.
            let direct = try TestClient(port: server.port, bindTo: "127.0.0.1")
            #expect(try direct.receiveLine() == "127.0.0.1")
            try direct.send(Array("PRX".utf8))  // starts like a header, then is not one
            #expect(try direct.receive(exactly: 3) == Array("PRX".utf8))
            // An untrusted client sending a v1 header (split mid-signature): closed.
            let spoof1 = try TestClient(port: server.port, bindTo: "127.0.0.1")
            #expect(try spoof1.receiveLine() == "127.0.0.1")
            try spoof1.send(Array("PRO".utf8))
            try spoof1.send(Array("XY TCP4 10.0.0.1 10.0.0.2 1 2\r\n".utf8))
            #expect(closedByServer(spoof1, within: 3))
            // ... or a v2 one.
            let spoof2 = try TestClient(port: server.port, bindTo: "127.0.0.1")
            try spoof2.send(Self.proxied("10.9.9.9").v2Bytes())
            #expect(closedByServer(spoof2, within: 3))
            // The trusted proxy's header is believed.
            let proxy = try TestClient(port: server.port, bindTo: "127.0.0.2")
            try proxy.send(Self.proxied("198.51.100.1").v1Bytes)
            #expect(try proxy.receiveLine() == "198.51.100.1")
            #expect(eventually { server.stats.proxyHeadersUntrusted == 2 })
            #expect(eventually { server.stats.proxyHeadersAccepted == 1 })
        }
    }

    /// The per-address cap counts the client the header names, not the proxy every connection comes from.
    @Test(arguments: allBackends) func perAddressCapAppliesToTheClientAddress(_ backend: BackendKind) throws {
        try withProxyServer(backend, configure: { $0.maxConnectionsPerAddress = 2 }) { server in
            var held: [TestClient] = []
            for _ in 0 ..< 2 {
                let c = try TestClient(port: server.port)
                try c.send(Self.proxied("198.51.100.1").v2Bytes())
                #expect(try c.receiveLine() == "198.51.100.1")
                held.append(c)
            }
            let third = try TestClient(port: server.port)
            try third.send(Self.proxied("198.51.100.1").v2Bytes())
            #expect(closedByServer(third, within: 3), "a third connection from the same client is over the cap")
            // Another client through the same proxy address is not.
            let other = try TestClient(port: server.port)
            try other.send(Self.proxied("198.51.100.2").v1Bytes)
            #expect(try other.receiveLine() == "198.51.100.2")
            #expect(eventually { server.stats.connectionsRefusedPerAddress == 1 })
            // Once one closes, the client may connect again.
            held.removeFirst()
            #expect(eventually { server.stats.connectionsOpen == 2 })
            let again = try TestClient(port: server.port)
            try again.send(Self.proxied("198.51.100.1").v1Bytes)
            #expect(try again.receiveLine() == "198.51.100.1")
        }
    }

    @Test(arguments: allBackends) func peerAddressWithoutProxyProtocol(_ backend: BackendKind) throws {
        // epoll always knows it; io_uring when it accepts with addresses (the per-address cap).
        try withServer(backend, configure: { $0.maxConnectionsPerAddress = 100 }, handler: { WhoAmIEcho() }) { server in
            let c = try TestClient(port: server.port, bindTo: "127.0.0.5")
            #expect(try c.receiveLine() == "127.0.0.5")
        }
    }
}

@Suite struct DurationTextTests {
    @Test func compactDescriptions() {
        #expect(Duration.seconds(10).compactDescription == "10s")
        #expect(Duration.milliseconds(500).compactDescription == "500ms")
        #expect(Duration.milliseconds(1500).compactDescription == "1.5s")
        #expect(Duration.microseconds(250).compactDescription == "250us")
        #expect(Duration.zero.compactDescription == "0s")
        #expect(Duration.seconds(-1).compactDescription == "-1s")
        #expect(Duration.milliseconds(-20).compactDescription == "-20ms")
    }
}
