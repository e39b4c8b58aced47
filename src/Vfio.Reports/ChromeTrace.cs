using System.Text.Json;

namespace Vfio.Reports;

/// <summary>
/// Chrome trace-event JSON (the format Perfetto and chrome://tracing open): one thread per track,
/// complete ("X") events in microseconds, and the live phase and the downtime as spans on a track of their own.
/// </summary>
public static class ChromeTrace
{
    private const int ProcessId = 1;

    public static void Write(Timeline timeline, Stream output)
    {
        using var json = new Utf8JsonWriter(output, new JsonWriterOptions { Indented = false });
        json.WriteStartObject();
        json.WriteString("displayTimeUnit", "ms");
        json.WriteStartArray("traceEvents");

        WriteMetadata(json, "process_name", 0, args => args.WriteString("name", timeline.Title));
        var tracks = new List<string> { "downtime" };
        tracks.AddRange(timeline.Tracks);
        for (int tid = 0; tid < tracks.Count; tid++)
        {
            WriteMetadata(json, "thread_name", tid, args => args.WriteString("name", tracks[tid]));
            WriteMetadata(json, "thread_sort_index", tid, args => args.WriteNumber("sort_index", tid));
        }

        if (timeline.LiveStartMs is double live)
            WriteComplete(json, 0, "live", "live", live, timeline.DowntimeStartMs, "precopy: the devices run while their state goes");
        WriteComplete(json, 0, "downtime", "downtime", timeline.DowntimeStartMs, timeline.DowntimeEndMs, null);
        var tidOf = tracks.Select((name, i) => (name, i)).ToDictionary(t => t.name, t => t.i);
        foreach (var span in timeline.Spans)
        {
            if (!tidOf.TryGetValue(span.Track, out int tid))
                throw new ArgumentException($"span on unknown track '{span.Track}'", nameof(timeline));
            string name = span.Kind.ToString().ToLowerInvariant();
            WriteComplete(json, tid, name, name, span.StartMs, span.EndMs, span.Detail);
        }

        json.WriteEndArray();
        json.WriteEndObject();
    }

    private static void WriteMetadata(Utf8JsonWriter json, string name, int tid, Action<Utf8JsonWriter> writeArgs)
    {
        json.WriteStartObject();
        json.WriteString("ph", "M");
        json.WriteString("name", name);
        json.WriteNumber("pid", ProcessId);
        json.WriteNumber("tid", tid);
        json.WriteStartObject("args");
        writeArgs(json);
        json.WriteEndObject();
        json.WriteEndObject();
    }

    private static void WriteComplete(Utf8JsonWriter json, int tid, string name, string category, double startMs, double endMs, string? detail)
    {
        json.WriteStartObject();
        json.WriteString("ph", "X");
        json.WriteString("name", name);
        json.WriteString("cat", category);
        json.WriteNumber("pid", ProcessId);
        json.WriteNumber("tid", tid);
        json.WriteNumber("ts", Math.Round(startMs * 1000.0, 3));
        json.WriteNumber("dur", Math.Round(Math.Max(0, endMs - startMs) * 1000.0, 3));
        if (detail is not null)
        {
            json.WriteStartObject("args");
            json.WriteString("detail", detail);
            json.WriteEndObject();
        }
        json.WriteEndObject();
    }
}
