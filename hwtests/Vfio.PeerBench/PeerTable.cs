using System.Globalization;
using System.Text;

namespace Vfio.PeerBench;

/// <summary>One migration by one tool. Times in ms; null where the tool has no such figure.</summary>
internal sealed record PeerRow
{
    public required string Tool { get; init; }
    public required string Mode { get; init; }
    public required int Devices { get; init; }
    /// <summary>First source device leaving RUNNING/PRE_COPY to last destination device RUNNING.</summary>
    public double? EndToEndMs { get; init; }
    /// <summary>QEMU only: from the first source device in STOP_COPY (the end-to-end figure without the quiesce).</summary>
    public double? FromStopCopyMs { get; init; }
    /// <summary>QEMU only: query-migrate's downtime, measured at the source: it excludes the destination's loads.</summary>
    public double? QemuDowntimeMs { get; init; }
    public double? TotalMs { get; init; }
    public double? PrecopyMs { get; init; }
    public string? Converged { get; init; }
    /// <summary>The module's own count: the longest time one destination device spent loading (load_us_total).</summary>
    public double? MaxDeviceLoadMs { get; init; }
    public long? LoadedBytes { get; init; }
    public string? Error { get; init; }

    public string Line() => Error is not null
        ? $"{Mode} {Devices} {Tool}: FAILED: {Error}"
        : FormattableString.Invariant(
              $"{Mode} {Devices} {Tool}: end-to-end {EndToEndMs:0.0} ms, total {TotalMs:0.0} ms, longest device load {MaxDeviceLoadMs:0.0} ms")
          + (QemuDowntimeMs is double q
              ? FormattableString.Invariant($", QEMU's own downtime {q:0.0} ms, from STOP_COPY {FromStopCopyMs:0.0} ms") : "");
}

/// <summary>The side-by-side table of docs/performance.md: medians per mode and device count.</summary>
internal static class PeerTable
{
    public static string Markdown(IReadOnlyList<PeerRow> rows, string qemuVersion, int channels, string module)
    {
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"{qemuVersion}, {channels} channels; module {module}");
        sb.AppendLine();
        sb.AppendLine("| mode | devices | vfio-mig ms | QEMU ms | vfio-mig / QEMU | QEMU from STOP_COPY ms | QEMU's own downtime ms "
                      + "| longest device load ms (vfio-mig / QEMU) | runs |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var g in rows.GroupBy(r => (r.Mode, r.Devices)))
        {
            var v = g.Where(r => r.Tool == "vfio-mig").ToList();
            var q = g.Where(r => r.Tool == "qemu").ToList();
            double? vm = Median(v, r => r.EndToEndMs), qm = Median(q, r => r.EndToEndMs);
            string ratio = vm is double a && qm is double b && b > 0 ? (a / b).ToString("0.00", CultureInfo.InvariantCulture) : "-";
            string[] cells =
            [
                g.Key.Mode, g.Key.Devices.ToString(CultureInfo.InvariantCulture), F(vm), F(qm), ratio,
                F(Median(q, r => r.FromStopCopyMs)), F(Median(q, r => r.QemuDowntimeMs)),
                $"{F(Median(v, r => r.MaxDeviceLoadMs))} / {F(Median(q, r => r.MaxDeviceLoadMs))}",
                $"{Ok(v)}/{v.Count} + {Ok(q)}/{q.Count}",
            ];
            sb.AppendLine("| " + string.Join(" | ", cells) + " |");
        }
        var failures = rows.Where(r => r.Error is not null).ToList();
        if (failures.Count > 0)
        {
            sb.AppendLine();
            foreach (var f in failures) sb.AppendLine(CultureInfo.InvariantCulture, $"- {f.Mode}, {f.Devices} devices, {f.Tool}: {f.Error}");
        }
        return sb.ToString();
    }

    /// <summary>The median of the successful runs' figures, or null when none has one.</summary>
    public static double? Median(IEnumerable<PeerRow> rows, Func<PeerRow, double?> figure)
    {
        var xs = rows.Where(r => r.Error is null).Select(figure).OfType<double>().Order().ToList();
        if (xs.Count == 0) return null;
        return xs.Count % 2 == 1 ? xs[xs.Count / 2] : (xs[xs.Count / 2 - 1] + xs[xs.Count / 2]) / 2;
    }

    private static string Ok(List<PeerRow> rows) => rows.Count(r => r.Error is null).ToString(CultureInfo.InvariantCulture);

    private static string F(double? x) => x is double d ? d.ToString("0.0", CultureInfo.InvariantCulture) : "-";
}
