// ringside-httptypes: Ringside's benchmark routes plus the same answers through swift-http-types, in
// one server (one loop thread), so that bench/openapi-wrk.sh measures what the types cost per request:
//
//   GET /plaintext, /async/plaintext              HTTPRouter.benchmarkRoutes (Ringside's own types)
//   GET /httptypes/plaintext                      sync: a prebuilt HTTPTypes.HTTPResponse, res.apply
//   GET /async/httptypes/plaintext                async: request.httpRequest read, answered with
//                                                 HTTPServerResponse(HTTPTypes.HTTPResponse, body:)
//
//   ringside-httptypes --port 0 [--backend uring|epoll]
//   prints:  listening on 127.0.0.1:PORT backend=...
import Glibc
import HTTPTypes
import Ringside
import RingsideHTTP

var port = 0
var backend = BackendKind.auto
var arguments = CommandLine.arguments.dropFirst()
while let a = arguments.popFirst() {
    switch a {
    case "--port": port = arguments.popFirst().flatMap { Int($0) } ?? port
    case "--backend": backend = arguments.popFirst().flatMap { BackendKind(rawValue: $0) } ?? .auto
    default:
        print("usage: ringside-httptypes [--port N] [--backend uring|epoll|auto]")
        exit(2)
    }
}

let plaintext = HTTPTypes.HTTPResponse(status: .ok, headerFields: [.contentType: "text/plain"])
let hello = Array("Hello, World!".utf8)
var router = HTTPRouter.benchmarkRoutes
router.get("/httptypes/plaintext") { _, res in
    res.apply(plaintext)
    res.write("Hello, World!")
}
router.get("/async/httptypes/plaintext") { request in
    let head = request.httpRequest
    guard head.method == .get, head.path == "/async/httptypes/plaintext" else { throw HTTPError(400) }
    return HTTPServerResponse(plaintext, body: hello)
}

signal(SIGPIPE, SIG_IGN)
var blocked = sigset_t()
sigemptyset(&blocked)
sigaddset(&blocked, SIGINT)
sigaddset(&blocked, SIGTERM)
pthread_sigmask(SIG_BLOCK, &blocked, nil)
let server = try RingsideServer.start(configuration: ServerConfiguration(host: "127.0.0.1", port: port, backend: backend),
                                      handler: HTTPServer.handler(router: router))
print("listening on 127.0.0.1:\(server.port) backend=\(server.backend)")
fflush(nil)
var sig: Int32 = 0
sigwait(&blocked, &sig)
try server.shutdown()
