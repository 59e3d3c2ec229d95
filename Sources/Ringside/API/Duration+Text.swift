extension Duration {
    /// `10s`, `500ms`, `1.5s`, `250us`: how durations are shown in logs and errors (the CLI takes the
    /// same forms).
    var compactDescription: String {
        let (s, atto) = components
        if atto == 0 { return "\(s)s" }
        let totalNanos = Double(s) * 1e9 + Double(atto) / 1e9
        if abs(totalNanos) >= 1e15 { return "\(Double(s) + Double(atto) / 1e18)s" }
        let ns = Int64(totalNanos.rounded())
        if ns % 1_000_000 == 0 && abs(ns) < 1_000_000_000 { return "\(ns / 1_000_000)ms" }
        if ns % 1000 == 0 && abs(ns) < 1_000_000 { return "\(ns / 1000)us" }
        if abs(ns) < 1000 { return "\(ns)ns" }
        return "\(Double(ns) / 1e9)s"
    }
}
