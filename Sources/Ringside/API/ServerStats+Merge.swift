extension ServerStats {
    /// Counters and gauges that add up across loops (every stored field except the peaks).
    /// (Computed: key-path arrays are not Sendable, and merging is far off any hot path.)
    static var summedFields: [WritableKeyPath<ServerStats, Int>] { [
        \.connectionsAccepted, \.connectionsConnected, \.connectFailures, \.connectionsOpen,
        \.connectionsClosed, \.connectionsRefused, \.bytesIn, \.bytesOut, \.buffersInUse,
        \.noBufferEvents, \.recvRearms, \.acceptRearms, \.canceledCompletions, \.cqOverflowEvents,
        \.cqDropped, \.sqFullEvents, \.sqDeferredOps, \.staleCompletions, \.shortSends, \.readPauses,
        \.receivesHeld, \.writesRefused, \.acceptErrors,
        \.connectionsRefusedPerAddress, \.authenticationTimeouts, \.idleTimeouts, \.readTimeouts,
        \.writeStallTimeouts, \.receiveBurstLimitEnds, \.bundledReceives, \.bundledBuffers, \.bulkInputConnections, \.loopWaits, \.sendWaits, \.engineErrors, \.teardownsWithSendInFlight,
        \.proxyHeadersAccepted, \.proxyHeadersRejected, \.proxyHeadersUntrusted, \.proxyHeaderTimeouts,
        \.tlsHandshakes, \.tlsResumptions, \.tlsHandshakeFailures, \.tlsHandshakesTruncated, \.tlsHandshakeTimeouts,
        \.tlsHandshakesOverCap, \.tlsHandshakesEvicted, \.tlsHandshakesInProgress, \.tlsKernelTransmits, \.layerErrors,
        \.fileSplices, \.fileSpliceBytes, \.fileSpliceFallbacks, \.splicePipesInUse,
        \.zeroCopySends, \.zeroCopySendsCompleted, \.zeroCopySendsCopied,
    ] }
    /// Peaks and maxima: the merged value is the largest of any loop (each loop has its own pool and
    /// connections, so a sum of peaks would describe no moment that happened).
    static var maximumFields: [WritableKeyPath<ServerStats, Int>] { [
        \.peakBuffersInUse, \.maxQueuedBytes,
    ] }

    /// The whole server's view of several loops' counters: sums, and the maximum for peaks.
    /// `MultiLoopTests` checks by reflection that every stored field is in exactly one of the tables.
    public static func merged<S: Sequence>(_ loops: S) -> ServerStats where S.Element == ServerStats {
        var total = ServerStats()
        let summedFields = summedFields, maximumFields = maximumFields
        for s in loops {
            for f in summedFields { total[keyPath: f] += s[keyPath: f] }
            for f in maximumFields { total[keyPath: f] = max(total[keyPath: f], s[keyPath: f]) }
        }
        return total
    }
}
