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
}
