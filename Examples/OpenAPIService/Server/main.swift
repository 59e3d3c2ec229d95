// The OpenAPI example on Ringside: the service generated from ../openapi.yaml (OpenAPIItemsService),
// served through RingsideOpenAPI's transport.
//
//   swift run -c release ringside-openapi-example --port 8080 [--backend uring|epoll|auto]
//   curl localhost:8080/items/1
//   curl 'localhost:8080/items?prefix=a&limit=1'
//   curl -H 'Content-Type: application/json' -d '{"name":"cheese"}' localhost:8080/items
//   curl -o /dev/null localhost:8080/blob/100000000
//   curl -H 'Content-Type: application/octet-stream' --data-binary @file localhost:8080/echo
import Glibc
import OpenAPIItemsService
import OpenAPIRuntime
import Ringside
import RingsideHTTP
import RingsideOpenAPI

var port = 8080
var backend = BackendKind.auto
var arguments = CommandLine.arguments.dropFirst()
while let a = arguments.popFirst() {
    switch a {
    case "--port": port = arguments.popFirst().flatMap { Int($0) } ?? port
    case "--backend":
        switch arguments.popFirst() {
        case "uring": backend = .uring
        case "epoll": backend = .epoll
        default: backend = .auto
        }
    default:
        print("usage: ringside-openapi-example [--port N] [--backend uring|epoll|auto]")
        exit(2)
    }
}

let transport = RingsideTransport()
try ItemsHandler().registerHandlers(on: transport, middlewares: [ErrorHandlingMiddleware()])

signal(SIGPIPE, SIG_IGN)
var blocked = sigset_t()
sigemptyset(&blocked)
sigaddset(&blocked, SIGINT)
sigaddset(&blocked, SIGTERM)
pthread_sigmask(SIG_BLOCK, &blocked, nil)

let server = try RingsideServer.start(configuration: ServerConfiguration(host: "127.0.0.1", port: port, backend: backend),
                                      handler: HTTPServer.handler(router: transport.router))
print("listening on 127.0.0.1:\(server.port) backend=\(server.backend)")
fflush(nil)
var sig: Int32 = 0
sigwait(&blocked, &sig)
try server.shutdown()
