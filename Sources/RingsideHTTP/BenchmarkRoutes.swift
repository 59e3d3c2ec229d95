import Ringside

extension HTTPRouter {
    /// The usual benchmark routes: `GET /plaintext` ("Hello, World!"), `GET /json` (a small JSON
    /// object), `GET /json/100k` (a 100 KB JSON array: compression benchmarks) and `POST /echo` (the request body back with the request's `Content-Type`, streamed from disk when it was spooled); and
    /// async routes: `GET /async/plaintext` ("Hello, World!" from a task on the loop),
    /// `GET /delay/{ms}` (awaits `ms` milliseconds, at most 10,000, then "done") and `GET /users/{id}`
    /// (`{"id":"..."}`, the id percent-decoded).
    public static var benchmarkRoutes: HTTPRouter {
        var r = HTTPRouter()
        r.get("/plaintext") { _, res in
            res.setHeader("Content-Type", "text/plain")
            res.write("Hello, World!")
        }
        r.get("/json") { _, res in
            res.setHeader("Content-Type", "application/json")
            res.write(#"{"message":"Hello, World!"}"#)
        }
        let large = largeJSON
        r.get("/json/100k") { _, res in
            res.setHeader("Content-Type", "application/json")
            large.withUnsafeBytes { res.write($0) }
        }
        r.post("/echo") { req, res in
            // The request's Content-Type back (a JSON body comes back as compressible JSON); no copy.
            if let type = req.header("Content-Type") {
                let name: StaticString = "Content-Type"
                res.appendHeader(UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount), type.buffer)
            } else {
                res.setHeader("Content-Type", "application/octet-stream")
            }
            switch req.body {
            case .none: break
            case .bytes(let b): res.write(b)
            case .file(let fd, let size): res.bodyFile = (fd, size)
            }
        }
        r.get("/async/plaintext") { _ in .text("Hello, World!") }
        r.get("/delay/{ms}") { req in
            guard let ms = req.parameters.get("ms", as: Int.self), ms >= 0, ms <= 10_000 else {
                throw HTTPError(400, "delay must be an integer from 0 to 10000 (milliseconds)")
            }
            try await Task.sleep(for: .milliseconds(ms))
            return .text("done")
        }
        r.get("/users/{id}") { req in try .json(UserID(id: req.parameters["id"] ?? "")) }
        return r
    }
}

private struct UserID: Codable { let id: String }

/// The body of `GET /json/100k`: a JSON array of records, 102,400 bytes with padding (the same bytes
/// as bench/gzip-wrk.sh gives nginx).
let largeJSON: [UInt8] = {
    var s = "["
    var i = 0
    while true {
        let item = #"{"id":\#(i),"name":"item \#(i)","tags":["alpha","beta","gamma"],"price":\#(i * 7 % 1000).\#(i % 100),"in_stock":\#(i % 3 == 0)}"#
        if s.utf8.count + item.utf8.count + 2 > 102_400 { break }
        if i > 0 { s += "," }
        s += item
        i += 1
    }
    s += String(repeating: " ", count: 102_400 - s.utf8.count - 1) + "]"
    return Array(s.utf8)
}()
