using System.Net;
using System.Net.Sockets;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// A hostile peer decides nothing about how much a side reserves: each side sizes its memory by its own options and
/// refuses, by name and limit, a peer that asks for more (docs/protocol.md section 4, "Memory").
/// </summary>
public class PeerLimitTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(5);

    /// <summary>A destination serving one session on a thread of its own, which counts what that thread allocated.</summary>
    private sealed class DestinationThread : IDisposable
    {
        private readonly Socket _listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 8);
        private readonly Thread _thread;
        private RunReport? _report;

        public DestinationThread(IReadOnlyList<IMigrationDevice> devices, MigrationOptions options)
        {
            Endpoint = (IPEndPoint)_listener.LocalEndPoint!;
            var destination = new MigrationDestination(devices, options with { AcceptTimeout = s_timeout });
            _thread = new Thread(() =>
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                _report = destination.Run(_listener, TestContext.Current.CancellationToken);
                AllocatedBytes = GC.GetAllocatedBytesForCurrentThread() - before;
            }) { IsBackground = true, Name = "test destination" };
            _thread.Start();
        }

        public IPEndPoint Endpoint { get; }
        /// <summary>Bytes the destination's coordinator thread allocated in its run (where its buffer pool is reserved).</summary>
        public long AllocatedBytes { get; private set; }

        public RunReport Join()
        {
            Assert.True(_thread.Join(TimeSpan.FromSeconds(30)), "the destination did not finish");
            return _report!;
        }

        public void Dispose() => _listener.Dispose();
    }

    /// <summary>A raw source's connection, through the engine's own framing: handshake sent, reply read and checked.</summary>
    private static Connection Dial(IPEndPoint ep, ushort channel, ushort dataChannels, ulong session = 42)
    {
        var c = Connection.Connect(ep, s_timeout, channel == 0 ? "main channel" : $"data channel {channel}");
        c.ReceiveTimeout = s_timeout;
        var hs = new byte[Protocol.HandshakeSize];
        new Handshake(channel, session, dataChannels).Write(hs);
        c.WriteAll(hs);
        var reply = new byte[Protocol.HandshakeReplySize];
        Assert.True(c.ReadExact(reply));
        Assert.Equal(HandshakeStatus.Ok, HandshakeReply.Read(reply).Status);
        return c;
    }

    /// <summary>A raw destination's side of one connection: the handshake read and answered Ok.</summary>
    private static (Connection Connection, Handshake Handshake) Answer(Socket listener, string name)
    {
        var c = new Connection(listener.Accept(), s_timeout, name) { ReceiveTimeout = s_timeout };
        var hs = new byte[Protocol.HandshakeSize];
        Assert.True(c.ReadExact(hs));
        var handshake = Handshake.Read(hs);
        var reply = new byte[Protocol.HandshakeReplySize];
        new HandshakeReply(HandshakeStatus.Ok, handshake.SessionId).Write(reply);
        c.WriteAll(reply);
        return (c, handshake);
    }

    private static DeviceOffer Offer(int i) => new($"sim:vf{i}", 0, MigrationFlags.StopCopy | MigrationFlags.P2P);

    /// <summary>The source's main channel sends <paramref name="list"/>; the destination's Error comes back instead of Accept.</summary>
    private static MigrationException Refused(IPEndPoint ep, ushort dataChannels, DeviceListMessage list)
    {
        using var main = Dial(ep, 0, dataChannels);
        var channel = new MainChannel(main, "destination");
        channel.Send(list);
        var e = Assert.Throws<MigrationException>(() => channel.Expect<AcceptMessage>("before accepting"));
        Assert.Equal(FailureOrigin.Peer, e.Origin);
        return e;
    }

    [Fact]
    public void A_source_asking_for_larger_buffers_than_the_destination_accepts_is_refused_before_anything_is_reserved()
    {
        var (_, dst) = TestDevices.Pairs(1);
        var options = TestDevices.Options(2) with { Timeout = s_timeout }; // 32 KiB buffers, window 4
        using var destination = new DestinationThread(dst, options);
        var e = Refused(destination.Endpoint, 2, new DeviceListMessage(Protocol.MaxBufferSize, LoadingMode.Decoupled, [Offer(0)]));
        Assert.Equal($"the source asks for buffers of {Protocol.MaxBufferSize} bytes, this destination accepts at most {32 << 10} (--buffer-size)",
            e.Message);
        var report = destination.Join();
        Assert.False(report.Ok);
        Assert.Equal(e.Message, report.Error);
        Assert.Equal(0, report.PoolBuffers);
        // Reserving what the source asked for would have been (1 device x 4 + 2 channels) x 64 MiB = 384 MiB on this thread.
        Assert.True(destination.AllocatedBytes < 16 << 20, $"the destination's coordinator allocated {destination.AllocatedBytes} bytes");
        Assert.Equal(MigrationState.Running, dst[0].GetState());
    }

    [Fact]
    public void A_source_asking_for_more_data_channels_than_the_destination_accepts_is_refused()
    {
        var (_, dst) = TestDevices.Pairs(1);
        using var destination = new DestinationThread(dst, TestDevices.Options(2) with { Timeout = s_timeout });
        var e = Refused(destination.Endpoint, Protocol.MaxChannels, new DeviceListMessage(32 << 10, LoadingMode.Decoupled, [Offer(0)]));
        Assert.Equal($"the source asks for {Protocol.MaxChannels} data channels, this destination accepts at most 2 (--channels)", e.Message);
        var report = destination.Join();
        Assert.Equal(e.Message, report.Error);
        Assert.Equal(0, report.PoolBuffers);
    }

    [Fact]
    public void Within_its_limits_a_destination_reserves_exactly_its_bound_and_takes_a_smaller_buffer_than_its_own()
    {
        // A source with half the destination's buffer size and fewer channels: the pool is the source's buffers, sized by
        // the destination's own window and the channels actually used.
        var (src, dst) = TestDevices.Pairs(2);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var destination = new MigrationDestination(dst, TestDevices.Options(4, buffer: 64 << 10, window: 3));
        RunReport? dreport = null;
        var t = new Thread(() => dreport = destination.Run(listener)) { IsBackground = true };
        t.Start();
        var sreport = new MigrationSource(src, TestDevices.Options(2, buffer: 32 << 10, window: 5))
            .Run((IPEndPoint)listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        Assert.True(t.Join(TimeSpan.FromSeconds(30)));
        Assert.True(sreport.Ok, sreport.Error);
        Assert.True(dreport!.Ok, dreport.Error);
        Assert.Equal((32 << 10, 2 * 3 + 2), (dreport.BufferSize, dreport.PoolBuffers));
        // The source keeps the window it was granted (3, below its own 5) and a buffer per sender.
        Assert.Equal((3, 2 * 3 + 2), (sreport.Window, sreport.PoolBuffers));
        TestDevices.AssertSameState(src, dst);
    }

    /// <summary>
    /// A fake destination that accepts the session with <paramref name="window"/>, then runs <paramref name="serve"/> on the
    /// main channel and the data channels; the source runs on the test thread, which counts what it allocated.
    /// </summary>
    private static (RunReport Report, long Allocated) RunAgainstFakeDestination(IMigrationDevice[] src, MigrationOptions options, int window,
        Action<MainChannel, Connection[]> serve, int dataReceiveBuffer = 0)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        if (dataReceiveBuffer > 0) listener.ReceiveBufferSize = dataReceiveBuffer;
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(8);
        Exception? failed = null;
        var fake = new Thread(() =>
        {
            var connections = new List<Connection>();
            try
            {
                var (main, hs) = Answer(listener, "main channel");
                connections.Add(main);
                var channel = new MainChannel(main, "source");
                var list = channel.Expect<DeviceListMessage>("before its device list");
                channel.Send(new AcceptMessage(window, list.Devices.Select(d => d.Name).ToArray()));
                var data = Enumerable.Range(1, hs.DataChannels).Select(c => Answer(listener, $"data channel {c}").Connection).ToArray();
                connections.AddRange(data);
                serve(channel, data);
                // Until the source closes: what was sent last must reach it before this side's close could reset the connection.
                while (channel.TryReceive(out _)) { }
            }
            catch (MigrationException) { /* the source gave up first */ }
            catch (Exception e) { failed = e; }
            finally { foreach (var c in connections) c.Abort(); }
        }) { IsBackground = true, Name = "fake destination" };
        fake.Start();
        long before = GC.GetAllocatedBytesForCurrentThread();
        var report = new MigrationSource(src, options).Run((IPEndPoint)listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(fake.Join(TimeSpan.FromSeconds(30)), "the fake destination did not finish");
        Assert.Null(failed);
        return (report, allocated);
    }

    [Fact]
    public void A_destination_granting_the_largest_window_cannot_make_the_source_hold_more_than_its_own()
    {
        // The fake grants 4096 buffers per device and returns a credit for every packet as soon as it arrives (loading
        // nothing); when the channel ends it gives up. Granted as asked, the source would reserve 4097 x 64 KiB.
        var (src, _) = TestDevices.Pairs(1, TestDevices.Fast(4 << 20));
        var options = TestDevices.Options(1, buffer: 64 << 10, window: 4) with { Timeout = s_timeout };
        int packets = 0;
        var (report, allocated) = RunAgainstFakeDestination(src, options, Protocol.MaxWindow, (main, data) =>
        {
            var header = new byte[Protocol.PacketHeaderSize];
            var payload = new byte[64 << 10];
            while (data[0].ReadExact(header))
            {
                var h = PacketHeader.Read(header, 1);
                if (h.Flags == PacketFlags.ChannelEnd) break;
                Assert.True(data[0].ReadExact(payload.AsSpan(0, h.Length)) || h.Length == 0);
                packets++;
                main.Send(new CreditMessage(h.Device, 1));
            }
            main.Send(new ErrorMessage(null, "this destination loads nothing"));
        });
        Assert.False(report.Ok);
        Assert.Equal((FailureOrigin.Peer, "destination: this destination loads nothing"), (report.Failure!.Origin, report.Error));
        Assert.True(packets > 4, $"only {packets} packets arrived");
        Assert.Equal(4, report.Window);
        Assert.Equal(1 * 4 + 1, report.PoolBuffers);
        Assert.True(allocated < 16 << 20, $"the source's coordinator allocated {allocated} bytes");
        Assert.Equal(MigrationState.Running, src[0].GetState());
    }

    [Fact]
    public void Credits_for_packets_still_queued_are_refused_so_the_queue_cannot_grow_past_the_window()
    {
        // The fake never reads its data channel (whose receive buffer is small), so the source's sender blocks while its
        // save thread has more to queue; meanwhile it returns a credit every few milliseconds. Credits count only packets
        // that started to leave: those for packets still queued are refused, before the source's buffers run out.
        var (src, _) = TestDevices.Pairs(1, TestDevices.Fast(32 << 20));
        var options = TestDevices.Options(1, buffer: 64 << 10, window: 4) with { Timeout = s_timeout };
        var (report, _) = RunAgainstFakeDestination(src, options, 4, (main, _) =>
        {
            InboundMessage m;
            do Assert.True(main.TryReceive(out m), "the source closed before the switchover");
            while (m.Type != MessageType.Switchover);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while (sw.Elapsed < TimeSpan.FromSeconds(20))
            {
                main.Send(new CreditMessage(0, 1));
                Thread.Sleep(2);
            }
        }, dataReceiveBuffer: 4096);
        Assert.False(report.Ok);
        Assert.Equal((FailureOrigin.Local, (int?)0), (report.Failure!.Origin, report.Failure.Device));
        Assert.Contains("more credits than buffers were sent", report.Error);
        Assert.True(report.PoolBuffers <= 1 * 4 + 1, $"{report.PoolBuffers} buffers");
        Assert.Equal(MigrationState.Running, src[0].GetState());
    }

    [Fact]
    public void A_timeline_track_keeps_a_bounded_number_of_spans_and_counts_the_rest()
    {
        // One span per packet received: a source sending one-byte packets must not make the timeline grow with them.
        var track = new RunTimeline().AddTrack("dst channel 1 receive", "receive", "destination");
        for (int i = 0; i < TimelineTrack.MaxSpans + 1000; i++) track.Add(TraceKind.Receive, i, i + 1, 1, i);
        Assert.Equal(TimelineTrack.MaxSpans, track.Spans.Count);
        Assert.Equal(1000, track.Dropped);
        Assert.Equal(TimelineTrack.MaxSpans - 1, track.Spans[^1].Buffer);
    }

    [Fact]
    public void The_pool_never_holds_more_than_its_capacity()
    {
        var pool = new BufferPool(4096, 3);
        var rented = new[] { pool.Rent(), pool.Rent(), pool.Rent() };
        Assert.Contains("all 3 buffers of 4096 bytes are in use", Assert.Throws<MigrationException>(pool.Rent).Message);
        pool.Return(rented[1]);
        Assert.Same(rented[1], pool.Rent());
        Assert.Equal((3, 3 * 4096L), (pool.Allocated, pool.AllocatedBytes));
        var reserved = new BufferPool(4096, 5);
        reserved.Reserve();
        Assert.Equal(5, reserved.Allocated);
        for (int i = 0; i < 5; i++) reserved.Rent();
        Assert.Throws<MigrationException>(reserved.Rent);
    }
}
