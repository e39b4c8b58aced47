using Vfio.Migration;
using Vfio.Reports;

namespace Vfio.Cli;

/// <summary>
/// Turns a run's timeline (absolute microseconds, tracks per thread) into the renderers' model (milliseconds
/// from the start of the live phase, or else from the first source stop; one track per thread; the live phase and the
/// downtime window): the seam for --trace and --svg.
/// Track order: destination loaders, source save threads, source channel senders, destination channel
/// receivers, then the coordinators' state transitions.
/// </summary>
public static class TimelineExport
{
    public static Timeline ToReportsTimeline(RunReport report, string? title = null)
    {
        var tracks = report.Timeline.Tracks;
        // A live run starts with its live phase, and the downtime follows it; otherwise it starts with the downtime.
        bool live = report.PrecopyStartUs > 0 && report.FirstStopUs >= report.PrecopyStartUs;
        long origin = live ? report.PrecopyStartUs
            : report.FirstStopUs > 0 ? report.FirstStopUs
            : tracks.SelectMany(t => t.Spans).Select(s => s.StartUs).DefaultIfEmpty(0).Min();
        static int Rank(TimelineTrack t) => (t.Category, t.Side) switch
        {
            ("loader", _) => 0,
            ("save", _) => 1,
            ("send", _) => 2,
            ("receive", _) => 3,
            _ => 4,
        };
        var ordered = tracks.OrderBy(Rank).ThenBy(t => t.Device).ThenBy(t => t.Name, StringComparer.Ordinal).ToList();
        var spans = new List<TimelineSpan>();
        foreach (var t in ordered)
            foreach (var s in t.Spans)
                spans.Add(new TimelineSpan(t.Name, Map(s.Kind), (s.StartUs - origin) / 1000.0, (s.EndUs - origin) / 1000.0, Describe(s)));
        double downStart = live ? (report.FirstStopUs - origin) / 1000.0 : 0;
        double downEnd = report.LastRunningUs > origin
            ? (report.LastRunningUs - origin) / 1000.0
            : spans.Select(s => s.EndMs).DefaultIfEmpty(0).Max();
        return new Timeline(
            title ?? $"vfio-mig {report.Role}: {report.Devices.Count} devices, {report.Channels} channels, {report.ModeName} loading, "
                + (live ? $"live {downStart:0} ms, " : "") + $"downtime {report.DowntimeMs:0} ms",
            ordered.Select(t => t.Name).ToList(), spans, downStart, downEnd, live ? 0 : null);
    }

    private static SpanKind Map(TraceKind kind) => kind switch
    {
        TraceKind.Wait => SpanKind.Wait,
        TraceKind.Load => SpanKind.Load,
        TraceKind.Save => SpanKind.Save,
        TraceKind.Send => SpanKind.Send,
        TraceKind.Receive => SpanKind.Receive,
        TraceKind.CreditWait => SpanKind.Wait,
        _ => SpanKind.Other,
    };

    private static string Describe(TraceSpan s)
    {
        var parts = new List<string> { s.Kind.ToString() };
        if (s.Device >= 0) parts.Add($"device {s.Device}");
        if (s.Buffer >= 0) parts.Add($"buffer {s.Buffer}");
        if (s.Bytes > 0) parts.Add($"{s.Bytes} bytes");
        if (s.Detail is not null) parts.Add(s.Detail);
        return string.Join(", ", parts);
    }
}
