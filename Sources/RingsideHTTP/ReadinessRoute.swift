import Synchronization

/// Whether a server wants new traffic, for a load balancer's health check: ready while it serves,
/// unready from the moment a graceful stop begins, while it still serves what arrives (in-flight and new
/// requests) until the balancer has taken it out of rotation. Any thread.
public final class Readiness: Sendable {
    private let ready: Atomic<Bool>

    public init(ready: Bool = true) { self.ready = Atomic(ready) }

    /// Whether the readiness route answers 200.
    public var isReady: Bool { ready.load(ordering: .relaxed) }

    /// From now on the readiness route answers 503 (call as a graceful stop begins).
    public func markUnready() { ready.store(false, ordering: .relaxed) }

    /// From now on the readiness route answers 200.
    public func markReady() { ready.store(true, ordering: .relaxed) }
}

extension HTTPRouter {
    /// Registers the readiness route, `GET path` (and HEAD): `200 ready` while `readiness.isReady`,
    /// `503 draining` once it is not. Point the load balancer's health check at it (HAProxy:
    /// `option httpchk GET /ready`; Kubernetes: a `readinessProbe`).
    public mutating func readiness(_ path: String = "/ready", _ readiness: Readiness) {
        get(path) { _, res in
            res.setHeader("Content-Type", "text/plain")
            if readiness.isReady {
                res.write("ready\n")
            } else {
                res.status = 503
                res.write("draining\n")
            }
        }
    }
}
