using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// A TCP proxy on loopback between a source and a destination that forwards every connection and can lose or stall
/// them: the main channel (the first connection) at a chosen message, a data channel after some bytes.
/// Threads: one accepts; each connection has a pump per direction. The rules are set before the run and only read.
/// </summary>
internal sealed class FaultProxy : IDisposable
{
    private readonly Socket _listener;
    private readonly IPEndPoint _target;
    private readonly List<Socket> _sockets = [];
    private readonly CancellationTokenSource _stop = new();
    private int _connections;

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
        while (ReadExact(from, header))
        {
            var type = (MessageType)BinaryPrimitives.ReadUInt16LittleEndian(header);
            var body = new byte[BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4))];
            if (!ReadExact(from, body)) break;
            bool strike = CutMain is { } cut && cut.Type == type && cut.ToDestination == toDestination;
            if (strike && !CutMain!.Value.Deliver) { CutAll(graceful: false); return; }
            to.Send(header);
            to.Send(body);
            if (strike) { CutAll(graceful: true); return; }
        }
        Close(to);
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
        _stop.Cancel();
        _listener.Dispose();
        lock (_sockets) foreach (var s in _sockets) s.Dispose();
    }
}
