using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// The scenarios of QEMU's multifd loading-thread design discussion: adversarial ordering across channels (the deadlock
/// order), a slow device, bounded queues.
/// </summary>
public class SchedulingTests
{
    /// <summary>
    /// Channel 1 carries (dev1 buf2)(dev2 buf1), channel 2 carries (dev2 buf2)(dev1 buf1) (1-based, as in the thread):
    /// receive threads that blocked on loading would both wait forever for a buffer queued behind them.
    /// </summary>
    [Theory]
    [InlineData(LoadingMode.Decoupled)]
    [InlineData(LoadingMode.Coupled)]
    public void Seed_thread_deadlock_order_completes(LoadingMode mode)
    {
        const int buffer = 32 << 10;
        var opts = TestDevices.Fast(2 * buffer); // exactly two data buffers per device, then config
        var (src, dst) = TestDevices.Pairs(2, opts);
        var script = new (int Channel, int Device, uint Buffer)[]
        {
            (0, 0, 1), (1, 1, 1), // first round: both channels deliver a second buffer first
            (0, 1, 0), (1, 0, 0), // then the first buffers, each behind the other device's second
        };
        MigrationDestination? destination = null;
        // The second round goes out only once the destination has received the whole first round.
        bool FirstRoundReceived() => destination is not null
            && destination.Timeline.Tracks.Where(t => t.Category == "receive").Sum(t => t.Spans.Count) >= 2;
        var options = TestDevices.Options(2, mode, buffer, window: 4) with
        {
            SchedulerFactory = ch => new ScriptedScheduler(ch, script) { Gap = TimeSpan.FromMilliseconds(20), ReleaseWhen = FirstRoundReceived },
            Timeout = TimeSpan.FromSeconds(10),
        };
        var report = Loopback.Run(src, dst, options, started: (_, d) => destination = d, cancel: TestContext.Current.CancellationToken);
        LoopbackTests.AssertOk(report, 2, 2);
        TestDevices.AssertSameState(src, dst);

        // The destination really received the adversarial order.
        var receive = report.Timeline.Tracks.Where(t => t.Category == "receive").OrderBy(t => t.Name).ToArray();
        var ch1 = receive[0].Spans.Take(2).Select(s => (s.Device, s.Buffer)).ToArray();
        var ch2 = receive[1].Spans.Take(2).Select(s => (s.Device, s.Buffer)).ToArray();
        Assert.Equal(new[] { (0, 1), (1, 0) }, ch1);
        Assert.Equal(new[] { (1, 1), (0, 0) }, ch2);
        long firstBuffer0 = receive.SelectMany(t => t.Spans).Where(s => s.Buffer == 0).Min(s => s.StartUs);
        long lastBuffer1 = receive.SelectMany(t => t.Spans).Where(s => s.Buffer == 1).Max(s => s.EndUs);
        Assert.True(lastBuffer1 < firstBuffer0, "both second buffers arrived before any first buffer");
    }

    [Fact]
    public void Slow_device_does_not_slow_the_others()
    {
        // Device 0 loads at 2 MiB/s (512 KiB: about 250 ms), the others at 1 GiB/s.
        const long size = 512 << 10;
        var (src, dst) = TestDevices.Pairs(4, perDevice: i => TestDevices.Fast(size) with
        {
            LoadBytesPerSecond = i == 0 ? 2 << 20 : 1 << 30,
            RecordDataSize = 32 << 10,
        });
        var report = Loopback.Run(src, dst, TestDevices.Options(2, window: 4), cancel: TestContext.Current.CancellationToken);
        LoopbackTests.AssertOk(report, 4, 2);
        TestDevices.AssertSameState(src, dst);
        var slow = report.Devices[0];
        Assert.True(slow.TotalUs > 200_000, $"slow device took {slow.TotalUs} us");
        foreach (var fast in report.Devices.Skip(1))
        {
            // The fast devices finish while the slow one is still less than half done.
            Assert.True(fast.EndUs < slow.StartUs + slow.TotalUs / 2,
                $"{fast.Name} ended {(fast.EndUs - slow.StartUs) / 1000} ms after the slow device started (slow total {slow.TotalUs / 1000} ms)");
        }
        // The slow device's queue filled its window, and never more.
        Assert.True(slow.MaxQueuedBytes > (long)report.BufferSize, "the slow device's queue should fill up");
    }

    [Theory]
    [InlineData(LoadingMode.Decoupled, 2)]
    [InlineData(LoadingMode.Decoupled, 5)]
    [InlineData(LoadingMode.Coupled, 3)]
    public void Queued_bytes_never_exceed_the_window(LoadingMode mode, int window)
    {
        // Slow loads so buffers pile up at the destination: the credits must hold them at the window.
        var (src, dst) = TestDevices.Pairs(3, TestDevices.Fast(512 << 10) with { LoadBytesPerSecond = 16 << 20, RecordDataSize = 16 << 10 });
        const int buffer = 16 << 10;
        var report = Loopback.Run(src, dst, TestDevices.Options(4, mode, buffer, window), cancel: TestContext.Current.CancellationToken);
        LoopbackTests.AssertOk(report, 3, 4);
        foreach (var d in report.Devices)
        {
            Assert.True(d.MaxQueuedBytes <= (long)window * buffer, $"{d.Name}: {d.MaxQueuedBytes} queued, window {window} x {buffer}");
        }
        // The test means something only if buffers did pile up (in coupled mode the receive threads are busy loading,
        // so how far the queues fill depends on timing: require only that they filled beyond one buffer somewhere).
        long most = report.Devices.Max(d => d.MaxQueuedBytes);
        Assert.True(most >= (mode == LoadingMode.Decoupled ? (long)(window - 1) * buffer : 2L * buffer), $"the window was never used ({most})");
        TestDevices.AssertSameState(src, dst);
    }

    [Fact]
    public void Pf_concurrency_limit_is_respected()
    {
        var pf = new SimulatedPf("limited", 2);
        var opts = TestDevices.Fast(256 << 10) with { LoadBytesPerSecond = 32 << 20, RecordDataSize = 32 << 10 };
        var src = Enumerable.Range(0, 4).Select(i => new SimulatedDevice($"sim:vf{i}", opts)).ToArray();
        var dst = Enumerable.Range(0, 4).Select(i => new SimulatedDevice($"sim:dst{i}", opts, pf)).ToArray();
        var report = Loopback.Run(src, dst, TestDevices.Options(4), cancel: TestContext.Current.CancellationToken);
        LoopbackTests.AssertOk(report, 4, 4);
        Assert.InRange(pf.PeakConcurrentLoads, 1, 2);
        TestDevices.AssertSameState(src, dst);
    }

    [Fact]
    public void Next_idle_scheduler_sends_the_lowest_buffer_index_first_and_equal_indices_in_queueing_order()
    {
        var q = new NextIdleScheduler();
        var data = new byte[1];
        foreach (var (dev, buf) in new[] { (0, 2u), (0, 3u), (1, 0u), (2, 0u), (1, 1u), (0, 4u) })
            q.Enqueue(new OutPacket(dev, buf, PacketFlags.Data, data, null, 0));
        q.Complete();
        var order = new List<(int, uint)>();
        while (q.TryTake(0, TestContext.Current.CancellationToken, out var p)) order.Add((p.Device, p.Buffer));
        Assert.Equal([(1, 0u), (2, 0u), (1, 1u), (0, 2u), (0, 3u), (0, 4u)], order);
    }
}
