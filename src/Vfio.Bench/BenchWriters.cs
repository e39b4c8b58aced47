using System.Globalization;
using System.Text;
using System.Text.Json;
using Vfio.Reports;

namespace Vfio.Bench;

/// <summary>Writes a benchmark's results as Markdown, CSV, JSON and SVG charts.</summary>
public static class BenchWriters
{
    private static readonly string[] CsvColumns =
    [
        "section", "device_kind", "devices", "state_bytes", "channels", "mode", "runs", "verified", "downtime_ms", "downtime_min_ms",
        "device_bound_ms", "bound_ratio", "throughput_mbps", "iperf3_mbps", "iperf3_ratio", "mean_wait_ms", "mean_load_ms", "peak_rss_mib",
        "dirty_rate", "total_ms", "total_bound_ms", "total_ratio", "precopy_ms", "resent_bytes", "converged", "error",
    ];

    public static string Csv(BenchResult result)
    {
        var csv = new StringBuilder();
        csv.AppendLine(string.Join(',', CsvColumns));
        foreach (var r in result.Rows)
        {
            var s = r.Scenario;
            csv.AppendLine(string.Join(',',
                s.Section, Kind(result.Kind), N(s.Devices), N(s.StateSize), N(s.Channels), s.ModeName, N(r.Runs), r.AllVerified ? "true" : "false",
                F(r.DowntimeMedianMs), F(r.DowntimeMinMs), F(r.DeviceBoundMs), F(r.BoundRatio, "0.0000"), F(r.ThroughputMbps), F(r.IperfMbps),
                F(r.IperfRatio, "0.0000"), F(r.MeanWaitMs), F(r.MeanLoadMs), F(r.PeakRssBytes / 1048576.0),
                F(s.DirtyRate, "0"), F(r.TotalMedianMs), F(r.TotalBoundMs), F(r.TotalBoundRatio, "0.0000"), F(r.PrecopyMs), N(r.ResentBytes),
                r.Converged is bool c ? (c ? "true" : "false") : "", CsvText(r.Error)));
        }
        return csv.ToString();
    }

    public static string Markdown(BenchResult result)
    {
        var md = new StringBuilder();
        md.AppendLine($"# vfio-mig bench: {Kind(result.Kind)} devices");
        md.AppendLine();
        md.AppendLine($"`{result.Command}` on {result.Machine}.");
        if (result.Cipher is not null) md.AppendLine(result.Cipher.Describe() + ".");
        md.AppendLine("Downtime is the median over the runs of a scenario (min in brackets); per-device figures are from the median run.");
        foreach (var section in result.Rows.GroupBy(r => r.Scenario.Section))
        {
            md.AppendLine();
            md.AppendLine($"## {SectionTitle(section.Key)}");
            md.AppendLine();
            if (section.Key == "precopy")
            {
                PrecopyTable(md, section);
                continue;
            }
            md.AppendLine("| devices | state | channels | loading | downtime ms | device bound ms | ratio | Mbit/s | iperf3 Mbit/s | vs iperf3 "
                + "| mean wait ms | mean load ms | peak RSS MiB | verified |");
            md.AppendLine("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
            foreach (var r in section)
            {
                var s = r.Scenario;
                md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {s.Devices} | {BenchRunner.Size(s.StateSize)} | {s.Channels} | {s.ModeName} "
                    + $"| {r.DowntimeMedianMs:0.0} ({r.DowntimeMinMs:0.0}) | {F(r.DeviceBoundMs)} | {F(r.BoundRatio, "0.000")} "
                    + $"| {r.ThroughputMbps:0} | {F(r.IperfMbps, "0")} | {F(r.IperfRatio, "0.000")} "
                    + $"| {r.MeanWaitMs:0.0} | {r.MeanLoadMs:0.0} | {F(r.PeakRssBytes / 1048576.0, "0")} "
                    + $"| {(r.AllVerified ? "yes" : "NO: " + r.Error)} |"));
            }
        }
        var fourVfs = result.Rows.Where(r => r.Scenario.Section == "devices" && r.Scenario.Devices == 4).ToList();
        if (fourVfs.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("## Per device, 4 devices (the 4-VF scenario published for QEMU's multifd loading threads)");
            foreach (var r in fourVfs)
            {
                md.AppendLine();
                md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"{r.Scenario.ModeName}, {r.Scenario.Channels} channels, downtime {r.DowntimeMedianMs:0.0} ms:"));
                md.AppendLine();
                foreach (var d in r.PerDevice)
                    md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                        $"    {d.Name} total loading time {d.TotalMs:0} ms, wait {d.WaitMs:0} ms load {d.LoadMs:0} ms"));
            }
        }
        if (result.Targets.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("## Targets");
            md.AppendLine();
            foreach (var t in result.Targets)
                md.AppendLine($"- {(t.Met ? "met" : "**NOT met**")}: {t.Name} ({t.Detail})");
        }
        return md.ToString();
    }

    /// <summary>
    /// Live against stop-copy only: each stop-copy-only row (its total is its downtime, its bound the device bound), then
    /// its live rows, with their downtime as a fraction of the stop-copy-only one.
    /// </summary>
    private static void PrecopyTable(StringBuilder md, IEnumerable<BenchRow> rows)
    {
        md.AppendLine("Total: first device in PRE_COPY to last device running (stop-copy only: the downtime). Bound: the total bound "
            + "(stop-copy only: the device bound). Resent: stream bytes beyond the state, i.e. sent twice or more.");
        md.AppendLine();
        md.AppendLine("| devices | state | loading | dirtying | downtime ms | vs stop-copy | total ms | bound ms | ratio | precopy ms "
            + "| resent MiB | dirty rounds | converged | verified |");
        md.AppendLine("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
        BenchRow? stopCopy = null;
        foreach (var r in rows)
        {
            var s = r.Scenario;
            if (!s.Live) stopCopy = r;
            double? fraction = s.Live && stopCopy?.DowntimeMedianMs > 0 ? r.DowntimeMedianMs / stopCopy.DowntimeMedianMs : null;
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {s.Devices} | {BenchRunner.Size(s.StateSize)} | {s.ModeName} | {(s.Live ? BenchRunner.Rate(s.DirtyRate) : "stop-copy only")} "
                + $"| {r.DowntimeMedianMs:0.0} ({r.DowntimeMinMs:0.0}) | {(fraction is double f ? $"{f * 100:0.0}%" : "")} "
                + $"| {r.TotalMedianMs:0} | {F(r.TotalBoundMs, "0")} | {F(r.TotalBoundRatio, "0.000")} | {(s.Live ? $"{r.PrecopyMs:0}" : "")} "
                + $"| {r.ResentBytes / 1048576.0:0.0} | {(s.Live ? $"{r.DirtyRounds:0.#}" : "")} "
                + $"| {(r.Converged is bool c ? (c ? "yes" : "NO: " + r.ConvergedReason) : "")} "
                + $"| {(r.AllVerified ? "yes" : "NO: " + r.Error)} |"));
        }
    }

    public static void Json(BenchResult result, Stream output)
    {
        using var j = new Utf8JsonWriter(output, new JsonWriterOptions { Indented = true });
        j.WriteStartObject();
        j.WriteString("device_kind", Kind(result.Kind));
        j.WriteString("machine", result.Machine);
        j.WriteString("command", result.Command);
        if (result.Cipher is CipherCost cipher)
        {
            j.WriteStartObject("cipher");
            j.WriteString("name", "AES-128-GCM");
            j.WriteNumber("encrypt_bytes_per_second", Math.Round(cipher.EncryptBytesPerSecond));
            j.WriteNumber("decrypt_bytes_per_second", Math.Round(cipher.DecryptBytesPerSecond));
            j.WriteEndObject();
        }
        j.WriteStartArray("rows");
        foreach (var r in result.Rows)
        {
            var s = r.Scenario;
            j.WriteStartObject();
            j.WriteString("section", s.Section);
            j.WriteNumber("devices", s.Devices);
            j.WriteNumber("state_bytes", s.StateSize);
            j.WriteNumber("channels", s.Channels);
            j.WriteString("mode", s.ModeName);
            j.WriteNumber("runs", r.Runs);
            j.WriteBoolean("verified", r.AllVerified);
            if (r.Error is not null) j.WriteString("error", r.Error);
            j.WriteNumber("downtime_ms", Math.Round(r.DowntimeMedianMs, 3));
            j.WriteNumber("downtime_min_ms", Math.Round(r.DowntimeMinMs, 3));
            if (r.AllLoadingMs is double loading) j.WriteNumber("all_loading_ms", Math.Round(loading, 3));
            if (r.DeviceBoundMs is double bound) j.WriteNumber("device_bound_ms", Math.Round(bound, 3));
            j.WriteNumber("throughput_mbps", Math.Round(r.ThroughputMbps, 1));
            if (r.IperfMbps is double iperf) j.WriteNumber("iperf3_mbps", Math.Round(iperf, 1));
            if (r.IperfWhy is not null) j.WriteString("iperf3_error", r.IperfWhy);
            j.WriteNumber("mean_wait_ms", Math.Round(r.MeanWaitMs, 3));
            j.WriteNumber("mean_load_ms", Math.Round(r.MeanLoadMs, 3));
            if (r.PeakRssBytes is long rss) j.WriteNumber("peak_rss_bytes", rss);
            if (r.Cost is RunCost cost)
            {
                j.WriteNumber("run_ms", Math.Round(cost.WallMs, 3));
                j.WriteNumber("cpu_ms", Math.Round(cost.CpuMs, 3));
            }
            if (s.Section == "precopy")
            {
                if (s.DirtyRate is double rate) j.WriteNumber("dirty_rate", rate);
                j.WriteBoolean("live", s.Live);
                j.WriteNumber("total_ms", Math.Round(r.TotalMedianMs, 3));
                if (r.TotalBoundMs is double totalBound) j.WriteNumber("total_bound_ms", Math.Round(totalBound, 3));
                if (r.TotalBoundRatio is double totalRatio) j.WriteNumber("total_over_bound", Math.Round(totalRatio, 4));
                j.WriteNumber("precopy_ms", Math.Round(r.PrecopyMs, 3));
                j.WriteNumber("resent_bytes", r.ResentBytes);
                if (r.Converged is bool converged) j.WriteBoolean("converged", converged);
                if (r.ConvergedReason is not null) j.WriteString("converged_reason", r.ConvergedReason);
                if (s.Live) j.WriteNumber("dirty_rounds", Math.Round(r.DirtyRounds, 2));
            }
            j.WriteStartArray("per_device");
            foreach (var d in r.PerDevice)
            {
                j.WriteStartObject();
                j.WriteString("name", d.Name);
                j.WriteNumber("wait_ms", Math.Round(d.WaitMs, 3));
                j.WriteNumber("load_ms", Math.Round(d.LoadMs, 3));
                j.WriteNumber("total_ms", Math.Round(d.TotalMs, 3));
                j.WriteEndObject();
            }
            j.WriteEndArray();
            j.WriteEndObject();
        }
        j.WriteEndArray();
        j.WriteStartArray("targets");
        foreach (var t in result.Targets)
        {
            j.WriteStartObject();
            j.WriteString("name", t.Name);
            j.WriteBoolean("met", t.Met);
            j.WriteString("detail", t.Detail);
            j.WriteEndObject();
        }
        j.WriteEndArray();
        j.WriteEndObject();
    }

    /// <summary>
    /// The chart: downtime by device count for each loading mode, with the device bound beside it for simulated
    /// devices; for null devices, throughput by channel count beside iperf3's; for the precopy sweep, downtime by device
    /// count, stop-copy only beside live at each dirty rate.
    /// </summary>
    public static string Chart(BenchResult result)
    {
        if (result.Kind == BenchDeviceKind.Null)
        {
            var groups = result.Rows.Where(r => r.Scenario.Section == "channels")
                .Select(r => new BarGroup($"{r.Scenario.Channels} ch", Bars(("vfio-mig", r.ThroughputMbps), ("iperf3", r.IperfMbps)))).ToList();
            return SvgBarChart.Render("Transport alone (null devices) vs iperf3, loopback", "Mbit/s", "TCP streams (data channels)", groups);
        }
        if (result.Rows.Any(r => r.Scenario.Section == "precopy"))
        {
            var live = result.Rows.Where(r => r.Scenario.Section == "precopy" && r.Scenario.Loading == result.Rows[0].Scenario.Loading)
                .GroupBy(r => r.Scenario.Devices)
                .Select(g => new BarGroup($"{g.Key} dev",
                    Bars(g.Select(r => (r.Scenario.Live ? "live, " + BenchRunner.Rate(r.Scenario.DirtyRate) : "stop-copy only",
                        (double?)r.DowntimeMedianMs)).ToArray()))).ToList();
            return SvgBarChart.Render($"Downtime, live vs stop-copy only ({result.Rows[0].Scenario.ModeName})", "downtime (ms)",
                "devices migrated at once", live);
        }
        var byDevices = result.Rows.Where(r => r.Scenario.Section == "devices").GroupBy(r => r.Scenario.Devices)
            .Select(g => new BarGroup($"{g.Key} dev",
                Bars(g.Select(r => (r.Scenario.ModeName, (double?)r.DowntimeMedianMs))
                    .Append(("device bound", g.Select(r => r.DeviceBoundMs).FirstOrDefault(b => b is not null))).ToArray()))).ToList();
        return SvgBarChart.Render($"Downtime by device count ({Kind(result.Kind)} devices)", "downtime (ms)", "devices migrated at once", byDevices);
    }

    private static List<(string Series, double Value)> Bars(params (string Series, double? Value)[] bars) =>
        bars.Where(b => b.Value is not null).Select(b => (b.Series, b.Value!.Value)).ToList();

    private static string SectionTitle(string section) => section switch
    {
        "devices" => "Downtime by device count and loading mode",
        "channels" => "By channel count (decoupled)",
        "memory" => "Memory: large states",
        "precopy" => "Live (PRE_COPY) against stop-copy only",
        _ => section,
    };

    private static string Kind(BenchDeviceKind kind) => kind switch
    {
        BenchDeviceKind.Simulated => "simulated",
        BenchDeviceKind.Null => "null",
        _ => "real",
    };

    private static string N(long value) => value.ToString(CultureInfo.InvariantCulture);

    private static string F(double? value, string format = "0.###") =>
        value is double v ? v.ToString(format, CultureInfo.InvariantCulture) : "";

    private static string CsvText(string? text) =>
        text is null ? "" : "\"" + text.Replace("\"", "\"\"") + "\"";
}
