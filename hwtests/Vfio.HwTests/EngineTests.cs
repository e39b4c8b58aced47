using System.CommandLine;
using System.Globalization;
using Vfio.Migration;

namespace Vfio.HwTests;

/// <summary>
/// The migration engine end to end on real /dev/vfio devices: `vfio-mig loopback --device SRC=DST ...`
/// run in-process (what users run) and the engine API (Loopback.Run over RealDeviceAdapter), for 1, 2 and 4 pairs,
/// decoupled and coupled loading.
///
/// The module resets a device when its fd is opened and closed, as vfio-pci does to a VF (reset_on_open_close): the
/// engine API tests open the devices first and prepare and check them while they hold them; the CLI tests, where the
/// CLI opens and closes the devices itself, turn that reset off for their run (see <see cref="NoResetOnOpenClose"/>).
///
/// Against vfio_mig_sim devices (VFIO_MIG_SIM_DEVICES, paired in order) each test gives the sources a small state
/// (dirtied, so it is not only the seed's content) and the destinations a known load delay through the per-device sysfs
/// knobs, restores both afterwards, and checks: the run succeeded, every device verified, source and destination
/// `digest` equal (and the source unchanged), every device RUNNING, per-device load_ms at least the configured delay,
/// downtime at least the delay times the number of waves the parent's max_concurrent_loads allows, and the module's own
/// counters (load time, peak concurrent loads never above the limit). max_concurrent_loads is an insmod-only
/// parameter: the tests read it from the parent and expect accordingly
/// (`run-in-guest.sh --module-args max_concurrent_loads=2` exercises a limit below the number of pairs).
///
/// Against real VFs (VFIO_HW_DEVICES as consecutive SRC DST pairs) the same runs assert what a real device can show:
/// success, verification (the stream checksum), devices RUNNING, timings present and consistent.
/// </summary>
public class EngineTests
{
    private const long StateBytes = 1 << 20;   // 1 MiB of state per source device: small, TCG copies every byte
    private const int LoadUsPerMib = 400_000;  // 400 ms to load it: dominates the transfer, keeps a run short

    private static readonly string[] Modes = ["decoupled", "coupled"];

    public static TheoryData<PairKind, int, string> Runs()
    {
        var data = new TheoryData<PairKind, int, string>();
        foreach (var kind in new[] { PairKind.Sim, PairKind.Vf })
            foreach (int pairs in new[] { 1, 2, 4 })
                foreach (var mode in Modes)
                    data.Add(kind, pairs, mode);
        return data;
    }

    public static TheoryData<string> ModeRows() => [.. Modes];

    /// <summary>`vfio-mig loopback --device SRC=DST ... --loading MODE --json FILE`, as a user runs it (in-process).</summary>
    [Theory]
    [MemberData(nameof(Runs))]
    public void CliLoopback_MigratesEveryPair(PairKind kind, int pairs, string mode)
    {
        var list = EngineEnv.RequirePairs(kind, pairs);
        using var setup = new EngineSetup(kind, list, StateBytes, LoadUsPerMib);
        using var noReset = NoResetOnOpenClose(kind);
        var run = RunCli(list, mode, channels: 6);
        Assert.Equal(0, run.ExitCode);
        Assert.Equal(mode, run.Json.Mode);
        Assert.Equal(6, run.Json.Channels);
        setup.Check(ToOutcome(run.Json), run.Text);
        // The CLI has closed the devices: each must open again and be RUNNING.
        foreach (var (src, dst) in list)
            foreach (var d in new[] { src, dst })
            {
                using var device = VfioDevice.Open(d);
                Assert.Equal(MigrationState.Running, device.GetMigrationState());
            }
    }

    /// <summary>Loopback.Run over RealDeviceAdapter: the devices stay open, so their state after the run is the engine's doing.</summary>
    [Theory]
    [MemberData(nameof(Runs))]
    public void EngineLoopback_MigratesEveryPair_AndLeavesDevicesRunning(PairKind kind, int pairs, string mode)
    {
        var list = EngineEnv.RequirePairs(kind, pairs);
        var options = new MigrationOptions
        {
            Channels = 4, Loading = mode == "coupled" ? LoadingMode.Coupled : LoadingMode.Decoupled, Precopy = PrecopyMode.Off,
        };
        var sources = new List<IMigrationDevice>();
        var destinations = new List<IMigrationDevice>();
        EngineSetup? setup = null;
        try
        {
            foreach (var (src, dst) in list)
            {
                sources.Add(RealDeviceAdapter.Open(src));
                destinations.Add(RealDeviceAdapter.Open(dst));
            }
            // Prepared once open: opening resets the devices, as it resets a VF.
            setup = new EngineSetup(kind, list, StateBytes, LoadUsPerMib);
            var report = Loopback.Run(sources, destinations, options, cancel: TestContext.Current.CancellationToken);
            string text = string.Join("\n", report.SummaryLines());
            Assert.True(report.Ok, $"run failed: {report.Error}\n{text}");
            Assert.Equal(options.Loading, report.Mode);
            Assert.Equal(4, report.Channels);
            // docs/protocol.md section 5: on success the destinations run and the sources stay stopped (the workload
            // moved); they return to RUNNING when closed (see the CLI test) or after a failed run (see below).
            foreach (var d in destinations)
                Assert.True(d.GetState() == MigrationState.Running,
                    $"destination {d.Name} is {MigrationStateMachine.Name(d.GetState())} after the run, not RUNNING");
            foreach (var d in sources)
                Assert.True(d.GetState() == MigrationState.Stop,
                    $"source {d.Name} is {MigrationStateMachine.Name(d.GetState())} after a successful run, not STOP");
            if (kind == PairKind.Sim)
                for (int i = 0; i < list.Count; i++)
                    // The engine compared the destination's digest with the source's (first 64 bits of the sysfs sha256).
                    Assert.Equal((ulong?)ulong.Parse(setup.SourceDigests[i].AsSpan(0, 16), NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                        report.Devices[i].Digest);
            setup.Check(ToOutcome(report), text, sourceState: "STOP");
        }
        finally
        {
            foreach (var d in sources.Concat(destinations)) d.Dispose();
            setup?.Dispose();
        }
    }

    /// <summary>
    /// A destination device that refuses its stream fails the run: the report (and `vfio-mig`'s exit code and message)
    /// names it, every source device is back in RUNNING while the engine still holds it, every destination is reset to
    /// RUNNING, and the refusing device holds nothing of the stream. The failure is made by the module itself: the second
    /// source gets a state twice the size, then the module's max_state_size is lowered so destinations refuse the
    /// larger stream's BEGIN record (EINVAL in write(2), as mlx5 refuses a stream it cannot take), while the other
    /// destination is in the middle of its load. Simulated devices only: a real VF cannot be made to refuse on purpose.
    /// </summary>
    [Theory]
    [MemberData(nameof(ModeRows))]
    public void RefusedStream_FailsTheRun_NamesTheDevice_AndEveryDeviceRunsAgain(string mode)
    {
        var list = EngineEnv.RequirePairs(PairKind.Sim, 2);
        var (badSrc, badDst) = list[1];
        var options = new MigrationOptions
        {
            Channels = 4, Loading = mode == "coupled" ? LoadingMode.Coupled : LoadingMode.Decoupled, Precopy = PrecopyMode.Off,
        };
        var sources = new List<IMigrationDevice>();
        var destinations = new List<IMigrationDevice>();
        EngineSetup? setup = null;
        var knobs = new SimKnobs();
        try
        {
            string badDigest;
            try
            {
                foreach (var (src, dst) in list)
                {
                    sources.Add(RealDeviceAdapter.Open(src));
                    destinations.Add(RealDeviceAdapter.Open(dst));
                }
                // Prepared once open: opening resets the devices, as it resets a VF.
                setup = new EngineSetup(PairKind.Sim, list, StateBytes, LoadUsPerMib);
                knobs.Set(badSrc, "state_size", (2 * StateBytes).ToString(CultureInfo.InvariantCulture));
                knobs.SetModuleParameter("max_state_size", StateBytes.ToString(CultureInfo.InvariantCulture));
                // Timing: the good destination is still inside its (2 s) load when the bad one fails, because the bad source's
                // first buffer (with the BEGIN record) is ready only after 1 s of "firmware" save time. A device being loaded
                // when the run fails must end reset and RUNNING, not finished afterwards (RUNNING -> STOP is a valid transition).
                knobs.Set(list[0].Dst, "load_us_per_mib", "2000000");
                knobs.Set(badSrc, "save_us_per_mib", "500000");
                badDigest = SimKnobs.Read(badDst, "digest");
                var report = Loopback.Run(sources, destinations, options, cancel: TestContext.Current.CancellationToken);
                string text = string.Join("\n", report.SummaryLines());
                Assert.False(report.Ok, "the run succeeded although a destination refused its stream\n" + text);
                Assert.True(report.FailedDevice == badDst, $"failed device '{report.FailedDevice}', expected {badDst}\n{text}");
                Assert.All(report.Devices, d => Assert.False(d.Verified));
                foreach (var d in sources.Concat(destinations))
                    Assert.True(d.GetState() == MigrationState.Running,
                        $"{d.Name} is {MigrationStateMachine.Name(d.GetState())} after a failed run, not RUNNING\n{text}");
                // Read while held: closing resets the devices.
                Assert.Equal(badDigest, SimKnobs.Read(badDst, "digest"));
                Assert.Equal(setup.SourceDigests[0], SimKnobs.Read(list[0].Src, "digest")); // a source is never changed by a run
            }
            finally
            {
                foreach (var d in sources.Concat(destinations)) d.Dispose();
            }
            // The scenario happened as intended: the good destination had loaded its state when the run failed.
            Assert.True(SimKnobs.ReadLong(list[0].Dst, "bytes_loaded") >= StateBytes,
                $"{list[0].Dst} loaded {SimKnobs.Read(list[0].Dst, "bytes_loaded")} bytes: the run failed before its load, "
                + "so this test did not cover a device failed mid-load");

            // The same through the CLI: exit code 1 and one line naming the device, which holds its power-on state again
            // (the CLI's reset on open and close leaves what the refusal left).
            var cli = RunCliRaw(list, mode, channels: 4);
            Assert.True(cli.ExitCode == 1, $"exit code {cli.ExitCode}, expected 1\n{cli.Text}");
            Assert.Contains(badDst, cli.Error);
            Assert.Equal(badDigest, SimKnobs.Read(badDst, "digest"));
        }
        finally
        {
            knobs.Dispose();
            setup?.Dispose();
        }
    }

    /// <summary>
    /// The parent's max_concurrent_loads (M) bounds the loads running at once, and the downtime follows: 2 pairs, then
    /// 4, with a 2 s load each. Every run gets the bounds the module's slots and sleeps impose whatever the machine's
    /// load (<see cref="EngineSetup.Check"/>): peak concurrent loads at most M, downtime at least ceil(N/M) load times;
    /// a limit not honoured breaks them, noise cannot. Decoupled loading (every loader writes as soon as its buffers
    /// arrive) must also fill the slots: the peak is min(N, M), so the engine adds no wave of its own. Going from 2 to 4
    /// pairs costs at least half a load time per extra wave where the limit forces extra waves (M of 2 or 3); where it
    /// does not, the two runs' wall times differ by noise alone and the peak is what shows that no wave was added.
    /// Coupled loading only gets the per-run bounds: a receive thread blocked in one device's load can hold the next
    /// device's buffers behind it, so its loads may serialize beyond what the limit requires (the reason for a loading
    /// thread per device, not a limit of the module).
    /// </summary>
    [Theory]
    [MemberData(nameof(ModeRows))]
    public void ConcurrencyLimit_BoundsParallelLoads_AndDowntime(string mode)
    {
        var all = EngineEnv.RequirePairs(PairKind.Sim, 4);
        const int slowUsPerMib = 2_000_000; // the module's maximum: 2 s per MiB
        double loadMs = StateBytes / 1048576.0 * slowUsPerMib / 1000;
        int max = (int)SimKnobs.ReadParent("max_concurrent_loads");
        var downtime = new Dictionary<int, double>();
        var log = new List<string> { $"max_concurrent_loads={max}, {mode}, load {loadMs} ms per device" };
        foreach (int n in new[] { 2, 4 })
        {
            var list = all.Take(n).ToList();
            using var setup = new EngineSetup(PairKind.Sim, list, StateBytes, slowUsPerMib);
            using var noReset = NoResetOnOpenClose(PairKind.Sim);
            var run = RunCli(list, mode, channels: 6);
            Assert.True(run.ExitCode == 0, $"{n} pairs: exit code {run.ExitCode}\n{run.Text}");
            var outcome = ToOutcome(run.Json);
            setup.Check(outcome, run.Text);
            long peak = SimKnobs.ReadParent("peak_concurrent_loads");
            downtime[n] = outcome.DowntimeMs;
            log.Add($"{n} pairs: downtime {outcome.DowntimeMs:0} ms, parent peak concurrent loads {peak}, load_ms " +
                    string.Join(" ", outcome.Devices.Select(d => d.LoadMs.ToString("0", CultureInfo.InvariantCulture))));
            // A load lasts 2 s, far longer than the spread of the devices' arrivals, so the loads overlap as far as M allows.
            if (mode == "decoupled")
                Assert.True(peak == Math.Min(n, max),
                    $"{string.Join("\n", log)}\n{n} loads with at most {max} at once, but the module counted a peak of {peak}");
        }
        string all2 = string.Join("\n", log);
        TestContext.Current.TestOutputHelper?.WriteLine(all2);
        if (mode == "coupled") return; // a receive thread loading one device stalls its channel: runs may serialize more than the limit requires
        int extraWaves = Waves(4, max) - Waves(2, max);
        if (extraWaves == 0) return; // no extra wave: the peak above proves it, and the wall times differ by noise alone
        double extra = downtime[4] - downtime[2];
        Assert.True(extra >= extraWaves * loadMs * 0.5,
            $"{all2}\n4 pairs took {extra:0} ms longer than 2; the limit implies {extraWaves} more load time(s) of {loadMs} ms");
    }

    /// <summary>
    /// The engine, not the device, catches a stream whose tail never reached the device. mlx5 accepts a truncated stream at
    /// RESUMING->STOP (its incomplete last record is dropped), and so does the module with strict_resume=0, its default:
    /// the run must still fail, on the engine's own verification, naming the destination, which is reset and RUNNING, and
    /// the source runs again with its state. With strict_resume=1 the module refuses the stream at RESUMING->STOP instead.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TruncatedStream_FailsTheRun_WhetherOrNotTheDeviceNotices(bool strict)
    {
        var list = EngineEnv.RequirePairs(PairKind.Sim, 1);
        var (src, dst) = list[0];
        using var knobs = new SimKnobs();
        knobs.SetModuleParameter("strict_resume", strict ? "1" : "0");
        IMigrationDevice? source = null;
        TailDroppingDevice? destination = null;
        EngineSetup? setup = null;
        try
        {
            source = RealDeviceAdapter.Open(src);
            // 100 bytes: the END record and the end of the BAR0 record before it.
            destination = new TailDroppingDevice(RealDeviceAdapter.Open(dst), drop: 100);
            setup = new EngineSetup(PairKind.Sim, list, StateBytes, LoadUsPerMib);
            var report = Loopback.Run([source], [destination], new MigrationOptions { Channels = 2, Precopy = PrecopyMode.Off },
                cancel: TestContext.Current.CancellationToken);
            string text = string.Join("\n", report.SummaryLines());
            Assert.False(report.Ok, "a run whose destination lost the stream's tail succeeded\n" + text);
            Assert.True(report.FailedDevice == dst, $"failed device '{report.FailedDevice}', expected {dst}\n{text}");
            string expected = strict ? "refused the stream" : "state digest";
            Assert.True(report.Error?.Contains(expected) == true, $"error '{report.Error}', expected it to say '{expected}'\n{text}");
            Assert.Equal(MigrationState.Running, source.GetState());
            Assert.Equal(MigrationState.Running, destination.GetState());
            Assert.Equal(setup.SourceDigests[0], SimKnobs.Read(src, "digest"));
        }
        finally
        {
            source?.Dispose();
            destination?.Dispose();
            setup?.Dispose();
        }
    }

    /// <summary>
    /// The module's reset on open and close off for a test that runs the CLI in-process (restored on Dispose): the CLI
    /// opens the devices itself and closes them before the test can look, and a reset at either end would replace the
    /// sources' prepared state and drop what the destinations loaded, which is what these tests compare. On a real VF
    /// the same holds: a tool that opens the VF itself migrates a freshly reset VF.
    /// </summary>
    internal static SimKnobs NoResetOnOpenClose(PairKind kind)
    {
        var knobs = new SimKnobs();
        if (kind == PairKind.Sim) knobs.SetModuleParameter("reset_on_open_close", "0");
        return knobs;
    }

    internal static int Waves(int devices, int maxConcurrent) => (devices + maxConcurrent - 1) / Math.Max(1, maxConcurrent);

    private sealed record CliRun(int ExitCode, string Text, JsonRun Json);

    private sealed record RawCliRun(int ExitCode, string Output, string Error, string Text, string? Json);

    /// <summary>`vfio-mig loopback --device SRC=DST ... --loading MODE --channels N --json FILE` in-process.</summary>
    private static RawCliRun RunCliRaw(IReadOnlyList<(string Src, string Dst)> pairs, string mode, int channels)
    {
        string json = Path.Combine(Path.GetTempPath(), $"vfio-mig-engine-{Guid.NewGuid():N}.json");
        try
        {
            var args = new List<string> { "loopback" };
            foreach (var (src, dst) in pairs) args.AddRange(["--device", $"{src}={dst}"]);
            // Stop-copy only: these runs check what a stop-copy downtime holds (LiveEngineTests has the live phase).
            args.AddRange(["--loading", mode, "--channels", channels.ToString(CultureInfo.InvariantCulture), "--precopy", "off", "--json", json]);
            var output = new StringWriter();
            var error = new StringWriter();
            int code = Vfio.Cli.Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
            string text = $"vfio-mig {string.Join(' ', args)}\nexit code {code}\n{output}{error}";
            return new RawCliRun(code, output.ToString(), error.ToString(), text, File.Exists(json) ? File.ReadAllText(json) : null);
        }
        finally
        {
            File.Delete(json);
        }
    }

    private static CliRun RunCli(IReadOnlyList<(string Src, string Dst)> pairs, string mode, int channels)
    {
        var raw = RunCliRaw(pairs, mode, channels);
        Assert.True(raw.Json is not null, $"no JSON report\n{raw.Text}");
        var parsed = JsonRun.Parse(raw.Json!);
        Assert.True(raw.ExitCode == 0 && parsed.Result == "ok", $"the run failed\n{raw.Text}\n{parsed.Raw}");
        return new CliRun(raw.ExitCode, raw.Text + parsed.Raw, parsed);
    }

    private static RunOutcome ToOutcome(JsonRun j) => new(j.Result == "ok", j.DowntimeMs,
        j.Devices.Select(d => new DeviceOutcome(d.Name, d.Source, d.Bytes, d.WaitMs, d.LoadMs, d.TotalMs, d.Verified)).ToList());

    private static RunOutcome ToOutcome(RunReport r) => new(r.Ok, r.DowntimeMs,
        r.Devices.Select(d => new DeviceOutcome(d.Name, d.SourceName, d.Bytes, d.WaitUs / 1000.0, d.LoadUs / 1000.0, d.TotalUs / 1000.0, d.Verified))
            .ToList());
}

public sealed record DeviceOutcome(string Name, string? Source, long Bytes, double WaitMs, double LoadMs, double TotalMs, bool Verified);

public sealed record RunOutcome(bool Ok, double DowntimeMs, IReadOnlyList<DeviceOutcome> Devices);

/// <summary>
/// One engine run's preparation and checks. Simulated pairs: the sources get <c>stateBytes</c> of state, dirtied;
/// the destinations <c>loadUsPerMib</c>; counters reset; everything restored (sizes, seeds, knobs: the original
/// content is regenerated) on Dispose. Real pairs: nothing to prepare.
/// </summary>
public sealed class EngineSetup : IDisposable
{
    private readonly SimKnobs _knobs = new();
    private readonly PairKind _kind;
    private readonly IReadOnlyList<(string Src, string Dst)> _pairs;
    private readonly long _stateBytes;

    public EngineSetup(PairKind kind, IReadOnlyList<(string Src, string Dst)> pairs, long stateBytes, int loadUsPerMib)
    {
        _kind = kind;
        _pairs = pairs;
        _stateBytes = stateBytes;
        ExpectedLoadMs = stateBytes / 1048576.0 * loadUsPerMib / 1000;
        if (kind != PairKind.Sim) return;
        try
        {
            MaxConcurrentLoads = (int)SimKnobs.ReadParent("max_concurrent_loads");
            foreach (var (src, dst) in pairs)
            {
                _knobs.KeepState(src);
                _knobs.KeepState(dst);
                _knobs.Set(src, "state_size", stateBytes.ToString(CultureInfo.InvariantCulture));
                _knobs.Set(dst, "load_us_per_mib", loadUsPerMib.ToString(CultureInfo.InvariantCulture));
                SimKnobs.Write(src, "dirty", "16"); // content no seed alone produces
                SimKnobs.Write(dst, "reset_counters", "1");
            }
            SimKnobs.WriteParent("peak_concurrent_loads", "0");
            SourceDigests = pairs.Select(p => SimKnobs.Read(p.Src, "digest")).ToList();
            for (int i = 0; i < pairs.Count; i++)
                Assert.NotEqual(SourceDigests[i], SimKnobs.Read(pairs[i].Dst, "digest"));
        }
        catch
        {
            _knobs.Dispose();
            throw;
        }
    }

    public double ExpectedLoadMs { get; }

    public int MaxConcurrentLoads { get; } = int.MaxValue;

    public IReadOnlyList<string> SourceDigests { get; } = [];

    /// <summary>
    /// Checks a successful run; <paramref name="sourceState"/>: what sysfs mig_state the sources show now (STOP while the
    /// engine holds them after success).
    /// </summary>
    public void Check(RunOutcome run, string text, string sourceState = "RUNNING")
    {
        string ctx = "\n" + text;
        Assert.True(run.Ok, "the run failed" + ctx);
        Assert.Equal(_pairs.Select(p => p.Dst), run.Devices.Select(d => d.Name));
        for (int i = 0; i < _pairs.Count; i++)
        {
            var d = run.Devices[i];
            if (d.Source is not null) Assert.Equal(_pairs[i].Src, d.Source);
            Assert.True(d.Verified, $"{d.Name} not verified" + ctx);
            Assert.True(d.Bytes > 0 && d.LoadMs > 0, $"{d.Name}: no bytes or no load time" + ctx);
            Assert.True(d.TotalMs + 1 >= d.LoadMs + d.WaitMs, $"{d.Name}: total {d.TotalMs} ms < wait {d.WaitMs} + load {d.LoadMs}" + ctx);
        }
        double maxLoad = run.Devices.Max(d => d.LoadMs);
        Assert.True(run.DowntimeMs + 1 >= maxLoad, $"downtime {run.DowntimeMs} ms shorter than a device's load {maxLoad} ms" + ctx);
        if (_kind != PairKind.Sim) return;

        int waves = EngineTests.Waves(_pairs.Count, MaxConcurrentLoads);
        Assert.True(run.DowntimeMs >= waves * ExpectedLoadMs * EngineTestsTolerance,
            $"downtime {run.DowntimeMs} ms, but {_pairs.Count} loads of {ExpectedLoadMs} ms with at most {MaxConcurrentLoads} at once "
            + $"need {waves * ExpectedLoadMs} ms" + ctx);
        long parentPeak = SimKnobs.ReadParent("peak_concurrent_loads");
        Assert.True(parentPeak >= 1 && parentPeak <= MaxConcurrentLoads,
            $"parent peak_concurrent_loads {parentPeak}, max_concurrent_loads {MaxConcurrentLoads}" + ctx);
        for (int i = 0; i < _pairs.Count; i++)
        {
            var (src, dst) = _pairs[i];
            var d = run.Devices[i];
            Assert.True(d.Bytes > _stateBytes, $"{dst}: {d.Bytes} stream bytes for a {_stateBytes}-byte state" + ctx);
            Assert.True(d.LoadMs >= ExpectedLoadMs * EngineTestsTolerance,
                $"{dst}: load_ms {d.LoadMs}, but its load_us_per_mib implies {ExpectedLoadMs} ms for {_stateBytes} bytes" + ctx);
            // The module's view: what it loaded, how long its loads slept (without the wait for a slot), concurrency.
            Assert.True(SimKnobs.ReadLong(dst, "bytes_loaded") >= _stateBytes, $"{dst}: bytes_loaded {SimKnobs.Read(dst, "bytes_loaded")}" + ctx);
            Assert.True(SimKnobs.ReadLong(dst, "load_us_total") >= ExpectedLoadMs * 1000 * EngineTestsTolerance,
                $"{dst}: load_us_total {SimKnobs.Read(dst, "load_us_total")}, expected at least {ExpectedLoadMs} ms" + ctx);
            long peak = SimKnobs.ReadLong(dst, "peak_concurrent_loads");
            Assert.True(peak >= 1 && peak <= MaxConcurrentLoads, $"{dst}: peak_concurrent_loads {peak}, limit {MaxConcurrentLoads}" + ctx);
            Assert.Equal(_stateBytes, SimKnobs.ReadLong(dst, "state_size")); // adopted from the stream
            Assert.Equal(SourceDigests[i], SimKnobs.Read(src, "digest"));    // the source is unchanged
            Assert.True(SourceDigests[i] == SimKnobs.Read(dst, "digest"), $"{dst}: digest differs from its source {src}" + ctx);
            Assert.Equal(sourceState, SimKnobs.Read(src, "mig_state"));
            Assert.Equal("RUNNING", SimKnobs.Read(dst, "mig_state"));
        }
    }

    /// <summary>Timings may come in a little under the configured delay (clock granularity).</summary>
    private const double EngineTestsTolerance = 0.95;

    public void Dispose() => _knobs.Dispose();
}
