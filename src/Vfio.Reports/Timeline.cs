namespace Vfio.Reports;

/// <summary>What a span on a timeline track stands for; decides its colour and its trace category.</summary>
public enum SpanKind
{
    Wait,
    Load,
    Save,
    Send,
    Receive,
    Other,
}

/// <summary>One interval of activity on one track, in milliseconds from the start of the run.</summary>
public sealed record TimelineSpan(string Track, SpanKind Kind, double StartMs, double EndMs, string? Detail = null)
{
    public double DurationMs => EndMs - StartMs;
}

/// <summary>
/// A run as rendered: tracks in the given order, each with its spans, the downtime window, and for a live migration
/// when its live phase began (it lasts until the downtime starts).
/// </summary>
public sealed record Timeline(
    string Title,
    IReadOnlyList<string> Tracks,
    IReadOnlyList<TimelineSpan> Spans,
    double DowntimeStartMs,
    double DowntimeEndMs,
    double? LiveStartMs = null)
{
    public double EndMs => Spans.Count == 0 ? DowntimeEndMs : Math.Max(DowntimeEndMs, Spans.Max(s => s.EndMs));
}
