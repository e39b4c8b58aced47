using Vfio.Cli;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

public class TimelineExportTests
{
    [Fact]
    public void A_run_timeline_renders_as_chrome_trace_and_svg()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var report = Loopback.Run(src, dst, TestDevices.Options(3), cancel: TestContext.Current.CancellationToken);
        Assert.True(report.Ok, report.Error);
        var t = TimelineExport.ToReportsTimeline(report);
        Assert.Equal("dst loader sim:dst0", t.Tracks[0]);
        Assert.Equal("dst loader sim:dst1", t.Tracks[1]);
        Assert.Contains(t.Spans, s => s.Kind == Vfio.Reports.SpanKind.Load);
        Assert.Contains(t.Spans, s => s.Kind == Vfio.Reports.SpanKind.Receive);
        Assert.Contains(t.Spans, s => s.Kind == Vfio.Reports.SpanKind.Send);
        Assert.Contains(t.Spans, s => s.Kind == Vfio.Reports.SpanKind.Save);
        Assert.All(t.Spans, s => Assert.True(s.EndMs >= s.StartMs));
        Assert.Equal(report.DowntimeMs, t.DowntimeEndMs - t.DowntimeStartMs, 3);
        Assert.All(t.Spans, s => Assert.Contains(s.Track, t.Tracks));

        using var ms = new MemoryStream();
        Vfio.Reports.ChromeTrace.Write(t, ms);
        using var doc = System.Text.Json.JsonDocument.Parse(ms.ToArray());
        Assert.True(doc.RootElement.GetProperty("traceEvents").GetArrayLength() > t.Spans.Count);
        Assert.Contains("<svg", Vfio.Reports.SvgTimeline.Render(t));
    }

    [Fact]
    public void A_live_run_is_drawn_from_its_live_phase_with_the_downtime_after_it()
    {
        var src = new[] { new PagedDevice("paged:src", 64) { DirtyPagesPerInfo = 4, DirtyingInfos = 3 } };
        var dst = new[] { new PagedDevice("paged:dst", 64) };
        var report = Loopback.Run(src, dst, TestDevices.Options(2) with { Precopy = PrecopyMode.On, DowntimeLimit = TimeSpan.FromSeconds(5) },
            cancel: TestContext.Current.CancellationToken);
        Assert.True(report.Ok, report.Error);

        var t = TimelineExport.ToReportsTimeline(report);
        Assert.Equal(0, t.LiveStartMs);
        Assert.Equal((report.FirstStopUs - report.PrecopyStartUs) / 1000.0, t.DowntimeStartMs, 3);
        Assert.True(t.DowntimeStartMs > 0);
        Assert.Equal(report.DowntimeMs, t.DowntimeEndMs - t.DowntimeStartMs, 3);
        // The precopy reads are on the picture, before the downtime, not clipped to its start.
        var precopySaves = t.Spans.Where(s => s.Kind == Vfio.Reports.SpanKind.Save && s.Detail?.Contains("precopy") == true).ToList();
        Assert.NotEmpty(precopySaves);
        Assert.All(precopySaves, s => Assert.True(s.StartMs >= 0 && s.StartMs < t.DowntimeStartMs, $"{s.StartMs} ms"));
        Assert.Contains("live ", t.Title, StringComparison.Ordinal);

        string svg = Vfio.Reports.SvgTimeline.Render(t);
        Assert.Contains(">live ", svg, StringComparison.Ordinal);
        using var ms = new MemoryStream();
        Vfio.Reports.ChromeTrace.Write(t, ms);
        using var doc = System.Text.Json.JsonDocument.Parse(ms.ToArray());
        var liveEvent = doc.RootElement.GetProperty("traceEvents").EnumerateArray().Single(e => e.GetProperty("name").GetString() == "live");
        Assert.Equal(t.DowntimeStartMs * 1000, liveEvent.GetProperty("dur").GetDouble(), 0);
    }
}
