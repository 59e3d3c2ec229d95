import Ringside

extension HTTPRouter {
    /// The usual benchmark routes: `GET /plaintext` ("Hello, World!"), `GET /json` (a small JSON
    /// object) and `POST /echo` (the request body back with the request's `Content-Type`, streamed from disk when it was spooled); and
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
        r.post("/echo") { req, res in
            // The request's Content-Type back (a JSON body comes back as compressible JSON); no copy.
            if let type = req.header("Content-Type") {
                let name: StaticString = "Content-Type"
                res.headers.appendHeader(UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount), type.buffer)
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
