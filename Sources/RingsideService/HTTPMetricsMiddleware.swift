import Metrics
import RingsideHTTP

/// Middleware recording swift-metrics for the async routes it wraps (in RingsideService, so that
/// RingsideHTTP itself does not depend on swift-metrics):
///
/// - a counter `<prefix>_requests_total` with dimensions `method` and `status` (the answered status;
///   a thrown `HTTPError` counts with its status, any other error as 500);
/// - a timer `<prefix>_request_duration_seconds` with dimension `method` (handler and inner
///   middleware, in nanoseconds).
///
/// ```swift
/// router.use(HTTPMetricsMiddleware())           // outermost: sees every answer, 401s included
/// ```
///
/// The metric handles are made per request through the factory (its own lookup; no engine state).
public struct HTTPMetricsMiddleware: HTTPMiddleware {
    /// The label prefix.
    public let prefix: String
    let factory: (any MetricsFactory)?

    /// - Parameters:
    ///   - prefix: the labels' prefix (`ringside_http`).
    ///   - factory: where the metrics go; nil: the bootstrapped `MetricsSystem.factory`.
    public init(prefix: String = "ringside_http", factory: (any MetricsFactory)? = nil) {
        self.prefix = prefix
        self.factory = factory
    }

    /// Times `next` and counts its answer.
    public func handle(_ request: HTTPServerRequest, next: HTTPAsyncHandler) async throws -> HTTPServerResponse {
        let start = ContinuousClock.now
        let status: Int
        defer {
            let f = factory ?? MetricsSystem.factory
            let d = ContinuousClock.now - start
            Timer(label: "\(prefix)_request_duration_seconds", dimensions: [("method", request.method)], factory: f)
                .recordNanoseconds(d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000)
            Counter(label: "\(prefix)_requests_total", dimensions: [("method", request.method), ("status", String(status))],
                    factory: f).increment()
        }
        do {
            let response = try await next(request)
            status = response.status
            return response
        } catch let e as HTTPError {
            status = e.status
            throw e
        } catch {
            status = 500
            throw error
        }
    }
}
