using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>Whole migrations of simulated devices over loopback TCP, verified byte-exact every time.</summary>
public class LoopbackTests
{
    public static TheoryData<int, int> Matrix()
    {
        var data = new TheoryData<int, int>();
        foreach (int devices in new[] { 1, 2, 4, 8 })
            for (int channels = 1; channels <= 8; channels++)
                data.Add(devices, channels);
        return data;
    }

    [Theory]
    [MemberData(nameof(Matrix))]
    public void Decoupled_loading_migrates_every_device_byte_exact(int devices, int channels)
    {
        var (src, dst) = TestDevices.Pairs(devices);
        var report = TestDevices.Migrate(src, dst, TestDevices.Options(channels));
        AssertOk(report, devices, channels);
        TestDevices.AssertSameState(src, dst);
        Assert.All(src, s => Assert.Equal(MigrationState.Stop, s.GetState()));
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 3)]
    [InlineData(4, 6)]
    [InlineData(8, 2)]
    [InlineData(8, 8)]
    public void Coupled_loading_migrates_every_device_byte_exact(int devices, int channels)
    {
        var (src, dst) = TestDevices.Pairs(devices);
        var report = TestDevices.Migrate(src, dst, TestDevices.Options(channels, LoadingMode.Coupled));
        AssertOk(report, devices, channels);
        Assert.Equal(LoadingMode.Coupled, report.Mode);
        TestDevices.AssertSameState(src, dst);
    }

    [Fact]
    public void Odd_sizes_partial_last_buffer_and_records_spanning_buffers()
    {
        var opts = TestDevices.Fast(300_001) with { RecordDataSize = 10_007 };
        var (src, dst) = TestDevices.Pairs(3, opts);
        var report = TestDevices.Migrate(src, dst, TestDevices.Options(2, buffer: 12_288));
        AssertOk(report, 3, 2);
        Assert.All(report.Devices, d => Assert.Equal(300_001, d.Bytes));
        Assert.All(report.Devices, d => Assert.Equal(25, d.Buffers)); // ceil(300001 / 12288)
        TestDevices.AssertSameState(src, dst);
    }

    [Fact]
    public void Report_has_timings_and_timeline_for_every_device_and_channel()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var report = TestDevices.Migrate(src, dst, TestDevices.Options(3));
        AssertOk(report, 2, 3);
        foreach (var d in report.Devices)
        {
            Assert.True(d.StartUs > 0 && d.EndUs >= d.StartUs);
            Assert.True(d.LoadUs > 0);
            Assert.True(d.WaitUs + d.LoadUs <= d.TotalUs + 1000);
            Assert.StartsWith("sim:dst", d.Name);
            Assert.StartsWith("sim:vf", d.SourceName);
            // 256 KiB at 1 GiB/s: the model's own load time is about 0.24 ms.
            Assert.InRange(d.SimLoadMs ?? -1, 0.2, 0.3);
        }
        Assert.True(report.DowntimeMs > 0);
        Assert.True(report.ThroughputMbps > 0);
        Assert.True(report.FirstStopUs <= report.Devices.Min(d => d.StartUs));
        var tracks = report.Timeline.Tracks;
        Assert.Equal(2, tracks.Count(t => t.Category == "loader"));
        Assert.Equal(2, tracks.Count(t => t.Category == "save"));
        Assert.Equal(3, tracks.Count(t => t.Category == "send"));
        Assert.Equal(3, tracks.Count(t => t.Category == "receive"));
        foreach (var loader in tracks.Where(t => t.Category == "loader"))
        {
            var d = report.Devices[loader.Device];
            Assert.Equal(d.Buffers, loader.Spans.Count(s => s.Kind == TraceKind.Load));
            Assert.Equal(d.Bytes, loader.Spans.Where(s => s.Kind == TraceKind.Load).Sum(s => s.Bytes));
        }
        Assert.NotNull(report.Timeline.MarkTime("source_first_stop"));
        Assert.NotNull(report.Timeline.MarkTime("destination_last_running"));
        // Pooled buffers: no more than the credit windows allow are ever allocated.
        Assert.True(report.PoolBuffers <= 2 * 2 * report.Window + 3 * 2, $"{report.PoolBuffers} buffers allocated");
    }

    [Fact]
    public void Json_report_uses_the_documented_names()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var report = TestDevices.Migrate(src, dst, TestDevices.Options(2));
        using var doc = System.Text.Json.JsonDocument.Parse(report.ToJson());
        var root = doc.RootElement;
        Assert.Equal("ok", root.GetProperty("result").GetString());
        Assert.Equal("decoupled", root.GetProperty("mode").GetString());
        Assert.Equal(2, root.GetProperty("channels").GetInt32());
        Assert.True(root.GetProperty("downtime_ms").GetDouble() > 0);
        Assert.True(root.GetProperty("throughput_mbps").GetDouble() > 0);
        var devices = root.GetProperty("devices");
        Assert.Equal(2, devices.GetArrayLength());
        foreach (var d in devices.EnumerateArray())
        {
            Assert.StartsWith("sim:", d.GetProperty("name").GetString());
            Assert.Equal(256 << 10, d.GetProperty("bytes").GetInt64());
            Assert.True(d.GetProperty("buffers").GetInt32() > 0);
            Assert.True(d.GetProperty("wait_ms").GetDouble() >= 0);
            Assert.True(d.GetProperty("load_ms").GetDouble() > 0);
            Assert.True(d.GetProperty("total_ms").GetDouble() > 0);
            Assert.True(d.GetProperty("verified").GetBoolean());
        }
    }

    internal static void AssertOk(RunReport report, int devices, int channels)
    {
        Assert.True(report.Ok, report.Error);
        Assert.Equal(channels, report.Channels);
        Assert.Equal(devices, report.Devices.Count);
        Assert.All(report.Devices, d => Assert.True(d.Verified, d.Error));
        Assert.All(report.Devices, d => Assert.True(d.MaxQueuedBytes <= (long)report.Window * report.BufferSize));
    }
}
