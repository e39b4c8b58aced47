using System.CommandLine;
using System.Globalization;
using Vfio.Migration;

namespace Vfio.HwTests;

/// <summary>
/// The live phase against vfio_mig_sim pairs: the module's sources dirty pages while in PRE_COPY (their
/// <c>dirty_kib_per_s</c> knob) and, as on mlx5, make them readable only after VFIO_MIG_GET_PRECOPY_INFO, so an engine
/// that never asks, or that loses a dirty round, cannot pass. The engine runs in-process over RealDeviceAdapter and
/// holds every device open until the checks are done, so what sysfs shows is the engine's doing.
/// Loads are slow (1 MiB at the module's 2 s per MiB), so a stop-copy downtime holds at least one whole load while a
/// converged live one holds only the remainder: a gap that the machine's load cannot close.
/// </summary>
public class LiveEngineTests
{
    private const long StateBytes = 1 << 20;
    private const int LoadUsPerMib = 2_000_000;
    /// <summary>Far below the 0.5 MiB/s the slow loads allow, so precopy converges; above 0, so there are dirty rounds.</summary>
    private const int DirtyKibPerS = 64;

    public static TheoryData<int, string> Rows()
    {
        var data = new TheoryData<int, string>();
        foreach (int pairs in new[] { 1, 4 })
            foreach (var mode in new[] { "decoupled", "coupled" })
                data.Add(pairs, mode);
        return data;
    }

    /// <summary>
    /// The module's digest of a whole state costs tens to hundreds of milliseconds per device under TCG, inside the
    /// downtime (a live source takes its own once stopped): the downtimes compared leave it out (--verify stream), and
    /// the tests read the digests themselves afterwards.
    /// </summary>
    private static MigrationOptions Options(string mode, PrecopyMode precopy) => new()
    {
        Channels = 4,
        Loading = mode == "coupled" ? LoadingMode.Coupled : LoadingMode.Decoupled,
        Precopy = precopy,
        PrecopyTimeout = TimeSpan.FromSeconds(60),
        Verify = VerifyMode.Stream,
    };

    /// <summary>
    /// A live migration sends the initial image and the dirty rounds while the sources run, converges, switches over,
    /// and every destination ends with the state its source had when it stopped (the module's digests, read while the
    /// engine still holds the devices); its downtime is shorter than that of a stop-copy-only run of the same devices
    /// (decoupled: under half).
    /// </summary>
    [Theory]
    [MemberData(nameof(Rows))]
    public void Live_migration_ends_with_each_sources_final_state_in_a_shorter_downtime_than_stop_copy(int pairs, string mode)
    {
        var list = EngineEnv.RequirePairs(PairKind.Sim, pairs);
        WithPreparedDevices(list, DirtyKibPerS.ToString(CultureInfo.InvariantCulture), (sources, destinations, setup) =>
        {
            // Stop-copy first: the code both runs share is compiled by then (this is the JIT build, not the CLI's ReadyToRun
            // one), so what compiling costs under TCG falls on the run the live one is measured against, not on the live one.
            var stopCopy = Migrate(sources, destinations, Options(mode, PrecopyMode.Off), report =>
            {
                Assert.True(report.Ok, $"the stop-copy run failed: {report.Error}");
                Assert.All(report.Devices, d => Assert.Equal(0, d.PrecopyBytes));
            });

            // The same sources run again (held open: closing would reset them) and go live.
            foreach (var d in sources) d.SetState(MigrationState.Running);
            var live = Migrate(sources, destinations, Options(mode, PrecopyMode.On), report =>
            {
                string text = string.Join("\n", report.SummaryLines());
                Assert.True(report.Ok, $"the live run failed: {report.Error}\n{text}");
                Assert.True(report.Converged == true, $"precopy did not converge: {report.ConvergedReason}\n{text}");
                Assert.True(report.PrecopyMs > 0, text);
                for (int i = 0; i < list.Count; i++)
                {
                    var (src, dst) = list[i];
                    var d = report.Devices[i];
                    Assert.True(d.Verified, $"{dst} not verified\n{text}");
                    Assert.True(d.PrecopyBytes >= StateBytes, $"{dst}: {d.PrecopyBytes} bytes went before the switchover\n{text}");
                    Assert.True(d.DirtyRounds >= 1, $"{dst}: no dirty round\n{text}");
                    Assert.True(d.InitialAckedUs > 0, $"{dst}: initial image not acknowledged\n{text}");
                    // The source ran, dirtying pages, and the destination has the state it stopped with: a lost or misplaced
                    // dirty round would leave the destination at another state.
                    string finalDigest = SimKnobs.Read(src, "digest");
                    Assert.True(finalDigest != setup.SourceDigests[i], $"{src}: the source did not change while it ran in PRE_COPY\n{text}");
                    Assert.True(SimKnobs.Read(dst, "digest") == finalDigest, $"{dst}: digest differs from its source's final state\n{text}");
                    Assert.Equal("STOP", SimKnobs.Read(src, "mig_state"));
                    Assert.Equal("RUNNING", SimKnobs.Read(dst, "mig_state"));
                }
            });

            double loadMs = StateBytes / 1048576.0 * LoadUsPerMib / 1000;
            string figures = $"{pairs} pairs, {mode}: live downtime {live.DowntimeMs:0} ms (precopy {live.PrecopyMs:0} ms), "
                + $"stop-copy downtime {stopCopy.DowntimeMs:0} ms, one load {loadMs:0} ms\nlive:\n{string.Join("\n", live.SummaryLines())}\n"
                + string.Join("\n", live.Devices.Select(d => $"{d.Name}: precopy {d.PrecopyBytes} B, stop-copy {d.StopCopyBytes} B, "
                    + $"wait {d.WaitUs / 1000} ms, load {d.LoadUs / 1000} ms, verify {d.VerifyUs / 1000} ms, config {d.ConfigUs / 1000} ms"))
                + $"\nstop-copy:\n{string.Join("\n", stopCopy.SummaryLines())}";
            TestContext.Current.TestOutputHelper?.WriteLine(figures);
            Assert.True(stopCopy.DowntimeMs >= loadMs * 0.95, $"the stop-copy run did not hold a whole load: {figures}");
            // Decoupled, the downtime holds only the remainder. Coupled, a receive thread that loads one device's dirty pages
            // holds back the buffers behind it on its channel, so the live downtime only has to beat stop-copy's.
            double bound = mode == "decoupled" ? stopCopy.DowntimeMs / 2 : stopCopy.DowntimeMs;
            Assert.True(live.DowntimeMs < bound, $"the live downtime is not under {bound:0} ms: {figures}");
        });
    }

    /// <summary>
    /// Precopy that cannot converge in time with --precopy-timeout-action abort fails the run while the sources still run:
    /// every source RUNNING with its state untouched (its dirty rate is 0 here, so untouched means unchanged), every
    /// destination reset to RUNNING, and the error says why.
    /// </summary>
    [Theory]
    [InlineData("decoupled")]
    [InlineData("coupled")]
    public void Precopy_aborted_at_its_timeout_leaves_every_source_running_with_its_state(string mode)
    {
        var list = EngineEnv.RequirePairs(PairKind.Sim, 2);
        WithPreparedDevices(list, "0", (sources, destinations, setup) =>
        {
            // The initial image takes 2 s to load: it cannot be acknowledged within 1 s.
            var options = Options(mode, PrecopyMode.On) with
            {
                PrecopyTimeout = TimeSpan.FromSeconds(1),
                PrecopyTimeoutAction = PrecopyTimeoutAction.Abort,
            };
            Migrate(sources, destinations, options, report =>
            {
                string text = string.Join("\n", report.SummaryLines());
                Assert.False(report.Ok, "the run succeeded although precopy was aborted\n" + text);
                Assert.Contains("precopy did not converge", report.Error, StringComparison.Ordinal);
                for (int i = 0; i < list.Count; i++)
                {
                    var (src, dst) = list[i];
                    Assert.True(SimKnobs.Read(src, "mig_state") == "RUNNING", $"{src} is {SimKnobs.Read(src, "mig_state")}\n{text}");
                    Assert.True(SimKnobs.Read(src, "digest") == setup.SourceDigests[i], $"{src}: its state changed\n{text}");
                    Assert.True(SimKnobs.Read(dst, "mig_state") == "RUNNING", $"{dst} is {SimKnobs.Read(dst, "mig_state")}\n{text}");
                }
            });
        });
    }

    /// <summary>`vfio-mig loopback` with no --precopy goes live on devices that all offer PRE_COPY (auto is the default).</summary>
    [Fact]
    public void The_cli_migrates_live_by_default_when_every_device_offers_pre_copy()
    {
        var list = EngineEnv.RequirePairs(PairKind.Sim, 2);
        using var setup = new EngineSetup(PairKind.Sim, list, StateBytes, LoadUsPerMib);
        using var noReset = EngineTests.NoResetOnOpenClose(PairKind.Sim);
        string json = Path.Combine(Path.GetTempPath(), $"vfio-mig-live-{Guid.NewGuid():N}.json");
        try
        {
            var args = new List<string> { "loopback", "--channels", "4", "--json", json };
            foreach (var (src, dst) in list) args.AddRange(["--device", $"{src}={dst}"]);
            var output = new StringWriter();
            var error = new StringWriter();
            int code = Vfio.Cli.Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
            string text = $"vfio-mig {string.Join(' ', args)}\nexit code {code}\n{output}{error}";
            Assert.True(code == 0, text);
            Assert.Contains(", live ", output.ToString(), StringComparison.Ordinal); // the summary line shows the live phase
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json));
            var root = doc.RootElement;
            Assert.True(root.GetProperty("precopy_ms").GetDouble() > 0, text);
            Assert.True(root.TryGetProperty("converged", out _), text);
            foreach (var d in root.GetProperty("devices").EnumerateArray())
            {
                Assert.True(d.GetProperty("verified").GetBoolean(), text);
                Assert.True(d.GetProperty("precopy_bytes").GetInt64() >= StateBytes, text);
            }
        }
        finally
        {
            File.Delete(json);
        }
    }

    /// <summary>
    /// Opens every device of the pairs, then prepares them (EngineSetup, the sources' dirty rate), runs
    /// <paramref name="body"/>, closes the devices and only then restores what it prepared. Prepared and checked while
    /// open, since opening and closing reset the devices, as vfio-pci resets a VF; restored once closed, since a source
    /// left stopped by a successful run refuses a new seed until its reset returns it to RUNNING.
    /// </summary>
    private static void WithPreparedDevices(IReadOnlyList<(string Src, string Dst)> list, string sourceDirtyKibPerS,
        Action<IReadOnlyList<IMigrationDevice>, IReadOnlyList<IMigrationDevice>, EngineSetup> body)
    {
        var sources = new List<IMigrationDevice>();
        var destinations = new List<IMigrationDevice>();
        var knobs = new SimKnobs();
        EngineSetup? setup = null;
        try
        {
            foreach (var (src, dst) in list)
            {
                sources.Add(RealDeviceAdapter.Open(src));
                destinations.Add(RealDeviceAdapter.Open(dst));
            }
            setup = new EngineSetup(PairKind.Sim, list, StateBytes, LoadUsPerMib);
            foreach (var (src, _) in list) knobs.Set(src, "dirty_kib_per_s", sourceDirtyKibPerS);
            body(sources, destinations, setup);
        }
        finally
        {
            foreach (var d in sources.Concat(destinations)) d.Dispose();
            knobs.Dispose();
            setup?.Dispose();
        }
    }

    /// <summary>Runs the engine and checks the outcome while the devices are still held open.</summary>
    private static RunReport Migrate(IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations,
        MigrationOptions options, Action<RunReport> check)
    {
        var report = Loopback.Run(sources, destinations, options, cancel: TestContext.Current.CancellationToken);
        check(report);
        return report;
    }
}
