using System.Text.Json;
using System.Xml.Linq;
using Vfio.Reports;

namespace Vfio.Tests.Reports;

public class TimelineRenderingTests
{
    private static Timeline Sample() => new(
        "4 VFs, 6 channels, decoupled",
        ["dev0 loader", "dev1 loader", "channel 0"],
        [
            new("dev0 loader", SpanKind.Wait, 0, 40),
            new("dev0 loader", SpanKind.Load, 40, 250, "buffer 0"),
            new("dev1 loader", SpanKind.Wait, 0, 70),
            new("dev1 loader", SpanKind.Load, 70, 280),
            new("channel 0", SpanKind.Receive, 5, 200),
        ],
        DowntimeStartMs: 0, DowntimeEndMs: 300);

    [Fact]
    public void SvgIsWellFormedAndShowsEveryTrackTheDowntimeAndTheTotals()
    {
        string svg = SvgTimeline.Render(Sample());
        var doc = XDocument.Parse(svg);
        XNamespace ns = "http://www.w3.org/2000/svg";
        var texts = doc.Descendants(ns + "text").Select(t => t.Value).ToList();

        Assert.Contains("dev0 loader", texts);
        Assert.Contains("dev1 loader", texts);
        Assert.Contains("channel 0", texts);
        Assert.Contains("downtime 300 ms", texts);
        Assert.Contains("wait 40 ms  load 210 ms", texts);
        Assert.Contains("time since the run started (ms)", texts);
        // One rect per span: each carries a tooltip naming its track and kind.
        var spanTitles = doc.Descendants(ns + "rect").Select(r => r.Element(ns + "title")?.Value)
            .Where(t => t is not null && !t.StartsWith("downtime", StringComparison.Ordinal)).ToList();
        Assert.Equal(5, spanTitles.Count);
        Assert.Contains("dev0 loader: load 40-250 ms buffer 0", spanTitles);
    }

    [Fact]
    public void SvgJoinsSpansThatWouldBeLessThanAPixelApart()
    {
        var spans = Enumerable.Range(0, 1000)
            .Select(i => new TimelineSpan("dev0 loader", SpanKind.Load, i * 1.0, i * 1.0 + 0.999)).ToList();
        var doc = XDocument.Parse(SvgTimeline.Render(new Timeline("t", ["dev0 loader"], spans, 0, 1000)));
        XNamespace ns = "http://www.w3.org/2000/svg";
        int spanRects = doc.Descendants(ns + "rect").Count(r => r.Element(ns + "title")?.Value.StartsWith("dev0") == true);
        Assert.Equal(1, spanRects);
    }

    [Theory]
    [InlineData(0.7, 1)]
    [InlineData(13, 20)]
    [InlineData(30, 50)]
    [InlineData(101, 200)]
    [InlineData(0.031, 0.05)]
    public void AxisStepsAreOneTwoOrFiveTimesAPowerOfTen(double rough, double expected) =>
        Assert.Equal(expected, SvgTimeline.NiceStep(rough), 9);

    [Fact]
    public void ChromeTraceHasAThreadPerTrackAndAnEventPerSpan()
    {
        using var stream = new MemoryStream();
        ChromeTrace.Write(Sample(), stream);
        using var doc = JsonDocument.Parse(stream.ToArray());
        var events = doc.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();

        var threadNames = events.Where(e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name")
            .ToDictionary(e => e.GetProperty("tid").GetInt32(), e => e.GetProperty("args").GetProperty("name").GetString());
        Assert.Equal(["downtime", "dev0 loader", "dev1 loader", "channel 0"], threadNames.OrderBy(kv => kv.Key).Select(kv => kv.Value));

        var complete = events.Where(e => e.GetProperty("ph").GetString() == "X").ToList();
        Assert.Equal(6, complete.Count);
        var load = complete.Single(e => e.GetProperty("name").GetString() == "load" && e.GetProperty("tid").GetInt32() == 1);
        Assert.Equal(40_000, load.GetProperty("ts").GetDouble());
        Assert.Equal(210_000, load.GetProperty("dur").GetDouble());
        Assert.Equal("buffer 0", load.GetProperty("args").GetProperty("detail").GetString());
    }

    [Fact]
    public void ChromeTraceRefusesASpanOnAnUnknownTrack()
    {
        var bad = Sample() with { Spans = [new TimelineSpan("nowhere", SpanKind.Load, 0, 1)] };
        var error = Assert.Throws<ArgumentException>(() => ChromeTrace.Write(bad, new MemoryStream()));
        Assert.Contains("nowhere", error.Message);
    }
}

public class BarChartTests
{
    [Fact]
    public void BarsAreScaledToTheAxisAndLabelled()
    {
        var groups = new[]
        {
            new BarGroup("1 VF", [("decoupled", 200), ("coupled", 210)]),
            new BarGroup("4 VFs", [("decoupled", 400), ("coupled", 500)]),
        };
        var doc = XDocument.Parse(SvgBarChart.Render("downtime", "ms", "devices", groups));
        XNamespace ns = "http://www.w3.org/2000/svg";
        var bars = doc.Descendants(ns + "rect").Where(r => r.Element(ns + "title") is not null)
            .ToDictionary(r => r.Element(ns + "title")!.Value,
                r => double.Parse(r.Attribute("height")!.Value, System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(4, bars.Count);
        // Heights are proportional to the values.
        Assert.Equal(500.0 / 200.0, bars["4 VFs coupled: 500"] / bars["1 VF decoupled: 200"], 2);
        var texts = doc.Descendants(ns + "text").Select(t => t.Value).ToList();
        Assert.Contains("decoupled", texts);
        Assert.Contains("coupled", texts);
        Assert.Contains("4 VFs", texts);
        Assert.Contains("devices", texts);
    }
}

public class TimelineLayoutTests
{
    [Fact]
    public void LongLabelsAndTotalsWidenThePictureInsteadOfBeingCutOff()
    {
        string longTrack = new string('x', 60);
        var timeline = new Timeline("t", [longTrack],
            [new(longTrack, SpanKind.Wait, 0, 1), new(longTrack, SpanKind.Load, 1, 2), new(longTrack, SpanKind.Other, 2, 3)], 0, 3);
        var svg = XDocument.Parse(SvgTimeline.Render(timeline)).Root!;
        double width = double.Parse(svg.Attribute("width")!.Value, System.Globalization.CultureInfo.InvariantCulture);
        var totals = svg.Descendants().Single(e => e.Name.LocalName == "text" && e.Value.StartsWith("wait 1 ms", StringComparison.Ordinal));
        double totalsX = double.Parse(totals.Attribute("x")!.Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(totalsX + 7 * totals.Value.Length <= width, $"totals at {totalsX} with {totals.Value.Length} chars in {width}");
        var label = svg.Descendants().Single(e => e.Name.LocalName == "text" && e.Value == longTrack);
        double labelRight = double.Parse(label.Attribute("x")!.Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(labelRight - 7 * longTrack.Length >= 0, $"label ends at {labelRight}");
    }

    [Fact]
    public void SpansBeforeTheOriginAreDrawnFromIt()
    {
        var timeline = new Timeline("t", ["a"], [new("a", SpanKind.Save, -5, 10)], 0, 10);
        var svg = XDocument.Parse(SvgTimeline.Render(timeline)).Root!;
        var rect = svg.Descendants().Single(e => e.Name.LocalName == "rect"
            && e.Elements().Any(t => t.Name.LocalName == "title" && t.Value.StartsWith("a:", StringComparison.Ordinal)));
        var plot = svg.Descendants().First(e => e.Name.LocalName == "rect" && e.Attribute("fill")?.Value == "#f5f5f5");
        Assert.Equal(plot.Attribute("x")!.Value, rect.Attribute("x")!.Value);
    }
}
