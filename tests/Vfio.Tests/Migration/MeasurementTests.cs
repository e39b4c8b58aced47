using System.Text.Json;
using Vfio.Cli;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>Measurements: null devices, the device bound, the PF's virtual schedule, --trace and --svg.</summary>
public class MeasurementTests
{
    private const string Small = "--state-size=256KiB --buffer-size=32KiB --sim-record-size=48KiB --sim-load-rate=1GiB";

    private static (int Code, string Out, string Err) Invoke(string args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.BuildRoot().Parse(args.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Invoke(new System.CommandLine.InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void Null_device_lends_its_state_in_place_and_its_content_does_not_repeat_at_buffer_boundaries()
    {
        long size = 2L * NullDevice.PeriodBytes + 1000;
        using var dev = new NullDevice("null:p", size);
        dev.SetState(MigrationState.Stop);
        using var stream = Assert.IsAssignableFrom<IInPlaceDataStream>(dev.SetState(MigrationState.StopCopy));
        var chunks = new List<byte[]>();
        ReadOnlyMemory<byte> c;
        while (!(c = stream.ReadInPlace(1 << 20)).IsEmpty) chunks.Add(c.ToArray());
        Assert.Equal(size, chunks.Sum(x => (long)x.Length));
        Assert.All(chunks.SkipLast(1), x => Assert.Equal(1 << 20, x.Length));
        Assert.NotEqual(chunks[0], chunks[1]); // the period is not a multiple of the buffer size
        // The state is periodic: byte k equals byte k + PeriodBytes.
        var all = chunks.SelectMany(x => x).ToArray();
        Assert.Equal(all.AsSpan(0, 1000).ToArray(), all.AsSpan(2 * NullDevice.PeriodBytes, 1000).ToArray());
        dev.SetState(MigrationState.Stop);
        Assert.True(stream.ReadInPlace(4096).IsEmpty); // the session ended
        dev.SetState(MigrationState.Resuming)!.WriteAll(all); // swallowed
        dev.SetState(MigrationState.Stop);
    }

    [Fact]
    public void Null_devices_move_exactly_their_state_size_verified_by_count_and_checksum()
    {
        var factory = new DeviceFactory(new SimulatedDeviceOptions { StateSize = 3 * 32768 + 123 });
        var src = Enumerable.Range(0, 3).Select(i => factory.Open($"null:vf{i}")).ToArray();
        var dst = Enumerable.Range(0, 3).Select(i => factory.Open($"null:vf{i}")).ToArray();
        try
        {
            Assert.All(src, d => Assert.IsType<NullDevice>(d));
            var report = TestDevices.Migrate(src, dst, TestDevices.Options(2));
            Assert.True(report.Ok, report.Error);
            Assert.Null(report.DeviceBoundMs); // not simulated: no model to bound it
            foreach (var d in report.Devices)
            {
                Assert.True(d.Verified);
                Assert.Equal(3 * 32768 + 123, d.Bytes);
                Assert.Equal(4, d.Buffers);
                Assert.NotEqual(0ul, d.Checksum);
            }
            Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
            Assert.All(src, d => Assert.Equal(MigrationState.Stop, d.GetState()));
            Assert.True(report.ThroughputMbps > 0);
            // A second session reads the state from its start again.
            foreach (var d in src) d.SetState(MigrationState.Running);
            var again = TestDevices.Migrate(src, dst, TestDevices.Options(1));
            Assert.True(again.Ok, again.Error);
            Assert.Equal(report.Devices.Select(d => d.Checksum), again.Devices.Select(d => d.Checksum));
        }
        finally
        {
            foreach (var d in src.Concat(dst)) d.Dispose();
        }
    }

    [Fact]
    public void Null_device_state_depends_on_its_name_and_a_wrong_checksum_fails()
    {
        var factory = new DeviceFactory(new SimulatedDeviceOptions { StateSize = 100_000 });
        using var a = factory.Open("null:a");
        using var b = factory.Open("null:b");
        var sa = a.SetState(MigrationState.StopCopy)!;
        var sb = b.SetState(MigrationState.StopCopy)!;
        var ba = new byte[200_000];
        var bb = new byte[200_000];
        int na = 0, nb = 0;
        DataRead r;
        while ((r = sa.Read(ba.AsSpan(na))).Bytes > 0) na += r.Bytes;
        while ((r = sb.Read(bb.AsSpan(nb))).Bytes > 0) nb += r.Bytes;
        Assert.Equal(100_000, na);
        Assert.Equal(100_000, nb);
        Assert.False(ba.AsSpan(0, 4096).SequenceEqual(bb.AsSpan(0, 4096)));
        sa.Dispose(); sb.Dispose();
        Assert.Throws<MigrationException>(() => factory.Open("null:"));
    }

    [Fact]
    public void Loopback_null_option_runs_null_devices_and_reports_throughput()
    {
        string json = Path.Combine(Path.GetTempPath(), $"vfio-mig-null-{Guid.NewGuid():N}.json");
        try
        {
            // Stop-copy: the bytes moved are exactly the state (a live run sends what the devices dirty as well).
            var (code, stdout, stderr) =
                Invoke($"loopback --null --sim 2 --channels 2 --state-size 1MiB --buffer-size 64KiB --precopy off --json {json}");
            Assert.True(code == 0, stderr + stdout);
            Assert.Contains("null:vf1 total loading time", stdout);
            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            Assert.True(doc.RootElement.GetProperty("throughput_mbps").GetDouble() > 0);
            Assert.False(doc.RootElement.TryGetProperty("device_bound_ms", out _));
            Assert.All(doc.RootElement.GetProperty("devices").EnumerateArray(), d => Assert.Equal(1 << 20, d.GetProperty("bytes").GetInt64()));
            var (code2, _, stderr2) = Invoke("loopback --null --device null:a=null:b");
            Assert.NotEqual(0, code2);
            Assert.Contains("--null", stderr2);
        }
        finally { File.Delete(json); }
    }

    [Fact]
    public void Device_bound_is_the_load_time_alone_for_one_device_and_the_pf_limit_for_many()
    {
        var o = new SimulatedDeviceOptions(); // 64 MiB at 320 MiB/s: 200 ms
        var pf = new object();
        Assert.Equal(0.2, DeviceBound.Compute([(o, o, pf, 4)]), 9);
        // 8 devices, 4 loads at once: the data records' loads, 8 x 200 ms (less the two small records), over 4 slots.
        var eight = Enumerable.Repeat((o, o, pf, 4), 8).ToList();
        double small = (SimStream.Record0Size + SimStream.Record1Size) / o.LoadBytesPerSecond;
        Assert.Equal(8 * (0.2 - small) / 4, DeviceBound.Compute(eight), 9);
        // 4 devices on 4 slots: the device's own chain decides.
        Assert.Equal(0.2, DeviceBound.Compute(Enumerable.Repeat((o, o, pf, 4), 4).ToList()), 9);
        // Two PFs of 2 slots each: each PF carries 4 devices.
        var two = Enumerable.Range(0, 8).Select(i => (o, o, (object)(i % 2 == 0 ? "a" : "b"), 2)).ToList();
        Assert.Equal(4 * (0.2 - small) / 2, DeviceBound.Compute(two), 9);
        // Free loads: nothing bounds the downtime.
        var free = o with { LoadBytesPerSecond = 0 };
        Assert.Equal(0, DeviceBound.Compute([(free, free, pf, 4)]));
    }

    [Fact]
    public void Device_bound_counts_what_cannot_overlap_when_saving_is_slow()
    {
        // Saving at the load rate: record j cannot load before it was saved, and the loads from j on follow it, so the
        // bound is the whole stream's time plus the largest record's load.
        var rate = 320.0 * (1 << 20);
        var o = new SimulatedDeviceOptions { SaveBytesPerSecond = rate };
        var records = DeviceBound.Records(o.StateSize, o.RecordDataSize);
        Assert.Equal(o.StateSize, records[^1].End);
        Assert.Equal(o.StateSize, records.Sum(r => r.Size));
        double expected = o.StateSize / rate + records.Max(r => r.Size) / rate;
        Assert.Equal(expected, DeviceBound.Compute([(o, o, new object(), 4)]), 9);
        // Saving twice as fast as loading: the chain from the first data record decides.
        var fast = o with { SaveBytesPerSecond = 2 * rate };
        double chain = records.Select((r, j) => r.End / (2 * rate) + records.Skip(j).Sum(x => x.Size) / rate).Max();
        Assert.Equal(chain, DeviceBound.Compute([(fast, fast, new object(), 4)]), 9);
        Assert.True(chain > o.StateSize / rate);
    }

    [Fact]
    public void Device_bound_from_devices_is_null_unless_all_are_simulated()
    {
        var factory = new DeviceFactory(new SimulatedDeviceOptions { StateSize = 1 << 20 });
        using var s = factory.Open("sim:a");
        using var n = factory.Open("null:b");
        Assert.Null(DeviceBound.Compute([s], [n]));
        Assert.Equal(1000.0 * (1 << 20) / SimulatedDeviceOptions.DefaultLoadRate, DeviceBound.Compute([s], [s])!.Value, 6);
    }

    [Fact]
    public void A_simulated_run_is_never_faster_than_its_device_bound()
    {
        var opts = TestDevices.Fast(1 << 20) with { LoadBytesPerSecond = 64 << 20, RecordDataSize = 128 << 10 };
        var pf = new SimulatedPf("bound", 2);
        var src = Enumerable.Range(0, 4).Select(i => new SimulatedDevice($"sim:vf{i}", opts)).ToArray();
        var dst = Enumerable.Range(0, 4).Select(i => new SimulatedDevice($"sim:dst{i}", opts, pf)).ToArray();
        var report = TestDevices.Migrate(src, dst, TestDevices.Options(3, buffer: 64 << 10));
        Assert.True(report.Ok, report.Error);
        Assert.NotNull(report.DeviceBoundMs);
        // 4 x 1 MiB at 64 MiB/s over 2 slots: about 31 ms.
        Assert.InRange(report.DeviceBoundMs!.Value, 30, 32);
        Assert.True(report.DowntimeMs >= report.DeviceBoundMs, $"downtime {report.DowntimeMs} < bound {report.DeviceBoundMs}");
        Assert.InRange(pf.PeakConcurrentLoads, 1, 2);
        Assert.Contains("device bound", report.SummaryLines().Last());
        Assert.Contains("\"device_bound_ms\"", report.ToJson());
        TestDevices.AssertSameState(src, dst);

        // Every device's first load lies inside the downtime, and the last of them is when every device was loading.
        Assert.All(report.Devices, d => Assert.InRange(d.FirstLoadUs, report.FirstStopUs, report.LastRunningUs));
        Assert.Equal((report.Devices.Max(d => d.FirstLoadUs) - report.FirstStopUs) / 1000.0, report.AllLoadingMs);
        var json = System.Text.Json.JsonDocument.Parse(report.ToJson()).RootElement;
        Assert.Equal(report.AllLoadingMs!.Value, json.GetProperty("all_loading_ms").GetDouble(), 3);
        Assert.All(json.GetProperty("devices").EnumerateArray(), d => Assert.True(d.GetProperty("first_load_ms").GetDouble() >= 0));
    }

    [Fact]
    public void Live_total_bound_is_the_device_bound_without_dirt_and_grows_with_it()
    {
        const long gib = 1L << 30;
        // Without dirtying, a live migration moves the state once: the device bound.
        Assert.Equal(3.2, LiveBound.Compute(3.2, gib, 0, 0.3), 9);
        // 16 MiB/s over 3.2 s: x = 0.05, the owed bytes at the ack are 2.46% of the state, loaded in the downtime.
        double x = 16.0 * (1 << 20) * 3.2 / gib, owed = gib * (1 - (1 - Math.Exp(-x)) / x);
        Assert.Equal(3.2 + owed / (gib / 3.2), LiveBound.Compute(3.2, gib, 16 << 20, 0.3), 9);
        Assert.InRange(LiveBound.Compute(3.2, gib, 16 << 20, 0.3), 3.278, 3.280);
        // 8 devices at 128 MiB/s each, 160 MiB/s each to load: the remainder does not fit 300 ms at the ack, and
        // precopy goes on. The closed form agrees with stepping the owed bytes forward in small steps.
        double t1 = 6.4, s = gib, d = 128 << 20, rho = s / t1, limit = 0.3;
        double x8 = d * t1 / s, b = s * (1 - (1 - Math.Exp(-x8)) / x8), t = t1;
        const double dt = 1e-5;
        for (; b > rho * limit; t += dt) b += (d * (1 - b / s) - rho) * dt;
        Assert.Equal(t + limit, LiveBound.Compute(t1, gib, d, limit), 2);
        Assert.InRange(LiveBound.Compute(t1, gib, d, limit), 11.5, 12.1);
        // Dirtying faster than the devices load, with a remainder that never fits: no bound.
        Assert.True(double.IsPositiveInfinity(LiveBound.Compute(3.2, gib, 512 << 20, 0.3)));
    }

    [Fact]
    public void A_live_run_reports_the_total_bound_and_no_downtime_bound()
    {
        var opts = TestDevices.Fast(1 << 20) with { LoadBytesPerSecond = 64 << 20, RecordDataSize = 32 << 10, DirtyBytesPerSecond = 4 << 20 };
        var (src, dst) = TestDevices.Pairs(2, opts);
        var options = TestDevices.Options(3) with { Precopy = PrecopyMode.On, DowntimeLimit = TimeSpan.FromMilliseconds(50) };
        var report = TestDevices.Migrate(src, dst, options);
        Assert.True(report.Ok, report.Error);
        Assert.Null(report.DeviceBoundMs); // a live downtime has no such floor
        double deviceBound = DeviceBound.Compute(src, dst)!.Value;
        Assert.Equal(LiveBound.Compute(src, dst, options.DowntimeLimit), report.TotalBoundMs);
        Assert.InRange(report.TotalBoundMs!.Value, deviceBound, deviceBound * 1.5);
        Assert.True(report.TotalMs >= report.TotalBoundMs, $"total {report.TotalMs} < bound {report.TotalBoundMs}");
        Assert.Contains("total bound", report.SummaryLines().Last());
        var json = System.Text.Json.JsonDocument.Parse(report.ToJson()).RootElement;
        Assert.Equal(report.TotalBoundMs!.Value, json.GetProperty("total_bound_ms").GetDouble(), 3);
        Assert.False(json.TryGetProperty("device_bound_ms", out _));
        // Devices that differ, or that are not all simulated, have no model to bound them.
        Assert.Null(LiveBound.Compute(src, [dst[0], new SimulatedDevice("sim:x", opts with { DirtyBytesPerSecond = 0 })], options.DowntimeLimit));
    }

    [Fact]
    public void Pf_schedule_gives_each_load_a_slot_for_its_whole_time()
    {
        var pf = new SimulatedPf("p", 2);
        Assert.Equal(110, pf.Reserve(100, 10));
        Assert.Equal(115, pf.Reserve(105, 10)); // the second slot
        Assert.Equal(120, pf.Reserve(100, 10)); // both busy: the first frees at 110
        Assert.Equal(2, pf.PeakConcurrentLoads);
        Assert.Equal(210, pf.Reserve(200, 10));
    }

    [Fact]
    public void Trace_and_svg_options_write_a_perfetto_trace_and_a_picture()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"vfio-mig-tl-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string trace = Path.Combine(dir, "run.trace.json"), svg = Path.Combine(dir, "run.svg");
            var (code, stdout, stderr) = Invoke($"loopback --sim 2 --channels 2 {Small} --trace {trace} --svg {svg}");
            Assert.True(code == 0, stderr + stdout);
            using var doc = JsonDocument.Parse(File.ReadAllText(trace));
            var events = doc.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
            var names = events.Where(e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name")
                .Select(e => e.GetProperty("args").GetProperty("name").GetString()).ToList();
            Assert.Contains("dst loader sim:vf0", names);
            Assert.Contains("src save sim:vf1", names);
            Assert.Contains("src channel 2 send", names);
            Assert.Contains("dst channel 1 receive", names);
            Assert.Contains("downtime", names);
            var complete = events.Where(e => e.GetProperty("ph").GetString() == "X").ToList();
            Assert.Contains(complete, e => e.GetProperty("name").GetString() == "downtime");
            Assert.All(complete, e => Assert.True(e.GetProperty("dur").GetDouble() >= 0));
            string picture = File.ReadAllText(svg);
            Assert.StartsWith("<svg", picture);
            Assert.Contains("downtime", picture);
            Assert.Contains("time since the run started (ms)", picture);
            Assert.Contains("dst loader sim:vf1", picture);
            System.Xml.Linq.XDocument.Parse(picture); // well-formed, self-contained
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Trace_of_send_and_receive_and_a_missing_directory_is_a_usage_error()
    {
        var (code, _, stderr) = Invoke($"loopback --sim 1 {Small} --svg /nonexistent-dir/x.svg");
        Assert.Equal(2, code);
        Assert.Contains("--svg", stderr);
        (code, _, stderr) = Invoke($"send --to 127.0.0.1:1 --device sim:a {Small} --trace /nonexistent-dir/x.json");
        Assert.Equal(2, code);
        Assert.Contains("--trace", stderr);
    }
}

[CollectionDefinition("alone", DisableParallelization = true)]
public class AloneCollection;

/// <summary>Runs alone (process-wide allocation counters): the data path allocates no buffer per packet.</summary>
[Collection("alone")]
public class AllocationTests
{
    [Fact]
    public void Data_path_allocates_no_buffer_per_packet()
    {
        long PerRun(long size)
        {
            var opts = new SimulatedDeviceOptions { StateSize = size, RecordDataSize = 256 << 10, LoadBytesPerSecond = 0 };
            var (src, dst) = TestDevices.Pairs(2, opts);
            var options = TestDevices.Options(2, buffer: 64 << 10, window: 4);
            TestDevices.Migrate(src, dst, options); // warm (digests, JIT, pools)
            foreach (var d in src) d.SetState(MigrationState.Running);
            long before = GC.GetTotalAllocatedBytes(precise: true);
            var report = TestDevices.Migrate(src, dst, options);
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            Assert.True(report.Ok, report.Error);
            Assert.True(report.PoolBuffers <= 2 * 2 * (4 + 2), $"{report.PoolBuffers} pooled buffers");
            return allocated;
        }
        long small = PerRun(4 << 20), large = PerRun(16 << 20);
        // 2 devices x 12 MiB more = 384 more 64 KiB buffers: what grows is the timeline's spans (a few per buffer), not buffers.
        double perBuffer = (large - small) / 384.0;
        Assert.True(perBuffer < 4096, $"{perBuffer:0} bytes allocated per extra 64 KiB buffer ({small} vs {large} bytes per run)");
    }
}

/// <summary>The software devices' streams keep the data fd's contract where the engine relies on it.</summary>
public class SoftwareStreamTests
{
    [Fact]
    public void A_disposed_stream_refuses_use_and_the_session_goes_on()
    {
        using var sim = new SimulatedDevice("sim:d", TestDevices.Fast());
        sim.SetState(MigrationState.Stop);
        var save = sim.SetState(MigrationState.StopCopy)!;
        var buf = new byte[64];
        Assert.Equal(DataReadStatus.Data, save.Read(buf).Status);
        save.Dispose();
        Assert.Throws<ObjectDisposedException>(() => save.Read(buf));
        Assert.Equal(MigrationState.StopCopy, sim.GetState());

        using var nul = new NullDevice("null:d", 1 << 20);
        nul.SetState(MigrationState.Stop);
        var load = nul.SetState(MigrationState.Resuming)!;
        load.WriteAll(buf);
        load.Dispose();
        Assert.Throws<ObjectDisposedException>(() => load.WriteAll(buf));
        Assert.Equal(MigrationState.Resuming, nul.GetState());
    }
}
