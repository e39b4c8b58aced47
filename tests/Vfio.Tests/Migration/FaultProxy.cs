using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// A TCP proxy on loopback between a source and a destination that forwards every connection and can lose or stall
/// them: the main channel (the first connection) at a chosen message, a data channel after some bytes; or hold the
/// main channel at a chosen message (both peers then wait at a known step) until the test delivers it or cuts it.
/// Threads: one accepts; each connection has a pump per direction. The rules are set before the run and only read;
/// the test's Release or Cut wakes a held pump.
/// </summary>
internal sealed class FaultProxy : IDisposable
{
    private readonly Socket _listener;
    private readonly IPEndPoint _target;
    private readonly List<Socket> _sockets = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly ManualResetEventSlim _release = new();
    private int _connections;
    private int _held;
    private volatile bool _cut;
    private volatile bool _severing; // the struck message is being delivered: nothing after it passes, in either direction

    public FaultProxy(IPEndPoint target)
    {
        _target = target;
        _listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 80);
        new Thread(AcceptLoop) { IsBackground = true, Name = "proxy accept" }.Start();
    }

    public IPEndPoint Endpoint => (IPEndPoint)_listener.LocalEndPoint!;

    /// <summary>Lose the main channel when a message of this type passes in this direction: before it (it is lost) or after it.</summary>
    public (MessageType Type, bool ToDestination, bool Deliver)? CutMain { get; init; }

    /// <summary>Stop forwarding data channel N (in connection order, from 1) toward the destination after this many bytes.</summary>
    public (int Channel, long AfterBytes)? StallData { get; init; }

    /// <summary>Set once the main channel was cut or a data channel stalled.</summary>
    public ManualResetEventSlim Struck { get; } = new();

    /// <summary>Hold the first main-channel message of this type in this direction (and all behind it) until Release or Cut.</summary>
    public (MessageType Type, bool ToDestination)? HoldMain { get; init; }

    /// <summary>Set once the held message arrived at the proxy (its sender has sent it; its receiver has not seen it).</summary>
    public ManualResetEventSlim Holding { get; } = new();

    /// <summary>Delivers the held message and forwards everything from then on.</summary>
    public void Release() => _release.Set();

    /// <summary>Loses the held message: every connection is reset.</summary>
    public void Cut()
    {
        _cut = true;
        CutAll(graceful: false);
        _release.Set();
    }

    private void AcceptLoop()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                var client = _listener.Accept();
                var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                try { server.Connect(_target); }
                catch (SocketException) { client.Dispose(); server.Dispose(); continue; }
                lock (_sockets) _sockets.AddRange([client, server]);
                int index = _connections++;
                if (index == 0)
                {
                    Start(() => PumpMain(client, server, toDestination: true));
                    Start(() => PumpMain(server, client, toDestination: false));
                }
                else
                {
                    long limit = StallData is { } s && s.Channel == index ? s.AfterBytes : long.MaxValue;
                    Start(() => PumpData(client, server, limit));
                    Start(() => PumpData(server, client, long.MaxValue));
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    private static void Start(Action pump) => new Thread(() =>
    {
        try { pump(); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException) { }
    }) { IsBackground = true, Name = "proxy pump" }.Start();

    private void PumpMain(Socket from, Socket to, bool toDestination)
    {
        // The handshake (32 bytes) or its reply (16), then framed messages: u16 type, u16 reserved, u32 length, body.
        if (!Forward(from, to, toDestination ? Protocol.HandshakeSize : Protocol.HandshakeReplySize)) return;
        var header = new byte[Protocol.MessageHeaderSize];
        try
        {
            while (ReadExact(from, header))
            {
                var type = (MessageType)BinaryPrimitives.ReadUInt16LittleEndian(header);
                var body = new byte[BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4))];
                if (!ReadExact(from, body)) break;
                // An answer to the struck message comes after it was delivered, so it finds the link already severed.
                if (_severing) return;
                bool strike = CutMain is { } cut && cut.Type == type && cut.ToDestination == toDestination;
                if (strike && !CutMain!.Value.Deliver) { CutAll(graceful: false); return; }
                if (strike) _severing = true;
                if (HoldMain is { } hold && hold.Type == type && hold.ToDestination == toDestination && Interlocked.Exchange(ref _held, 1) == 0)
                {
                    Holding.Set();
                    _release.Wait();
                    if (_cut) return;
                }
                to.Send(header);
                to.Send(body);
                if (strike) { CutAll(graceful: true); return; }
            }
        }
        finally
        {
            // The end of one side (a killed peer: end of stream or a reset) reaches the other as the end of its stream.
            if (!_cut) Close(to);
        }
    }

    private void PumpData(Socket from, Socket to, long limit)
    {
        var buffer = new byte[64 << 10];
        long forwarded = 0;
        while (true)
        {
            int n = from.Receive(buffer, (int)Math.Min(buffer.Length, Math.Max(0, limit - forwarded)), SocketFlags.None);
            if (n == 0 && forwarded >= limit)
            {
                Struck.Set();
                _stop.Token.WaitHandle.WaitOne(); // stalled: the connection stays open, nothing moves
                return;
            }
            if (n == 0) { Close(to); return; }
            to.Send(buffer.AsSpan(0, n));
            forwarded += n;
        }
    }

    private static bool Forward(Socket from, Socket to, int bytes)
    {
        var b = new byte[bytes];
        if (!ReadExact(from, b)) return false;
        to.Send(b);
        return true;
    }

    private static bool ReadExact(Socket s, Span<byte> b)
    {
        for (int done = 0; done < b.Length;)
        {
            int n = s.Receive(b[done..]);
            if (n == 0) return false;
            done += n;
        }
        return true;
    }

    private static void Close(Socket s)
    {
        try { s.Shutdown(SocketShutdown.Send); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    /// <summary>
    /// Loses every connection at once, both ends, as a failed link or a killed peer would: gracefully after a message that
    /// was delivered (a reset would discard it from the peer's receive buffer), with a reset otherwise.
    /// </summary>
    private void CutAll(bool graceful)
    {
        Struck.Set(); // before the peers can notice
        Socket[] all;
        lock (_sockets) all = [.. _sockets];
        foreach (var s in all)
        {
            try
            {
                if (graceful) s.Shutdown(SocketShutdown.Both);
                else s.LingerState = new LingerOption(true, 0);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            s.Dispose();
        }
    }

    public void Dispose()
    {
        _cut = true;
        _release.Set();
        _stop.Cancel();
        _listener.Dispose();
        lock (_sockets) foreach (var s in _sockets) s.Dispose();
    }
}
