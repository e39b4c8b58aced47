using static Vfio.Reports.SvgText;
using System.Text;

namespace Vfio.Reports;

/// <summary>
/// A self-contained SVG picture of a run: one row per track, waiting and loading in distinct colours,
/// the live phase and the downtime shaded and labelled, a millisecond axis, a legend and each track's totals.
/// </summary>
public static class SvgTimeline
{
    private const double PlotWidth = 800;
    private const double RowHeight = 20;
    private const double RowGap = 6;
    private const double Top = 70;
    /// <summary>A generous average advance of a 12 px sans-serif character, to size the text columns.</summary>
    private const double CharWidth = 7;

    internal static readonly IReadOnlyDictionary<SpanKind, string> Colours = new Dictionary<SpanKind, string>
    {
        [SpanKind.Wait] = "#f4a261",
        [SpanKind.Load] = "#2a6fdb",
        [SpanKind.Save] = "#2a9d8f",
        [SpanKind.Send] = "#8d99ae",
        [SpanKind.Receive] = "#9b5de5",
        [SpanKind.Other] = "#bbbbbb",
    };

    public static string Render(Timeline timeline)
    {
        var spansByTrack = timeline.Tracks.ToDictionary(t => t, t => timeline.Spans.Where(s => s.Track == t).OrderBy(s => s.StartMs).ToList());
        var totals = timeline.Tracks.ToDictionary(t => t, t => Totals(spansByTrack[t]));
        // The text columns are as wide as their longest line, so no label or total is cut off.
        double labelWidth = 16 + CharWidth * Math.Max(12, timeline.Tracks.Select(t => t.Length).DefaultIfEmpty(0).Max());
        double totalsWidth = 16 + CharWidth * Math.Max(12, totals.Values.Select(t => t.Length).DefaultIfEmpty(0).Max());
        double width = labelWidth + PlotWidth + totalsWidth;
        double endMs = Math.Max(timeline.EndMs, 1e-3);
        double msPerPx = endMs / PlotWidth;
        double X(double ms) => labelWidth + ms / msPerPx;
        double plotBottom = Top + timeline.Tracks.Count * (RowHeight + RowGap);
        double height = plotBottom + 60;

        var svg = new StringBuilder();
        svg.Append(Inv($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:0.##}\" height=\"{height}\" viewBox=\"0 0 {width:0.##} {height}\" "
            + $"font-family=\"sans-serif\" font-size=\"12\">\n"));
        svg.Append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        svg.Append(Inv($"<text x=\"{labelWidth:0.##}\" y=\"22\" font-size=\"16\" font-weight=\"bold\">{Escape(timeline.Title)}</text>\n"));
        WriteLegend(svg, timeline, labelWidth);

        if (timeline.LiveStartMs is double live)
        {
            double liveMs = timeline.DowntimeStartMs - live;
            svg.Append(Inv($"<rect x=\"{X(live):0.##}\" y=\"{Top - 8}\" width=\"{Math.Max(liveMs / msPerPx, 0.5):0.##}\" "
                + $"height=\"{plotBottom - Top + 8}\" fill=\"#2a9d8f\" fill-opacity=\"0.06\" stroke=\"#2a9d8f\" "
                + $"stroke-dasharray=\"4 3\"><title>live phase (precopy) {liveMs:0.#} ms</title></rect>\n"));
            svg.Append(Inv($"<text x=\"{X(live) + 4:0.##}\" y=\"{Top - 12}\" fill=\"#2a9d8f\">live {liveMs:0.#} ms</text>\n"));
        }
        double downtimeMs = timeline.DowntimeEndMs - timeline.DowntimeStartMs;
        svg.Append(Inv($"<rect x=\"{X(timeline.DowntimeStartMs):0.##}\" y=\"{Top - 8}\" width=\"{Math.Max(downtimeMs / msPerPx, 0.5):0.##}\" "
            + $"height=\"{plotBottom - Top + 8}\" fill=\"#e63946\" fill-opacity=\"0.08\" stroke=\"#e63946\" "
            + $"stroke-dasharray=\"4 3\"><title>downtime {downtimeMs:0.#} ms</title></rect>\n"));
        svg.Append(Inv($"<text x=\"{X(timeline.DowntimeStartMs) + 4:0.##}\" y=\"{Top - 12}\" fill=\"#e63946\">downtime {downtimeMs:0.#} "
            + $"ms</text>\n"));

        WriteAxis(svg, endMs, X, labelWidth, plotBottom);

        for (int row = 0; row < timeline.Tracks.Count; row++)
        {
            string track = timeline.Tracks[row];
            double y = Top + row * (RowHeight + RowGap);
            svg.Append(Inv($"<text x=\"{labelWidth - 8:0.##}\" y=\"{y + RowHeight - 6}\" text-anchor=\"end\">{Escape(track)}</text>\n"));
            svg.Append(Inv($"<rect x=\"{labelWidth:0.##}\" y=\"{y}\" width=\"{PlotWidth}\" height=\"{RowHeight}\" fill=\"#f5f5f5\"/>\n"));
            // A span that began before the run's origin (set-up on another thread) is drawn from the origin.
            foreach (var span in Coalesce(spansByTrack[track], msPerPx).Select(sp => sp.StartMs < 0 ? sp with { StartMs = 0 } : sp))
            {
                svg.Append(Inv($"<rect x=\"{X(span.StartMs):0.##}\" y=\"{y}\" width=\"{Math.Max(span.DurationMs / msPerPx, 0.5):0.##}\" "
                    + $"height=\"{RowHeight}\" fill=\"{Colours[span.Kind]}\">"));
                svg.Append(Inv($"<title>{Escape(track)}: {span.Kind.ToString().ToLowerInvariant()} {span.StartMs:0.#}-{span.EndMs:0.#} "
                    + $"ms{(span.Detail is null ? "" : " " + Escape(span.Detail))}</title></rect>\n"));
            }
            svg.Append(Inv($"<text x=\"{labelWidth + PlotWidth + 8:0.##}\" y=\"{y + RowHeight - 6}\" "
                + $"fill=\"#333\">{Escape(totals[track])}</text>\n"));
        }
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    private static void WriteLegend(StringBuilder svg, Timeline timeline, double x)
    {
        foreach (var kind in timeline.Spans.Select(s => s.Kind).Distinct().OrderBy(k => k))
        {
            string name = kind.ToString().ToLowerInvariant();
            svg.Append(Inv($"<rect x=\"{x}\" y=\"34\" width=\"12\" height=\"12\" fill=\"{Colours[kind]}\"/><text x=\"{x + 16}\" "
                + $"y=\"44\">{name}</text>\n"));
            x += 30 + name.Length * 7;
        }
    }

    private static void WriteAxis(StringBuilder svg, double endMs, Func<double, double> x, double labelWidth, double plotBottom)
    {
        double step = NiceStep(endMs / 10);
        svg.Append(Inv($"<line x1=\"{labelWidth:0.##}\" y1=\"{plotBottom}\" x2=\"{labelWidth + PlotWidth:0.##}\" y2=\"{plotBottom}\" "
            + $"stroke=\"#333\"/>\n"));
        for (double t = 0; t <= endMs + step * 1e-9; t += step)
        {
            double px = x(t);
            svg.Append(Inv($"<line x1=\"{px:0.##}\" y1=\"{Top - 4}\" x2=\"{px:0.##}\" y2=\"{plotBottom + 4}\" stroke=\"#ddd\"/>"));
            svg.Append(Inv($"<text x=\"{px:0.##}\" y=\"{plotBottom + 18}\" text-anchor=\"middle\">{t:0.###}</text>\n"));
        }
        svg.Append(Inv($"<text x=\"{labelWidth + PlotWidth / 2:0.##}\" y=\"{plotBottom + 40}\" text-anchor=\"middle\">time since the run started "
            + $"(ms)</text>\n"));
    }

    /// <summary>1, 2 or 5 times a power of ten, at least <paramref name="rough"/>.</summary>
    internal static double NiceStep(double rough)
    {
        if (rough <= 0) return 1;
        double magnitude = Math.Pow(10, Math.Floor(Math.Log10(rough)));
        foreach (double factor in new[] { 1.0, 2.0, 5.0, 10.0 })
            if (factor * magnitude >= rough)
                return factor * magnitude;
        return 10 * magnitude;
    }

    /// <summary>Joins neighbouring spans of one kind that would be less than a pixel apart, to keep the picture small.</summary>
    private static IEnumerable<TimelineSpan> Coalesce(List<TimelineSpan> spans, double msPerPx)
    {
        TimelineSpan? current = null;
        foreach (var span in spans)
        {
            if (current is not null && current.Kind == span.Kind && span.StartMs - current.EndMs < msPerPx)
            {
                current = current with { EndMs = Math.Max(current.EndMs, span.EndMs), Detail = null };
                continue;
            }
            if (current is not null) yield return current;
            current = span;
        }
        if (current is not null) yield return current;
    }

    private static string Totals(List<TimelineSpan> spans) =>
        string.Join("  ", spans.GroupBy(s => s.Kind).OrderBy(g => g.Key)
            .Select(g => Inv($"{g.Key.ToString().ToLowerInvariant()} {g.Sum(s => s.DurationMs):0} ms")));

}
