using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>
/// The destination's side of the handshakes (docs/protocol.md section 1): the first valid main-channel handshake is
/// the session; data channels must carry its id, an index in 1..N, each index once. A refused connection gets its
/// status and is closed; the session goes on. Used by the coordinator thread only.
/// </summary>
internal sealed class SessionAcceptor(Socket listener, MigrationOptions options, ILogger log)
{
    /// <summary>Waits up to AcceptTimeout for a source; returns its main channel, session id and data channel count.</summary>
    public (Connection Main, ulong Session, int Channels) AcceptMain(RunControl ctl)
    {
        var deadline = DateTime.UtcNow + options.AcceptTimeout;
        while (true)
        {
            var socket = AcceptOne(deadline, ctl, "a source to connect");
            var c = new Connection(socket, options.Timeout, "main channel");
            try
            {
                var hs = ReadHandshake(c);
                if (hs.ChannelIndex != 0)
                {
                    Reply(c, HandshakeStatus.BadChannelIndex, hs.SessionId);
                    log.LogWarning("refused a data channel connection before any session (channel {Channel})", hs.ChannelIndex);
                    c.Dispose();
                    continue;
                }
                if (hs.DataChannels < 1 || hs.DataChannels > Protocol.MaxChannels)
                    throw new ProtocolException($"handshake: {hs.DataChannels} data channels (1..{Protocol.MaxChannels})");
                Reply(c, HandshakeStatus.Ok, hs.SessionId);
                c.ReceiveTimeout = options.Timeout;
                return (c, hs.SessionId, hs.DataChannels);
            }
            catch (ProtocolException e)
            {
                // A stray or foreign connection: refuse it and keep waiting for a real source.
                log.LogWarning("refused a connection from {Peer}: {Error}", SafeRemote(socket), e.Message);
                try { Reply(c, HandshakeStatus.BadMagicOrVersion, 0); } catch (MigrationException) { }
                c.Dispose();
            }
            catch (MigrationException e)
            {
                log.LogWarning("refused a connection from {Peer}: {Error}", SafeRemote(socket), e.Message);
                c.Dispose();
            }
        }
    }

    /// <summary>Waits up to the timeout for the session's N data channels; returns them by index.</summary>
    public Connection[] AcceptDataChannels(ulong session, int channels, RunControl ctl)
    {
        var data = new Connection?[channels];
        int have = 0;
        var deadline = DateTime.UtcNow + options.Timeout;
        while (have < channels)
        {
            var socket = AcceptOne(deadline, ctl, $"data channels ({have} of {channels} connected)");
            var c = new Connection(socket, options.Timeout, "data channel ?");
            try
            {
                var hs = ReadHandshake(c);
                HandshakeStatus status = hs.SessionId != session ? HandshakeStatus.UnknownSession
                    : hs.ChannelIndex < 1 || hs.ChannelIndex > channels ? HandshakeStatus.BadChannelIndex
                    : data[hs.ChannelIndex - 1] is not null ? HandshakeStatus.DuplicateChannel
                    : HandshakeStatus.Ok;
                Reply(c, status, hs.SessionId);
                if (status != HandshakeStatus.Ok)
                {
                    log.LogWarning("refused a channel connection (session {Session:x16}, channel {Channel}): {Status}",
                        hs.SessionId, hs.ChannelIndex, status);
                    c.Dispose();
                    continue;
                }
                var named = new Connection(c.Socket, options.Timeout, $"data channel {hs.ChannelIndex}")
                {
                    ReceiveTimeout = TimeSpan.Zero, // liveness comes from the main channel's heartbeats
                };
                ctl.Register(named);
                data[hs.ChannelIndex - 1] = named;
                have++;
            }
            catch (ProtocolException e)
            {
                log.LogWarning("refused a connection: {Error}", e.Message);
                try { Reply(c, HandshakeStatus.BadMagicOrVersion, 0); } catch (MigrationException) { }
                c.Dispose();
            }
        }
        return data!;
    }

    private Socket AcceptOne(DateTime deadline, RunControl ctl, string what)
    {
        // Polled and accepted synchronously: a socket accepted by .NET's async Accept stays non-blocking underneath,
        // and its blocking receives then go through .NET's epoll thread (measurably slower on the data path).
        while (!listener.Poll(TimeSpan.FromMilliseconds(100), SelectMode.SelectRead))
        {
            ctl.Token.ThrowIfCancellationRequested();
            if (DateTime.UtcNow >= deadline) throw new TransportException($"timed out waiting for {what}");
        }
        return listener.Accept();
    }

    private Handshake ReadHandshake(Connection c)
    {
        c.ReceiveTimeout = options.Timeout;
        Span<byte> b = stackalloc byte[Protocol.HandshakeSize];
        if (!c.ReadExact(b)) throw new ProtocolException("connection closed before its handshake");
        return Handshake.Read(b);
    }

    private static void Reply(Connection c, HandshakeStatus status, ulong session)
    {
        Span<byte> b = stackalloc byte[Protocol.HandshakeReplySize];
        new HandshakeReply(status, session).Write(b);
        c.WriteAll(b);
    }

    private static string SafeRemote(Socket s)
    {
        try { return s.RemoteEndPoint?.ToString() ?? "?"; }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { return "?"; }
    }
}
