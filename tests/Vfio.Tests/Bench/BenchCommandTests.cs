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
