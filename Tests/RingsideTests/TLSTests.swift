import Foundation
import Glibc
import Ringside
import RingsideHTTP
import RingsideProtocols
import RingsideTLS
import Testing

// TLS over the stream-layer hook: interop with curl, openssl s_client, Python's ssl, wrk and h2load on
// both backends, bad input (garbage, truncated records, a trickled ClientHello, half-open handshakes),
// SNI, reload, the kTLS probe. Certificates are generated into a temporary directory at test time.

/// A command on PATH, or nil.
func tool(_ name: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(name)"
        if access(p, X_OK) == 0 { return p }
    }
    return nil
}

/// Skips the test (printing why) when `name` is not installed; returns its path.
func requireTool(_ name: String) throws -> String {
    guard let p = tool(name) else {
        let why = "\(name) is not installed"
        print("SKIP: \(why)")
        try Test.cancel(Comment(rawValue: why))
    }
    return p
}

/// Runs `path args` bounded by `timeout` seconds (coreutils timeout); status and stdout+stderr.
@discardableResult
func runTool(_ path: String, _ args: [String], stdin: Data? = nil, timeout: Int = 20) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
    p.arguments = ["\(timeout)", path] + args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    let input = Pipe()
    p.standardInput = input
    try p.run()
    if let stdin { input.fileHandleForWriting.write(stdin) }
    try input.fileHandleForWriting.close()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Test certificates (P-256, one day), made once per test process with the openssl CLI.
enum TLSFixture {
    struct Files: Sendable { let dir: String; let cert: String; let key: String; let otherCert: String; let otherKey: String }

    static let files: Result<Files, ClientError> = {
        guard let openssl = tool("openssl") else { return .failure(ClientError("openssl is not installed")) }
        let dir = NSTemporaryDirectory() + "ringside-tls-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        func make(_ name: String, _ cn: String, _ san: String) -> Bool {
            let r = try? runTool(openssl, ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                           "-days", "1", "-subj", "/CN=\(cn)", "-addext", "subjectAltName=\(san)",
                                           "-keyout", "\(dir)/\(name)-key.pem", "-out", "\(dir)/\(name)-cert.pem"])
            return r?.status == 0
        }
        guard make("localhost", "localhost", "DNS:localhost,IP:127.0.0.1"), make("other", "other.test", "DNS:other.test") else {
            return .failure(ClientError("openssl req failed"))
        }
        return .success(Files(dir: dir, cert: "\(dir)/localhost-cert.pem", key: "\(dir)/localhost-key.pem",
                              otherCert: "\(dir)/other-cert.pem", otherKey: "\(dir)/other-key.pem"))
    }()

    static func get() throws -> Files {
        switch files {
        case .success(let f): return f
        case .failure(let e):
            print("SKIP: \(e)")
            try Test.cancel(Comment(rawValue: "\(e)"))
        }
    }

    static func configuration(_ f: Files) -> TLSConfiguration {
        TLSConfiguration(certificates: [
            TLSCertificate(certificateFile: f.cert, keyFile: f.key, serverNames: ["localhost"]),
            TLSCertificate(certificateFile: f.otherCert, keyFile: f.otherKey, serverNames: ["other.test", "*.wild.test"]),
        ])
    }
}

/// A ClientHello as Python's ssl module sends it (hex from a memory BIO), for the raw-socket tests.
let pythonClientHello: [UInt8]? = {
    guard let py = tool("python3") else { return nil }
    let script = """
    import ssl
    c = ssl.create_default_context(); i = ssl.MemoryBIO(); o = ssl.MemoryBIO()
    s = c.wrap_bio(i, o, server_hostname='localhost')
    try: s.do_handshake()
    except ssl.SSLWantReadError: pass
    print(o.read().hex())
    """
    guard let r = try? runTool(py, ["-c", script]), r.status == 0 else { return nil }
    let hex = Array(r.output.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
    var out: [UInt8] = []
    var i = 0
    while i + 1 < hex.count {
        out.append(UInt8(String(decoding: hex[i...i + 1], as: UTF8.self), radix: 16)!)
        i += 2
    }
    return out.isEmpty ? nil : out
}()

@Suite(.serialized, .timeLimit(.minutes(1)))
struct TLSTests {
    /// HTTP (the benchmark routes) behind TLS.
    func withHTTPS(_ backend: BackendKind, tls configure: (inout TLSConfiguration) -> Void = { _ in },
                   server: (inout ServerConfiguration) -> Void = { _ in },
                   _ body: (RunningServer, TLSContext, TLSFixture.Files) throws -> Void) throws {
        let files = try TLSFixture.get()
        var tc = TLSFixture.configuration(files)
        configure(&tc)
        let tls = try TLSContext(tc)
        try withServer(backend, configure: server, start: { config in
            try RingsideServer.start(configuration: config, layers: LayerStackFactory([tls]),
                                     handler: HTTPServer.handler(router: .benchmarkRoutes))
        }) { s in
            try body(s, tls, files)
            #expect(eventually { s.stats.connectionsOpen == 0 }, "connections left open: \(s.stats.connectionsOpen)")
            #expect(s.stats.tlsHandshakesInProgress == 0)
        }
    }

    // MARK: interop

    @Test(arguments: allBackends)
    func curlOverTLS13And12(_ backend: BackendKind) throws {
        let curl = try requireTool("curl")
        try withHTTPS(backend) { server, _, f in
            let url = "https://localhost:\(server.port)/plaintext"
            let v13 = try runTool(curl, ["-sS", "-v", "--cacert", f.cert, url])
            #expect(v13.status == 0, "\(v13.output)")
            #expect(v13.output.contains("SSL connection using TLSv1.3"))
            #expect(v13.output.contains("ALPN: server accepted http/1.1"))
            #expect(v13.output.contains("Hello, World!"))
            let v12 = try runTool(curl, ["-sS", "-v", "--cacert", f.cert, "--tlsv1.2", "--tls-max", "1.2", url])
            #expect(v12.status == 0, "\(v12.output)")
            #expect(v12.output.contains("SSL connection using TLSv1.2"))
            #expect(v12.output.contains("Hello, World!"))
            // A 200 KB body both ways (records across chunks), bytes exact; keep-alive reuse.
            let body = randomBytes(200_000, seed: 77).map { UInt8(ascii: "a") + $0 % 26 }
            let file = f.dir + "/body-\(backend).txt"
            try Data(body).write(to: URL(fileURLWithPath: file))
            let echo = try runTool(curl, ["-sS", "--cacert", f.cert, "-H", "Content-Type: text/plain", "--data-binary", "@\(file)",
                                          "https://localhost:\(server.port)/echo"])
            #expect(echo.status == 0)
            #expect(echo.output == String(decoding: body, as: UTF8.self))
            #expect(server.stats.tlsHandshakes == 3)
            #expect(server.stats.tlsHandshakeFailures == 0)
        }
    }

    /// File bodies over TLS: a spooled upload echoed back from its file and static files go through the
    /// layers (sendFile reads into a staging buffer there), bytes exact, with a send pool small enough
    /// that the layers run short of chunks and the response resumes.
    @Test(arguments: allBackends)
    func fileBodiesThroughTLS(_ backend: BackendKind) throws {
        let curl = try requireTool("curl")
        let files = try TLSFixture.get()
        let tls = try TLSContext(TLSFixture.configuration(files))
        let dir = files.dir + "/static-\(backend)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let big = randomBytes(3_000_000, seed: 91)
        try Data(big).write(to: URL(fileURLWithPath: dir + "/big.bin"))
        var router = HTTPRouter.benchmarkRoutes
        try router.files("/static", root: dir)
        try withServer(backend, configure: { $0.sendBuffers = 48 }, start: { config in
            try RingsideServer.start(configuration: config, layers: LayerStackFactory([tls]),
                                     handler: HTTPServer.handler(router: router))
        }) { server in
            let out = dir + "/got.bin"
            let get = try runTool(curl, ["-sS", "--cacert", files.cert, "-o", out, "https://localhost:\(server.port)/static/big.bin"])
            #expect(get.status == 0, "\(get.output)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(big))
            let echoed = dir + "/echoed.bin"
            let post = try runTool(curl, ["-sS", "--cacert", files.cert, "-H", "Expect:", "--data-binary", "@\(dir)/big.bin",
                                          "-o", echoed, "https://localhost:\(server.port)/echo"])
            #expect(post.status == 0, "\(post.output)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: echoed)) == Data(big))
            #expect(eventually { server.stats.connectionsOpen == 0 })
        }
    }

    @Test(arguments: allBackends)
    func opensslALPNAndResumption(_ backend: BackendKind) throws {
        let openssl = try requireTool("openssl")
        try withHTTPS(backend) { server, _, f in
            for version in ["-tls1_3", "-tls1_2"] {
                let sess = f.dir + "/sess-\(backend)\(version).pem"
                let request = Data("GET /plaintext HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
                let args = ["s_client", version, "-connect", "127.0.0.1:\(server.port)", "-servername", "localhost",
                            "-alpn", "http/1.1", "-CAfile", f.cert, "-ign_eof"]
                let first = try runTool(openssl, args + ["-sess_out", sess], stdin: request)
                #expect(first.output.contains("ALPN protocol: http/1.1"), "\(first.output)")
                #expect(first.output.contains("New, TLSv1."))
                #expect(first.output.contains("Verify return code: 0 (ok)"))
                #expect(first.output.contains("Hello, World!"))
                let second = try runTool(openssl, args + ["-sess_in", sess], stdin: request)
                #expect(second.output.contains("Reused, TLSv1."), "\(second.output)")
                #expect(second.output.contains("Hello, World!"))
            }
            #expect(server.stats.tlsHandshakes == 4)
            #expect(server.stats.tlsResumptions == 2)
        }
    }

    @Test(arguments: allBackends)
    func pythonSSLAndHTTPClient(_ backend: BackendKind) throws {
        let py = try requireTool("python3")
        try withHTTPS(backend) { server, _, f in
            let script = """
            import ssl, http.client, sys
            ctx = ssl.create_default_context(cafile=sys.argv[1])
            c = http.client.HTTPSConnection('localhost', int(sys.argv[2]), context=ctx, timeout=10)
            for i in range(3):
                c.request('GET', '/plaintext'); r = c.getresponse(); print(r.status, r.read().decode())
            print(c.sock.version(), c.sock.selected_alpn_protocol())
            c.close()
            """
            let r = try runTool(py, ["-c", script, f.cert, "\(server.port)"])
            #expect(r.status == 0, "\(r.output)")
            #expect(r.output.components(separatedBy: "200 Hello, World!").count == 4, "\(r.output)")
            #expect(r.output.contains("TLSv1.3"))
            #expect(server.stats.tlsHandshakes == 1)  // one keep-alive connection
        }
    }

    @Test(arguments: allBackends)
    func wrkAndH2loadOverHTTPS(_ backend: BackendKind) throws {
        let wrk = try requireTool("wrk")
        let h2load = try requireTool("h2load")
        try withHTTPS(backend) { server, _, _ in
            let w = try runTool(wrk, ["-t1", "-c8", "-d1s", "https://127.0.0.1:\(server.port)/plaintext"])
            #expect(w.status == 0, "\(w.output)")
            #expect(w.output.contains("Requests/sec"))
            #expect(!w.output.contains("Socket errors") && !w.output.contains("Non-2xx"), "\(w.output)")
            let h = try runTool(h2load, ["--h1", "-n", "400", "-c", "4", "https://127.0.0.1:\(server.port)/plaintext"])
            #expect(h.status == 0, "\(h.output)")
            #expect(h.output.contains("400 succeeded, 0 failed, 0 errored"), "\(h.output)")
            #expect(server.stats.tlsHandshakeFailures == 0 && server.stats.layerErrors == 0)
        }
    }

    /// One TLS context shared by two loops: both serve handshakes and resumptions.
    @Test func oneContextSharedByTwoLoops() throws {
        let h2load = try requireTool("h2load")
        try withHTTPS(.uring, server: { $0.threads = 2 }) { server, _, _ in
            let h = try runTool(h2load, ["--h1", "-n", "320", "-c", "32", "https://127.0.0.1:\(server.port)/plaintext"])
            #expect(h.output.contains("320 succeeded, 0 failed, 0 errored"), "\(h.output)")
            #expect(server.stats.tlsHandshakes == 32)
            #expect(server.loopStats.allSatisfy { $0.tlsHandshakes > 0 }, "\(server.loopStats.map(\.tlsHandshakes))")
        }
    }

    @Test func sniChoosesTheCertificate() throws {
        let openssl = try requireTool("openssl")
        try withHTTPS(.epoll) { server, _, f in
            for (name, cn) in [("other.test", "other.test"), ("localhost", "localhost"), ("unknown.test", "localhost"),
                               ("a.wild.test", "other.test"), ("a.b.wild.test", "localhost"), ("OTHER.test", "other.test")] {
                let r = try runTool(openssl, ["s_client", "-connect", "127.0.0.1:\(server.port)", "-servername", name],
                                    stdin: Data())
                #expect(r.output.contains("subject=CN = \(cn)"), "\(name): \(r.output)")
            }
        }
    }

    /// PROXY protocol in front of TLS: the header (in the clear) is consumed before the handshake, and
    /// the handler over TLS sees the client's address from it.
    @Test(arguments: allBackends)
    func proxyProtocolThenTLS(_ backend: BackendKind) throws {
        let py = try requireTool("python3")
        try withHTTPS(backend, server: { $0.proxyProtocol = ProxyProtocolConfiguration() }) { server, _, f in
            let script = """
            import ssl, socket, sys
            raw = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
            raw.sendall(b'PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\\r\\n')
            ctx = ssl.create_default_context(cafile=sys.argv[1])
            s = ctx.wrap_socket(raw, server_hostname='localhost')
            s.sendall(b'GET /plaintext HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n')
            buf = b''
            while True:
                d = s.recv(4096)
                if not d: break
                buf += d
            print(buf.split(b'\\r\\n')[0].decode(), buf.endswith(b'Hello, World!'))
            """
            let r = try runTool(py, ["-c", script, f.cert, "\(server.port)"])
            #expect(r.output.trimmingCharacters(in: .whitespacesAndNewlines) == "HTTP/1.1 200 OK True", "\(r.output)")
            #expect(server.stats.proxyHeadersAccepted == 1)
            #expect(server.stats.tlsHandshakes == 1)
        }
    }

    @Test func reloadSwapsCertificatesWithoutRestart() throws {
        let openssl = try requireTool("openssl")
        let f = try TLSFixture.get()
        // A context on copies of the files, so the shared fixture stays as it is.
        let cert = f.dir + "/reload-cert.pem", key = f.dir + "/reload-key.pem"
        try? FileManager.default.removeItem(atPath: cert); try? FileManager.default.removeItem(atPath: key)
        try FileManager.default.copyItem(atPath: f.cert, toPath: cert)
        try FileManager.default.copyItem(atPath: f.key, toPath: key)
        let tls = try TLSContext(TLSConfiguration(certificateFile: cert, keyFile: key))
        try withServer(.epoll, start: { try RingsideServer.start(configuration: $0, layers: LayerStackFactory([tls])) { EchoHandler() } }) { server in
            func subject() throws -> String {
                let r = try runTool(openssl, ["s_client", "-connect", "127.0.0.1:\(server.port)"], stdin: Data())
                return r.output.components(separatedBy: "\n").first { $0.hasPrefix("subject=") } ?? r.output
            }
            #expect(try subject() == "subject=CN = localhost")
            try FileManager.default.removeItem(atPath: cert); try FileManager.default.removeItem(atPath: key)
            try FileManager.default.copyItem(atPath: f.otherCert, toPath: cert)
            try FileManager.default.copyItem(atPath: f.otherKey, toPath: key)
            try tls.reload()
            #expect(try subject() == "subject=CN = other.test")
            // A broken file: the reload fails and the current certificate stays.
            try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: cert))
            #expect(throws: TLSError.self) { try tls.reload() }
            #expect(try subject() == "subject=CN = other.test")
        }
    }

    /// `ringside serve --tls-cert --tls-key`: http, echo and async-echo over TLS; SIGHUP reloads the files.
    @Test func cliServesTLSAndReloadsOnSIGHUP() throws {
        let openssl = try requireTool("openssl")
        let curl = try requireTool("curl")
        let f = try TLSFixture.get()
        let cert = f.dir + "/cli-cert.pem", key = f.dir + "/cli-key.pem"
        func place(_ c: String, _ k: String) throws {
            try? FileManager.default.removeItem(atPath: cert); try? FileManager.default.removeItem(atPath: key)
            try FileManager.default.copyItem(atPath: c, toPath: cert); try FileManager.default.copyItem(atPath: k, toPath: key)
        }
        try place(f.cert, f.key)
        for proto in ["http", "echo", "async-echo"] {
            let p = Process()
            p.executableURL = builtBinary("ringside")
            p.arguments = ["serve", "--protocol", proto, "--backend", "epoll", "--port", "0", "--tls-cert", cert, "--tls-key", key]
            let out = Pipe()
            p.standardOutput = out
            p.standardError = FileHandle.nullDevice
            try p.run()
            defer { if p.isRunning { p.interrupt() }; p.waitUntilExit() }
            var line = ""
            while !line.hasSuffix("\n") {
                let d = out.fileHandleForReading.availableData
                if d.isEmpty { break }
                line += String(decoding: d, as: UTF8.self)
            }
            #expect(line.contains(" tls"), "\(line)")
            guard let port = line.split(separator: " ").first(where: { $0.contains("127.0.0.1:") })?.split(separator: ":").last.flatMap({ Int($0) }) else {
                Issue.record("no listening line: \(line)"); continue
            }
            if proto == "http" {
                let r = try runTool(curl, ["-sS", "--cacert", f.cert, "https://localhost:\(port)/plaintext"], timeout: 5)
                #expect(r.output == "Hello, World!", "\(r.output)")
                try place(f.otherCert, f.otherKey)
                kill(p.processIdentifier, SIGHUP)
                #expect(eventually {
                    let s = try? runTool(openssl, ["s_client", "-connect", "127.0.0.1:\(port)"], stdin: Data(), timeout: 5)
                    return s?.output.contains("subject=CN = other.test") == true
                }, "SIGHUP did not reload the certificate")
                try place(f.cert, f.key)
            } else {
                // The input stays open a moment after the line, so s_client reads the echo before it quits.
                let r = try runTool("/bin/sh", ["-c", "(echo ping over tls; sleep 0.5) | \(openssl) s_client -connect 127.0.0.1:\(port) -quiet -no_ign_eof -CAfile \(f.cert)"],
                                    timeout: 5)
                #expect(r.output.contains("ping over tls"), "\(r.output)")
            }
            p.interrupt()
            p.waitUntilExit()
            #expect(p.terminationStatus == 0)
        }
    }

    // MARK: bad input

    @Test(arguments: allBackends)
    func garbageInsteadOfClientHelloGetsAnAlert(_ backend: BackendKind) throws {
        try withHTTPS(backend) { server, _, _ in
            let c = try TestClient(port: server.port)
            try c.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            let answer = try c.receiveUntilEOF()
            // A TLS alert record (content type 21), then end-of-file.
            #expect(answer.first == 21, "\(answer)")
            #expect(eventually { server.stats.tlsHandshakeFailures == 1 })
        }
    }

    @Test(arguments: allBackends)
    func truncatedRecordAndCloseMidHandshake(_ backend: BackendKind) throws {
        guard let hello = pythonClientHello else {
            print("SKIP: python3 could not produce a ClientHello"); try Test.cancel("no ClientHello")
        }
        try withHTTPS(backend) { server, _, _ in
            // Half of a ClientHello record, then end-of-file: closed, counted as truncated.
            let c = try TestClient(port: server.port)
            try c.send(Array(hello[0 ..< hello.count / 2]))
            c.shutdownWrite()
            #expect(try c.receiveUntilEOF() == [])
            // A record header announcing more than the peer ever sends, then a reset.
            do {
                let d = try TestClient(port: server.port)
                try d.send([0x16, 0x03, 0x01, 0x40, 0x00] + Array(repeating: 0, count: 100))
                d.setLingerZero()
                #expect(eventually { server.stats.tlsHandshakesInProgress == 1 })
            }  // closed here, with a reset
            #expect(eventually { server.stats.tlsHandshakesTruncated >= 1 })
            // A good client is unaffected.
            let e = try TestClient(port: server.port)
            try e.send(hello)
            let reply = try e.receive(exactly: 5)
            #expect(reply[0] == 22)  // a handshake record: the ServerHello
        }
    }

    /// After the handshake: a request, then half a record and end-of-file. The answer to the request
    /// arrives, the cut record is counted (`layerErrors`) and the connection closes.
    @Test(arguments: allBackends)
    func truncatedRecordAfterTheHandshake(_ backend: BackendKind) throws {
        let py = try requireTool("python3")
        try withHTTPS(backend) { server, _, f in
            let script = """
            import ssl, socket, sys, os
            ctx = ssl.create_default_context(cafile=sys.argv[1])
            s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[2]))), server_hostname='localhost')
            s.sendall(b'GET /plaintext HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n')
            buf = b''
            while b'Hello, World!' not in buf: buf += s.recv(4096)
            print('Hello, World!')
            os.write(s.fileno(), b'\\x17\\x03\\x03\\x00\\x40' + b'x' * 10)
            socket.socket(fileno=os.dup(s.fileno())).shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                print('eof' if s.recv(100) == b'' else 'data')
            except Exception as e:
                print('closed', type(e).__name__)
            """
            let r = try runTool(py, ["-c", script, f.cert, "\(server.port)"])
            #expect(r.output.hasPrefix("Hello, World!"), "\(r.output)")
            #expect(eventually { server.stats.layerErrors == 1 }, "\(r.output)")
        }
    }

    @Test(arguments: allBackends)
    func clientHelloOneByteEvery200msIsClosedAtTheDeadline(_ backend: BackendKind) throws {
        guard let hello = pythonClientHello else {
            print("SKIP: python3 could not produce a ClientHello"); try Test.cancel("no ClientHello")
        }
        try withHTTPS(backend, tls: { $0.handshakeTimeout = nil }, server: { $0.authenticationTimeout = .seconds(1) }) { server, _, _ in
            let c = try TestClient(port: server.port)
            c.setNonBlocking()
            let start = ContinuousClock.now
            var closedAfter: Duration? = nil
            var buf = [UInt8](repeating: 0, count: 64)
            for b in hello.prefix(25) {
                _ = [b].withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress!, 1, Int32(MSG_NOSIGNAL)) }
                usleep(200_000)
                let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, 64, 0) }
                if n == 0 || (n < 0 && errno != EAGAIN) {
                    closedAfter = ContinuousClock.now - start
                    break
                }
            }
            #expect(closedAfter != nil, "still open after 25 bytes (5 s)")
            if let t = closedAfter { #expect(t >= .milliseconds(900) && t < .seconds(3), "closed after \(t)") }
            #expect(eventually { server.stats.authenticationTimeouts == 1 })
            #expect(eventually { server.stats.tlsHandshakesInProgress == 0 })
        }
    }

    /// The TLS handshake deadline, shorter than the authentication one: a ClientHello that never
    /// completes is closed at it and counted.
    @Test(arguments: allBackends)
    func handshakeTimeoutClosesAStalledHandshake(_ backend: BackendKind) throws {
        guard let hello = pythonClientHello else {
            print("SKIP: python3 could not produce a ClientHello"); try Test.cancel("no ClientHello")
        }
        try withHTTPS(backend, tls: { $0.handshakeTimeout = .milliseconds(300) }) { server, _, _ in
            let c = try TestClient(port: server.port, timeoutSeconds: 5)
            try c.send(Array(hello[0 ..< 10]))
            let start = ContinuousClock.now
            #expect(try c.receiveUntilEOF() == [])
            let t = ContinuousClock.now - start
            #expect(t >= .milliseconds(250) && t < .seconds(3), "closed after \(t)")
            #expect(eventually { server.stats.tlsHandshakeTimeouts == 1 })
            #expect(server.stats.authenticationTimeouts == 0)
        }
    }

    /// The per-loop cap on handshakes in progress and its eviction. 300 connections stuck
    /// mid-handshake (half a ClientHello each) while curl still gets its answer; 50 more fill the cap
    /// of 350; newcomers are refused while no handshake has been idle for the grace (1 s), then evict
    /// the handshakes idle for longest: the oldest, except one that made progress meanwhile (it sent
    /// the rest of its ClientHello and got the server's flight). With eviction off, beyond the cap is
    /// refused. Everything comes back to zero.
    @Test(arguments: allBackends)
    func handshakeCapRefusesThenEvictsTheLongestIdle(_ backend: BackendKind) throws {
        let curl = try requireTool("curl")
        guard let hello = pythonClientHello else {
            print("SKIP: python3 could not produce a ClientHello"); try Test.cancel("no ClientHello")
        }
        let half = Array(hello[0 ..< hello.count / 2])
        let grace = Duration.seconds(1)
        try withHTTPS(backend, tls: { $0.maximumHandshakesPerLoop = 350; $0.handshakeEvictionGrace = grace }) { server, _, f in
            // The first 11 are seen by the server before the others (the loop's list is in the order the
            // server saw first bytes, which a backend's batching may shuffle among near-simultaneous ones).
            let fill = ContinuousClock.now
            var stuck: [TestClient] = []
            for _ in 0..<11 { stuck.append(try stuckClient(server.port, half)) }
            #expect(eventually { server.stats.tlsHandshakesInProgress == 11 })
            for _ in 11..<300 { stuck.append(try stuckClient(server.port, half)) }
            #expect(eventually { server.stats.tlsHandshakesInProgress == 300 })
            let start = ContinuousClock.now
            let r = try runTool(curl, ["-sS", "--cacert", f.cert, "https://localhost:\(server.port)/plaintext"])
            #expect(r.output == "Hello, World!", "\(r.output)")
            print("good client under 300 half-open handshakes: \(ContinuousClock.now - start)")
            // 50 more fill the cap; the next 10 find none idle for the grace yet: refused.
            for _ in 0..<50 { stuck.append(try stuckClient(server.port, half)) }
            #expect(eventually { server.stats.tlsHandshakesInProgress == 350 })
            var refused: [TestClient] = []
            for _ in 0..<10 { refused.append(try stuckClient(server.port, half)) }
            let filled = ContinuousClock.now - fill
            if filled < grace / 2 {
                #expect(eventually { server.stats.tlsHandshakesOverCap == 10 })
                #expect(server.stats.tlsHandshakesEvicted == 0)
            } else {
                print("SKIP the refusal check: filling the cap took \(filled), not under half the grace")
            }
            refused.removeAll()
            // The first stuck client completes its ClientHello: the server answers (progress), so it is
            // now the last to be evicted.
            try stuck[0].send(Array(hello[hello.count / 2 ..< hello.count]))
            let answer = try stuck[0].receive(exactly: 5)
            #expect(answer[0] == 22)  // the ServerHello's record
            let overCap = server.stats.tlsHandshakesOverCap
            // Once the grace has passed, 10 newcomers evict the 10 idle for longest: stuck[1...10].
            usleep(UInt32(milliseconds(grace) + 100) * 1000)
            for _ in 0..<10 { stuck.append(try stuckClient(server.port, half)) }
            #expect(eventually { server.stats.tlsHandshakesEvicted == 10 })
            #expect(server.stats.tlsHandshakesOverCap == overCap)
            #expect(server.stats.tlsHandshakesInProgress == 350)
            var closed: [Int] = []
            let deadline = ContinuousClock.now.advanced(by: .seconds(5))
            repeat {
                usleep(5_000)
                closed = []
                for i in stuck.indices where closedByServer(stuck[i]) { closed.append(i) }
            } while closed.count < 10 && ContinuousClock.now < deadline
            #expect(closed == Array(1...10), "evicted: \(closed), not the 10 idle for longest (stuck[1...10])")
            stuck.removeAll()
            #expect(eventually { server.stats.connectionsOpen == 0 })
            #expect(server.stats.tlsHandshakesInProgress == 0)
        }
        // Eviction off: beyond the cap, every newcomer is refused.
        try withHTTPS(backend, tls: { $0.maximumHandshakesPerLoop = 20; $0.handshakeEvictionGrace = nil }) { server, _, _ in
            var stuck: [TestClient] = []
            for _ in 0..<25 { stuck.append(try stuckClient(server.port, half)) }
            #expect(eventually { server.stats.tlsHandshakesOverCap == 5 })
            #expect(server.stats.tlsHandshakesInProgress == 20)
            #expect(server.stats.tlsHandshakesEvicted == 0)
            stuck.removeAll()
        }
    }

    /// Issue 13's bad-input case: 5,000 half-open connections (2,500 that connected and sent nothing,
    /// 2,500 that sent half a ClientHello and stopped) on one loop with
    /// the default cap (512) and grace (500 ms), while a good client (Python's ssl, a full handshake
    /// per request) makes 50 requests: every one is served, its latency is printed with and without
    /// the flood. Silent connections hold no TLS state and do not count against the cap; once the
    /// flood is idle for the grace, a newcomer evicts its longest-idle handshake. Then the flood closes
    /// and every counter comes back to zero.
    @Test(arguments: allBackends)
    func fiveThousandHalfOpenHandshakesWhileAGoodClientKeepsItsLatency(_ backend: BackendKind) throws {
        let py = try requireTool("python3")
        guard let hello = pythonClientHello else {
            print("SKIP: python3 could not produce a ClientHello"); try Test.cancel("no ClientHello")
        }
        let total = 5_000  // also under ASan and TSan (measured: 3.3 s and 3.9 s for both backends)
        // Both ends of every connection are in this process.
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let needed = rlim_t(2 * total + 1_000)
        if limit.rlim_cur < needed {
            guard limit.rlim_max >= needed else {
                print("SKIP: RLIMIT_NOFILE hard limit \(limit.rlim_max) < \(needed)"); try Test.cancel("RLIMIT_NOFILE")
            }
            limit.rlim_cur = needed
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        let script = """
        import ssl, socket, sys, time, statistics
        ctx = ssl.create_default_context(cafile=sys.argv[1])
        def run():
            ts = []
            for i in range(int(sys.argv[3])):
                t = time.perf_counter()
                s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=10), server_hostname='localhost')
                s.sendall(b'GET /plaintext HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n')
                buf = b''
                while not buf.endswith(b'Hello, World!'):
                    d = s.recv(4096)
                    if not d: break
                    buf += d
                s.close()
                ts.append((time.perf_counter() - t) * 1000)
                if not (buf.startswith(b'HTTP/1.1 200') and buf.endswith(b'Hello, World!')): print('BAD', buf[:100], flush=True)
            print('served %d median %.2f ms max %.2f ms' % (len(ts), statistics.median(ts), max(ts)), flush=True)
        run()
        sys.stdin.readline()
        run()
        """
        let requests = 50
        try withHTTPS(backend, tls: { $0.handshakeTimeout = .seconds(30) },
                      server: { $0.authenticationTimeout = .seconds(30); $0.maxConnections = total + 1_000 }) { server, _, f in
            let defaults = TLSConfiguration(certificates: [])
            let grace = defaults.handshakeEvictionGrace ?? .zero
            let cap = defaults.maximumHandshakesPerLoop
            // One Python process for both runs, started while this process has few descriptors:
            // Foundation's Process.run reads /proc/self/fd past its buffer when thousands are open
            // (AddressSanitizer: heap-buffer-overflow in findMaximumOpenFromProcSelfFD).
            let good = try LineProcess(py, ["-c", script, f.cert, "\(server.port)", "\(requests)"], timeout: 60)
            let calm = good.readLine()
            #expect(calm.hasPrefix("served \(requests) "), "no flood: \(calm)")
            print("[\(backend)] good client, no flood: \(calm)")
            let rss0 = residentKiB()
            let start = ContinuousClock.now
            let flood = Descriptors(try openHalfOpen(port: server.port, count: total, server: server) { i in
                i % 2 == 0 ? nil : Array(hello[0 ..< hello.count / 2])
            })
            let partial = total / 2
            #expect(eventually { server.stats.tlsHandshakesInProgress + server.stats.tlsHandshakesOverCap + server.stats.tlsHandshakesEvicted == partial })
            #expect(server.stats.tlsHandshakesInProgress == min(cap, partial))
            let expectedOpen = total - server.stats.tlsHandshakesOverCap - server.stats.tlsHandshakesEvicted
            #expect(eventually { server.stats.connectionsOpen == expectedOpen }, "open: \(server.stats.connectionsOpen), expected \(expectedOpen)")
            print("[\(backend)] flood of \(total) open in \(ContinuousClock.now - start): \(server.stats.connectionsOpen) open, "
                  + "\(server.stats.tlsHandshakesInProgress) handshakes in progress, \(server.stats.tlsHandshakesOverCap) refused, "
                  + "\(server.stats.tlsHandshakesEvicted) evicted; RSS +\((residentKiB() - rss0) / server.stats.connectionsOpen) KiB per connection")
            // The flood is idle from now on: once the grace has passed, its handshakes are evictable.
            usleep(UInt32(milliseconds(grace) + 100) * 1000)
            let refusedBefore = server.stats.tlsHandshakesOverCap, evictedBefore = server.stats.tlsHandshakesEvicted
            good.writeLine("go")
            let flooded = good.readLine()
            #expect(flooded.hasPrefix("served \(requests) "), "under the flood: \(flooded)")
            #expect(good.finish() == 0)
            print("[\(backend)] good client, \(total) half-open connections: \(flooded)")
            #expect(server.stats.tlsHandshakesOverCap == refusedBefore, "a good client was refused")
            #expect(server.stats.tlsHandshakesEvicted > evictedBefore || cap > partial)
            #expect(server.stats.tlsHandshakes == 2 * requests)
            flood.closeAll()
            #expect(eventually(10) { server.stats.connectionsOpen == 0 }, "\(server.stats.connectionsOpen) left open")
            #expect(server.stats.tlsHandshakesInProgress == 0)
            #expect(eventually { server.stats.buffersInUse == 0 }, "chunks out: \(server.stats.buffersInUse)")
        }
    }

    // MARK: kTLS

    @Test func kernelTLSIsProbedAndTheUserSpacePathIsUsed() throws {
        print("kTLS probe: \(KernelTLS.status)")
        if case .unavailable(let why) = KernelTLS.status {
            #expect(KernelTLS.userSpace)
            #expect(why.contains("ENOENT") || why.contains("probe failed"))
            print("SKIP kTLS path tests: \(why) (the kernel path runs in the kernel matrix: scripts/kernel-matrix, check ktls)")
        }
        // The user-space path carries the bytes: an echo over TLS through Python.
        let py = try requireTool("python3")
        let f = try TLSFixture.get()
        let tls = try TLSContext(TLSConfiguration(certificateFile: f.cert, keyFile: f.key))
        try withServer(.uring, start: { try RingsideServer.start(configuration: $0, layers: LayerStackFactory([tls])) { EchoHandler() } }) { server in
            let script = """
            import ssl, socket, sys
            ctx = ssl.create_default_context(cafile=sys.argv[1])
            s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[2]))), server_hostname='localhost')
            s.sendall(b'x' * 100000); got = b''
            while len(got) < 100000: got += s.recv(65536)
            print(len(got), got == b'x' * 100000); s.close()
            """
            let r = try runTool(py, ["-c", script, f.cert, "\(server.port)"])
            #expect(r.output.trimmingCharacters(in: .whitespacesAndNewlines) == "100000 True", "\(r.output)")
            // Without the kernel's tls module every connection encrypts in user space.
            if KernelTLS.userSpace { #expect(server.stats.tlsKernelTransmits == 0) }
        }
    }
}

/// A client stuck mid-handshake: it sent `bytes` (part of a ClientHello) and waits.
func stuckClient(_ port: Int, _ bytes: [UInt8]) throws -> TestClient {
    let c = try TestClient(port: port)
    try c.send(bytes)
    return c
}

/// Whether the server has closed `c` (end of file or a reset pending), without blocking.
func closedByServer(_ c: TestClient) -> Bool {
    var b: UInt8 = 0
    let n = recv(c.fd, &b, 1, Int32(MSG_DONTWAIT) | Int32(MSG_PEEK))
    return n == 0 || (n < 0 && errno != EAGAIN)
}

/// `d` in whole milliseconds.
func milliseconds(_ d: Duration) -> Int {
    Int(d.components.seconds) * 1000 + Int(d.components.attoseconds / 1_000_000_000_000_000)
}

/// This process's resident set (VmRSS), in KiB.
func residentKiB() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ")[1]) ?? 0
    }
    return 0
}

/// Opens `count` connections to 127.0.0.1:`port` without a thread or a blocking call per connection:
/// non-blocking connects in batches of 500, polled until connected, each sent `payload(i)` (nil:
/// nothing); a batch waits for the server to accept the one before (the listen backlog never
/// overflows, which would cost a SYN retransmit, a second). Returns the descriptors.
func openHalfOpen(port: Int, count: Int, server: RunningServer, payload: (Int) -> [UInt8]?) throws -> [Int32] {
    var fds: [Int32] = []
    fds.reserveCapacity(count)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    // SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC (on Linux the last two are O_NONBLOCK and O_CLOEXEC;
    // the SOCK_* names are not found in this file, which imports RingsideTLS's C module).
    let type: Int32 = 1 | O_NONBLOCK | O_CLOEXEC
    let base = server.stats.connectionsAccepted
    while fds.count < count {
        var batch: [pollfd] = []
        for _ in 0 ..< min(500, count - fds.count) {
            let fd = socket(AF_INET, type, 0)
            guard fd >= 0 else { fds.forEach { closeWithReset($0) }; throw ClientError("socket: \(Errno.current)") }
            let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard r == 0 || errno == EINPROGRESS else {
                let e = Errno.current
                closeWithReset(fd); fds.forEach { closeWithReset($0) }
                throw ClientError("connect: \(e)")
            }
            batch.append(pollfd(fd: fd, events: Int16(POLLOUT), revents: 0))
        }
        // Every socket of the batch writable (connected), or a failure.
        var pending = batch
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        while !pending.isEmpty && ContinuousClock.now < deadline {
            _ = poll(&pending, nfds_t(pending.count), 100)
            pending.removeAll { $0.revents != 0 }
        }
        let first = fds.count
        fds += batch.map(\.fd)
        for (i, p) in batch.enumerated() {
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 || !pending.isEmpty {
                fds.forEach { closeWithReset($0) }
                throw ClientError("connect \(first + i): \(err != 0 ? "\(Errno(rawValue: err))" : "not connected within 10 s")")
            }
            if let bytes = payload(first + i) {
                let n = bytes.withUnsafeBytes { send(p.fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
                if n != bytes.count { fds.forEach { closeWithReset($0) }; throw ClientError("send: \(n) \(Errno.current)") }
            }
        }
        let want = base + fds.count
        guard eventually(10, { server.stats.connectionsAccepted >= want }) else {
            fds.forEach { closeWithReset($0) }
            throw ClientError("the server accepted \(server.stats.connectionsAccepted - base) of \(fds.count)")
        }
    }
    return fds
}

/// A child process spoken to line by line (`timeout` bounds its life): stdin, and stdout with stderr.
final class LineProcess {
    private let process = Process()
    private let input = Pipe(), output = Pipe()
    private var buffered = Data()
    private var finished = false

    init(_ path: String, _ args: [String], timeout: Int) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = ["\(timeout)", path] + args
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
    }

    deinit { _ = finish() }

    /// The next line (without its newline); at end of output, what is left (a traceback, say).
    func readLine() -> String {
        while true {
            if let nl = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffered[buffered.startIndex ..< nl], as: UTF8.self)
                buffered = Data(buffered[(nl + 1)...])
                return line
            }
            let more = output.fileHandleForReading.availableData
            if more.isEmpty {
                defer { buffered = Data() }
                return String(decoding: buffered, as: UTF8.self)
            }
            buffered.append(more)
        }
    }

    func writeLine(_ line: String) { input.fileHandleForWriting.write(Data((line + "\n").utf8)) }

    /// Closes its input (once) and waits for it; its exit status.
    func finish() -> Int32 {
        if !finished {
            finished = true
            do { try input.fileHandleForWriting.close() } catch { print("LineProcess: closing stdin: \(error)") }
            process.waitUntilExit()
        }
        return process.terminationStatus
    }
}

/// Descriptors closed (with a reset) by `closeAll()` or, at the latest, when the object goes.
final class Descriptors {
    private var fds: [Int32]
    init(_ fds: [Int32]) { self.fds = fds }
    deinit { closeAll() }
    func closeAll() {
        fds.forEach(closeWithReset)
        fds = []
    }
}

/// Closes `fd` with a reset (SO_LINGER 0: no TIME_WAIT left behind for thousands of test sockets).
/// Closing a descriptor twice is avoided by the callers' bookkeeping.
func closeWithReset(_ fd: Int32) {
    var l = linger(l_onoff: 1, l_linger: 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    close(fd)
}
