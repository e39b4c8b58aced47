using System.Net;
using System.Net.Sockets;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>Corrupt, duplicate, lost, truncated or foreign input is refused with a clear error; nothing is left half-done.</summary>
public class FaultTests
{
    private static RunReport RunWithFault(WireFault? fault, IReadOnlyList<IMigrationDevice> src, SimulatedDevice[] dst,
        LoadingMode mode = LoadingMode.Decoupled)
    {
        var options = TestDevices.Options(2, mode) with { Timeout = TimeSpan.FromSeconds(3) };
        return Loopback.Run(src, dst, fault?.Apply(options) ?? options, cancel: TestContext.Current.CancellationToken);
    }

    /// <summary>The destination found the fault itself (<paramref name="device"/>: about which device), and nothing is left half-done.</summary>
    private static void AssertFailedCleanly(RunReport report, SimulatedDevice[] src, SimulatedDevice[] dst, string expected, int? device)
    {
        Assert.False(report.Ok);
        Assert.Equal(FailureOrigin.Local, report.Failure!.Origin);
        Assert.Equal(device, report.Failure.Device);
        Assert.Contains(expected, report.Failure.Message, StringComparison.OrdinalIgnoreCase);
        if (device is int i)
            Assert.StartsWith(dst[i].Name + ": ", report.Error);
        Assert.All(report.Devices, d => Assert.False(d.Verified));
        TestDevices.AssertRolledBackDevices(src, dst);
    }

    [Theory]
    [InlineData(LoadingMode.Decoupled)]
    [InlineData(LoadingMode.Coupled)]
    public void Corrupt_payload_is_refused_by_crc(LoadingMode mode)
    {
        var (src, dst) = TestDevices.Pairs(2);
        var report = RunWithFault(new WireFault(WireFaultKind.CorruptPayload, Device: 1, Buffer: 3), src, dst, mode);
        AssertFailedCleanly(report, src, dst, "CRC32C mismatch", 1);
        Assert.Equal("sim:dst1", report.FailedDevice);
    }

    [Fact]
    public void Duplicate_buffer_is_refused()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var report = RunWithFault(new WireFault(WireFaultKind.Duplicate, Device: 0, Buffer: 2), src, dst);
        AssertFailedCleanly(report, src, dst, "duplicate", 0);
    }

    [Fact]
    public void Lost_buffer_is_detected_not_waited_for_forever()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var report = RunWithFault(new WireFault(WireFaultKind.Drop, Device: 1, Buffer: 1), src, dst);
        AssertFailedCleanly(report, src, dst, "buffer 1", 1);
    }

    [Fact]
    public void Lost_end_buffer_is_detected_when_all_channels_end()
    {
        var (src, dst) = TestDevices.Pairs(1);
        // 256 KiB in 32 KiB buffers: 8 data buffers, the config/end buffer is index 8.
        var report = RunWithFault(new WireFault(WireFaultKind.Drop, Device: 0, Buffer: 8), src, dst);
        AssertFailedCleanly(report, src, dst, "never arrived", 0);
    }

    [Fact]
    public void Connection_cut_in_the_middle_of_a_packet_is_refused()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var report = RunWithFault(new WireFault(WireFaultKind.Truncate, Device: 0, Buffer: 2), src, dst);
        AssertFailedCleanly(report, src, dst, "middle of a packet", null);
    }

    [Fact]
    public void Data_channel_of_another_session_is_refused()
    {
        // A source that connects its data channel with another session's id: refused, and once it gives up the
        // destination fails cleanly.
        var (_, dst) = TestDevices.Pairs(1);
        using var session = new RawSession(dst[0], TimeSpan.FromSeconds(3), MigrationFlags.StopCopy | MigrationFlags.P2P);
        using (var data = RawPeer.Connect(session.Endpoint, channel: 1, session: 43, dataChannels: 1))
            Assert.Equal(HandshakeStatus.UnknownSession, data.Reply.Status);
        session.Main.Dispose();
        var dreport = session.End();
        Assert.False(dreport.Ok);
        Assert.Equal(FailureOrigin.Transport, dreport.Failure!.Origin);
        Assert.Equal(MigrationState.Running, dst[0].GetState());
        Assert.Equal(new SimulatedDevice(dst[0].Name, dst[0].Options).StateDigest(), dst[0].StateDigest());
    }

    [Fact]
    public void A_completion_before_the_switchover_is_refused()
    {
        // The sequence puts a device's DeviceDone after the Switchover that announces its stop: one before it is a
        // protocol error, and the device it names is reset with the others.
        var (_, dst) = TestDevices.Pairs(1);
        using var session = new RawSession(dst[0], TimeSpan.FromSeconds(5), MigrationFlags.StopCopy);
        using var data = RawPeer.Connect(session.Endpoint, channel: 1, session: RawSession.Id, dataChannels: 1);
        Assert.Equal(HandshakeStatus.Ok, data.Reply.Status);
        session.Main.Send(new DeviceDoneMessage(0, 0, 0, 0, 0, null));
        var dreport = session.End();
        Assert.False(dreport.Ok);
        Assert.Equal((FailureOrigin.Local, (int?)0), (dreport.Failure!.Origin, dreport.Failure.Device));
        Assert.Contains("completion before the switchover", dreport.Error);
        Assert.Equal(MigrationState.Running, dst[0].GetState());
        Assert.Equal(new SimulatedDevice(dst[0].Name, dst[0].Options).StateDigest(), dst[0].StateDigest());
    }

    /// <summary>
    /// A destination of one device, run on its own thread, and a raw source's main channel (session <see cref="Id"/>,
    /// one data channel) whose device list it accepted: the start of a session that a test then breaks on purpose.
    /// </summary>
    private sealed class RawSession : IDisposable
    {
        public const ulong Id = 42;
        private readonly Socket _listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 8);
        private readonly Thread _thread;
        private RunReport? _report;

        public RawSession(SimulatedDevice device, TimeSpan timeout, MigrationFlags flags)
        {
            Endpoint = (IPEndPoint)_listener.LocalEndPoint!;
            var destination = new MigrationDestination([device], TestDevices.Options(1) with { Timeout = timeout });
            _thread = new Thread(() => _report = destination.Run(_listener)) { IsBackground = true };
            _thread.Start();
            Main = RawPeer.Connect(Endpoint, channel: 0, session: Id, dataChannels: 1);
            Assert.Equal(HandshakeStatus.Ok, Main.Reply.Status);
            Main.Send(new DeviceListMessage(32 << 10, LoadingMode.Decoupled, [new DeviceOffer("sim:vf0", 0, flags)]));
            Assert.Equal(MessageType.Accept, Main.ReceiveType());
        }

        public IPEndPoint Endpoint { get; }
        public RawPeer Main { get; }

        /// <summary>The destination's report, once it has ended (within 10 s).</summary>
        public RunReport End()
        {
            Assert.True(_thread.Join(TimeSpan.FromSeconds(10)), "the destination did not end");
            return _report!;
        }

        public void Dispose()
        {
            Main.Dispose();
            _listener.Dispose();
        }
    }

    [Fact]
    public void Device_refuses_a_corrupt_stream_and_the_run_names_it()
    {
        // The source device's stream is corrupt (data altered after the record's CRC): transport checks pass,
        // the destination device refuses it (its write fails or RESUMING->STOP fails).
        var (src, dst) = TestDevices.Pairs(2);
        // Data record 2's first data byte: after the two small leading records, two whole data records and its prefix.
        long offset = SimStream.Record0Size + SimStream.Record1Size + 2L * (SimStream.DataOverhead + TestDevices.Fast().RecordDataSize) + 32;
        var report = RunWithFault(null, [src[0], new FaultyDevice(src[1], corruptOffset: offset)], dst);
        Assert.False(report.Ok);
        Assert.Equal((FailureOrigin.Local, (int?)1), (report.Failure!.Origin, report.Failure.Device));
        Assert.Equal("sim:dst1", report.FailedDevice);
        Assert.Contains("refused", report.Failure.Message);
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
    }

    [Fact]
    public void A_device_that_cannot_stop_fails_the_run_promptly_and_every_source_runs_again()
    {
        // The quiesce fails on the source's coordinator while the senders and save threads wait: the failure must wake
        // them all at once, not leave each to its join timeout (20 s here).
        var (src, dst) = TestDevices.Pairs(2);
        var options = TestDevices.Options(2) with { Timeout = TimeSpan.FromSeconds(20) };
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var report = Loopback.Run([src[0], new FaultyDevice(src[1], refuseStop: true)], dst, options,
            cancel: TestContext.Current.CancellationToken);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"took {sw.Elapsed}");
        Assert.False(report.Ok);
        Assert.Equal((FailureOrigin.Local, (int?)1), (report.Failure!.Origin, report.Failure.Device));
        Assert.Equal("sim:vf1", report.FailedDevice);
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
    }

    [Fact]
    public void Device_refuses_a_truncated_stream()
    {
        var (src, dst) = TestDevices.Pairs(1);
        var report = RunWithFault(null, [new FaultyDevice(src[0], truncateBy: 1000)], dst);
        Assert.False(report.Ok);
        Assert.Equal((FailureOrigin.Local, (int?)0), (report.Failure!.Origin, report.Failure.Device));
        Assert.Contains("incomplete stream", report.Failure.Message);
        Assert.Equal("sim:dst0", report.FailedDevice);
        Assert.Equal(MigrationState.Running, src[0].GetState());
        Assert.Equal(MigrationState.Running, dst[0].GetState());
    }

    [Fact]
    public void Stray_connections_are_refused_and_a_real_source_still_succeeds()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var options = TestDevices.Options(2);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var destination = new MigrationDestination(dst, options with { AcceptTimeout = TimeSpan.FromSeconds(20) });
        RunReport? dreport = null;
        var t = new Thread(() => dreport = destination.Run(listener)) { IsBackground = true };
        t.Start();

        // Garbage, a wrong protocol version, and a data channel of a session that does not exist.
        using (var junk = new TcpClient())
        {
            junk.Connect(ep);
            junk.GetStream().Write(new byte[Protocol.HandshakeSize].Select((_, i) => (byte)(i * 7 + 1)).ToArray());
            Assert.Equal(0, ReadToEnd(junk) % Protocol.HandshakeReplySize);
        }
        using (var old = new TcpClient())
        {
            old.Connect(ep);
            var hs = new byte[Protocol.HandshakeSize];
            new Handshake(0, 42, 2).Write(hs);
            hs[4] = 99; // version 99 (the CRC no longer matches either)
            old.GetStream().Write(hs);
            ReadToEnd(old);
        }
        using (var foreign = new TcpClient())
        {
            foreign.Connect(ep);
            var hs = new byte[Protocol.HandshakeSize];
            new Handshake(1, 42, 2).Write(hs);
            foreign.GetStream().Write(hs);
            var reply = new byte[Protocol.HandshakeReplySize];
            foreign.GetStream().ReadExactly(reply);
            Assert.Equal(HandshakeStatus.BadChannelIndex, HandshakeReply.Read(reply).Status);
        }

        var sreport = new MigrationSource(src, options).Run(ep, TestContext.Current.CancellationToken);
        t.Join();
        Assert.True(sreport.Ok, sreport.Error);
        Assert.True(dreport!.Ok, dreport.Error);
        TestDevices.AssertSameState(src, dst);
    }

    [Fact]
    public void Silent_peer_times_out()
    {
        // A "destination" that completes the handshake and then says nothing.
        var (src, _) = TestDevices.Pairs(1);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 4);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var t = new Thread(() =>
        {
            using var s = listener.Accept();
            var hs = new byte[Protocol.HandshakeSize];
            s.Receive(hs);
            var reply = new byte[Protocol.HandshakeReplySize];
            new HandshakeReply(HandshakeStatus.Ok, Handshake.Read(hs).SessionId).Write(reply);
            s.Send(reply);
            Thread.Sleep(4000);
        }) { IsBackground = true };
        t.Start();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var source = new MigrationSource(src, TestDevices.Options(1) with { Timeout = TimeSpan.FromSeconds(1) });
        var report = source.Run(ep, TestContext.Current.CancellationToken);
        Assert.False(report.Ok);
        Assert.Equal(FailureOrigin.Transport, report.Failure!.Origin);
        Assert.Contains("timeout", report.Failure.Message, StringComparison.OrdinalIgnoreCase);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(3.5));
        Assert.Equal(MigrationState.Running, src[0].GetState());
    }

    private static int ReadToEnd(TcpClient c)
    {
        c.ReceiveTimeout = 5000;
        var buf = new byte[256];
        int total = 0, n;
        while ((n = c.GetStream().Read(buf)) > 0) total += n;
        return total;
    }
}

public class CancellationTests
{
    [Fact]
    public void Cancelling_mid_transfer_ends_both_sides_cleanly()
    {
        // Slow loads (1 MiB at 4 MiB/s per device); a dedicated thread cancels once loading has begun
        // (not a timer: timers need the thread pool, which parallel synchronous tests can starve).
        var (src, dst) = TestDevices.Pairs(2, TestDevices.Fast(1 << 20) with { LoadBytesPerSecond = 4 << 20, RecordDataSize = 64 << 10 });
        using var cts = new CancellationTokenSource();
        long loadedAtCancel = -1;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var report = Loopback.Run(src, dst, TestDevices.Options(2), started: (_, d) =>
        {
            new Thread(() =>
            {
                while (d.Progress.Total == 0 && sw.Elapsed < TimeSpan.FromSeconds(5)) Thread.Sleep(1);
                loadedAtCancel = d.Progress.Total;
                cts.Cancel();
            }) { IsBackground = true }.Start();
        }, cancel: cts.Token);
        Assert.False(report.Ok, $"finished in {sw.ElapsedMilliseconds} ms: " + string.Join("; ", report.SummaryLines()));
        Assert.InRange(loadedAtCancel, 1, (2 << 20) - 1);
        Assert.Equal(FailureOrigin.Cancelled, report.Failure!.Origin);
        Assert.Equal("cancelled", report.Error);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"took {sw.Elapsed}");
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
        Assert.All(report.Devices, d => Assert.False(d.Verified));
    }
}

public class LoopbackFailureTests
{
    [Fact]
    public void A_source_that_cannot_connect_does_not_leave_the_destination_waiting()
    {
        var (src, dst) = TestDevices.Pairs(2);
        using var closed = new TcpListener(IPAddress.Loopback, 0);
        closed.Start();
        var target = (IPEndPoint)closed.LocalEndpoint;
        closed.Stop();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var options = TestDevices.Options(1) with { Timeout = TimeSpan.FromSeconds(20) };
        var report = Loopback.Run(src, dst, options, null, null, _ => target, TestContext.Current.CancellationToken);
        Assert.False(report.Ok);
        Assert.Equal(FailureOrigin.Transport, report.Failure!.Origin);
        Assert.StartsWith($"connect to {target}", report.Error);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(6), $"took {sw.Elapsed}");
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
    }
}

/// <summary>No progress, a load or a save that does not return: every case ends in bounded time, naming what stalled.</summary>
public class StallTests
{
    private static void AssertRolledBack(RunReport report, IEnumerable<IMigrationDevice> src, SimulatedDevice[] dst)
    {
        Assert.False(report.Ok);
        Assert.Equal(MigrationOutcome.RolledBack, report.Outcome);
        TestDevices.AssertRolledBackDevices(src, dst);
    }

    [Theory]
    [InlineData(LoadingMode.Decoupled)]
    [InlineData(LoadingMode.Coupled)]
    public void A_data_channel_that_stops_forwarding_fails_both_sides_within_the_timeout(LoadingMode mode)
    {
        // One channel, and a link that stops passing its bytes mid-transfer while the main channel stays alive.
        var (src, dst) = TestDevices.Pairs(2, TestDevices.Fast(1 << 20));
        var options = TestDevices.Options(1, mode) with { Timeout = TimeSpan.FromSeconds(2) };
        FaultProxy? proxy = null;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var report = Loopback.Run(src, dst, options, null, null,
            ep => (proxy = new FaultProxy(ep) { StallData = (1, 300 << 10) }).Endpoint, TestContext.Current.CancellationToken);
        proxy!.Dispose();
        Assert.True(proxy.Struck.IsSet, "the channel never stalled");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"took {sw.Elapsed}");
        Assert.Equal(FailureOrigin.Local, report.Failure!.Origin);
        Assert.NotNull(report.Failure.Device);
        Assert.Contains("buffer", report.Failure.Message);
        AssertRolledBack(report, src, dst);
    }

    [Theory]
    [InlineData(LoadingMode.Decoupled)]
    [InlineData(LoadingMode.Coupled)]
    public void A_load_longer_than_the_timeout_but_within_the_load_timeout_is_not_a_stall(LoadingMode mode)
    {
        var (src, dst) = TestDevices.Pairs(2);
        var options = TestDevices.Options(2, mode) with { Timeout = TimeSpan.FromSeconds(2), LoadTimeout = TimeSpan.FromSeconds(30) };
        var slow = new FaultyDevice(dst[1], slowWriteAt: 100 << 10, slowWrite: TimeSpan.FromSeconds(3.5));
        var report = Loopback.Run(src, [dst[0], slow], options, cancel: TestContext.Current.CancellationToken);
        Assert.True(report.Ok, report.Error);
        TestDevices.AssertSameState(src, dst);
    }

    [Theory]
    [InlineData(LoadingMode.Decoupled)]
    [InlineData(LoadingMode.Coupled)]
    public void A_load_that_does_not_return_fails_at_the_load_timeout_with_its_own_message(LoadingMode mode)
    {
        var (src, dst) = TestDevices.Pairs(2);
        var options = TestDevices.Options(2, mode) with { Timeout = TimeSpan.FromSeconds(20), LoadTimeout = TimeSpan.FromSeconds(1) };
        var stuck = new FaultyDevice(dst[1], slowWriteAt: 100 << 10, hangWrite: true);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var report = Loopback.Run(src, [dst[0], stuck], options, cancel: TestContext.Current.CancellationToken);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(12), $"took {sw.Elapsed}");
        Assert.Equal((FailureOrigin.Local, (int?)1), (report.Failure!.Origin, report.Failure.Device));
        Assert.Contains("--load-timeout", report.Failure.Message);
        AssertRolledBack(report, src, dst);
    }

    [Fact]
    public void A_save_that_does_not_return_fails_at_the_load_timeout_and_the_source_runs_again()
    {
        // The destination is patient here, so that the source's own watchdog is what notices.
        var (src, dst) = TestDevices.Pairs(2);
        var hanging = new FaultyDevice(src[0], hangReadAt: 64 << 10);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var destination = new MigrationDestination(dst, TestDevices.Options(2) with { Timeout = TimeSpan.FromSeconds(20) });
        RunReport? dreport = null;
        var t = new Thread(() => dreport = destination.Run(listener)) { IsBackground = true };
        t.Start();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var report = new MigrationSource([hanging, src[1]], TestDevices.Options(2) with { LoadTimeout = TimeSpan.FromSeconds(2) })
            .Run((IPEndPoint)listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        Assert.True(t.Join(TimeSpan.FromSeconds(20)));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(12), $"took {sw.Elapsed}");
        Assert.Equal((FailureOrigin.Local, (int?)0), (report.Failure!.Origin, report.Failure.Device));
        Assert.Contains("saving has not returned", report.Failure.Message);
        Assert.Equal(FailureOrigin.Peer, dreport!.Failure!.Origin);
        AssertRolledBack(report, src, dst);
    }
}
