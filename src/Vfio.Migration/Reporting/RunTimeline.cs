using System.Diagnostics;

namespace Vfio.Migration;

/// <summary>
/// One clock for every timestamp of a run: microseconds since the Unix epoch, monotonic within a process
/// (Stopwatch anchored once to the wall clock), so that two processes on one host can compare timestamps.
/// </summary>
public static class MigrationClock
{
    private static readonly long s_anchorUs = (DateTime.UtcNow.Ticks - DateTime.UnixEpoch.Ticks) / 10;
    private static readonly long s_anchorTimestamp = Stopwatch.GetTimestamp();
    private static readonly double s_usPerTick = 1_000_000.0 / Stopwatch.Frequency;

    public static long NowUs => s_anchorUs + (long)((Stopwatch.GetTimestamp() - s_anchorTimestamp) * s_usPerTick);
}

/// <summary>What a span on a track stands for (names chosen to map 1:1 onto Vfio.Reports.SpanKind where one exists).</summary>
public enum TraceKind
{
    /// <summary>A loader waiting for its device's next buffer to arrive.</summary>
    Wait,
    /// <summary>A write(2) into a resuming data fd (the device loading).</summary>
    Load,
    /// <summary>A save thread reading its device's data fd.</summary>
    Save,
    /// <summary>A channel sending one packet.</summary>
    Send,
    /// <summary>A channel receiving one packet (from header to verified payload).</summary>
    Receive,
    /// <summary>A save thread waiting for credits (the destination's window is full).</summary>
    CreditWait,
    /// <summary>A device state transition (detail says which).</summary>
    Transition,
    /// <summary>Config state save or restore.</summary>
    Config,
    /// <summary>Verification of byte count, checksum and digest.</summary>
    Verify,
}

/// <summary>One interval of activity, absolute microseconds (MigrationClock). Buffer and Device are -1 when not about one.</summary>
public readonly record struct TraceSpan(
    TraceKind Kind, long StartUs, long EndUs, long Bytes = 0, int Buffer = -1, int Device = -1, string? Detail = null);

/// <summary>
/// One track of the timeline: the activity of one thread (a device loader, a save thread, a channel).
/// Each track is written by one thread only, so adding a span takes no lock; read it once the run is over.
/// A track keeps its first <see cref="MaxSpans"/> spans and counts the rest: the peer decides how many packets it
/// sends (down to one byte each), so the timeline must not grow with them.
/// </summary>
public sealed class TimelineTrack
{
    /// <summary>Spans a track keeps (about 1.5 MiB): 16384 buffers of a device, or 32768 packets of a channel.</summary>
    public const int MaxSpans = 1 << 15;
    private readonly List<TraceSpan> _spans = new(256);

    internal TimelineTrack(string name, string category, string side, int device)
    {
        Name = name;
        Category = category;
        Side = side;
        Device = device;
    }

    /// <summary>e.g. "dst loader sim:vf0", "src save sim:vf0", "dst channel 3 recv".</summary>
    public string Name { get; }
    /// <summary>"loader", "save", "send", "receive", "main".</summary>
    public string Category { get; }
    /// <summary>"source" or "destination".</summary>
    public string Side { get; }
    /// <summary>Device index, or -1 for channel tracks.</summary>
    public int Device { get; }
    public IReadOnlyList<TraceSpan> Spans => _spans;
    /// <summary>Spans not kept because the track was full.</summary>
    public long Dropped { get; private set; }

    public void Add(TraceKind kind, long startUs, long endUs, long bytes = 0, int buffer = -1, string? detail = null, int device = -1)
    {
        if (_spans.Count < MaxSpans) _spans.Add(new TraceSpan(kind, startUs, endUs, bytes, buffer, device < 0 ? Device : device, detail));
        else Dropped++;
    }
}

/// <summary>A named instant (switchover, first source stop, last destination running, failure).</summary>
public readonly record struct TimelineMark(string Name, long TimeUs);

/// <summary>
/// Every timestamped span of a run, grouped in tracks, plus marks. The trace and SVG renderers read this
/// after the run; the per-device figures in the report are sums over the loader tracks' spans.
/// </summary>
public sealed class RunTimeline
{
    private readonly List<TimelineTrack> _tracks = new();
    private readonly List<TimelineMark> _marks = new();

    public IReadOnlyList<TimelineTrack> Tracks { get { lock (_tracks) return _tracks.ToArray(); } }
    public IReadOnlyList<TimelineMark> Marks { get { lock (_marks) return _marks.ToArray(); } }

    public TimelineTrack AddTrack(string name, string category, string side, int device = -1)
    {
        var track = new TimelineTrack(name, category, side, device);
        lock (_tracks) _tracks.Add(track);
        return track;
    }

    public void Mark(string name, long timeUs)
    {
        lock (_marks) _marks.Add(new TimelineMark(name, timeUs));
    }

    /// <summary>Adds the other side's tracks and marks (loopback: one timeline for the whole run).</summary>
    public void Merge(RunTimeline other)
    {
        lock (_tracks) _tracks.AddRange(other.Tracks);
        lock (_marks) _marks.AddRange(other.Marks);
    }

    public long? MarkTime(string name)
    {
        lock (_marks)
            foreach (var m in _marks)
                if (m.Name == name) return m.TimeUs;
        return null;
    }
}
