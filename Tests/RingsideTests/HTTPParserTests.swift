import Glibc
import RingsideHTTP
import Testing

// MARK: - recording sink and helpers (self-contained: everything here is private to this file)

private struct HPField: Equatable, CustomStringConvertible {
    var name: [UInt8]
    var value: [UInt8]
    init(_ name: [UInt8], _ value: [UInt8]) { self.name = name; self.value = value }
    init(_ name: String, _ value: String) { self.init(Array(name.utf8), Array(value.utf8)) }
    var description: String { "\(String(decoding: name, as: UTF8.self)): \(String(decoding: value, as: UTF8.self))" }
}

private struct HPHead: Equatable {
    var method: [UInt8]
    var target: [UInt8]
    var version: HTTPVersion
    var fields: [HPField]
    var keepAlive: Bool
    var contentLength: Int?
    var isChunked: Bool
    var expectsContinue: Bool
}

private enum HPEvent: Equatable {
    case head(HPHead)
    case body([UInt8])          // consecutive body pieces are concatenated by the sink
    case end([HPField]?)
}

private func hpFields(_ head: HTTPRequestHead) -> [HPField] {
    (0..<head.headerCount).map { HPField(Array(head.name(at: $0).buffer), Array(head.value(at: $0).buffer)) }
}

private struct HPSink: HTTPParserSink {
    var events: [HPEvent] = []
    var emptyBodyCalls = 0
    var badTrailerViews = 0

    mutating func requestHead(_ head: HTTPRequestHead) {
        events.append(.head(HPHead(
            method: Array(head.method.buffer), target: Array(head.target.buffer), version: head.version,
            fields: hpFields(head), keepAlive: head.keepAlive, contentLength: head.contentLength,
            isChunked: head.isChunked, expectsContinue: head.expectsContinue)))
    }

    mutating func requestBody(_ bytes: UnsafeRawBufferPointer) {
        if bytes.isEmpty { emptyBodyCalls += 1 }
        if case .body(let previous)? = events.last {
            events[events.count - 1] = .body(previous + Array(bytes))
        } else {
            events.append(.body(Array(bytes)))
        }
    }

    mutating func requestEnd(trailers: HTTPRequestHead?) {
        if let trailers, trailers.method.count != 0 || trailers.target.count != 0 || trailers.headerCount == 0 {
            badTrailerViews += 1
        }
        events.append(.end(trailers.map(hpFields)))
    }
}

private struct HPOutcome: Equatable, CustomStringConvertible {
    var events: [HPEvent]
    var error: HTTPParseError?
    var idle: Bool
    var description: String { "events: \(events) error: \(error.map(\.description) ?? "none") idle: \(idle)" }
}

/// One feed of an array's bytes, with the parser's typed error.
private func hpFeed<S: HTTPParserSink>(_ parser: inout HTTPRequestParser, _ bytes: [UInt8],
                                       _ sink: inout S) throws(HTTPParseError) {
    var failure: HTTPParseError?
    bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
        do throws(HTTPParseError) { try parser.feed(raw, into: &sink) } catch { failure = error }
    }
    if let failure { throw failure }
}

/// Feeds `pieces` in order to a fresh parser; stops at the first error.
private func hpRun(_ pieces: [[UInt8]], limits: HTTPLimits = HTTPLimits()) -> HPOutcome {
    var parser = HTTPRequestParser(limits: limits)
    var sink = HPSink()
    var failure: HTTPParseError?
    for piece in pieces {
        do {
            try hpFeed(&parser, piece, &sink)
        } catch {
            failure = error
            break
        }
    }
    #expect(sink.emptyBodyCalls == 0, "requestBody called with no bytes")
    #expect(sink.badTrailerViews == 0, "trailer view with a method/target or without fields")
    return HPOutcome(events: sink.events, error: failure, idle: parser.isIdle)
}

private func hpRun(_ s: String, limits: HTTPLimits = HTTPLimits()) -> HPOutcome {
    hpRun([Array(s.utf8)], limits: limits)
}

private func hpBytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Asserts that `input` fails with `status` (whole input in one feed, and byte by byte).
private func hpExpectStatus(_ input: [UInt8], _ status: Int, limits: HTTPLimits = HTTPLimits(),
                            sourceLocation: SourceLocation = #_sourceLocation) {
    let whole = hpRun([input], limits: limits)
    #expect(whole.error?.status == status, "\(String(decoding: input, as: UTF8.self).debugDescription): \(whole)",
            sourceLocation: sourceLocation)
    let bytewise = hpRun(input.map { [$0] }, limits: limits)
    #expect(bytewise == whole, "byte-by-byte differs", sourceLocation: sourceLocation)
}

private func hpExpectStatus(_ input: String, _ status: Int, limits: HTTPLimits = HTTPLimits(),
                            sourceLocation: SourceLocation = #_sourceLocation) {
    hpExpectStatus(hpBytes(input), status, limits: limits, sourceLocation: sourceLocation)
}

/// Asserts that `input` parses without error and returns the events.
@discardableResult
private func hpExpectOK(_ input: [UInt8], limits: HTTPLimits = HTTPLimits(),
                        sourceLocation: SourceLocation = #_sourceLocation) -> [HPEvent] {
    let outcome = hpRun([input], limits: limits)
    #expect(outcome.error == nil, "\(String(decoding: input, as: UTF8.self).debugDescription): \(outcome)",
            sourceLocation: sourceLocation)
    #expect(outcome.idle, "parser not idle after complete input", sourceLocation: sourceLocation)
    #expect(hpRun(input.map { [$0] }, limits: limits) == outcome, "byte-by-byte differs", sourceLocation: sourceLocation)
    return outcome.events
}

@discardableResult
private func hpExpectOK(_ input: String, limits: HTTPLimits = HTTPLimits(),
                        sourceLocation: SourceLocation = #_sourceLocation) -> [HPEvent] {
    hpExpectOK(hpBytes(input), limits: limits, sourceLocation: sourceLocation)
}

private func hpHead(_ method: String, _ target: String, _ version: HTTPVersion,
                    _ fields: [(String, String)], keepAlive: Bool = true, contentLength: Int? = nil,
                    chunked: Bool = false, expectsContinue: Bool = false) -> HPEvent {
    .head(HPHead(method: hpBytes(method), target: hpBytes(target), version: version,
                 fields: fields.map { HPField($0.0, $0.1) }, keepAlive: keepAlive,
                 contentLength: contentLength, isChunked: chunked, expectsContinue: expectsContinue))
}

private func hpHead(_ method: String, _ target: String, _ fields: [(String, String)], keepAlive: Bool = true,
                    contentLength: Int? = nil, chunked: Bool = false, expectsContinue: Bool = false) -> HPEvent {
    hpHead(method, target, .http11, fields, keepAlive: keepAlive, contentLength: contentLength, chunked: chunked,
           expectsContinue: expectsContinue)
}


private let hpTChars: [UInt8] = hpBytes("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

// MARK: - tests

@Suite(.timeLimit(.minutes(1)))
struct HTTPParserTests {

    // MARK: basic requests

    @Test func simpleGet() {
        let events = hpExpectOK("GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n")
        #expect(events == [
            hpHead("GET", "/index.html?q=1", [("Host", "example.com"), ("Accept", "*/*")]),
            .end(nil),
        ])
    }

    @Test func headAccessors() {
        var parser = HTTPRequestParser()
        struct Probe: HTTPParserSink {
            var checked = false
            mutating func requestHead(_ head: HTTPRequestHead) {
                #expect(head.method.equals("PUT"))
                #expect(head.target.equals("/x"))
                #expect(head.headerCount == 4)
                #expect(head.value(forName: "HOST")?.equals("h") == true)
                #expect(head.value(forName: "x-dup")?.equals("first") == true)   // first match
                #expect(head.value(forName: "missing") == nil)
                #expect(head.value(forName: "Empty")?.count == 0)
                #expect(head.count(forName: "X-Dup") == 2)
                #expect(head.name(at: 1).equals("x-dup"))
                #expect(head.value(at: 1).string == "first")
                #expect(head.expectsContinue == false)
                checked = true
            }
            mutating func requestBody(_ bytes: UnsafeRawBufferPointer) {}
            mutating func requestEnd(trailers: HTTPRequestHead?) {}
        }
        var probe = Probe()
        let input = hpBytes("PUT /x HTTP/1.1\r\nHost: h\r\nx-dup: first\r\nX-DUP: second\r\nEmpty:\r\n\r\n")
        #expect(throws: Never.self) {
            try hpFeed(&parser, input, &probe)
        }
        #expect(probe.checked)
        let idle = parser.isIdle
        #expect(idle)
    }

    @Test func postWithContentLength() {
        let events = hpExpectOK("POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world")
        #expect(events == [
            hpHead("POST", "/submit", [("Host", "a"), ("Content-Length", "11")], contentLength: 11),
            .body(hpBytes("hello world")),
            .end(nil),
        ])
    }

    @Test func contentLengthZeroEndsRightAway() {
        var parser = HTTPRequestParser()
        var sink = HPSink()
        let input = hpBytes("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        #expect(throws: Never.self) {
            try hpFeed(&parser, input, &sink)
        }
        #expect(sink.events == [
            hpHead("POST", "/", [("Host", "a"), ("Content-Length", "0")], contentLength: 0),
            .end(nil),
        ])
        let idle = parser.isIdle, buffered = parser.bufferedHeadBytes
        #expect(idle)
        #expect(buffered == 0)
    }

    @Test func chunkedWithExtensionsAndTrailers() {
        let input = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5;name=value\r\nhello\r\n"
            + "1A ; a ; b = \"quoted \\\" ;str\"\r\nabcdefghijklmnopqrstuvwxyz\r\n"
            + "000;last\r\n"
            + "Checksum: abc\r\nX-Trailer:  v  \r\n\r\n"
        let events = hpExpectOK(input)
        #expect(events == [
            hpHead("POST", "/up", [("Host", "a"), ("Transfer-Encoding", "chunked")], chunked: true),
            .body(hpBytes("helloabcdefghijklmnopqrstuvwxyz")),
            .end([HPField("Checksum", "abc"), HPField("X-Trailer", "v")]),
        ])
    }

    @Test func chunkedWithoutTrailers() {
        let events = hpExpectOK("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        #expect(events == [
            hpHead("POST", "/", [("Host", "a"), ("Transfer-Encoding", "CHUNKED")], chunked: true),
            .body(hpBytes("abc")),
            .end(nil),
        ])
    }

    @Test func pipelinedThreeRequestsInOneFeed() {
        let input = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            + "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
            + "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        let events = hpExpectOK(input)
        #expect(events == [
            hpHead("GET", "/a", [("Host", "h")]),
            .end(nil),
            hpHead("POST", "/b", [("Host", "h"), ("Content-Length", "3")], contentLength: 3),
            .body(hpBytes("xyz")),
            .end(nil),
            hpHead("PUT", "/c", [("Host", "h"), ("Transfer-Encoding", "chunked")], chunked: true),
            .body(hpBytes("ok")),
            .end(nil),
        ])
    }

    @Test func noBodyWithoutContentLengthOrChunked() {
        // The bytes after the head are the next request, not a body.
        let events = hpExpectOK("POST /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
        #expect(events == [
            hpHead("POST", "/a", [("Host", "h")]),
            .end(nil),
            hpHead("GET", "/b", .http10, [], keepAlive: false),
            .end(nil),
        ])
    }

    @Test func idleAndBufferedHeadBytes() throws {
        var parser = HTTPRequestParser()
        var sink = HPSink()
        func feed(_ s: String) throws(HTTPParseError) {
            try hpFeed(&parser, hpBytes(s), &sink)
        }
        var st = (idle: parser.isIdle, buffered: parser.bufferedHeadBytes)
        #expect(st.idle && st.buffered == 0)
        try feed("\r\n")                                  // an ignored empty line: still idle
        st = (parser.isIdle, parser.bufferedHeadBytes)
        #expect(st.idle)
        try feed("GET / HT")
        st = (parser.isIdle, parser.bufferedHeadBytes)
        #expect(!st.idle && st.buffered == 8)
        try feed("TP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
        st = (parser.isIdle, parser.bufferedHeadBytes)
        #expect(!st.idle && st.buffered == 0)   // in the body
        try feed("cd")
        st = (parser.isIdle, parser.bufferedHeadBytes)
        #expect(st.idle && st.buffered == 0)
        #expect(sink.events.count == 3)
    }

    @Test func expectContinue() {
        var events = hpExpectOK("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx")
        #expect(events.first == hpHead("POST", "/", [("Host", "a"), ("Expect", "100-Continue"), ("Content-Length", "1")],
                                       contentLength: 1, expectsContinue: true))
        // Ignored on HTTP/1.0 (RFC 9110 §10.1.1).
        events = hpExpectOK("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
        #expect(events.first == hpHead("POST", "/", .http10, [("Expect", "100-continue")], keepAlive: false))
    }

    @Test func keepAliveSemantics() {
        let cases: [(String, Bool)] = [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade ,close\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nConnection: close\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", true),       // not the token "close"
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive, Upgrade\r\n\r\n", true),
            ("GET / HTTP/1.0\r\nConnection: Upgrade\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alives\r\n\r\n", false),
        ]
        for (input, expected) in cases {
            let events = hpExpectOK(input)
            guard case .head(let head)? = events.first else {
                Issue.record("no head for \(input.debugDescription)")
                continue
            }
            #expect(head.keepAlive == expected, "\(input.debugDescription)")
        }
    }

    @Test func headerValuesAreTrimmedAndAllowObsText() {
        var input = hpBytes("GET / HTTP/1.1\r\nHost:a\r\nX: \t v1 \t v2\t \r\nY:\r\nZ:   \r\nO: ")
        input += [0x80, 0xFF, 0x20, 0xC3, 0xA9]
        input += hpBytes("\r\n\r\n")
        let events = hpExpectOK(input)
        #expect(events == [
            .head(HPHead(method: hpBytes("GET"), target: hpBytes("/"), version: .http11,
                         fields: [HPField("Host", "a"), HPField("X", "v1 \t v2"), HPField("Y", ""), HPField("Z", ""),
                                  HPField(hpBytes("O"), [0x80, 0xFF, 0x20, 0xC3, 0xA9])],
                         keepAlive: true, contentLength: nil, isChunked: false, expectsContinue: false)),
            .end(nil),
        ])
    }

    // MARK: one test per rule

    @Test func ruleMethodMustBeToken() {
        hpExpectStatus("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400)       // empty method
        hpExpectOK("M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n")
    }

    /// Every byte value in a method, a field name, a request-target and a field value, each accepted
    /// exactly when its character class allows it (checks the parser's class tables exhaustively).
    @Test func tcharBitmapMatchesDefinition() {
        let tchar = Set(hpTChars)
        for b in UInt8.min...UInt8.max {
            let method = [0x47, b, 0x54] + hpBytes(" / HTTP/1.1\r\nHost: a\r\n\r\n")
            let name = hpBytes("GET / HTTP/1.1\r\nHost: a\r\nX") + [b] + hpBytes("Y: v\r\n\r\n")
            let target = hpBytes("GET /a") + [b] + hpBytes("b HTTP/1.1\r\nHost: a\r\n\r\n")
            let value = hpBytes("GET / HTTP/1.1\r\nHost: a\r\nX: a") + [b] + hpBytes("b\r\n\r\n")
            let isTChar = tchar.contains(b)
            let isTargetChar = b > 0x20 && b != 0x7F
            let isValueChar = (b > 0x20 && b != 0x7F) || b == 0x20 || b == 0x09
            for (input, ok) in [(method, isTChar), (name, isTChar || b == 0x3A), (target, isTargetChar), (value, isValueChar)] {
                if ok {
                    hpExpectOK(input)
                } else {
                    hpExpectStatus(input, 400)
                }
            }
        }
    }

    @Test func ruleExactlySingleSpaces() {
        hpExpectStatus("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET /\tHTTP/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET /\r\nHost: a\r\n\r\n", 400)                  // HTTP/0.9 style
    }

    @Test func ruleRequestTargetCharacters() {
        hpExpectStatus("GET  HTTP/1.1\r\nHost: a\r\n\r\n", 400)           // empty target
        hpExpectStatus("GET /a\u{01}b HTTP/1.1\r\nHost: a\r\n\r\n", 400)  // CTL
        hpExpectStatus("GET /a\u{7F}b HTTP/1.1\r\nHost: a\r\n\r\n", 400)  // DEL
        hpExpectStatus([0x47, 0x45, 0x54, 0x20, 0x2F, 0x00, 0x20] + hpBytes("HTTP/1.1\r\nHost: a\r\n\r\n"), 400)
        hpExpectOK("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        hpExpectOK("GET http://a.example/x?y#z HTTP/1.1\r\nHost: a\r\n\r\n")
    }

    @Test func ruleVersion() {
        hpExpectOK("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        hpExpectOK("GET / HTTP/1.0\r\n\r\n")
        hpExpectStatus("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505)
        hpExpectStatus("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505)
        hpExpectStatus("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505)
        hpExpectStatus("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET / http/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/a.b\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET / \r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET / HTTPS/1.1\r\nHost: a\r\n\r\n", 400)
    }

    @Test func ruleLeadingEmptyLines() {
        let max = HTTPRequestParser.maxLeadingEmptyLines
        let ok = String(repeating: "\r\n", count: max) + "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        #expect(hpExpectOK(ok).count == 2)
        hpExpectStatus(String(repeating: "\r\n", count: max + 1) + "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        hpExpectStatus("\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        // Counted per request: each pipelined request may have its own.
        let pipelined = "GET / HTTP/1.1\r\nHost: a\r\n\r\n" + String(repeating: "\r\n", count: max)
            + "GET / HTTP/1.1\r\nHost: a\r\n\r\n" + String(repeating: "\r\n", count: max)
        #expect(hpExpectOK(pipelined).count == 4)
    }

    @Test func ruleNoWhitespaceBeforeColon() {
        hpExpectStatus("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n", 400)
    }

    @Test func ruleFieldNameMustBeNonEmptyToken() {
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX(a): b\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400)
    }

    @Test func ruleFieldValueCharacters() {
        hpExpectStatus([UInt8](hpBytes("GET / HTTP/1.1\r\nHost: a\r\nX: a")) + [0x00] + hpBytes("b\r\n\r\n"), 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX: a\u{01}b\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX: a\u{7F}b\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400)      // bare CR
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX: \u{0B}\r\n\r\n", 400)    // VT in OWS position
    }

    @Test func ruleObsFoldRejected() {
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400)           // whitespace after the request line
    }

    @Test func ruleBareLFRejected() {
        hpExpectStatus("GET / HTTP/1.1\nHost: a\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\n\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nX:\n\r\n", 400)
        hpExpectStatus("GET /\n HTTP/1.1\r\nHost: a\r\n\r\n", 400)
        let chunkedHead = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        hpExpectStatus(chunkedHead + "3\nabc\r\n0\r\n\r\n", 400)
        hpExpectStatus(chunkedHead + "3\r\nabc\n0\r\n\r\n", 400)
        hpExpectStatus(chunkedHead + "3;x\nabc\r\n0\r\n\r\n", 400)
        hpExpectStatus(chunkedHead + "3\r\nabc\r\n0\n\r\n", 400)
        hpExpectStatus(chunkedHead + "3\r\nabc\r\n0\r\n\n", 400)
        hpExpectStatus(chunkedHead + "3\r\nabc\r\n0\r\nT: v\n\r\n", 400)
    }

    @Test func ruleContentLengthAndTransferEncodingTogether() {
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400)
    }

    @Test func ruleContentLengthMustBeSingleAndDigits() {
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", 400)
        // Leading zeros and surrounding OWS are fine.
        let events = hpExpectOK("POST / HTTP/1.1\r\nHost: a\r\ncontent-length:  003 \r\n\r\nabc")
        #expect(events.count == 3 && events[1] == .body(hpBytes("abc")))
    }

    @Test func ruleTransferEncodingMustBeExactlyChunked() {
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 501)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n", 501)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501)
        hpExpectStatus("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400)       // no coding at all
        hpExpectOK("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n0\r\n\r\n")
        hpExpectOK("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked ,\r\n\r\n0\r\n\r\n")  // empty list element
    }

    @Test func ruleTransferEncodingOnHTTP10() {
        hpExpectStatus("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)
        hpExpectStatus("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400)
    }

    @Test func ruleHostRequiredOnceForHTTP11() {
        hpExpectStatus("GET / HTTP/1.1\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nX: y\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400)
        hpExpectStatus("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400)   // more than one: any version
        hpExpectOK("GET / HTTP/1.1\r\nHost:\r\n\r\n")                           // empty Host is allowed (RFC 9110 7.2)
        hpExpectOK("GET / HTTP/1.0\r\n\r\n")
    }

    @Test func ruleChunkSizeSyntax() {
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        hpExpectStatus(head + "+5\r\nhello\r\n0\r\n\r\n", 400)
        hpExpectStatus(head + "-5\r\nhello\r\n0\r\n\r\n", 400)
        hpExpectStatus(head + " 5\r\nhello\r\n0\r\n\r\n", 400)
        hpExpectStatus(head + "0x5\r\nhello\r\n0\r\n\r\n", 400)
        hpExpectStatus(head + "g\r\n", 400)
        hpExpectStatus(head + "\r\n", 400)                                      // empty size
        hpExpectStatus(head + "5 \r\nhello\r\n0\r\n\r\n", 400)                  // BWS not followed by ";"
        hpExpectStatus(head + "5\r\nhelloX\r\n0\r\n\r\n", 400)                  // data longer than the size
        hpExpectStatus(head + "5\r\nhello\rX0\r\n\r\n", 400)
        hpExpectStatus(head + "5\r\nhello0\r\n\r\n", 400)
        hpExpectStatus(head + "5\r\nhello\r\n0\r\nX\r\n\r\n", 400)              // bad trailer line
        hpExpectStatus(head + "5\r\nhello\r\n0\r\nT : v\r\n\r\n", 400)
        hpExpectStatus(head + "5\r\nhello\r\n0\r\nT: v\r\n w\r\n\r\n", 400)     // obs-fold in trailers
        // Overflow: 17 hex digits do not fit in Int.
        hpExpectStatus(head + "10000000000000000\r\n", 400)
        hpExpectStatus(head + "FFFFFFFFFFFFFFFFFF\r\n", 400)
        // A large size that fits is a 413 (body limit), not an overflow.
        hpExpectStatus(head + "7FFFFFFFFFFFFFFF\r\n", 413)
        hpExpectOK(head + "0000000000000000000005\r\nhello\r\n0\r\n\r\n")       // leading zeros
        hpExpectOK(head + "a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n")
    }

    @Test func ruleChunkExtensionSyntax() {
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        for ext in [";a", ";a=b", " ;a", "\t; a = b", ";a;b;c=d", ";a=\"\"", ";a=\"x y\\\"z\"", "; a =\"q\" ; b"] {
            hpExpectOK(head + "1\(ext)\r\nx\r\n0\(ext)\r\n\r\n")
        }
        for ext in [";", "; ", ";=b", ";a=", ";a=\"x", ";a b", ";a=b c", ";a=\"x\"y", ";a=\"\u{01}\"", ";a=@", ";a=b;"] {
            hpExpectStatus(head + "1\(ext)\r\nx\r\n0\r\n\r\n", 400)
        }
    }

    @Test func deadParserKeepsThrowingTheSameError() {
        var parser = HTTPRequestParser()
        var sink = HPSink()
        func feed(_ s: String) -> HTTPParseError? {
            do {
                try hpFeed(&parser, hpBytes(s), &sink)
                return nil
            } catch {
                return error
            }
        }
        #expect(feed("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == nil)
        let first = feed("GET / HTTP/3.0\r\n")
        #expect(first?.status == 505)
        #expect(feed("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == first)
        #expect(feed("") == first)
        let idle = parser.isIdle
        #expect(!idle)
        #expect(sink.events.count == 2)
        #expect(first?.description.hasPrefix("505 ") == true)
    }

    // MARK: limits, exactly at and one past each boundary

    @Test func limitRequestLine() {
        var limits = HTTPLimits()
        limits.maxRequestLine = 64
        // "GET " + target + " HTTP/1.1" = 13 + target.count
        func request(lineLength: Int) -> String {
            "GET /" + String(repeating: "a", count: lineLength - 14) + " HTTP/1.1\r\nHost: a\r\n\r\n"
        }
        hpExpectOK(request(lineLength: 64), limits: limits)
        hpExpectStatus(request(lineLength: 65), 414, limits: limits)
        // Detected before the line ends.
        #expect(hpRun("GET /" + String(repeating: "a", count: 100), limits: limits).error?.status == 414)
        // Defaults: 8 KiB.
        hpExpectOK(request(lineLength: 8 * 1024))
        hpExpectStatus(request(lineLength: 8 * 1024 + 1), 414)
    }

    @Test func limitHeaderBytes() {
        var limits = HTTPLimits()
        limits.maxHeaderBytes = 256
        // "GET / HTTP/1.1\r\n" (16) + "Host: a\r\n" (9) + "X: " + v + "\r\n" (5 + v) + "\r\n" (2) = 32 + v
        func request(headLength: Int) -> String {
            "GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "v", count: headLength - 32) + "\r\n\r\n"
        }
        #expect(hpBytes(request(headLength: 256)).count == 256)
        hpExpectOK(request(headLength: 256), limits: limits)
        hpExpectStatus(request(headLength: 257), 431, limits: limits)
        hpExpectOK(request(headLength: 16 * 1024))
        hpExpectStatus(request(headLength: 16 * 1024 + 1), 431)
        // The request line counts against it too (a head that is only a long request line).
        limits.maxRequestLine = 1000
        let line = "GET /" + String(repeating: "a", count: 300) + " HTTP/1.1\r\n"
        #expect(hpRun(line, limits: limits).error?.status == 431)
        // Leading empty lines are not part of the head.
        hpExpectOK("\r\n\r\n" + request(headLength: 256), limits: limits)
    }

    @Test func limitHeaderCount() {
        var limits = HTTPLimits()
        limits.maxHeaderCount = 5
        func request(fields: Int) -> String {
            "GET / HTTP/1.1\r\nHost: a\r\n" + (1..<fields).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        }
        hpExpectOK(request(fields: 5), limits: limits)
        hpExpectStatus(request(fields: 6), 431, limits: limits)
        hpExpectOK(request(fields: 100))
        hpExpectStatus(request(fields: 101), 431)
    }

    @Test func limitBodyContentLength() {
        var limits = HTTPLimits()
        limits.maxBodyBytes = 100
        let body = String(repeating: "b", count: 100)
        let events = hpExpectOK("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + body, limits: limits)
        #expect(events.count == 3 && events[1] == .body(hpBytes(body)))
        // 413 right after the head, before any body byte is read.
        let outcome = hpRun("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n", limits: limits)
        #expect(outcome.error?.status == 413)
        #expect(outcome.events.isEmpty)
        #expect(hpRun("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \(1 << 30)\r\n\r\n").error == nil)
        #expect(hpRun("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \((1 << 30) + 1)\r\n\r\n").error?.status == 413)
    }

    @Test func limitBodyChunkedTotal() {
        var limits = HTTPLimits()
        limits.maxBodyBytes = 100
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        let fifty = String(repeating: "c", count: 50)
        hpExpectOK(head + "32\r\n\(fifty)\r\n32\r\n\(fifty)\r\n0\r\n\r\n", limits: limits)   // 50 + 50
        // 50 + 51: rejected on the second size line, before its data.
        let outcome = hpRun(head + "32\r\n\(fifty)\r\n33\r\n", limits: limits)
        #expect(outcome.error?.status == 413)
        #expect(outcome.events.count == 2)    // head, first chunk
        #expect(hpRun(head + "65;ext=1\r\n", limits: limits).error?.status == 413)     // 101 in one chunk
    }

    @Test func limitChunkLine() {
        var limits = HTTPLimits()
        limits.maxChunkLine = 16
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        // "5;" + name: the line without CRLF is 2 + name.count
        let atLimit = "5;" + String(repeating: "e", count: 14)
        let pastLimit = "5;" + String(repeating: "e", count: 15)
        hpExpectOK(head + atLimit + "\r\nhello\r\n0\r\n\r\n", limits: limits)
        hpExpectStatus(head + pastLimit + "\r\nhello\r\n0\r\n\r\n", 400, limits: limits)
        // Also counts the size digits themselves (leading zeros).
        hpExpectOK(head + String(repeating: "0", count: 15) + "5\r\nhello\r\n0\r\n\r\n", limits: limits)
        hpExpectStatus(head + String(repeating: "0", count: 16) + "5\r\nhello\r\n0\r\n\r\n", 400, limits: limits)
        // Default 1024.
        hpExpectOK(head + "5;" + String(repeating: "e", count: 1022) + "\r\nhello\r\n0\r\n\r\n")
        hpExpectStatus(head + "5;" + String(repeating: "e", count: 1023) + "\r\nhello\r\n0\r\n\r\n", 400)
    }

    @Test func limitTrailers() {
        var limits = HTTPLimits()
        limits.maxHeaderCount = 3
        limits.maxHeaderBytes = 128
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
        hpExpectOK(head + "A: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits: limits)
        hpExpectStatus(head + "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431, limits: limits)
        // Trailer section: "T: " + v + "\r\n" + "\r\n" = 7 + v bytes.
        hpExpectOK(head + "T: " + String(repeating: "t", count: 121) + "\r\n\r\n", limits: limits)
        hpExpectStatus(head + "T: " + String(repeating: "t", count: 122) + "\r\n\r\n", 431, limits: limits)
    }

    // MARK: arbitrary splits

    private static let splitCorpus: [String] = [
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: keep-alive, Upgrade\r\n\r\n",
        "POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n"
            + "1A ; a ; b = \"q\\\"s\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0;last\r\nChecksum: abc\r\nX:  v \r\n\r\n",
        "\r\n\r\nGET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            + "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz\r\n"
            + "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
            + "DELETE /d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\nX: \t obs \t\r\n\r\nabcd",
    ]

    /// Inputs that must fail, identically however they are split (events before the error included).
    private static let splitErrorCorpus: [String] = [
        "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabcX",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nabGET / HTTP/9.9\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    ]

    @Test(arguments: splitCorpus + splitErrorCorpus)
    func everySplitGivesTheSameEvents(_ text: String) {
        let input = hpBytes(text)
        let reference = hpRun([input])
        let shouldFail = Self.splitErrorCorpus.contains(text)
        #expect((reference.error != nil) == shouldFail, "\(reference)")
        #expect(shouldFail || !reference.events.isEmpty)
        for cut in 0...input.count {
            let outcome = hpRun([Array(input[..<cut]), Array(input[cut...])])
            #expect(outcome == reference, "split at \(cut)")
        }
        #expect(hpRun(input.map { [$0] }) == reference, "byte by byte")
        // Three pieces, all pairs of cut points on the shorter inputs.
        if input.count <= 120 {
            for a in 0...input.count {
                for b in a...input.count {
                    let outcome = hpRun([Array(input[..<a]), Array(input[a..<b]), Array(input[b...])])
                    if outcome != reference {
                        Issue.record("split at \(a), \(b): \(outcome)")
                        return
                    }
                }
            }
        }
    }

    // MARK: property-based / fuzz

    private struct Generated {
        var bytes: [UInt8] = []
        var events: [HPEvent] = []
    }

    private static func randomToken(_ rng: inout SplitMix, _ range: ClosedRange<Int>) -> [UInt8] {
        (0..<Int.random(in: range, using: &rng)).map { _ in hpTChars.randomElement(using: &rng)! }
    }

    private static func randomFieldValue(_ rng: inout SplitMix) -> (wire: [UInt8], trimmed: [UInt8]) {
        func vchar(_ rng: inout SplitMix) -> UInt8 {
            Bool.random(using: &rng) ? UInt8.random(in: 0x21...0x7E, using: &rng) : UInt8.random(in: 0x80...0xFF, using: &rng)
        }
        func ows(_ rng: inout SplitMix) -> [UInt8] {
            (0..<Int.random(in: 0...2, using: &rng)).map { _ in Bool.random(using: &rng) ? 0x20 : 0x09 }
        }
        var core: [UInt8] = []
        let length = Int.random(in: 0...20, using: &rng)
        for k in 0..<length {
            if k > 0 && k < length - 1 && Int.random(in: 0..<4, using: &rng) == 0 {
                core.append(Bool.random(using: &rng) ? 0x20 : 0x09)
            } else {
                core.append(vchar(&rng))
            }
        }
        return (ows(&rng) + core + ows(&rng), core)
    }

    private static let reservedNames: [String] = ["content-length", "transfer-encoding", "host", "connection", "expect"]

    private static func randomFields(_ rng: inout SplitMix, count: ClosedRange<Int>) -> (wire: [UInt8], fields: [HPField]) {
        var wire: [UInt8] = []
        var fields: [HPField] = []
        for _ in 0..<Int.random(in: count, using: &rng) {
            var name = randomToken(&rng, 1...12)
            while reservedNames.contains(String(decoding: name, as: UTF8.self).lowercased()) {
                name = randomToken(&rng, 1...12)
            }
            let value = randomFieldValue(&rng)
            wire += name + [0x3A] + value.wire + [0x0D, 0x0A]
            fields.append(HPField(name, value.trimmed))
        }
        return (wire, fields)
    }

    private static func randomChunkExtension(_ rng: inout SplitMix) -> String {
        switch Int.random(in: 0..<6, using: &rng) {
        case 0, 1, 2: ""
        case 3: ";a"
        case 4: " ; name=value"
        default: ";q=\"x \\\" y\";z"
        }
    }

    /// One random valid request appended to `g`.
    private static func generateRequest(_ rng: inout SplitMix, into g: inout Generated) {
        for _ in 0..<Int.random(in: 0...3, using: &rng) where Int.random(in: 0..<4, using: &rng) == 0 {
            g.bytes += [0x0D, 0x0A]
        }
        let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
        let method = Bool.random(using: &rng) ? hpBytes(methods.randomElement(using: &rng)!) : randomToken(&rng, 1...10)
        var target: [UInt8] = [0x2F]
        for _ in 0..<Int.random(in: 0...40, using: &rng) {
            target.append(Int.random(in: 0..<10, using: &rng) == 0
                ? UInt8.random(in: 0x80...0xFF, using: &rng) : UInt8.random(in: 0x21...0x7E, using: &rng))
        }
        let http10 = Int.random(in: 0..<5, using: &rng) == 0
        var fieldsWire: [UInt8] = []
        var fields: [HPField] = []
        func add(_ name: String, _ value: String) {
            fieldsWire += hpBytes("\(name): \(value)\r\n")
            fields.append(HPField(name, value))
        }
        func addRandom(_ rng: inout SplitMix) {
            let r = randomFields(&rng, count: 0...2)
            fieldsWire += r.wire
            fields += r.fields
        }
        addRandom(&rng)
        if !http10 || Bool.random(using: &rng) { add(Bool.random(using: &rng) ? "Host" : "host", "example.com:8080") }
        addRandom(&rng)
        var close = false, keepAliveToken = false
        if Bool.random(using: &rng) {
            let tokens = (0..<Int.random(in: 1...3, using: &rng)).map { _ in
                ["close", "keep-alive", "Upgrade", "Keep-Alive", "CLOSE", "x-other"].randomElement(using: &rng)!
            }
            close = tokens.contains { $0.lowercased() == "close" }
            keepAliveToken = tokens.contains { $0.lowercased() == "keep-alive" }
            add("Connection", tokens.joined(separator: ", "))
        }
        let expect = Int.random(in: 0..<6, using: &rng) == 0
        if expect { add("Expect", "100-continue") }
        enum BodyKind { case none, length, chunked }
        let kind: BodyKind = switch Int.random(in: 0..<3, using: &rng) {
        case 0: .none
        case 1: .length
        default: http10 ? .length : .chunked
        }
        let body = (0..<Int.random(in: 0...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        var bodyWire: [UInt8] = []
        var trailers: [HPField]? = nil
        switch kind {
        case .none:
            break
        case .length:
            add(Bool.random(using: &rng) ? "Content-Length" : "content-length", "\(body.count)")
            bodyWire = body
        case .chunked:
            add("Transfer-Encoding", Bool.random(using: &rng) ? "chunked" : "Chunked")
            var rest = body[...]
            while !rest.isEmpty {
                let size = min(rest.count, Int.random(in: 1...120, using: &rng))
                var hex = String(size, radix: 16, uppercase: Bool.random(using: &rng))
                if Int.random(in: 0..<5, using: &rng) == 0 { hex = "00" + hex }
                bodyWire += hpBytes(hex + randomChunkExtension(&rng) + "\r\n") + rest.prefix(size) + [0x0D, 0x0A]
                rest = rest.dropFirst(size)
            }
            bodyWire += hpBytes("0" + randomChunkExtension(&rng) + "\r\n")
            let t = randomFields(&rng, count: 0...3)
            bodyWire += t.wire + [0x0D, 0x0A]
            trailers = t.fields.isEmpty ? nil : t.fields
        }
        addRandom(&rng)
        g.bytes += method + [0x20] + target + hpBytes(http10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n") + fieldsWire + [0x0D, 0x0A] + bodyWire
        g.events.append(.head(HPHead(
            method: method, target: target, version: http10 ? .http10 : .http11, fields: fields,
            keepAlive: http10 ? (keepAliveToken && !close) : !close,
            contentLength: kind == .length ? body.count : nil, isChunked: kind == .chunked,
            expectsContinue: expect && !http10)))
        if kind != .none && !body.isEmpty { g.events.append(.body(body)) }
        g.events.append(.end(trailers))
    }

    private static func randomSplit(_ bytes: [UInt8], _ rng: inout SplitMix) -> [[UInt8]] {
        guard !bytes.isEmpty else { return [bytes] }
        let cuts = (0..<Int.random(in: 0...6, using: &rng)).map { _ in Int.random(in: 0...bytes.count, using: &rng) }.sorted()
        var pieces: [[UInt8]] = []
        var from = 0
        for cut in cuts {
            pieces.append(Array(bytes[from..<cut]))
            from = cut
        }
        pieces.append(Array(bytes[from...]))
        return pieces
    }

    private static func fuzzSeed() -> UInt64 {
        if let s = getenv("RINGSIDE_HTTP_FUZZ_SEED"), let v = UInt64(String(cString: s)) { return v }
        return 0x5EED_2024_0001
    }

    @Test func fuzzRandomValidRequestsParseToWhatWasGenerated() {
        let seed = Self.fuzzSeed()
        var rng = SplitMix(seed: seed)
        var failures = 0
        for iteration in 0..<3000 {
            var g = Generated()
            for _ in 0..<Int.random(in: 1...3, using: &rng) { Self.generateRequest(&rng, into: &g) }
            let pieces = Self.randomSplit(g.bytes, &rng)
            let outcome = hpRun(pieces)
            if outcome.error != nil || outcome.events != g.events || !outcome.idle {
                failures += 1
                Issue.record("""
                    seed \(seed) iteration \(iteration) (RINGSIDE_HTTP_FUZZ_SEED=\(seed)): \
                    input \(String(decoding: g.bytes, as: UTF8.self).debugDescription) split \(pieces.map(\.count))
                    expected \(g.events)
                    got \(outcome)
                    """)
                if failures >= 3 { return }
            }
        }
    }

    @Test func fuzzMutationsNeverCrashAndAreSplitIndependent() {
        let seed = Self.fuzzSeed() &+ 1
        var rng = SplitMix(seed: seed)
        var failures = 0
        var parsed = 0, rejected = 0
        let interesting: [UInt8] = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x22, 0x2C, 0x3A, 0x3B, 0x3D, 0x30, 0x46, 0x7F, 0x80, 0xFF]
        for iteration in 0..<3000 {
            var g = Generated()
            for _ in 0..<Int.random(in: 1...2, using: &rng) { Self.generateRequest(&rng, into: &g) }
            var bytes = g.bytes
            for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                let value = Bool.random(using: &rng) ? interesting.randomElement(using: &rng)! : UInt8.random(in: 0...255, using: &rng)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: bytes[at] = value
                case 1: bytes.insert(value, at: at)
                case 2: bytes.remove(at: at)
                default:
                    let end = min(bytes.count, at + Int.random(in: 1...16, using: &rng))
                    bytes.insert(contentsOf: bytes[at..<end], at: at)
                }
            }
            let whole = hpRun([bytes])
            let split = hpRun(Self.randomSplit(bytes, &rng))
            if let error = whole.error {
                rejected += 1
                if ![400, 413, 414, 431, 501, 505].contains(error.status) {
                    Issue.record("seed \(seed) iteration \(iteration): unexpected status \(error)")
                }
            } else {
                parsed += 1
            }
            if whole != split {
                failures += 1
                Issue.record("""
                    seed \(seed) iteration \(iteration) (RINGSIDE_HTTP_FUZZ_SEED=\(seed &- 1)): split changed the outcome
                    input \(String(decoding: bytes, as: UTF8.self).debugDescription)
                    whole \(whole)
                    split \(split)
                    """)
                if failures >= 3 { return }
            }
        }
        // Both outcomes must be exercised for the test to mean anything.
        #expect(parsed > 100 && rejected > 100, "parsed \(parsed) rejected \(rejected)")
    }
}
