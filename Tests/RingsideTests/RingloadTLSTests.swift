import Foundation
import Glibc
import Ringside
import RingsideHTTP
import RingsideProtocols
import RingsideTLS
import Testing

// ringload over TLS: echo and HTTP load through the client TLS layer (every byte checked), and the
// handshake mode (full and resumed handshakes, matched against the server's own counters), on both
// backends. Certificates come from TLSFixture (TLSTests.swift): the openssl CLI makes them, and the
// tests skip with the reason printed when it is missing.

/// Runs the ringload binary built next to the tests (bounded to 60 s); its exit status and stdout.
private func ringloadTLS(_ args: [String]) throws -> (status: Int32, output: String) {
    try runBuilt("ringload", args, prefix: ["/usr/bin/timeout", "60"])
}

private func object(_ s: String) throws -> [String: Any] { try jsonObject(s) }

/// Load durations are 0.5 s where the checks are counts far below what that gives (measured on the
/// debug build: about 20,000 echoes or HTTP responses per second, 450-800 handshakes per second, against
/// thresholds of 50 and 20); the open loop keeps 1 s (its check is 500 of the 1,000 paced requests).
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RingloadTLSTests {
    /// A server behind TLS (the fixture's certificates: `localhost` and 127.0.0.1 by default).
    private func withTLSServer<H: ConnectionHandler>(_ backend: BackendKind, handler: @escaping @Sendable () -> H,
                                                     _ body: (RunningServer, TLSFixture.Files) throws -> Void) throws {
        let files = try TLSFixture.get()
        let tls = try TLSContext(TLSFixture.configuration(files))
        try withServer(backend, start: { config in
            try RingsideServer.start(configuration: config, layers: LayerStackFactory([tls]), handler: handler)
        }) { s in
            try body(s, files)
            #expect(eventually { s.stats.connectionsOpen == 0 }, "connections left open: \(s.stats.connectionsOpen)")
            #expect(s.stats.tlsHandshakesInProgress == 0)
        }
    }

    @Test(arguments: allBackends)
    func echoLoadOverTLSChecksEveryByte(_ backend: BackendKind) throws {
        try withTLSServer(backend, handler: { EchoHandler() }) { server, f in
            let (status, out) = try ringloadTLS([
                "echo", "--target", "127.0.0.1:\(server.port)", "--tls", "--tls-ca", f.cert, "--tls-server-name", "localhost",
                "--connections", "6", "--size", "3000", "--pipeline", "2", "--duration", "0.5s", "--warmup", "0.2s",
                "--backend", backend.rawValue, "--json"])
            #expect(status == 0, "\(out)")
            let r = try object(out)
            let errors = r["errors"] as? [String: Any] ?? [:]
            #expect((r["messages"] as? Int ?? 0) > 50, "\(out)")
            #expect(errors["corrupt"] as? Int == 0 && errors["resets"] as? Int == 0 && errors["timeouts"] as? Int == 0)
            #expect(errors["tls"] as? Int == 0)
            let tls = r["tls"] as? [String: Any] ?? [:]
            #expect(tls["handshakes"] as? Int == 6 && tls["failures"] as? Int == 0 && tls["verified"] as? Bool == true, "\(out)")
            // Every byte counted went through the server's TLS layer: 6 handshakes there too.
            #expect(server.stats.tlsHandshakes == 6)
            #expect(server.stats.tlsHandshakeFailures == 0 && server.stats.layerErrors == 0)
        }
    }

    @Test(arguments: allBackends)
    func httpLoadOverTLS(_ backend: BackendKind) throws {
        try withTLSServer(backend, handler: HTTPServer.handler(router: .benchmarkRoutes)) { server, f in
            for version in ["1.2", "1.3"] {
                let (status, out) = try ringloadTLS([
                    "http", "--target", "127.0.0.1:\(server.port)", "--tls", "--tls-ca", f.cert, "--tls-version", version,
                    "--connections", "4", "--pipeline", "4", "--duration", "0.5s", "--warmup", "0.2s",
                    "--backend", backend.rawValue, "--json"])
                #expect(status == 0, "\(out)")
                let r = try object(out)
                let errors = r["errors"] as? [String: Any] ?? [:]
                #expect((r["messages"] as? Int ?? 0) > 50, "TLS \(version): \(out)")
                #expect(errors["corrupt"] as? Int == 0 && errors["badStatus"] as? Int == 0 && errors["tls"] as? Int == 0)
                // "Hello, World!" and its head, as the plaintext stream carries them.
                #expect((r["bytesPerResponse"] as? Double ?? 0) > 13)
                #expect((r["tls"] as? [String: Any])?["handshakes"] as? Int == 4)
            }
            #expect(server.stats.tlsHandshakes == 8 && server.stats.tlsHandshakeFailures == 0)
        }
    }

    /// The open loop (`--rate`) over TLS: memory-BIO sessions under the pacer's own ring.
    @Test func openLoopOverTLS() throws {
        try withTLSServer(.epoll, handler: { EchoHandler() }) { server, f in
            let (status, out) = try ringloadTLS([
                "echo", "--target", "127.0.0.1:\(server.port)", "--tls", "--tls-ca", f.cert, "--connections", "4",
                "--size", "2000", "--rate", "1000", "--duration", "1s", "--warmup", "0.2s", "--json"])
            #expect(status == 0, "\(out)")
            let r = try object(out)
            let errors = r["errors"] as? [String: Any] ?? [:]
            #expect((r["messages"] as? Int ?? 0) > 500, "\(out)")
            #expect(errors["corrupt"] as? Int == 0 && errors["tls"] as? Int == 0 && errors["resets"] as? Int == 0, "\(out)")
            #expect((r["tls"] as? [String: Any])?["handshakes"] as? Int == 4, "\(out)")
            #expect(server.stats.tlsHandshakes == 4)
        }
    }

    @Test func withoutACATheOutputSaysNothingWasVerified() throws {
        try withTLSServer(.epoll, handler: { EchoHandler() }) { server, _ in
            let (status, out) = try ringloadTLS([
                "echo", "--target", "127.0.0.1:\(server.port)", "--tls", "--connections", "2",
                "--duration", "0.5s", "--warmup", "0.1s"])
            #expect(status == 0, "\(out)")
            #expect(out.contains("NOT verified"), "\(out)")
            #expect(out.contains("TLS: 2 handshakes"), "\(out)")
        }
    }

    @Test func aCertificateForAnotherNameFailsTheRun() throws {
        try withTLSServer(.epoll, handler: { EchoHandler() }) { server, f in
            let (status, out) = try ringloadTLS([
                "handshake", "--target", "127.0.0.1:\(server.port)", "--request", "none", "--tls-ca", f.cert,
                "--tls-server-name", "wrong.test", "--duration", "0.3s", "--warmup", "0s", "--json"])
            #expect(status == 1, "\(out)")
            let r = try object(out)
            #expect(((r["errors"] as? [String: Any])?["handshakeFailures"] as? Int ?? 0) > 0, "\(out)")
            #expect(r["handshakes"] as? Int == 0)
            #expect((r["warnings"] as? [String] ?? []).contains { $0.contains("certificate verify failed") }, "\(out)")
            // The closed loop: every connection's handshake fails, counted as TLS errors (not resets).
            let (status2, out2) = try ringloadTLS([
                "echo", "--target", "127.0.0.1:\(server.port)", "--tls", "--tls-ca", f.cert, "--tls-server-name", "wrong.test",
                "--connections", "3", "--duration", "0.3s", "--warmup", "0s", "--json"])
            #expect(status2 == 1, "\(out2)")
            let errors = try object(out2)["errors"] as? [String: Any] ?? [:]
            #expect(errors["tls"] as? Int == 3 && errors["resets"] as? Int == 0 && errors["connectFailures"] as? Int == 0, "\(out2)")
        }
    }

    /// Full handshakes only with --no-tls-resume; with resumption, every connection after a slot's first
    /// resumes. The client's counts match the server's.
    @Test(arguments: allBackends)
    func handshakeModeCountsFullAndResumedHandshakes(_ backend: BackendKind) throws {
        try withTLSServer(backend, handler: HTTPServer.handler(router: .benchmarkRoutes)) { server, f in
            var serverHandshakes = 0, serverResumed = 0
            for resume in [true, false] {
                let (status, out) = try ringloadTLS([
                    "handshake", "--target", "127.0.0.1:\(server.port)", "--tls-ca", f.cert, "--connections", "3",
                    "--duration", "0.5s", "--warmup", "0s", resume ? "--tls-resume" : "--no-tls-resume", "--json"])
                #expect(status == 0, "\(out)")
                let r = try object(out)
                let handshakes = r["handshakes"] as? Int ?? 0
                let resumed = r["resumed"] as? Int ?? -1
                let total = r["totalHandshakes"] as? Int ?? -1
                let totalResumed = r["totalResumed"] as? Int ?? -1
                #expect(handshakes > 20, "\(out)")
                #expect((r["errors"] as? [String: Any]).map { $0.values.allSatisfy { $0 as? Int == 0 } } == true, "\(out)")
                if resume {
                    #expect(resumed > 0 && resumed >= handshakes - 3, "\(out)")
                    #expect(totalResumed >= total - 3)
                } else {
                    #expect(resumed == 0 && totalResumed == 0, "\(out)")
                }
                serverHandshakes += total
                serverResumed += totalResumed
                #expect(eventually { server.stats.connectionsOpen == 0 })
                #expect(server.stats.tlsHandshakes == serverHandshakes, "server \(server.stats.tlsHandshakes), ringload \(serverHandshakes)")
                #expect(server.stats.tlsResumptions == serverResumed, "server \(server.stats.tlsResumptions), ringload \(serverResumed)")
            }
        }
    }

    /// TLS 1.2 (session tickets in the handshake) and echo as the request; TLS 1.3 with no request
    /// (the client waits for the ticket before closing, so the next connection resumes).
    @Test func handshakeModeOverTLS12AndWithoutARequest() throws {
        try withTLSServer(.uring, handler: { EchoHandler() }) { server, f in
            for args in [["--tls-version", "1.2", "--request", "echo", "--size", "500"], ["--tls-version", "1.3", "--request", "none"]] {
                let (status, out) = try ringloadTLS([
                    "handshake", "--target", "127.0.0.1:\(server.port)", "--tls-ca", f.cert, "--tls-server-name", "localhost",
                    "--connections", "2", "--duration", "0.5s", "--warmup", "0s", "--json"] + args)
                #expect(status == 0, "\(out)")
                let r = try object(out)
                #expect(r["version"] as? String == "TLSv\(args[1])", "\(out)")
                #expect((r["resumed"] as? Int ?? 0) > 10, "\(out)")
                #expect(((r["errors"] as? [String: Any])?["corrupt"] as? Int) == 0)
            }
            #expect(eventually { server.stats.connectionsOpen == 0 })
            #expect(server.stats.tlsHandshakeFailures == 0)
        }
    }
}
