using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// The destination's accept loop against strangers (docs/protocol.md section 1): idle, reset, garbled or hung-up
/// connections and a second source never fail or stall the session, and the first real source gets it.
/// </summary>
public sealed class AcceptorTests
{
    // A handshake has min(--timeout, 5 s): a connection that held up the others would cost at least that.
    private static readonly MigrationOptions Patient = TestDevices.Options(3) with
    {
        Timeout = TimeSpan.FromSeconds(30),
        AcceptTimeout = TimeSpan.FromSeconds(30),
    };

    [Fact]
    public void Idle_connections_before_and_while_the_session_connects_neither_fail_nor_slow_it()
    {
        var (src, dst) = TestDevices.Pairs(2);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 64);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var (thread, result) = TlsTests.StartDestination(listener, dst, Patient);
        var idle = new List<TcpClient>();
        try
        {
            for (int i = 0; i < 4; i++) idle.Add(Open(ep));
            var partial = Open(ep); // half a handshake, then nothing
            partial.GetStream().Write(new byte[10]);
            idle.Add(partial);
            using var stop = new CancellationTokenSource();
            var opener = new Thread(() =>
            {
                for (int i = 0; i < 20 && !stop.IsCancellationRequested; i++)
                {
                    lock (idle) idle.Add(Open(ep));
                    Thread.Sleep(10);
                }
            }) { IsBackground = true };
            opener.Start();
            var sw = Stopwatch.StartNew();
            var report = new MigrationSource(src, Patient).Run(ep, TestContext.Current.CancellationToken);
            var elapsed = sw.Elapsed;
            stop.Cancel();
            opener.Join();
            Assert.True(report.Ok, report.Error);
            Assert.True(elapsed < TimeSpan.FromSeconds(4), $"took {elapsed}");
            Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
            Assert.True(result.Report!.Ok, result.Report.Error);
            TestDevices.AssertSameState(src, dst);
        }
        finally
        {
            lock (idle) foreach (var c in idle) c.Dispose();
        }
    }

    [Fact]
    public void Strangers_with_a_valid_handshake_that_hang_up_or_send_garbage_do_not_end_the_receiver()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var watched = dst.Select(d => new WatchedDevice(d)).ToArray();
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var (thread, result) = TlsTests.StartDestination(listener, watched, Patient);

        using (var hangUp = RawPeer.Connect(ep, channel: 0, session: 42, dataChannels: 3))
            Assert.Equal(HandshakeStatus.Ok, hangUp.Reply.Status);
        using (var garbage = RawPeer.Connect(ep, channel: 0, session: 43, dataChannels: 3))
        {
            Assert.Equal(HandshakeStatus.Ok, garbage.Reply.Status);
            garbage.SendRaw([0xEE, 0xEE, 0, 0, 0, 0, 0, 0]); // an unknown message type instead of a device list
        }
        // One that says nothing after its handshake stays connected through the real run.
        using var silent = RawPeer.Connect(ep, channel: 0, session: 44, dataChannels: 3);
        Assert.Equal(HandshakeStatus.Ok, silent.Reply.Status);
        Thread.Sleep(200);
        Assert.All(watched, d => Assert.Equal(0, d.Calls));

        var report = new MigrationSource(src, Patient).Run(ep, TestContext.Current.CancellationToken);
        Assert.True(report.Ok, report.Error);
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
        Assert.True(result.Report!.Ok, result.Report.Error);
        TestDevices.AssertSameState(src, dst);
    }

    [Fact]
    public void A_second_source_is_told_the_destination_is_busy_and_the_first_migrates()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var (other, _) = TestDevices.Pairs(2);
        var gate = new GatedDevice(dst[0]);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var (thread, result) = TlsTests.StartDestination(listener, [gate, dst[1]], Patient);
        var cancel = TestContext.Current.CancellationToken;
        RunReport? first = null;
        var firstSource = new Thread(() => first = new MigrationSource(src, Patient).Run(ep, cancel)) { IsBackground = true };
        firstSource.Start();
        Assert.True(gate.Entered.Wait(TimeSpan.FromSeconds(10), cancel)); // the session is taken: its devices are being prepared

        using (var raw = RawPeer.Connect(ep, channel: 0, session: 7, dataChannels: 3))
            Assert.Equal(HandshakeStatus.Busy, raw.Reply.Status);
        var second = new MigrationSource(other, Patient).Run(ep, TestContext.Current.CancellationToken);
        Assert.False(second.Ok);
        Assert.Contains("destination busy", second.Error);
        Assert.All(other, d => Assert.Equal(MigrationState.Running, d.GetState()));

        gate.Release.Set();
        Assert.True(firstSource.Join(TimeSpan.FromSeconds(20)));
        Assert.True(first!.Ok, first.Error);
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
        Assert.True(result.Report!.Ok, result.Report.Error);
        TestDevices.AssertSameState(src, dst);
    }

    [Fact]
    public void Resets_and_garbage_while_the_data_channels_connect_are_ignored()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var gate = new GatedDevice(dst[0]);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 64);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var (thread, result) = TlsTests.StartDestination(listener, [gate, dst[1]], Patient);
        var cancel = TestContext.Current.CancellationToken;
        RunReport? report = null;
        var source = new Thread(() => report = new MigrationSource(src, Patient).Run(ep, cancel)) { IsBackground = true };
        source.Start();
        Assert.True(gate.Entered.Wait(TimeSpan.FromSeconds(10), cancel));

        // While the session is between its device list and its data channels, and then while they connect.
        Reset(ep, []);
        Reset(ep, new byte[16]);
        using (var junk = Open(ep)) junk.GetStream().Write(new byte[Protocol.HandshakeSize].Select((_, i) => (byte)i).ToArray());
        using (var foreign = RawPeer.Connect(ep, channel: 1, session: 99, dataChannels: 3))
            Assert.Equal(HandshakeStatus.UnknownSession, foreign.Reply.Status);
        using var stop = new CancellationTokenSource();
        var resetter = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                Reset(ep, new byte[8]);
                Thread.Sleep(2);
            }
        }) { IsBackground = true };
        resetter.Start();
        gate.Release.Set();
        Assert.True(source.Join(TimeSpan.FromSeconds(20)));
        stop.Cancel();
        resetter.Join();
        Assert.True(report!.Ok, report.Error);
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
        Assert.True(result.Report!.Ok, result.Report.Error);
        TestDevices.AssertSameState(src, dst);
    }

    private static TcpClient Open(IPEndPoint ep)
    {
        var c = new TcpClient();
        c.Connect(ep);
        return c;
    }

    /// <summary>Connects, sends <paramref name="bytes"/>, and resets the connection (RST: linger 0).</summary>
    private static void Reset(IPEndPoint ep, byte[] bytes)
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            s.Connect(ep);
            if (bytes.Length > 0) s.Send(bytes);
            s.LingerState = new LingerOption(true, 0);
        }
        catch (SocketException) { /* the destination may be gone already */ }
    }

    /// <summary>Holds the destination's STOP->RESUMING of this device until released: the session is taken, the channels not yet.</summary>
    private sealed class GatedDevice(IMigrationDevice inner) : IMigrationDevice
    {
        public ManualResetEventSlim Entered { get; } = new();
        public ManualResetEventSlim Release { get; } = new();
        public string Name => inner.Name;
        public MigrationFlags Flags => inner.Flags;
        public MigrationState GetState() => inner.GetState();
        public ulong? StopCopySizeEstimate() => inner.StopCopySizeEstimate();
        public byte[] SaveConfig() => inner.SaveConfig();
        public void RestoreConfig(ReadOnlySpan<byte> config) => inner.RestoreConfig(config);
        public ulong? StateDigest() => inner.StateDigest();
        public IEnumerable<Type> DataPathTypes => inner.DataPathTypes;
        public void Reset() => inner.Reset();

        public void Dispose()
        {
            Release.Set();
            inner.Dispose();
        }

        public IDeviceDataStream? SetState(MigrationState target)
        {
            if (target == MigrationState.Resuming)
            {
                Entered.Set();
                Release.Wait(TimeSpan.FromSeconds(30));
            }
            return inner.SetState(target);
        }
    }
}
