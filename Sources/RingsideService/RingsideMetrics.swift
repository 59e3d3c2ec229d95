import Metrics
import Ringside

/// Publishes a server's `ServerStats` to swift-metrics: it samples the stats (periodically with
/// ``run()``, or now with ``report()``), increments counters by the change since the last sample and
/// records gauges.
///
/// Every metric carries a `backend` dimension (`uring` or `epoll`) plus ``Options/dimensions``.
///
/// Counters: `ringside_connections_accepted_total`, `ringside_connections_refused_total`,
/// `ringside_connections_refused_per_address_total`, `ringside_connections_closed_total`,
/// `ringside_bytes_received_total`, `ringside_bytes_sent_total`, `ringside_no_buffer_events_total`
/// (-ENOBUFS), `ringside_recv_rearms_total`, `ringside_accept_rearms_total` (multishot re-arms),
/// `ringside_cq_overflow_events_total`, `ringside_sq_full_events_total`,
/// `ringside_sq_deferred_ops_total`, `ringside_accept_errors_total`, `ringside_writes_refused_total`,
/// `ringside_read_pauses_total`, and `ringside_deadline_closures_total` with a `reason` dimension
/// (`authentication`, `idle`, `read`, `write_stall`).
///
/// Gauges: `ringside_connections_open`, `ringside_buffers_in_use`, `ringside_buffers_in_use_peak`.
///
/// ```swift
/// let metrics = RingsideMetrics(server: server)      // MetricsSystem.factory, 1 s interval
/// Task { await metrics.run() }                        // until the task is cancelled
/// ```
public final class RingsideMetrics: Sendable {
    /// How and where to publish.
    public struct Options: Sendable {
        /// Time between samples in ``RingsideMetrics/run()``.
        public var interval: Duration
        /// The factory the metrics are created with; nil uses the bootstrapped `MetricsSystem.factory`.
        public var factory: (any MetricsFactory)?
        /// Extra dimensions added to every metric (after `backend`).
        public var dimensions: [(String, String)]

        public init(interval: Duration = .seconds(1), factory: (any MetricsFactory)? = nil,
                    dimensions: [(String, String)] = []) {
            self.interval = interval; self.factory = factory; self.dimensions = dimensions
        }
    }

    private struct CounterSource: Sendable {
        let counter: Counter
        let value: @Sendable (ServerStats) -> Int
    }
    private struct GaugeSource: Sendable {
        let gauge: Gauge
        let value: @Sendable (ServerStats) -> Int
    }

    /// The sampling interval of ``run()``.
    public let interval: Duration
    private let sample: @Sendable () -> ServerStats
    private let counters: [CounterSource]
    private let gauges: [GaugeSource]
    /// The stats as of the previous sample (counters are incremented by the difference).
    private let last = PthreadMutex(ServerStats())

    /// Reports `server.stats`, with `backend` set to `server.backend`.
    public convenience init(server: RunningServer, options: Options = Options()) {
        self.init(backend: server.backend, options: options) { server.stats }
    }

    /// Reports whatever `stats` returns (for servers started some other way).
    public init(backend: BackendKind, options: Options = Options(), stats: @escaping @Sendable () -> ServerStats) {
        interval = options.interval
        sample = stats
        let factory = options.factory ?? MetricsSystem.factory
        let base = [("backend", backend.rawValue)] + options.dimensions

        func counter(_ name: String, _ extra: [(String, String)] = [], _ value: @escaping @Sendable (ServerStats) -> Int) -> CounterSource {
            CounterSource(counter: Counter(label: name, dimensions: base + extra, factory: factory), value: value)
        }
        func gauge(_ name: String, _ value: @escaping @Sendable (ServerStats) -> Int) -> GaugeSource {
            GaugeSource(gauge: Gauge(label: name, dimensions: base, factory: factory), value: value)
        }
        let deadline = "ringside_deadline_closures_total"
        counters = [
            counter("ringside_connections_accepted_total") { $0.connectionsAccepted },
            counter("ringside_connections_refused_total") { $0.connectionsRefused },
            counter("ringside_connections_refused_per_address_total") { $0.connectionsRefusedPerAddress },
            counter("ringside_connections_closed_total") { $0.connectionsClosed },
            counter("ringside_bytes_received_total") { $0.bytesIn },
            counter("ringside_bytes_sent_total") { $0.bytesOut },
            counter("ringside_no_buffer_events_total") { $0.noBufferEvents },
            counter("ringside_recv_rearms_total") { $0.recvRearms },
            counter("ringside_accept_rearms_total") { $0.acceptRearms },
            counter("ringside_cq_overflow_events_total") { $0.cqOverflowEvents },
            counter("ringside_sq_full_events_total") { $0.sqFullEvents },
            counter("ringside_sq_deferred_ops_total") { $0.sqDeferredOps },
            counter("ringside_accept_errors_total") { $0.acceptErrors },
            counter("ringside_writes_refused_total") { $0.writesRefused },
            counter("ringside_read_pauses_total") { $0.readPauses },
            counter(deadline, [("reason", "authentication")]) { $0.authenticationTimeouts },
            counter(deadline, [("reason", "idle")]) { $0.idleTimeouts },
            counter(deadline, [("reason", "read")]) { $0.readTimeouts },
            counter(deadline, [("reason", "write_stall")]) { $0.writeStallTimeouts },
        ]
        gauges = [
            gauge("ringside_connections_open") { $0.connectionsOpen },
            gauge("ringside_buffers_in_use") { $0.buffersInUse },
            gauge("ringside_buffers_in_use_peak") { $0.peakBuffersInUse },
        ]
    }

    /// Samples the stats now and publishes them. Any thread.
    public func report() {
        last.withLock { previous in
            let now = sample()
            for c in counters {
                let delta = c.value(now) - c.value(previous)
                if delta > 0 { c.counter.increment(by: delta) }
            }
            for g in gauges { g.gauge.record(g.value(now)) }
            previous = now
        }
    }

    /// Reports now and then every ``interval`` until the task is cancelled.
    public func run() async {
        report()
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            report()
        }
    }
}
