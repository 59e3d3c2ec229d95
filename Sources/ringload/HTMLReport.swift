import Foundation

/// A self-contained HTML report (inline SVG charts, no scripts or external files): per scenario,
/// throughput and server CPU per message as bars, and latency percentiles as curves.
func htmlReport(summaries: [CompareSummary], runs: [CompareRun], meta: [String: String], table: String) -> String {
    let palette = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#718096"]
    func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
    func bars(_ title: String, _ items: [(String, Double)], unit: String) -> String {
        let w = 520.0, rowH = 26.0, left = 150.0
        let maxV = max(items.map(\.1).filter { !$0.isNaN }.max() ?? 1, 1e-9)
        var svg = "<svg width='\(Int(w + 120))' height='\(Int(Double(items.count) * rowH + 30))' xmlns='http://www.w3.org/2000/svg' font-family='sans-serif' font-size='12'>"
        svg += "<text x='0' y='14' font-weight='bold'>\(esc(title))</text>"
        for (i, (name, v)) in items.enumerated() {
            let y = 22 + Double(i) * rowH
            let bw = v.isNaN ? 0 : (w - left) * v / maxV
            svg += "<text x='0' y='\(y + 15)'>\(esc(name))</text>"
            svg += "<rect x='\(left)' y='\(y + 3)' width='\(bw)' height='\(rowH - 8)' fill='\(palette[i % palette.count])'/>"
            svg += "<text x='\(left + bw + 6)' y='\(y + 15)'>\(v.isNaN ? "-" : String(format: v >= 100 ? "%.0f" : "%.2f", v)) \(esc(unit))</text>"
        }
        return svg + "</svg>"
    }
    func curves(_ items: [CompareSummary]) -> String {
        let labels = ["p50", "p90", "p99", "p99.9", "max"]
        let w = 560.0, h = 240.0, left = 60.0, bottom = 30.0
        let all = items.flatMap { [$0.p50, $0.p90, $0.p99, $0.p999, $0.max] }.filter { $0 > 0 && !$0.isNaN }
        guard let lo = all.min(), let hi = all.max() else { return "" }
        let l0 = log10(max(lo, 1) / 1.5), l1 = log10(hi * 1.5)
        func yOf(_ v: Double) -> Double { h - bottom - (log10(max(v, 1)) - l0) / (l1 - l0) * (h - bottom - 20) }
        var svg = "<svg width='\(Int(w + 160))' height='\(Int(h))' xmlns='http://www.w3.org/2000/svg' font-family='sans-serif' font-size='12'>"
        svg += "<text x='0' y='14' font-weight='bold'>latency percentiles (µs, log scale)</text>"
        for (k, lab) in labels.enumerated() {
            let x = left + Double(k) * (w - left) / Double(labels.count - 1)
            svg += "<text x='\(x - 12)' y='\(h - 8)'>\(lab)</text><line x1='\(x)' y1='20' x2='\(x)' y2='\(h - bottom)' stroke='#ddd'/>"
        }
        var tick = pow(10, floor(l0))
        while log10(tick) <= l1 {
            if log10(tick) >= l0 { svg += "<text x='0' y='\(yOf(tick) + 4)'>\(Int(tick))</text><line x1='\(left)' y1='\(yOf(tick))' x2='\(w)' y2='\(yOf(tick))' stroke='#eee'/>" }
            tick *= 10
        }
        for (i, s) in items.enumerated() {
            let vs = [s.p50, s.p90, s.p99, s.p999, s.max]
            let pts = vs.enumerated().map { k, v in "\(left + Double(k) * (w - left) / 4),\(yOf(v))" }.joined(separator: " ")
            let c = palette[i % palette.count]
            svg += "<polyline fill='none' stroke='\(c)' stroke-width='2' points='\(pts)'/>"
            svg += "<text x='\(w + 10)' y='\(30 + Double(i) * 16)' fill='\(c)'>\(esc(s.server))</text>"
        }
        return svg + "</svg>"
    }
    var html = """
    <!doctype html><html><head><meta charset='utf-8'><title>Ringside comparison \(esc(meta["date"] ?? ""))</title>
    <style>body{font-family:sans-serif;margin:24px;max-width:1100px} pre{background:#f6f6f6;padding:12px;overflow:auto;font-size:12px}
    section{margin:28px 0;border-top:1px solid #ddd;padding-top:8px} .err{color:#b00}</style></head><body>
    <h1>Ringside side-by-side comparison</h1>
    <p>\(meta.sorted { $0.key < $1.key }.map { "\(esc($0.key))=\(esc($0.value))" }.joined(separator: " · "))</p>
    <p>Servers pinned to one core, the load generator to another; repetitions interleaved, the server order rotated by one each rep; medians of clean runs.
    Server CPU per message = server utime+stime during the measured window (/proc) ÷ messages.</p>
    <pre>\(esc(table))</pre>
    """
    var scenarios: [Scenario] = []
    for s in summaries where !scenarios.contains(s.scenario) { scenarios.append(s.scenario) }
    for sc in scenarios {
        let items = summaries.filter { $0.scenario == sc }
        html += "<section><h2>\(esc(sc.description))</h2>"
        if sc.mode == "idle" {
            html += bars("server RSS per idle connection", items.map { ($0.server, $0.idleRSSKiBPerConnection ?? .nan) }, unit: "KiB")
        } else {
            html += bars("throughput", items.map { ($0.server, $0.messagesPerSecond) }, unit: "msgs/s")
            html += bars("server CPU per message", items.map { ($0.server, $0.serverCPUMicrosPerMessage) }, unit: "µs")
            html += curves(items)
        }
        for r in runs where r.scenario == sc && r.error != nil {
            html += "<p class='err'>\(esc(r.server)) rep \(r.rep): \(esc(r.error!))</p>"
        }
        html += "</section>"
    }
    return html + "</body></html>\n"
}
