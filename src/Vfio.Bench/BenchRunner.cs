using System.Diagnostics;
using System.Globalization;
using Vfio.Migration;

namespace Vfio.Bench;

public sealed record BenchSettings
{
    public BenchDeviceKind Kind { get; init; } = BenchDeviceKind.Simulated;
    public IReadOnlyList<int> DeviceCounts { get; init; } = [1, 2, 4, 8];
    public IReadOnlyList<LoadingMode> Modes { get; init; } = [LoadingMode.Decoupled, LoadingMode.Coupled];
    /// <summary>
    /// Channels for the device-count sweep: 6, as in the ConnectX-7 VF migrations over QEMU's multifd channels that the
    /// simulated devices are modelled on.
    /// </summary>
    public int Channels { get; init; } = 6;
    /// <summary>Channel counts for the channel sweep (at <see cref="ChannelSweepDevices"/> devices, decoupled); empty: no sweep.</summary>
    public IReadOnlyList<int> ChannelSweep { get; init; } = [1, 2, 4, 6, 8];
    public int ChannelSweepDevices { get; init; } = 4;
    public int Repeat { get; init; } = 3;
    public SimulatedDeviceOptions Sim { get; init; } = new();
    public int PfConcurrency { get; init; } = SimulatedPf.DefaultConcurrentLoads;
    public IReadOnlyList<(string Source, string Destination)> RealPairs { get; init; } = [];
    /// <summary>Run the memory scenario: <see cref="MemoryDevices"/> devices of <see cref="MemoryStateSize"/> each.</summary>
    public bool Memory { get; init; } = true;
    public int MemoryDevices { get; init; } = 4;
    public long MemoryStateSize { get; init; } = 1L << 30;
    public long MemoryLimitBytes { get; init; } = 256L << 20;
    public MigrationOptions Migration { get; init; } = new();
    public double BoundTolerance { get; init; } = 0.05;
    public double IperfFraction { get; init; } = 0.90;
    /// <summary>
    /// When set, each decoupled scenario of the device and channel sweeps runs again right after itself over TLS with
    /// these credentials, and the targets compare the two.
    /// </summary>
    public TlsSettings? Tls { get; init; }
    /// <summary>TLS throughput at least this fraction of plaintext's (null devices).</summary>
    public double TlsThroughputFraction { get; init; } = 0.6;
    /// <summary>TLS downtime at most this factor of the device bound (simulated devices).</summary>
    public double TlsBoundFactor { get; init; } = 1.10;
    /// <summary>
    /// Instead of the other sweeps, live migrations against stop-copy only: for each device count and loading mode, a
    /// stop-copy-only run, then a live run per dirty rate in <see cref="DirtyRates"/> (simulated devices).
    /// </summary>
    public bool Precopy { get; init; }
    public IReadOnlyList<double> DirtyRates { get; init; } = [0, 16 << 20, 128 << 20];
    /// <summary>
    /// Live downtime at most this fraction of the stop-copy-only downtime, at <see cref="PrecopyTargetDevices"/> and
    /// <see cref="PrecopyTargetDirtyRate"/>.
    /// </summary>
    public double PrecopyDowntimeFraction { get; init; } = 0.10;
    public int PrecopyTargetDevices { get; init; } = 4;
    public double PrecopyTargetDirtyRate { get; init; } = 16 << 20;
    /// <summary>Live total time at most this factor of the simulator's total bound.</summary>
    public double PrecopyTotalFactor { get; init; } = 1.15;
}

/// <summary>Runs the sweeps a benchmark asks for, each scenario several times, and checks the targets.</summary>
public sealed class BenchRunner(BenchSettings settings, TextWriter progress)
{
    public BenchResult Run(string command)
    {
        var rows = new List<BenchRow>();
        // Before any run, on a machine as quiet as the runs see it.
        var cipher = settings.Tls is not null ? CipherCost.Measure(TimeSpan.FromMilliseconds(250)) : null;
        if (cipher is not null) progress.WriteLine("cipher   " + cipher.Describe());
        if (settings.Precopy)
        {
            // The stop-copy-only run of a device count first: it also leaves the devices' CRCs in the simulator's cache,
            // as the digest pass before a stop-copy downtime does, so neither kind of run generates them inside its figures.
            foreach (int n in settings.DeviceCounts)
                foreach (var mode in settings.Modes)
                {
                    var stopCopy = new BenchScenario("precopy", n, settings.Channels, mode, settings.Sim.StateSize);
                    rows.Add(RunScenario(stopCopy, settings.Repeat));
                    foreach (double rate in settings.DirtyRates)
                        rows.Add(RunScenario(stopCopy with { DirtyRate = rate }, settings.Repeat));
                }
            return new BenchResult(settings.Kind, rows, CheckPrecopyTargets(rows), MachineDescription(), command, cipher);
        }
        int available = settings.Kind == BenchDeviceKind.Real ? settings.RealPairs.Count : int.MaxValue;
        foreach (int n in settings.DeviceCounts.Where(n => n <= available))
            foreach (var mode in settings.Modes)
                RunWithTwin(rows, new BenchScenario("devices", n, settings.Channels, mode, settings.Sim.StateSize));

        int sweepDevices = Math.Min(settings.ChannelSweepDevices, available);
        foreach (int c in settings.ChannelSweep)
            RunWithTwin(rows, new BenchScenario("channels", sweepDevices, c, LoadingMode.Decoupled, settings.Sim.StateSize));

        if (settings.Memory && settings.Kind != BenchDeviceKind.Real)
            rows.Add(RunScenario(
                new BenchScenario("memory", settings.MemoryDevices, settings.Channels, LoadingMode.Decoupled, settings.MemoryStateSize), 1));

        return new BenchResult(settings.Kind, rows, CheckTargets(rows, cipher), MachineDescription(), command, cipher);
    }

    /// <summary>The scenario, then (with TLS, decoupled) its TLS twin at once, so that both see the machine alike.</summary>
    private void RunWithTwin(List<BenchRow> rows, BenchScenario scenario)
    {
        rows.Add(RunScenario(scenario, settings.Repeat));
        if (settings.Tls is not null && scenario.Loading == LoadingMode.Decoupled)
            rows.Add(RunScenario(scenario with { Tls = true }, settings.Repeat));
    }

    private BenchRow RunScenario(BenchScenario scenario, int repeat)
    {
        var options = settings.Migration with
        {
            Channels = scenario.Channels, Loading = scenario.Loading, Tls = scenario.Tls ? settings.Tls : null,
            Precopy = scenario.Live ? PrecopyMode.On : PrecopyMode.Off,
        };
        var runs = new List<(RunReport Report, long? PeakRss, RunCost Cost)>();
        var baseline = new List<(double? Mbps, string? Why)>();
        for (int i = 0; i < repeat; i++)
        {
            // Null devices: iperf3 moves the same bytes over as many streams just before each run, so that the two
            // share the machine's conditions (its figures vary between runs as much as ours).
            if (settings.Kind == BenchDeviceKind.Null)
                baseline.Add(Iperf3Baseline.Measure(scenario.Channels, scenario.Devices * scenario.StateSize));
            PeakRss.Reset();
            var (report, cost) = RunOnce(scenario, options);
            runs.Add((report, PeakRss.ReadBytes(), cost));
            if (!report.Ok) break;
        }
        var failed = runs.FirstOrDefault(r => !r.Report.Ok).Report;
        var ok = runs.Where(r => r.Report.Ok).OrderBy(r => r.Report.DowntimeMs).ToList();
        var median = ok.Count > 0 ? ok[ok.Count / 2].Report : null;
        var medianCost = ok.Count > 0 ? ok[ok.Count / 2].Cost : null;
        var totals = ok.Select(r => r.Report.TotalMs).Order().ToList();
        var rates = baseline.Where(b => b.Mbps is not null).Select(b => b.Mbps!.Value).Order().ToList();
        double? iperf = rates.Count > 0 ? rates[rates.Count / 2] : null;
        string? why = rates.Count > 0 ? null : baseline.FirstOrDefault().Why;
        var row = new BenchRow
        {
            Scenario = scenario,
            Runs = runs.Count,
            AllVerified = failed is null && runs.All(r => r.Report.Devices.All(d => d.Verified)),
            Error = failed?.Error,
            DowntimeMedianMs = median?.DowntimeMs ?? 0,
            DowntimeMinMs = ok.Count > 0 ? ok[0].Report.DowntimeMs : 0,
            DeviceBoundMs = median?.DeviceBoundMs,
            AllLoadingMs = median?.AllLoadingMs,
            ThroughputMbps = median?.ThroughputMbps ?? 0,
            MeanWaitMs = median is null ? 0 : median.Devices.Average(d => d.WaitUs) / 1000.0,
            MeanLoadMs = median is null ? 0 : median.Devices.Average(d => d.LoadUs) / 1000.0,
            PeakRssBytes = runs.Max(r => r.PeakRss),
            Cost = medianCost,
            MovedBytes = median?.TotalBytes ?? 0,
            IperfMbps = iperf,
            IperfWhy = why,
            PerDevice = median?.Devices.Select(d => new BenchDevice(d.Name, d.WaitUs / 1000.0, d.LoadUs / 1000.0, d.TotalUs / 1000.0)).ToList() ?? [],
            TotalMedianMs = totals.Count > 0 ? totals[totals.Count / 2] : 0,
            TotalBoundMs = scenario.Live ? median?.TotalBoundMs : median?.DeviceBoundMs,
            PrecopyMs = ok.Count > 0 ? ok.Select(r => r.Report.PrecopyMs).Order().ElementAt(ok.Count / 2) : 0,
            ResentBytes = median is null ? 0 : median.TotalBytes - scenario.Devices * scenario.StateSize,
            Converged = scenario.Live && ok.Count > 0 ? ok.All(r => r.Report.Converged == true) : null,
            ConvergedReason = median?.ConvergedReason,
            DirtyRounds = median is null || median.Devices.Count == 0 ? 0 : median.Devices.Average(d => d.DirtyRounds),
        };
        progress.WriteLine(Describe(row));
        progress.Flush();
        return row;
    }

    /// <summary>One migration, with the wall and CPU time (both sides: they share this process) of the migration alone.</summary>
    private (RunReport Report, RunCost Cost) RunOnce(BenchScenario scenario, MigrationOptions options)
    {
        var sources = new List<IMigrationDevice>();
        var destinations = new List<IMigrationDevice>();
        try
        {
            var sim = settings.Sim with
            {
                StateSize = scenario.StateSize, DirtyBytesPerSecond = scenario.DirtyRate ?? settings.Sim.DirtyBytesPerSecond,
            };
            var srcFactory = new DeviceFactory(sim, new SimulatedPf("bench-src-pf", settings.PfConcurrency));
            var dstFactory = new DeviceFactory(sim, new SimulatedPf("bench-dst-pf", settings.PfConcurrency));
            for (int i = 0; i < scenario.Devices; i++)
            {
                (string src, string dst) = settings.Kind switch
                {
                    BenchDeviceKind.Simulated => ($"sim:vf{i}", $"sim:vf{i}"),
                    BenchDeviceKind.Null => ($"null:vf{i}", $"null:vf{i}"),
                    _ => settings.RealPairs[i],
                };
                sources.Add(srcFactory.Open(src));
                destinations.Add(dstFactory.Open(dst));
            }
            var cpuBefore = ProcessCpu();
            var clock = Stopwatch.StartNew();
            var run = Loopback.Run(sources, destinations, options);
            var cost = new RunCost(clock.Elapsed.TotalMilliseconds, (ProcessCpu() - cpuBefore).TotalMilliseconds, Environment.ProcessorCount);
            var report = SimulatedRun.Annotate(run, sources, destinations, options.DowntimeLimit);
            // Real devices are reused by the next run: the source must be running again (a successful run leaves it stopped).
            if (settings.Kind == BenchDeviceKind.Real)
                foreach (var s in sources)
                    if (s.GetState() != MigrationState.Running) s.SetState(MigrationState.Running)?.Dispose();
            return (report, cost);
        }
        finally
        {
            foreach (var d in sources.Concat(destinations)) d.Dispose();
        }
    }

    private static TimeSpan ProcessCpu()
    {
        using var self = Process.GetCurrentProcess();
        return self.TotalProcessorTime;
    }

    private List<BenchTarget> CheckTargets(IReadOnlyList<BenchRow> rows, CipherCost? cipher)
    {
        var targets = new List<BenchTarget>();
        foreach (var row in rows.Where(r => r.Scenario.Section == "devices" && r.Scenario.Loading == LoadingMode.Decoupled && !r.Scenario.Tls))
        {
            // Free loads (--sim-load-rate 0) leave no bound to be within.
            if (settings.Kind == BenchDeviceKind.Simulated && !(row.AllVerified && row.DeviceBoundMs is not > 0))
            {
                bool met = row.AllVerified && row.BoundRatio is double ratio && ratio <= 1 + settings.BoundTolerance;
                targets.Add(new BenchTarget(
                    string.Create(CultureInfo.InvariantCulture,
                        $"downtime within {settings.BoundTolerance * 100:0}% of the device bound, {row.Scenario.Devices} devices"),
                    met,
                    string.Create(CultureInfo.InvariantCulture,
                        $"downtime {row.DowntimeMedianMs:0.0} ms, bound {row.DeviceBoundMs:0.0} ms, ratio {row.BoundRatio:0.000}")));
            }
        }
        if (settings.Kind == BenchDeviceKind.Null)
        {
            foreach (var row in rows.Where(r => r.Scenario.Section != "memory" && !r.Scenario.Tls))
            {
                bool met = row.AllVerified && row.IperfRatio is double ratio && ratio >= settings.IperfFraction;
                targets.Add(new BenchTarget(
                    string.Create(CultureInfo.InvariantCulture,
                        $"transport at least {settings.IperfFraction * 100:0}% of iperf3, "
                        + $"{row.Scenario.Channels} streams, {row.Scenario.Devices} devices"),
                    met,
                    row.IperfMbps is null
                        ? $"iperf3 not measured: {row.IperfWhy}"
                        : string.Create(CultureInfo.InvariantCulture,
                            $"{row.ThroughputMbps:0} vs {row.IperfMbps:0} Mbit/s, ratio {row.IperfRatio:0.000}")));
            }
        }
        foreach (var tls in rows.Where(r => r.Scenario.Tls))
        {
            var plain = rows.First(r => r.Scenario == tls.Scenario with { Tls = false });
            if (settings.Kind == BenchDeviceKind.Null)
            {
                // A null run is all transport, so its CPU over its wall time is the transport's (simulated runs spend
                // much of theirs elsewhere, in their digest pass and sleeping loads, so no such figure is given for them).
                var cost = plain.Cost;
                double? ceiling = cipher is not null && cost is not null && plain.MovedBytes > 0
                    ? cipher.CeilingRatio(cost.WallMs, cost.CpuMs, plain.MovedBytes, cost.Cores)
                    : null;
                double? ratio = plain.ThroughputMbps > 0 ? tls.ThroughputMbps / plain.ThroughputMbps : null;
                targets.Add(new BenchTarget(
                    string.Create(CultureInfo.InvariantCulture, $"TLS at least {settings.TlsThroughputFraction:0.0#}x plaintext throughput, "
                        + $"{tls.Scenario.Channels} channels, {tls.Scenario.Devices} devices"),
                    tls.AllVerified && ratio >= settings.TlsThroughputFraction,
                    string.Create(CultureInfo.InvariantCulture, $"{tls.ThroughputMbps:0} vs {plain.ThroughputMbps:0} Mbit/s, ratio {ratio:0.000}")
                        + (ceiling is double c ? CipherNote(cost!, c) : "")));
            }
            else if (settings.Kind == BenchDeviceKind.Simulated && tls.Scenario.Section == "devices"
                && !(tls.AllVerified && tls.DeviceBoundMs is not > 0))
            {
                targets.Add(new BenchTarget(
                    string.Create(CultureInfo.InvariantCulture,
                        $"TLS downtime within x{settings.TlsBoundFactor:0.00} of the device bound, {tls.Scenario.Devices} devices"),
                    tls.AllVerified && tls.BoundRatio <= settings.TlsBoundFactor,
                    string.Create(CultureInfo.InvariantCulture, $"downtime {tls.DowntimeMedianMs:0.0} ms (plaintext {plain.DowntimeMedianMs:0.0}), "
                        + $"bound {tls.DeviceBoundMs:0.0} ms, ratio {tls.BoundRatio:0.000}")));
            }
        }
        foreach (var row in rows.Where(r => r.Scenario.Section == "memory"))
        {
            bool met = row.AllVerified && row.PeakRssBytes is long peak && peak < settings.MemoryLimitBytes;
            targets.Add(new BenchTarget(
                $"peak RSS under {settings.MemoryLimitBytes >> 20} MiB, {row.Scenario.Devices} devices of {Size(row.Scenario.StateSize)}",
                met,
                row.PeakRssBytes is long p
                    ? string.Create(CultureInfo.InvariantCulture,
                        $"peak RSS {p / 1048576.0:0.0} MiB, {(row.AllVerified ? "verified" : "NOT verified")}")
                    : "peak RSS unknown (no /proc)"));
        }
        return targets;
    }

    /// <summary>
    /// For the TLS throughput target's detail, what the cipher alone allows on this machine: the plaintext twin's work
    /// plus the cipher's on each byte, spread over every core (<see cref="CipherCost.CeilingRatio"/>).
    /// </summary>
    private static string CipherNote(RunCost plain, double ceiling) => string.Create(CultureInfo.InvariantCulture,
        $"; the cipher alone would allow at most x{ceiling:0.000} plaintext here "
        + $"(plaintext used {plain.CpuMs / plain.WallMs:0.00} of {plain.Cores} cores)");

    /// <summary>
    /// Live against stop-copy only: at the target device count and dirty rate the live downtime is a small fraction of the
    /// stop-copy-only one; every live run's total time is within a factor of its bound.
    /// </summary>
    private List<BenchTarget> CheckPrecopyTargets(IReadOnlyList<BenchRow> rows)
    {
        var targets = new List<BenchTarget>();
        foreach (var live in rows.Where(r => r.Scenario.Live && r.Scenario.Loading == LoadingMode.Decoupled))
        {
            var s = live.Scenario;
            var stopCopy = rows.First(r => r.Scenario == s with { DirtyRate = null });
            if (s.Devices == settings.PrecopyTargetDevices && s.DirtyRate == settings.PrecopyTargetDirtyRate)
            {
                double? fraction = stopCopy.DowntimeMedianMs > 0 ? live.DowntimeMedianMs / stopCopy.DowntimeMedianMs : null;
                targets.Add(new BenchTarget(
                    string.Create(CultureInfo.InvariantCulture,
                        $"live downtime at most {settings.PrecopyDowntimeFraction * 100:0}% of stop-copy only, "
                        + $"{s.Devices} devices, {Rate(s.DirtyRate)}"),
                    live.AllVerified && stopCopy.AllVerified && fraction <= settings.PrecopyDowntimeFraction,
                    string.Create(CultureInfo.InvariantCulture,
                        $"downtime {live.DowntimeMedianMs:0.0} ms vs {stopCopy.DowntimeMedianMs:0.0} ms stop-copy only, {fraction * 100:0.0}%")));
            }
            targets.Add(new BenchTarget(
                string.Create(CultureInfo.InvariantCulture,
                    $"live total time within x{settings.PrecopyTotalFactor:0.00} of the total bound, {s.Devices} devices, {Rate(s.DirtyRate)}"),
                live.AllVerified && live.TotalBoundRatio <= settings.PrecopyTotalFactor,
                live.TotalBoundMs is null
                    ? "no bound: by the model the remainder never fits the downtime limit"
                    : string.Create(CultureInfo.InvariantCulture,
                        $"total {live.TotalMedianMs:0} ms, bound {live.TotalBoundMs:0} ms, ratio {live.TotalBoundRatio:0.000}"
                        + $"{(live.Converged == false ? ", not converged" : "")}")));
        }
        return targets;
    }

    internal static string Rate(double? bytesPerSecond) => bytesPerSecond is double r
        ? (r == 0 ? "no dirtying" : $"{Size((long)r)}/s dirtied")
        : "stop-copy only";

    internal static string Describe(BenchRow row)
    {
        var s = row.Scenario;
        string text = string.Create(CultureInfo.InvariantCulture,
            $"{s.Section,-8} {s.Devices} dev x {Size(s.StateSize)}, {s.Channels} ch, {s.ModeName,-9}: "
            + $"{(s.Section == "precopy" ? Rate(s.DirtyRate) + ", " : "")}"
            + $"downtime {row.DowntimeMedianMs:0.0} ms (min {row.DowntimeMinMs:0.0}), {row.ThroughputMbps:0} Mbit/s");
        if (s.Live)
            text += string.Create(CultureInfo.InvariantCulture,
                $", total {row.TotalMedianMs:0} ms (precopy {row.PrecopyMs:0}), bound {row.TotalBoundMs:0} ms (x{row.TotalBoundRatio:0.000}), "
                + $"resent {row.ResentBytes / 1048576.0:0.0} MiB, {(row.Converged == true ? "converged" : "NOT converged")}");
        if (row.DeviceBoundMs is > 0 and double bound)
            text += string.Create(CultureInfo.InvariantCulture, $", bound {bound:0.0} ms (x{row.BoundRatio:0.000})");
        if (row.AllLoadingMs is double loading)
            text += string.Create(CultureInfo.InvariantCulture, $", all loading after {loading:0.0} ms");
        if (row.IperfMbps is double iperf)
            text += string.Create(CultureInfo.InvariantCulture, $", iperf3 {iperf:0} Mbit/s (x{row.IperfRatio:0.000})");
        if (row.PeakRssBytes is long rss) text += string.Create(CultureInfo.InvariantCulture, $", peak RSS {rss / 1048576.0:0} MiB");
        if (!row.AllVerified) text += $", FAILED: {row.Error ?? "not verified"}";
        return text;
    }

    internal static string Size(long bytes) =>
        bytes >= 1L << 30 && bytes % (1L << 30) == 0 ? $"{bytes >> 30}GiB"
        : bytes >= 1L << 20 && bytes % (1L << 20) == 0 ? $"{bytes >> 20}MiB"
        : bytes >= 1L << 10 && bytes % (1L << 10) == 0 ? $"{bytes >> 10}KiB"
        : $"{bytes}B";

    private static string MachineDescription()
    {
        string cpu = "unknown CPU";
        try
        {
            cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim()
                ?? cpu;
        }
        catch (IOException) { }
        return $"{Environment.ProcessorCount} CPUs ({cpu}), {Environment.OSVersion.VersionString}, .NET {Environment.Version}";
    }
}
