using System.CommandLine;
using System.Text.Json;
using Vfio.Cli;

namespace Vfio.Tests.Bench;

public class BenchCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vfio-bench-").FullName;

    public void Dispose()
    {
        Directory.Delete(_dir, recursive: true);
        GC.SuppressFinalize(this);
    }

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var config = new InvocationConfiguration { Output = stdout, Error = stderr };
        int code = Program.BuildRoot().Parse(args).Invoke(config);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void SweepsSimulatedDevicesAndWritesEveryOutput()
    {
        string json = Path.Combine(_dir, "bench.json");
        var (code, output, error) = Run("bench", "--devices", "1,2", "--loading", "decoupled,coupled", "--channel-sweep", "1,3",
            "--repeat", "2", "--state-size", "4MiB", "--sim-load-rate", "200MiB", "--skip-memory", "--out", _dir, "--json", json);
        Assert.True(code == 0, output + error);

        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var rows = doc.RootElement.GetProperty("rows").EnumerateArray().ToList();
        Assert.Equal(6, rows.Count); // 2 device counts x 2 modes, then 2 channel counts
        Assert.All(rows, r => Assert.True(r.GetProperty("verified").GetBoolean()));
        Assert.All(rows, r => Assert.Equal(2, r.GetProperty("runs").GetInt32()));
        // Every simulated row carries the bound its parameters imply: 4 MiB at 200 MiB/s is at least 20 ms of loading.
        Assert.All(rows, r => Assert.InRange(r.GetProperty("device_bound_ms").GetDouble(), 20, 10_000));
        Assert.All(rows, r => Assert.True(r.GetProperty("downtime_ms").GetDouble() >= r.GetProperty("downtime_min_ms").GetDouble()));
        Assert.Equal(["devices", "devices", "devices", "devices", "channels", "channels"], rows.Select(r => r.GetProperty("section").GetString()));
        Assert.Equal([1, 3], rows.Skip(4).Select(r => r.GetProperty("channels").GetInt32()));
        // The downtime target is checked for each decoupled device-count row.
        Assert.Equal(2, doc.RootElement.GetProperty("targets").GetArrayLength());

        Assert.Contains("| 2 | 4MiB | 6 | coupled |", File.ReadAllText(Path.Combine(_dir, "bench.md")));
        Assert.Equal(7, File.ReadAllLines(Path.Combine(_dir, "bench.csv")).Length);
        Assert.Contains("<svg", File.ReadAllText(Path.Combine(_dir, "bench.svg")));
        Assert.Contains("target ", output);
    }

    [Fact]
    public void TlsRunsEachDecoupledScenarioAgainOverTlsAndComparesThem()
    {
        string json = Path.Combine(_dir, "tls.json");
        var (code, output, error) = Run("bench", "--tls", "--devices", "2", "--loading", "decoupled,coupled", "--channels", "2",
            "--channel-sweep", "none", "--repeat", "1", "--state-size", "4MiB", "--sim-load-rate", "200MiB", "--skip-memory", "--out", _dir,
            "--json", json);
        Assert.True(code == 0, output + error);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var rows = doc.RootElement.GetProperty("rows").EnumerateArray().ToList();
        // The TLS twin follows its decoupled scenario; coupled runs have none.
        Assert.Equal(["decoupled", "decoupled+tls", "coupled"], rows.Select(r => r.GetProperty("mode").GetString()));
        Assert.All(rows, r => Assert.True(r.GetProperty("verified").GetBoolean()));
        Assert.Contains("TLS downtime within x1.10 of the device bound, 2 devices", output);
        // The cipher's cost on this machine comes first, and each row has its wall and CPU time.
        Assert.StartsWith("cipher   AES-128-GCM on one core here", output);
        Assert.True(doc.RootElement.GetProperty("cipher").GetProperty("encrypt_bytes_per_second").GetDouble() > 0);
        Assert.All(rows, r => Assert.True(r.GetProperty("cpu_ms").GetDouble() > 0 && r.GetProperty("run_ms").GetDouble() > 0));
        Assert.Contains("AES-128-GCM on one core here", File.ReadAllText(Path.Combine(_dir, "bench.md")));
    }

    [Fact]
    public void FreeLoadsHaveNoDeviceBoundTarget()
    {
        // --sim-load-rate 0: the device bound is 0, and "within 5% of it" means nothing; the runs are still reported.
        var (code, output, error) = Run("bench", "--tls", "--devices", "2", "--loading", "decoupled", "--channels", "2",
            "--channel-sweep", "none", "--repeat", "1", "--state-size", "4MiB", "--sim-load-rate", "0", "--skip-memory", "--out", _dir);
        Assert.True(code == 0, output + error);
        Assert.Contains("devices  2 dev x 4MiB, 2 ch, decoupled+tls:", output);
        Assert.DoesNotContain("bound", output);
    }

    [Fact]
    public void NullTlsTargetSaysWhatTheCipherAloneWouldAllow()
    {
        var (code, output, error) = Run("bench", "--null", "--tls", "--devices", "2", "--loading", "decoupled", "--channels", "2",
            "--channel-sweep", "none", "--repeat", "1", "--state-size", "16MiB", "--skip-memory", "--out", _dir);
        Assert.True(code == 0, output + error);
        var line = output.Split('\n').Single(l => l.Contains("TLS at least 0.6x plaintext throughput, 2 channels, 2 devices"));
        Assert.Matches(@"the cipher alone would allow at most x[01]\.\d{3} plaintext here \(plaintext used \d+\.\d\d of \d+ cores\)", line);
    }

    [Fact]
    public void NullDevicesAreComparedWithIperf3()
    {
        string json = Path.Combine(_dir, "null.json");
        var (code, output, error) = Run("bench", "--null", "--devices", "2", "--loading", "decoupled", "--channels", "2", "--channel-sweep", "none",
            "--repeat", "1", "--state-size", "16MiB", "--skip-memory", "--out", _dir, "--json", json);
        Assert.True(code == 0, output + error);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        Assert.Equal("null", doc.RootElement.GetProperty("device_kind").GetString());
        foreach (var row in doc.RootElement.GetProperty("rows").EnumerateArray())
        {
            Assert.True(row.GetProperty("verified").GetBoolean());
            Assert.True(row.GetProperty("throughput_mbps").GetDouble() > 0);
            // Either iperf3 ran beside us, or the row says why not.
            Assert.True(row.TryGetProperty("iperf3_mbps", out _) || row.GetProperty("iperf3_error").GetString()!.Contains("iperf3"));
        }
    }

    [Fact]
    public void PrecopySweepsLiveAgainstStopCopyOnlyAndChecksItsTargets()
    {
        string json = Path.Combine(_dir, "precopy.json");
        var (code, output, error) = Run("bench", "--precopy", "--devices", "1,4", "--dirty-rates", "0,16MiB", "--repeat", "1",
            "--state-size", "4MiB", "--sim-record-size", "64KiB", "--sim-load-rate", "100MiB", "--out", _dir, "--json", json);
        Assert.True(code == 0, output + error);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var rows = doc.RootElement.GetProperty("rows").EnumerateArray().ToList();
        // Per device count, decoupled unless --loading says otherwise: stop-copy only, then live at each dirty rate.
        Assert.Equal([false, true, true, false, true, true], rows.Select(r => r.GetProperty("live").GetBoolean()));
        Assert.Equal([1, 1, 1, 4, 4, 4], rows.Select(r => r.GetProperty("devices").GetInt32()));
        Assert.All(rows, r => Assert.Equal("precopy", r.GetProperty("section").GetString()));
        Assert.All(rows, r => Assert.Equal("decoupled", r.GetProperty("mode").GetString()));
        Assert.All(rows, r => Assert.True(r.GetProperty("verified").GetBoolean()));
        Assert.All(rows, r => Assert.True(r.GetProperty("total_bound_ms").GetDouble() >= 40)); // 4 MiB at 100 MiB/s
        foreach (var live in rows.Where(r => r.GetProperty("live").GetBoolean()))
        {
            Assert.True(live.GetProperty("converged").GetBoolean(), live.GetProperty("converged_reason").GetString());
            Assert.True(live.GetProperty("precopy_ms").GetDouble() > 0);
            Assert.True(live.GetProperty("total_ms").GetDouble() > live.GetProperty("downtime_ms").GetDouble());
            // Dirtying devices send regions again; idle ones send their state once.
            long resent = live.GetProperty("resent_bytes").GetInt64();
            if (live.GetProperty("dirty_rate").GetDouble() == 0)
                Assert.Equal(SimStream.EndRecordSize * live.GetProperty("devices").GetInt32(), resent);
            else Assert.True(resent > 0, "nothing was sent twice");
        }
        // Stop-copy rows: the total is the downtime, the bound the device bound.
        Assert.All(rows.Where(r => !r.GetProperty("live").GetBoolean()), r =>
            Assert.Equal(r.GetProperty("downtime_ms").GetDouble(), r.GetProperty("total_ms").GetDouble(), 3));
        // The total-time target for each live row, the downtime target at 4 devices and 16 MiB/s.
        var targets = doc.RootElement.GetProperty("targets").EnumerateArray().Select(t => t.GetProperty("name").GetString()).ToList();
        Assert.Equal(5, targets.Count);
        Assert.Contains("live downtime at most 10% of stop-copy only, 4 devices, 16MiB/s dirtied", targets);
        Assert.Contains("live total time within x1.15 of the total bound, 1 devices, no dirtying", targets);
        Assert.Contains("live total time within x1.15 of the total bound, 4 devices, 16MiB/s dirtied", output);
        string md = File.ReadAllText(Path.Combine(_dir, "bench.md"));
        Assert.Contains("## Live (PRE_COPY) against stop-copy only", md);
        Assert.Matches(@"\| 4 \| 4MiB \| decoupled \| 16MiB/s dirtied \| [0-9.]+ \([0-9.]+\) \| [0-9.]+% \|", md);
    }

    [Theory]
    [InlineData("--null")]
    [InlineData("--tls")]
    public void PrecopySweepIsForSimulatedDevicesOnly(string other)
    {
        var (code, _, error) = Run("bench", "--precopy", other, "--out", _dir);
        Assert.Equal(2, code);
        Assert.Contains("--precopy sweeps simulated devices", error);
    }

    [Fact]
    public void SimulatedDevicesTakeTheRecordSizeAndSaveRate()
    {
        string json = Path.Combine(_dir, "sim.json");
        var (code, output, error) = Run("bench", "--devices", "1", "--loading", "decoupled", "--channel-sweep", "none", "--repeat", "1",
            "--state-size", "4MiB", "--sim-load-rate", "100MiB", "--sim-save-rate", "40MiB", "--sim-record-size", "1MiB",
            "--skip-memory", "--out", _dir, "--json", json);
        Assert.True(code == 0, output + error);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var row = Assert.Single(doc.RootElement.GetProperty("rows").EnumerateArray());
        Assert.True(row.GetProperty("verified").GetBoolean());

        // The report's device bound is computed from the parameters of the devices the run created, and both options
        // change it (a record loads only once it was saved), so the bound shows that they reached the devices.
        var sim = new SimulatedDeviceOptions
        {
            StateSize = 4 << 20,
            LoadBytesPerSecond = 100 << 20,
            SaveBytesPerSecond = 40 << 20,
            RecordDataSize = 1 << 20,
        };
        double bound = row.GetProperty("device_bound_ms").GetDouble();
        Assert.Equal(Bound(sim), bound, 3);
        Assert.NotEqual(Bound(sim with { RecordDataSize = SimulatedDeviceOptions.DefaultRecordDataSize }), bound, 3);
        Assert.NotEqual(Bound(sim with { SaveBytesPerSecond = 0 }), bound, 3);
    }

    private static double Bound(SimulatedDeviceOptions sim) =>
        DeviceBound.Compute([(sim, sim, new object(), SimulatedPf.DefaultConcurrentLoads)]) * 1000;

    [Theory]
    [InlineData("--devices", "0")]
    [InlineData("--loading", "sideways")]
    [InlineData("--repeat", "0")]
    [InlineData("--state-size", "lots")]
    [InlineData("--sim-save-rate", "lots")]
    [InlineData("--dirty-rates", "fast")]
    [InlineData("--sim-record-size", "0")]
    [InlineData("--device", "nopair")]
    [InlineData("--json", "/nonexistent-dir/bench.json")]
    [InlineData("--out", "/proc/version/x")]
    public void BadInputIsOneLineAndExitTwo(string option, string value)
    {
        string[] args = option == "--out" ? ["bench", option, value] : ["bench", option, value, "--out", _dir];
        var (code, _, error) = Run(args);
        Assert.Equal(2, code);
        Assert.StartsWith("vfio-mig: ", error);
        Assert.Single(error.TrimEnd().Split('\n'));
    }
}
