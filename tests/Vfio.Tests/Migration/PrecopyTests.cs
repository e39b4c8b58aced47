using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>The live phase: precopy over the data channels, the switchover-ack, convergence, and its failures.</summary>
public sealed class PrecopyTests
{
    private static (PagedDevice[] Src, PagedDevice[] Dst) Pairs(int n, int pages, int dirtyPages, int dirtyingInfos) =>
        (Enumerable.Range(0, n).Select(i => new PagedDevice($"paged:src{i}", pages)
            { DirtyPagesPerInfo = dirtyPages, DirtyingInfos = dirtyingInfos }).ToArray(),
         Enumerable.Range(0, n).Select(i => new PagedDevice($"paged:dst{i}", pages)).ToArray());

    private static MigrationOptions Live(LoadingMode mode = LoadingMode.Decoupled) => TestDevices.Options(3, mode) with
    {
        Precopy = PrecopyMode.Auto,
        DowntimeLimit = TimeSpan.FromSeconds(5),
        PrecopyTimeout = TimeSpan.FromSeconds(30),
    };

    [Theory]
    [InlineData(LoadingMode.Decoupled)]
    [InlineData(LoadingMode.Coupled)]
    public void A_live_migration_sends_the_initial_image_and_dirty_rounds_before_the_switchover_and_ends_with_the_final_state(
        LoadingMode mode)
    {
        var (src, dst) = Pairs(3, pages: 96, dirtyPages: 8, dirtyingInfos: 5);
        var report = TestDevices.Migrate(src, dst, Live(mode));

        Assert.True(report.Ok, report.Error);
        for (int i = 0; i < src.Length; i++)
        {
            Assert.Equal(MigrationState.Running, dst[i].GetState());
            Assert.Equal(src[i].StateDigest(), dst[i].StateDigest()); // the state as the source had it when it stopped
            Assert.True(src[i].InfoCalls > 0);
            var d = report.Devices[i];
            // The initial image (every page) went while the device ran; what stop-copy sent is only what was left.
            Assert.True(d.PrecopyBytes >= 96L * (PagedDevice.PageSize + 4), $"{d.Name}: {d.PrecopyBytes} precopy bytes");
            Assert.True(d.StopCopyBytes < d.PrecopyBytes, $"{d.Name}: {d.StopCopyBytes} stop-copy bytes");
            Assert.True(d.DirtyRounds >= 1);
            Assert.True(d.InitialAckedUs > 0);
        }
        Assert.True(report.Converged);
        Assert.True(report.PrecopyMs > 0);
        var json = report.ToJson();
        Assert.Contains("\"precopy_bytes\"", json, StringComparison.Ordinal);
        Assert.Contains("\"converged\": true", json, StringComparison.Ordinal);
    }

    [Fact]
    public void Tiny_devices_migrating_live_announce_their_completion_after_the_switchover()
    {
        // A device whose stop-copy remainder is a few bytes is read and announced at once: its save thread must not get
        // to it before the Switchover has gone out (the destination refuses a completion before it).
        for (int run = 0; run < 40; run++)
        {
            var (src, dst) = TestDevices.Pairs(3);
            var report = TestDevices.Migrate(src, dst, TestDevices.Options(2) with
            {
                Precopy = PrecopyMode.On, DowntimeLimit = TimeSpan.FromSeconds(5),
            });
            Assert.True(report.Ok, $"run {run}: {report.Error}");
            Assert.All(report.Devices, d => Assert.InRange(d.TotalUs, 0, 60_000_000));
        }
    }

    [Fact]
    public void Precopy_off_moves_everything_after_the_stop()
    {
        var (src, dst) = Pairs(2, pages: 32, dirtyPages: 4, dirtyingInfos: 3);
        var report = TestDevices.Migrate(src, dst, Live() with { Precopy = PrecopyMode.Off });

        Assert.True(report.Ok, report.Error);
        Assert.All(report.Devices, d => Assert.Equal(0, d.PrecopyBytes));
        Assert.All(src, s => Assert.Equal(0, s.InfoCalls));
        for (int i = 0; i < src.Length; i++) Assert.Equal(src[i].StateDigest(), dst[i].StateDigest());
    }

    [Fact]
    public void Precopy_on_with_a_device_without_pre_copy_is_refused_before_any_device_is_touched()
    {
        var src = new[] { new PagedDevice("paged:a", 8), new PagedDevice("paged:b", 8, preCopy: false) };
        var dst = new[] { new PagedDevice("paged:c", 8), new PagedDevice("paged:d", 8) };
        var report = TestDevices.Migrate(src, dst, Live() with { Precopy = PrecopyMode.On });

        Assert.False(report.Ok);
        Assert.Contains("PRE_COPY", report.Error, StringComparison.Ordinal);
        Assert.Equal("paged:b", report.FailedDevice);
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
    }

    [Fact]
    public void Auto_with_a_device_without_pre_copy_migrates_stop_copy_only()
    {
        var src = new[] { new PagedDevice("paged:a", 8), new PagedDevice("paged:b", 8, preCopy: false) };
        var dst = new[] { new PagedDevice("paged:c", 8), new PagedDevice("paged:d", 8) };
        var report = TestDevices.Migrate(src, dst, Live());

        Assert.True(report.Ok, report.Error);
        Assert.Null(report.Converged);
        Assert.All(report.Devices, d => Assert.Equal(0, d.PrecopyBytes));
    }

    [Fact]
    public void A_device_that_dirties_faster_than_it_converges_is_aborted_at_the_precopy_timeout_with_every_source_running()
    {
        // Dirtying forever and a limit nothing meets: the estimate never fits.
        var (src, dst) = Pairs(2, pages: 32, dirtyPages: 16, dirtyingInfos: int.MaxValue);
        var options = Live() with
        {
            DowntimeLimit = TimeSpan.FromMilliseconds(1) / 1000,
            PrecopyTimeout = TimeSpan.FromSeconds(1),
            PrecopyTimeoutAction = PrecopyTimeoutAction.Abort,
        };
        var digests = src.Select(s => s.StateDigest()).ToArray();
        var report = TestDevices.Migrate(src, dst, options);

        Assert.False(report.Ok);
        Assert.Contains("precopy did not converge", report.Error, StringComparison.Ordinal);
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        // The sources ran (and dirtied) through the attempt: their state is their own, not a reset one.
        Assert.All(src.Zip(digests), x => Assert.NotEqual(x.Second, x.First.StateDigest()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
        Assert.All(dst, d => Assert.Equal(new PagedDevice(d.Name, d.Pages).StateDigest(), d.StateDigest()));
    }

    [Fact]
    public void At_the_precopy_timeout_the_default_action_switches_over_anyway_and_says_it_did_not_converge()
    {
        var (src, dst) = Pairs(2, pages: 32, dirtyPages: 16, dirtyingInfos: int.MaxValue);
        var options = Live() with { DowntimeLimit = TimeSpan.FromMilliseconds(1) / 1000, PrecopyTimeout = TimeSpan.FromSeconds(1) };
        var report = TestDevices.Migrate(src, dst, options);

        Assert.True(report.Ok, report.Error);
        Assert.False(report.Converged);
        Assert.Contains("did not converge", report.ConvergedReason, StringComparison.Ordinal);
        for (int i = 0; i < src.Length; i++) Assert.Equal(src[i].StateDigest(), dst[i].StateDigest());
    }

    [Theory]
    [InlineData(PrecopyMode.Auto, VerifyMode.Stream)]
    [InlineData(PrecopyMode.Off, VerifyMode.Stream)]
    [InlineData(PrecopyMode.Auto, VerifyMode.Digest)]
    [InlineData(PrecopyMode.Off, VerifyMode.Digest)]
    public void Verify_stream_takes_no_digest_on_either_side_and_verify_digest_checks_it(PrecopyMode precopy, VerifyMode verify)
    {
        var (src, dst) = Pairs(2, pages: 32, dirtyPages: 4, dirtyingInfos: 3);
        var report = TestDevices.Migrate(src, dst, Live() with { Precopy = precopy, Verify = verify });

        Assert.True(report.Ok, report.Error);
        Assert.All(report.Devices, d => Assert.True(d.Verified)); // byte count and stream checksum, in either mode
        Assert.Equal(verify, report.Verify);
        var json = report.ToJson();
        Assert.Contains(verify == VerifyMode.Stream ? "\"verify\": \"stream\"" : "\"verify\": \"digest\"", json, StringComparison.Ordinal);
        if (verify == VerifyMode.Stream)
        {
            Assert.All(src.Concat(dst), d => Assert.Equal(0, d.DigestCalls));
            Assert.All(report.Devices, d => Assert.Equal(0, d.VerifyUs));
            Assert.DoesNotContain("verify_ms", json, StringComparison.Ordinal);
        }
        else
        {
            Assert.All(src.Concat(dst), d => Assert.Equal(1, d.DigestCalls));
            Assert.All(report.Devices, d => Assert.NotNull(d.Digest));
        }
        for (int i = 0; i < src.Length; i++) Assert.Equal(src[i].StateDigest(), dst[i].StateDigest());
    }

    [Fact]
    public void While_precopy_lasts_the_source_publishes_its_status_and_logs_it_every_two_seconds_then_clears_it()
    {
        // Dirtying forever: the run stays in precopy until its 3 s timeout, then switches over.
        var (src, dst) = Pairs(2, pages: 64, dirtyPages: 4, dirtyingInfos: int.MaxValue);
        var options = Live() with { DowntimeLimit = TimeSpan.FromMilliseconds(1) / 1000, PrecopyTimeout = TimeSpan.FromSeconds(3) };
        var log = new CapturingLogger();
        var seen = new List<PrecopyStatus>();
        MigrationSource? source = null;
        using var watching = new CancellationTokenSource();
        var watcher = new Thread(() =>
        {
            while (!watching.IsCancellationRequested)
            {
                if (Volatile.Read(ref source)?.Progress.Precopy is { } status) lock (seen) seen.Add(status);
                Thread.Sleep(50);
            }
        });
        watcher.Start();
        RunReport report;
        try
        {
            report = Loopback.Run(src, dst, options, log, (s, _) => Volatile.Write(ref source, s), TestContext.Current.CancellationToken);
        }
        finally
        {
            watching.Cancel();
            watcher.Join();
        }

        Assert.True(report.Ok, report.Error);
        Assert.Null(source!.Progress.Precopy); // gone once the devices switched over
        Assert.NotEmpty(seen);
        var last = seen[^1];
        Assert.Equal(2, last.Devices);
        Assert.Equal(2, last.AcknowledgedDevices);
        Assert.Equal(0, last.InitialLeftBytes);
        Assert.True(last.SentBytes >= 2 * 64L * PagedDevice.PageSize, $"sent {last.SentBytes}");
        Assert.True(last.DirtyBytesPerSecond > 0);
        Assert.NotNull(last.EstimatedDowntimeMs);
        Assert.True(last.ElapsedMs >= seen[0].ElapsedMs);
        // Logged at 2 s into the 3 s of precopy (a busy machine may log it late, but it logs it).
        var lines = log.Lines.Where(l => l.Text.Contains(" s: sent ", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(lines);
        Assert.All(lines, l => Assert.Equal(Microsoft.Extensions.Logging.LogLevel.Information, l.Level));
        Assert.Matches(@"^precopy \d+\.\d s: sent \d+\.\d MiB, initial images 2/2 acked, dirty \d+\.\d MiB/s, downtime est\. \d+ ms \(limit 0 ms\)$",
            lines[^1].Text);
    }

    [Fact]
    public void The_status_line_says_what_is_left_of_the_initial_images_and_that_no_estimate_exists_before_every_ack()
    {
        var status = new PrecopyStatus(1234, 96L << 20, 3, 4, 12L << 20, 1.5 * (1 << 20), null, 300);
        Assert.Equal("precopy 1.2 s: sent 96.0 MiB, initial images 3/4 acked (12.0 MiB left), dirty 1.5 MiB/s, downtime est. - (limit 300 ms)",
            status.Describe());
        Assert.EndsWith("downtime est. 120 ms (limit 300 ms)", (status with { EstimatedDowntimeMs = 120.4 }).Describe(), StringComparison.Ordinal);
    }

    [Fact]
    public void What_a_device_sent_and_the_destination_has_not_loaded_counts_until_its_credit_comes_back()
    {
        var unloaded = new UnloadedBuffers();
        Assert.Equal(0, unloaded.Bytes(0));
        unloaded.Sent(100);
        unloaded.Sent(20);
        unloaded.Sent(3);
        Assert.Equal(123, unloaded.Bytes(0));
        Assert.Equal(23, unloaded.Bytes(1));  // the first buffer loaded
        Assert.Equal(23, unloaded.Bytes(1));  // asking again changes nothing
        unloaded.Sent(4000);
        Assert.Equal(4003, unloaded.Bytes(2));
        Assert.Equal(0, unloaded.Bytes(4));
        Assert.Equal(0, unloaded.Bytes(9));   // credits for buffers sent after the live phase: nothing of it is left
    }

    // Simulated devices: 64 regions of 32 KiB that load at 64 MiB/s (an initial image takes 32 ms), dirtied while they run.
    private static SimulatedDeviceOptions LiveSim(double dirtyRate, double loadRate = 64 << 20) => new()
    {
        StateSize = 2 << 20,
        RecordDataSize = 32 << 10,
        LoadBytesPerSecond = loadRate,
        DirtyBytesPerSecond = dirtyRate,
    };

    [Theory]
    [InlineData(LoadingMode.Decoupled)]
    [InlineData(LoadingMode.Coupled)]
    public void Simulated_devices_migrate_live_while_they_dirty_and_the_destinations_end_with_the_final_state(LoadingMode mode)
    {
        var o = LiveSim(16 << 20);
        var (src, dst) = TestDevices.Pairs(3, o);
        var named = src.Select(s => s.StateDigest()).ToArray();
        // A quarter of the load rate: each dirty round is shorter than the one before, and precopy goes on until the
        // remainder is estimated to load within 10 ms.
        var report = TestDevices.Migrate(src, dst, Live(mode) with { DowntimeLimit = TimeSpan.FromMilliseconds(10) });

        Assert.True(report.Ok, report.Error);
        Assert.True(report.Converged, report.ConvergedReason);
        TestDevices.AssertSameState(src, dst); // verified by the engine too: a missed dirty round would not verify
        for (int i = 0; i < src.Length; i++)
        {
            var d = report.Devices[i];
            Assert.NotEqual(named[i], src[i].StateDigest()); // the sources ran and dirtied during precopy
            Assert.True(d.PrecopyBytes >= o.StateSize, $"{d.Name}: {d.PrecopyBytes} precopy bytes");
            Assert.True(d.DirtyRounds >= 1, $"{d.Name}: no dirty round");
            Assert.True(d.StopCopyBytes < o.StateSize / 2, $"{d.Name}: {d.StopCopyBytes} bytes after the switchover");
        }
    }

    [Theory]
    [InlineData(LoadingMode.Decoupled)]
    [InlineData(LoadingMode.Coupled)]
    public void Null_devices_migrate_live_in_place_and_the_transport_verifies_every_dirty_byte(LoadingMode mode)
    {
        const long size = 1 << 20;
        var src = Enumerable.Range(0, 2).Select(i => new NullDevice($"null:vf{i}", size, dirtyBytesPerSecond: 256 << 20)).ToArray();
        var dst = Enumerable.Range(0, 2).Select(i => new NullDevice($"null:dst{i}", size)).ToArray();
        var report = TestDevices.Migrate(src, dst, Live(mode));

        Assert.True(report.Ok, report.Error); // byte count and stream checksum, over the precopy and stop-copy data
        Assert.True(report.Converged, report.ConvergedReason);
        Assert.All(report.Devices, d =>
        {
            Assert.True(d.Verified);
            Assert.True(d.PrecopyBytes >= size, $"{d.Name}: {d.PrecopyBytes} precopy bytes");
            Assert.True(d.Bytes > size, $"{d.Name}: {d.Bytes} bytes, nothing dirty sent");
        });
        Assert.All(src, s => Assert.Equal(MigrationState.Stop, s.GetState()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
    }

    [Theory]
    [InlineData(PrecopyTimeoutAction.Abort)]
    [InlineData(PrecopyTimeoutAction.Switchover)]
    public void Simulated_devices_that_dirty_faster_than_the_link_loads_hit_the_precopy_timeout(PrecopyTimeoutAction action)
    {
        // Every region dirtied every few milliseconds, loaded at 4 MiB/s: the remainder never fits 10 ms.
        var o = LiveSim(256 << 20, loadRate: 4 << 20) with { StateSize = 512 << 10, RecordDataSize = 16 << 10 };
        var (src, dst) = TestDevices.Pairs(2, o);
        var named = src.Select(s => s.StateDigest()).ToArray();
        var options = Live() with
        {
            DowntimeLimit = TimeSpan.FromMilliseconds(10),
            PrecopyTimeout = TimeSpan.FromSeconds(1),
            PrecopyTimeoutAction = action,
        };
        var report = TestDevices.Migrate(src, dst, options);

        if (action == PrecopyTimeoutAction.Switchover)
        {
            Assert.True(report.Ok, report.Error);
            Assert.False(report.Converged);
            Assert.Contains("did not converge", report.ConvergedReason, StringComparison.Ordinal);
            TestDevices.AssertSameState(src, dst);
            return;
        }
        Assert.False(report.Ok);
        Assert.Contains("precopy did not converge", report.Error, StringComparison.Ordinal);
        TestDevices.AssertRolledBackDevices(src, dst);
        // The sources ran through the attempt: their state is their own, dirtied, and a stop-copy migration moves it.
        Assert.All(src.Zip(named), x => Assert.NotEqual(x.Second, x.First.StateDigest()));
        var (_, fresh) = TestDevices.Pairs(2, o);
        var again = TestDevices.Migrate(src, fresh, Live() with { Precopy = PrecopyMode.Off });
        Assert.True(again.Ok, again.Error);
        TestDevices.AssertSameState(src, fresh);
    }
}
