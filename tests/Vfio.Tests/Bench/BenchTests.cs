using System.Text.Json;
using System.Xml.Linq;
using Vfio.Bench;
using Vfio.Cli;
using Vfio.Migration;

namespace Vfio.Tests.Bench;

public class BenchTests
{
    [Fact]
    public void Iperf3JsonGivesTheReceivedRate()
    {
        const string json = """{"start":{},"end":{"sum_sent":{"bits_per_second":2.5e10},"sum_received":{"bits_per_second":2.4e10}}}""";
        var (mbps, why) = Iperf3Baseline.Parse(json);
        Assert.Null(why);
        Assert.Equal(24000, mbps!.Value, 6);
    }

    [Fact]
    public void Iperf3ErrorsAreReportedNotThrown()
    {
        Assert.Equal("iperf3: unable to connect to server", Iperf3Baseline.Parse("""{"error":"unable to connect to server"}""").Why);
        Assert.StartsWith("iperf3 printed no usable JSON", Iperf3Baseline.Parse("not json").Why);
    }

    [Fact]
    public void CipherCostIsMeasuredOnThisMachine()
    {
        var cipher = CipherCost.Measure(TimeSpan.FromMilliseconds(20));
        Assert.NotNull(cipher);
        // AES-NI or not, and however busy, a machine that runs the tests encrypts faster than 1 MB/s and slower than 1 TB/s.
        Assert.InRange(cipher.EncryptBytesPerSecond, 1e6, 1e12);
        Assert.InRange(cipher.DecryptBytesPerSecond, 1e6, 1e12);
        Assert.Equal(1e9 / cipher.EncryptBytesPerSecond + 1e9 / cipher.DecryptBytesPerSecond, cipher.NsPerByte, 9);
        Assert.Contains("AES-128-GCM", cipher.Describe());
    }

    [Theory]
    // A plaintext run that kept both cores busy: 2000 ms of CPU in 1000 ms, plus 0.5 ns for each of 1e9 bytes, over 2 cores.
    [InlineData(1000, 2000, 0.8)]
    // Half the cores idle: the cipher's 500 ms fits beside the 500 ms of work, so the cipher does not bound TLS at all.
    [InlineData(1000, 500, 1.0)]
    public void CeilingRatioAddsTheCiphersWorkToThePlaintextRun(double wallMs, double cpuMs, double expected)
    {
        var cipher = new CipherCost(4e9, 4e9); // 0.25 + 0.25 ns per byte
        Assert.Equal(expected, cipher.CeilingRatio(wallMs, cpuMs, 1_000_000_000, cores: 2), 9);
    }

    private static BenchResult Sample() => new(BenchDeviceKind.Simulated,
        [
            new BenchRow
            {
                Scenario = new BenchScenario("devices", 4, 6, LoadingMode.Decoupled, 64 << 20), Runs = 3, AllVerified = true,
                DowntimeMedianMs = 210, DowntimeMinMs = 205, DeviceBoundMs = 200, ThroughputMbps = 9000, MeanWaitMs = 5, MeanLoadMs = 200,
                PeakRssBytes = 90 << 20, PerDevice = [new BenchDevice("sim:vf0", 5, 200, 206)],
            },
            new BenchRow
            {
                Scenario = new BenchScenario("devices", 4, 6, LoadingMode.Coupled, 64 << 20), Runs = 3, AllVerified = false,
                Error = "boom, \"quoted\"",
                DowntimeMedianMs = 400, DowntimeMinMs = 390, DeviceBoundMs = 200, ThroughputMbps = 5000,
            },
        ],
        [new BenchTarget("downtime within 5% of the device bound, 4 devices", false, "ratio 1.050")],
        "test machine", "vfio-mig bench");

    private static BenchResult PrecopySample()
    {
        var stopCopy = new BenchScenario("precopy", 4, 6, LoadingMode.Decoupled, 1L << 30);
        return new(BenchDeviceKind.Simulated,
            [
                new BenchRow
                {
                    Scenario = stopCopy, Runs = 3, AllVerified = true, DowntimeMedianMs = 3300, DowntimeMinMs = 3250, DeviceBoundMs = 3200,
                    TotalMedianMs = 3300, TotalBoundMs = 3200,
                },
                new BenchRow
                {
                    Scenario = stopCopy with { DirtyRate = 16 << 20 }, Runs = 3, AllVerified = true, DowntimeMedianMs = 165, DowntimeMinMs = 150,
                    TotalMedianMs = 3600, TotalBoundMs = 3279, PrecopyMs = 3435, ResentBytes = 200L << 20, Converged = true, DirtyRounds = 7,
                },
            ],
            [new BenchTarget("live downtime at most 10% of stop-copy only, 4 devices, 16MiB/s dirtied", true, "5.0%")],
            "test machine", "vfio-mig bench --precopy");
    }

    [Fact]
    public void PrecopyRowsShowLiveAgainstStopCopyOnlyInEveryFormat()
    {
        string md = BenchWriters.Markdown(PrecopySample());
        Assert.Contains("| 4 | 1GiB | decoupled | stop-copy only | 3300.0 (3250.0) |  | 3300 | 3200 | 1.031 |", md);
        Assert.Contains("| 4 | 1GiB | decoupled | 16MiB/s dirtied | 165.0 (150.0) | 5.0% | 3600 | 3279 | 1.098 | 3435 | 200.0 | 7 | yes | yes |", md);

        var csv = BenchWriters.Csv(PrecopySample()).TrimEnd().Split('\n');
        Assert.EndsWith(",16777216,3600,3279,1.0979,3435,209715200,true,", csv[2]);

        using var ms = new MemoryStream();
        BenchWriters.Json(PrecopySample(), ms);
        using var doc = JsonDocument.Parse(ms.ToArray());
        var live = doc.RootElement.GetProperty("rows")[1];
        Assert.True(live.GetProperty("live").GetBoolean());
        Assert.Equal(3279, live.GetProperty("total_bound_ms").GetDouble());
        Assert.Equal(200L << 20, live.GetProperty("resent_bytes").GetInt64());

        var titles = XDocument.Parse(BenchWriters.Chart(PrecopySample())).Descendants().Where(e => e.Name.LocalName == "title")
            .Select(e => e.Value).ToList();
        Assert.Contains("4 dev stop-copy only: 3300", titles);
        Assert.Contains("4 dev live, 16MiB/s dirtied: 165", titles);
    }

    [Fact]
    public void CsvHasOneLinePerRowWithEveryColumnAndQuotedErrors()
    {
        var lines = BenchWriters.Csv(Sample()).TrimEnd().Split('\n');
        Assert.Equal(3, lines.Length);
        int columns = lines[0].Split(',').Length;
        Assert.Equal(columns, lines[1].Split(',').Length);
        Assert.Contains("devices,simulated,4,67108864,6,decoupled,3,true,210,205,200,1.0500,9000", lines[1]);
        Assert.EndsWith("\"boom, \"\"quoted\"\"\"", lines[2]);
    }

    [Fact]
    public void MarkdownShowsTheTablePerDeviceFiguresAndTargets()
    {
        string md = BenchWriters.Markdown(Sample());
        Assert.Contains("| 4 | 64MiB | 6 | decoupled | 210.0 (205.0) | 200 | 1.050 | 9000 |", md);
        Assert.Contains("sim:vf0 total loading time 206 ms, wait 5 ms load 200 ms", md);
        Assert.Contains("**NOT met**: downtime within 5% of the device bound, 4 devices", md);
    }

    [Fact]
    public void JsonAndChartAreWellFormed()
    {
        using var ms = new MemoryStream();
        BenchWriters.Json(Sample(), ms);
        using var doc = JsonDocument.Parse(ms.ToArray());
        var rows = doc.RootElement.GetProperty("rows");
        Assert.Equal(2, rows.GetArrayLength());
        Assert.Equal(200, rows[0].GetProperty("device_bound_ms").GetDouble());
        Assert.False(doc.RootElement.GetProperty("targets")[0].GetProperty("met").GetBoolean());

        var svg = XDocument.Parse(BenchWriters.Chart(Sample()));
        var titles = svg.Descendants().Where(e => e.Name.LocalName == "title").Select(e => e.Value).ToList();
        Assert.Contains("4 dev decoupled: 210", titles);
        Assert.Contains("4 dev coupled: 400", titles);
        Assert.Contains("4 dev device bound: 200", titles);
    }

    [Theory]
    [InlineData("1,2,4,8", new[] { 1, 2, 4, 8 })]
    [InlineData(" 4 , 2,4", new[] { 4, 2 })]
    public void DeviceListsParse(string text, int[] expected) =>
        Assert.Equal(expected, BenchCommand.ParseList(text, "--devices", 1, 64));

    [Theory]
    [InlineData("0")]
    [InlineData("1,x")]
    [InlineData("")]
    [InlineData("100")]
    public void BadDeviceListsAreUsageErrors(string text) =>
        Assert.Throws<MigrationCommands.UsageException>(() => BenchCommand.ParseList(text, "--devices", 1, 64));
}

/// <summary>Peak RSS is process-wide: other tests allocating at the same time would blur it, so these run alone.</summary>
[CollectionDefinition(nameof(ProcessMemory), DisableParallelization = true)]
public sealed class ProcessMemory;

[Collection(nameof(ProcessMemory))]
public class PeakRssTests
{
    [Fact]
    public void PeakRssIsReadFromProc()
    {
        PeakRss.Reset();
        long before = PeakRss.ReadBytes()!.Value;
        var block = new byte[64 << 20];
        Array.Fill(block, (byte)1); // touch every page
        long after = PeakRss.ReadBytes()!.Value;
        GC.KeepAlive(block);
        Assert.True(after >= before + (60L << 20), $"peak RSS {before} -> {after} after touching 64 MiB");
    }
}
