import Ringside

extension HTTPRouter {
    /// The usual benchmark routes: `GET /plaintext` ("Hello, World!"), `GET /json` (a small JSON
    /// object) and `POST /echo` (the request body back, streamed from disk when it was spooled).
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
            res.setHeader("Content-Type", "application/octet-stream")
            switch req.body {
            case .none: break
            case .bytes(let b): res.write(b)
            case .file(let fd, let size): res.bodyFile = (fd, size)
            }
        }
        return r
    }
}
