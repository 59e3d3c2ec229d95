import Ringside
import RingsideProtocols
import Testing

@Suite(.serialized) struct SmokeTests {
    @Test(arguments: allBackends) func echoOneMessage(_ backend: BackendKind) throws {
        try withEchoServer(backend) { server in
            let c = try TestClient(port: server.port)
            let payload = randomBytes(1000, seed: 1)
            try c.send(payload)
            #expect(try c.receive(exactly: 1000) == payload)
        }
    }
}
