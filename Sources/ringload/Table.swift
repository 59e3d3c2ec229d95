import Foundation
import Glibc

/// One row of a results table.
struct TableRow {
    var cells: [String]
}

extension LoadResult {
    func tableRow(name: String) -> TableRow {
        TableRow(cells: [
            name, String(format: "%.0f", messagesPerSecond), String(format: "%.2f", megabytesPerSecond),
            String(format: "%.0f", latencyMicros.p50), String(format: "%.0f", latencyMicros.p90),
            String(format: "%.0f", latencyMicros.p99), String(format: "%.0f", latencyMicros.p999),
            String(format: "%.0f", latencyMicros.max), latenessCell(sendLatenessMicros), "\(errors.total)",
            String(format: "%.0f%%", clientCPUPercent) + (clientBound ? " (!)" : ""),
        ])
    }
}

let loadTableHeader = ["run", "msgs/s", "MB/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs",
                       "send late p50/p99/max µs", "errors", "client CPU"]

/// The open loop's send lateness as one cell ("-" for the closed loop).
func latenessCell(_ l: LoadResult.Lateness?) -> String {
    guard let l else { return "-" }
    return String(format: "%.1f/%.1f/%.0f", l.p50, l.p99, l.max)
}

/// Formats rows under a header as aligned columns.
func formatTable(_ rows: [TableRow], header: [String] = loadTableHeader) -> String {
    let all = [header] + rows.map(\.cells)
    var widths = [Int](repeating: 0, count: header.count)
    for r in all { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    return all.map { r in
        r.enumerated().map { i, c in
            i == 0 ? c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                   : String(repeating: " ", count: widths[i] - c.count) + c
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

/// Writes to standard error (unbuffered, no shared C stream state).
func printError(_ s: String) {
    var s = s
    s.withUTF8 { _ = Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
}
