import Foundation
import Glibc
import HTTPTypes
import OpenAPIItemsService
import OpenAPIRuntime
import Ringside
import RingsideHTTP
import RingsideOpenAPI
import Testing

// The OpenAPI example (Examples/OpenAPIService: generated code + ItemsHandler) served through
// RingsideOpenAPI's transport, every operation over a real socket, on both backends (issue 14).

/// A response read off the wire (Content-Length, chunked or close-delimited body).
private struct WireReply {
    let status: Int
    let head: String
    let body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    func header(_ name: String) -> String? {
        for line in head.components(separatedBy: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            if line[..<colon].lowercased() == name.lowercased() {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}

/// Parses one response from `bytes` (what arrived up to EOF).
private func parseReply(_ bytes: [UInt8]) throws -> WireReply {
    guard let end = bytes.firstRange(of: Array("\r\n\r\n".utf8)) else { throw ClientError("no complete head in \(bytes.count) bytes") }
    let head = String(decoding: bytes[..<end.lowerBound], as: UTF8.self)
    let status = Int(head.dropFirst(9).prefix(3)) ?? -1
    let rest = Array(bytes[end.upperBound...])
    let reply = WireReply(status: status, head: head, body: [])
    if let cl = reply.header("Content-Length") {
        guard let n = Int(cl), rest.count == n else { throw ClientError("Content-Length \(cl), \(rest.count) bytes followed") }
        return WireReply(status: status, head: head, body: rest)
    }
    guard reply.header("Transfer-Encoding") == "chunked" else { return WireReply(status: status, head: head, body: rest) }
    var body: [UInt8] = [], i = 0
    while true {
        guard let lineEnd = rest[i...].firstRange(of: [13, 10]) else { throw ClientError("cut chunk size line") }
        guard let size = Int(String(decoding: rest[i..<lineEnd.lowerBound], as: UTF8.self), radix: 16) else {
            throw ClientError("bad chunk size line")
        }
        i = lineEnd.upperBound
        if size == 0 {
            guard Array(rest[i...]) == [13, 10] else { throw ClientError("bad chunked ending") }
            return WireReply(status: status, head: head, body: body)
        }
        guard rest.count >= i + size + 2 else { throw ClientError("cut chunk") }
        body += rest[i..<i + size]
        i += size + 2
    }
}

/// Sends one request with `Connection: close` and reads the response to EOF.
private func exchange(_ port: Int, _ method: String, _ target: String, headers: [String] = [], body: [UInt8]? = nil,
                      chunkedBody: Bool = false) throws -> WireReply {
    let client = try TestClient(port: port)
    var head = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    for h in headers { head += h + "\r\n" }
    var payload: [UInt8] = []
    if let body {
        if chunkedBody {
            head += "Transfer-Encoding: chunked\r\n"
            var k = 0
            while k < body.count {
                let n = min(10_000, body.count - k)
                payload += Array("\(String(n, radix: 16))\r\n".utf8) + body[k..<k + n] + [13, 10]
                k += n
            }
            payload += Array("0\r\n\r\n".utf8)
        } else {
            head += "Content-Length: \(body.count)\r\n"
            payload = body
        }
    }
    try client.send(Array((head + "\r\n").utf8) + payload)
    return try parseReply(try client.receiveUntilEOF())
}

/// Runs `body` with the example service (a fresh store) on 127.0.0.1:0.
private func withItemsService(_ backend: BackendKind, _ body: (Int) throws -> Void) throws {
    let transport = RingsideTransport()
    try ItemsHandler().registerHandlers(on: transport, middlewares: [ErrorHandlingMiddleware()])
    try withServer(backend, handler: HTTPServer.handler(router: transport.router)) { try body($0.port) }
}

private let json = "Content-Type: application/json"
private let octets = "Content-Type: application/octet-stream"

@Suite("OpenAPI example on RingsideOpenAPI", .serialized)
struct OpenAPITests {
    @Test("GET /items/{id}: 200 with the item's JSON, exact bytes", arguments: allBackends)
    func getItem(_ backend: BackendKind) throws {
        try withItemsService(backend) { port in
            let r = try exchange(port, "GET", "/items/2")
            #expect(r.status == 200)
            #expect(r.header("Content-Type") == "application/json; charset=utf-8")
            #expect(r.text == "{\n  \"id\" : 2,\n  \"name\" : \"avocado\",\n  \"tags\" : [\n    \"fruit\",\n    \"green\"\n  ]\n}")
            #expect(r.header("Transfer-Encoding") == nil)
        }
    }

    @Test("GET /items/{id}: unknown id 404 with a problem body; bad id 400; unknown route 404; wrong method 405",
          arguments: allBackends)
    func errors(_ backend: BackendKind) throws {
        try withItemsService(backend) { port in
            let missing = try exchange(port, "GET", "/items/99")
            #expect(missing.status == 404)
            #expect(try JSONDecoder().decode(Components.Schemas.Problem.self, from: Data(missing.body)).message == "no item 99")
            let bad = try exchange(port, "GET", "/items/abc")
            #expect(bad.status == 400)
            #expect(bad.body.isEmpty)
            let unknown = try exchange(port, "GET", "/nothing/here")
            #expect(unknown.status == 404)
            let method = try exchange(port, "DELETE", "/items/1")
            #expect(method.status == 405)
            let badSize = try exchange(port, "GET", "/blob/-5x")
            #expect(badSize.status == 400)
        }
    }

    @Test("GET /items?prefix=&limit=: query parameters filter and limit", arguments: allBackends)
    func listItems(_ backend: BackendKind) throws {
        try withItemsService(backend) { port in
            let all = try exchange(port, "GET", "/items")
            #expect(all.status == 200)
            let items = try JSONDecoder().decode([Components.Schemas.Item].self, from: Data(all.body))
            #expect(items.map(\.name) == ["apple", "avocado", "bread"])
            let some = try exchange(port, "GET", "/items?prefix=a&limit=1")
            #expect(try JSONDecoder().decode([Components.Schemas.Item].self, from: Data(some.body))
                    == [.init(id: 1, name: "apple", tags: ["fruit"])])
            let none = try exchange(port, "GET", "/items?prefix=%7A")  // "z", percent-encoded
            #expect(none.text == "[\n\n]")
            let badLimit = try exchange(port, "GET", "/items?limit=many")
            #expect(badLimit.status == 400)
        }
    }

    @Test("POST /items: JSON body in, 201 with the stored item; then readable; bad JSON 400, wrong type 415",
          arguments: allBackends)
    func createItem(_ backend: BackendKind) throws {
        try withItemsService(backend) { port in
            let created = try exchange(port, "POST", "/items", headers: [json], body: Array(#"{"name":"cheese","tags":["dairy"]}"#.utf8))
            #expect(created.status == 201)
            let item = try JSONDecoder().decode(Components.Schemas.Item.self, from: Data(created.body))
            #expect(item == .init(id: 4, name: "cheese", tags: ["dairy"]))
            let read = try exchange(port, "GET", "/items/4")
            #expect(read.status == 200)
            #expect(try JSONDecoder().decode(Components.Schemas.Item.self, from: Data(read.body)) == item)
            // A chunked request body reaches the generated code the same way.
            let chunked = try exchange(port, "POST", "/items", headers: [json], body: Array(#"{"name":"dates"}"#.utf8), chunkedBody: true)
            #expect(chunked.status == 201)
            #expect(try JSONDecoder().decode(Components.Schemas.Item.self, from: Data(chunked.body)) == .init(id: 5, name: "dates", tags: []))
            let malformed = try exchange(port, "POST", "/items", headers: [json], body: Array(#"{"name":"#.utf8))
            #expect(malformed.status == 400)
            let missing = try exchange(port, "POST", "/items", headers: [json])
            #expect(missing.status == 400)
            let wrongType = try exchange(port, "POST", "/items", headers: ["Content-Type: text/plain"], body: Array("cheese".utf8))
            #expect(wrongType.status == 415)
        }
    }

    @Test("GET /blob/{size}: a streamed download of known length, exact bytes", arguments: allBackends)
    func download(_ backend: BackendKind) throws {
        try withItemsService(backend) { port in
            let size = 600_017  // above the 256 KiB output high watermark: the writer waits
            let r = try exchange(port, "GET", "/blob/\(size)")
            #expect(r.status == 200)
            #expect(r.header("Content-Type") == "application/octet-stream")
            #expect(r.header("Content-Length") == "\(size)")
            #expect(r.body.count == size)
            #expect(r.body == (0..<size).map { PatternBytes.byte(at: $0) })
            let empty = try exchange(port, "GET", "/blob/0")
            #expect(empty.status == 200 && empty.body.isEmpty && empty.header("Content-Length") == "0")
        }
    }

    @Test("POST /echo: the body streamed back (Content-Length in, Content-Length out; chunked in, chunked out)",
          arguments: allBackends)
    func echo(_ backend: BackendKind) throws {
        try withItemsService(backend) { port in
            let payload = randomBytes(1 << 20, seed: 14)
            let sized = try exchange(port, "POST", "/echo", headers: [octets], body: payload)
            #expect(sized.status == 200)
            #expect(sized.header("Content-Length") == "\(payload.count)")
            #expect(sized.body == payload)
            let chunked = try exchange(port, "POST", "/echo", headers: [octets], body: payload, chunkedBody: true)
            #expect(chunked.status == 200)
            #expect(chunked.header("Transfer-Encoding") == "chunked")
            #expect(chunked.body == payload)
        }
    }

    @Test("keep-alive: a large body the operation does not read (415) is dropped and the next request answered",
          arguments: allBackends)
    func unreadBodyKeepsTheConnection(_ backend: BackendKind) throws {
        try withItemsService(backend) { port in
            let client = try TestClient(port: port)
            let body = [UInt8](repeating: UInt8(ascii: "x"), count: 300_000)  // above streamedBodyBuffer
            try client.send(Array("POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: \(body.count)\r\n\r\n".utf8)
                            + body + Array("GET /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            let text = String(decoding: try client.receiveUntilEOF(), as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 415 "))
            #expect(text.components(separatedBy: "HTTP/1.1 200 OK\r\n").count == 2)
            #expect(text.hasSuffix("\"name\" : \"apple\",\n  \"tags\" : [\n    \"fruit\"\n  ]\n}"))
        }
    }

    @Test("keep-alive: several operations on one connection, answered in order", arguments: allBackends)
    func keepAlive(_ backend: BackendKind) throws {
        try withItemsService(backend) { port in
            let client = try TestClient(port: port)
            let requests = "GET /items/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                + "GET /items/abc HTTP/1.1\r\nHost: x\r\n\r\n"
                + "GET /items/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            try client.send(Array(requests.utf8))
            var rest = try client.receiveUntilEOF()
            var statuses: [Int] = [], names: [String] = []
            for _ in 0..<3 {
                guard let end = rest.firstRange(of: Array("\r\n\r\n".utf8)) else { throw ClientError("cut response") }
                let head = String(decoding: rest[..<end.lowerBound], as: UTF8.self)
                let length = head.components(separatedBy: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
                let r = try parseReply(Array(rest[..<(end.upperBound + length)]))
                statuses.append(r.status)
                if r.status == 200 { names.append(try JSONDecoder().decode(Components.Schemas.Item.self, from: Data(r.body)).name) }
                rest.removeSubrange(..<(end.upperBound + length))
            }
            #expect(statuses == [200, 400, 200])
            #expect(names == ["apple", "bread"])
            #expect(rest.isEmpty)
        }
    }

    @Test("writeHead(contentLength:): exact bodies keep the connection; a short body aborts it", arguments: allBackends)
    func contentLengthWriter(_ backend: BackendKind) throws {
        var router = HTTPRouter()
        router.onStreaming("GET", "/exact") { _, writer in
            try await writer.writeHead(HTTPTypes.HTTPResponse(status: .ok, headerFields: [.contentType: "text/plain"]), contentLength: 10)
            try await writer.write("hello")
            try await writer.write("world")
        }
        router.onStreaming("GET", "/short") { _, writer in
            try await writer.writeHead(status: 200, contentLength: 10)
            try await writer.write("hello")
        }
        try withServer(backend, handler: HTTPServer.handler(router: router)) { server in
            let client = try TestClient(port: server.port)
            try client.send(Array("GET /exact HTTP/1.1\r\nHost: x\r\n\r\nGET /exact HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            let both = String(decoding: try client.receiveUntilEOF(), as: UTF8.self)
            #expect(both.components(separatedBy: "\r\n\r\nhelloworld").count == 3)
            #expect(!both.contains("chunked"))
            #expect(both.components(separatedBy: "Content-Length: 10\r\n").count == 3)
            let short = try TestClient(port: server.port)
            try short.send(Array("GET /short HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            // The head and the 5 bytes, then the connection ends (EOF or reset): never a complete answer.
            var got: [UInt8] = []
            do { got = try short.receiveUntilEOF() } catch {}
            let text = String(decoding: got, as: UTF8.self)
            #expect(!text.hasSuffix("\r\n\r\nhelloworld"))
        }
    }

    @Test("the ringside-openapi-example binary serves on port 0 and stops on SIGINT", arguments: allBackends)
    func exampleBinary(_ backend: BackendKind) throws {
        try skipIfUnavailable(backend)
        let p = Process()
        p.executableURL = builtBinary("ringside-openapi-example")
        p.arguments = ["--port", "0", "--backend", backend.rawValue]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) }; p.waitUntilExit() }
        var text = ""
        let deadline = Date().addingTimeInterval(10)
        while !text.contains("\n") && Date() < deadline && p.isRunning {
            text += String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        }
        guard let port = text.split(separator: " ").first(where: { $0.hasPrefix("127.0.0.1:") })
            .flatMap({ Int($0.split(separator: ":")[1]) }) else {
            Issue.record("no listening line: \(text)")
            return
        }
        #expect(text.contains("backend=\(backend)"))
        let r = try exchange(port, "GET", "/items/1")
        #expect(r.status == 200)
        #expect(try JSONDecoder().decode(Components.Schemas.Item.self, from: Data(r.body)) == .init(id: 1, name: "apple", tags: ["fruit"]))
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
    }

    @Test("a template segment mixing text and a parameter is refused at registration")
    func partialSegment() throws {
        let transport = RingsideTransport()
        #expect(throws: RingsideTransport.RegistrationError.self) {
            try transport.register({ _, _, _ in (HTTPTypes.HTTPResponse(status: .ok), nil) }, method: .get, path: "/files/{name}.json")
        }
    }

    @Test("HTTPTypes conversions: HTTPServerRequest.httpRequest, HTTPServerResponse(HTTPTypes.HTTPResponse)")
    func conversions() throws {
        var fields = HTTPHeaderFields()
        fields.add("Host", "example.com")
        fields.add("Accept", "application/json")
        fields.add("X-Two", "a")
        fields.add("x-two", "b")
        let request = HTTPServerRequest(method: "PATCH", target: "/a/b?c=d", headers: fields)
        let typed = request.httpRequest
        #expect(typed.method == .patch)
        #expect(typed.path == "/a/b?c=d")
        #expect(typed.authority == "example.com")
        #expect(typed.headerFields[.accept] == "application/json")
        #expect(typed.headerFields[values: HTTPField.Name("x-two")!] == ["a", "b"])
        #expect(typed.headerFields[HTTPField.Name("Host")!] == nil)
        let response = HTTPServerResponse(HTTPTypes.HTTPResponse(status: .created, headerFields: [.contentType: "text/csv", HTTPField.Name("ETag")!: "\"1\""]),
                                          body: Array("a,b\n".utf8))
        #expect(response.status == 201)
        #expect(response.headers["content-type"] == "text/csv")
        #expect(response.headers["ETag"] == "\"1\"")
        #expect(response.httpResponse.status == .created)
        #expect(response.httpResponse.headerFields[HTTPField.Name.contentType] == "text/csv")
        #expect(HTTPFields(HTTPHeaderFields(typed.headerFields)) == typed.headerFields)
    }
}
