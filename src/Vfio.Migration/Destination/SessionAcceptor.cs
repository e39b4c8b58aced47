using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>The source that owns the session: its main channel, its device list (already decoded), its session id and channel count.</summary>
internal sealed record SourceSession(MainChannel Main, DeviceListMessage DeviceList, ulong Session, int Channels);

/// <summary>
/// The destination's side of the handshakes (docs/protocol.md section 1). For the whole run an accept thread takes every
/// connection from the listener and gives it a handshake thread of its own (at most <see cref="MaxPending"/> at once),
/// which runs TLS and reads our handshake within <see cref="HandshakeTime"/> (min(--timeout, 5 s), enforced by the
/// accept thread, which aborts what is late): an idle, slow or hostile connection never holds up another. The session
/// belongs to the first source whose main-channel handshake is valid and whose DeviceList then arrives and decodes, in
/// that time; several sources may get that far at once, and the others are told "destination busy" (an Error on the
/// main channel). Once the session is taken, a main-channel handshake is refused with status 5 (busy); data channels
/// must carry its session id, an index in 1..N, each index once. A refused, reset or garbled connection is logged and
/// closed: nothing a stranger sends ends the session or the wait for one.
/// Threads and ownership: the accept thread owns the listener; each handshake thread owns its connection until it hands
/// it over (the claim, or a data channel's slot); <see cref="_lock"/> guards every field below it, and the coordinator
/// waits on it (Monitor) for the source and its channels. Once taken (<see cref="_sourceTaken"/>,
/// <see cref="_dataTaken"/>) the connections belong to the coordinator; until then <see cref="Dispose"/> closes them.
/// </summary>
internal sealed class SessionAcceptor : IDisposable
{
    /// <summary>Connections in their handshake at once: a full set of data channels and some strays.</summary>
    public const int MaxPending = Protocol.MaxChannels + 16;
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(50);

    private readonly Socket _listener;
    private readonly MigrationOptions _options;
    private readonly ILogger _log;
    private readonly Thread _acceptThread;
    private readonly object _lock = new();
    private readonly Dictionary<Connection, long> _pending = new(); // connection -> deadline (Environment.TickCount64)
    private int _handshakeThreads;
    private bool _stopping;
    private SourceSession? _source;
    private bool _sourceTaken;
    private Connection?[] _data = [];
    private int _dataConnected;
    private bool _dataTaken;

    public SessionAcceptor(Socket listener, MigrationOptions options, ILogger log)
    {
        _listener = listener;
        _options = options;
        _log = log;
        HandshakeTime = options.Timeout < TimeSpan.FromSeconds(5) ? options.Timeout : TimeSpan.FromSeconds(5);
        _acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = "dst accept" };
        _acceptThread.Start();
    }

    /// <summary>How long a connection may take from its accept to the end of its handshake (the main channel's: to its DeviceList).</summary>
    public TimeSpan HandshakeTime { get; }

    /// <summary>Waits up to AcceptTimeout for the source that owns the session.</summary>
    public SourceSession AcceptSource(RunControl ctl)
    {
        long deadline = Environment.TickCount64 + (long)_options.AcceptTimeout.TotalMilliseconds;
        lock (_lock)
        {
            while (_source is null)
            {
                ctl.Token.ThrowIfCancellationRequested();
                if (Environment.TickCount64 >= deadline) throw new TransportException("timed out waiting for a source to connect");
                Monitor.Wait(_lock, PollInterval);
            }
            _sourceTaken = true;
            return _source;
        }
    }

    /// <summary>Waits up to the timeout for the session's N data channels; returns them by index, registered with the run.</summary>
    public Connection[] AcceptDataChannels(RunControl ctl)
    {
        long deadline = Environment.TickCount64 + (long)_options.Timeout.TotalMilliseconds;
        Connection[] data;
        lock (_lock)
        {
            while (_dataConnected < _data.Length)
            {
                ctl.Token.ThrowIfCancellationRequested();
                if (Environment.TickCount64 >= deadline)
                    throw new TransportException($"timed out waiting for data channels ({_dataConnected} of {_data.Length} connected)");
                Monitor.Wait(_lock, PollInterval);
            }
            _dataTaken = true;
            data = _data.Select(c => c!).ToArray();
        }
        foreach (var c in data) ctl.Register(c);
        return data;
    }

    private void AcceptLoop()
    {
        while (true)
        {
            lock (_lock)
            {
                Reap();
                while (_pending.Count >= MaxPending && !_stopping)
                {
                    Monitor.Wait(_lock, PollInterval);
                    Reap();
                }
                if (_stopping) return;
            }
            Socket socket;
            try
            {
                // Polled and accepted synchronously: a socket accepted by .NET's async Accept stays non-blocking
                // underneath, and its blocking receives then go through .NET's epoll thread (slower on the data path).
                if (!_listener.Poll(PollInterval, SelectMode.SelectRead)) continue;
                socket = _listener.Accept();
            }
            catch (ObjectDisposedException) { return; }
            catch (SocketException e)
            {
                _log.LogDebug("accept failed: {Error}", e.Message);
                continue;
            }
            Connection c;
            try { c = new Connection(socket, HandshakeTime, $"connection from {Remote(socket)}") { ReceiveTimeout = HandshakeTime }; }
            catch (SocketException e)
            {
                _log.LogWarning("dropped a connection: {Error}", e.Message); // reset before we could set it up
                socket.Dispose();
                continue;
            }
            lock (_lock)
            {
                if (_stopping)
                {
                    c.Dispose();
                    return;
                }
                _pending[c] = Environment.TickCount64 + (long)HandshakeTime.TotalMilliseconds;
                _handshakeThreads++;
            }
            new Thread(() => Handshake(c)) { IsBackground = true, Name = "dst handshake" }.Start();
        }
    }

    /// <summary>Aborts the connections past their handshake deadline (their threads then fail and drop them). Under the lock.</summary>
    private void Reap()
    {
        long now = Environment.TickCount64;
        foreach (var (c, deadline) in _pending)
            if (now >= deadline) c.Abort();
    }

    /// <summary>A handshake thread: TLS, our handshake, then the claim of the session or a data channel's slot.</summary>
    private void Handshake(Connection c)
    {
        bool kept = false;
        try
        {
            if (_options.Tls is { } tls) c.SecureAsServer(tls);
            Span<byte> b = stackalloc byte[Protocol.HandshakeSize];
            if (!c.ReadExact(b)) throw new ProtocolException("closed before its handshake");
            Handshake hs;
            try
            {
                hs = Migration.Handshake.Read(b);
                if (hs.ChannelIndex == 0 && (hs.DataChannels < 1 || hs.DataChannels > Protocol.MaxChannels))
                    throw new ProtocolException($"handshake: {hs.DataChannels} data channels (1..{Protocol.MaxChannels})");
            }
            catch (ProtocolException)
            {
                TryReply(c, HandshakeStatus.BadMagicOrVersion, 0);
                throw;
            }
            kept = hs.ChannelIndex == 0 ? MainChannelHandshake(c, hs) : DataChannelHandshake(c, hs);
        }
        catch (Exception e)
        {
            // Whatever a stranger sends or does, it only loses its own connection.
            string why = e.Message.StartsWith(c.Name + ": ", StringComparison.Ordinal) ? e.Message[(c.Name.Length + 2)..] : e.Message;
            _log.LogWarning("refused {Connection}: {Error}", c.Name, why);
        }
        finally
        {
            lock (_lock)
            {
                _pending.Remove(c);
                _handshakeThreads--;
                Monitor.PulseAll(_lock);
            }
            if (!kept) c.Dispose();
        }
    }

    /// <summary>True if the connection became the session's main channel.</summary>
    private bool MainChannelHandshake(Connection c, Handshake hs)
    {
        bool busy;
        lock (_lock) busy = _source is not null || _stopping;
        if (busy)
        {
            TryReply(c, HandshakeStatus.Busy, hs.SessionId);
            _log.LogWarning("refused a second source ({Connection}): busy with session {Session:x16}", c.Name, _source?.Session);
            return false;
        }
        Reply(c, HandshakeStatus.Ok, hs.SessionId);
        string name = c.Name;
        c.Name = "main channel";
        var main = new MainChannel(c, "source");
        var list = main.Expect<DeviceListMessage>($"before sending its device list ({name})");
        lock (_lock)
        {
            if (!_pending.Remove(c)) throw new TransportException("its handshake took too long");
            busy = _source is not null || _stopping;
            if (!busy)
            {
                c.ReceiveTimeout = _options.Timeout;
                c.SendTimeout = _options.Timeout;
                _source = new SourceSession(main, list, hs.SessionId, hs.DataChannels);
                _data = new Connection?[hs.DataChannels];
                Monitor.PulseAll(_lock);
                return true;
            }
        }
        main.TrySendError(new RunFailure(FailureOrigin.Local, "destination busy: another source's migration took the session first"));
        _log.LogWarning("refused a second source ({Connection}): another took the session first", name);
        return false;
    }

    /// <summary>True if the connection became one of the session's data channels.</summary>
    private bool DataChannelHandshake(Connection c, Handshake hs)
    {
        int index = hs.ChannelIndex;
        HandshakeStatus status;
        lock (_lock)
        {
            status = _source is null ? HandshakeStatus.BadChannelIndex // no session yet: a data channel cannot come first
                : hs.SessionId != _source.Session ? HandshakeStatus.UnknownSession
                : index > _data.Length ? HandshakeStatus.BadChannelIndex
                : _data[index - 1] is not null ? HandshakeStatus.DuplicateChannel
                : HandshakeStatus.Ok;
            if (status == HandshakeStatus.Ok) _data[index - 1] = c; // reserved: a second one with this index is a duplicate
        }
        if (status != HandshakeStatus.Ok)
        {
            TryReply(c, status, hs.SessionId);
            _log.LogWarning("refused {Connection} (session {Session:x16}, channel {Channel}): {Status}", c.Name, hs.SessionId, index, status);
            return false;
        }
        // Until published (counted in _dataConnected) a reserved slot is this thread's: the coordinator cannot take it yet.
        try { Reply(c, status, hs.SessionId); }
        catch (MigrationException)
        {
            lock (_lock) _data[index - 1] = null;
            throw;
        }
        lock (_lock)
        {
            if (!_pending.Remove(c))
            {
                _data[index - 1] = null;
                throw new TransportException("its handshake took too long");
            }
            c.Name = $"data channel {index}";
            c.ReceiveTimeout = TimeSpan.Zero; // liveness comes from the main channel's heartbeats
            c.SendTimeout = _options.Timeout;
            _dataConnected++;
            Monitor.PulseAll(_lock);
            return true;
        }
    }

    private static void Reply(Connection c, HandshakeStatus status, ulong session)
    {
        Span<byte> b = stackalloc byte[Protocol.HandshakeReplySize];
        new HandshakeReply(status, session).Write(b);
        c.WriteAll(b);
    }

    private static void TryReply(Connection c, HandshakeStatus status, ulong session)
    {
        try { Reply(c, status, session); } catch (MigrationException) { }
    }

    private static string Remote(Socket s)
    {
        try { return s.RemoteEndPoint?.ToString() ?? "?"; }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { return "?"; }
    }

    /// <summary>Stops accepting; closes every connection nobody took; waits briefly for the handshake threads to end.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_stopping) return;
            _stopping = true;
            foreach (var c in _pending.Keys) c.Abort();
            if (!_sourceTaken) _source?.Main.Connection.Abort();
            if (!_dataTaken)
                foreach (var c in _data) c?.Abort();
            Monitor.PulseAll(_lock);
        }
        _acceptThread.Join();
        lock (_lock)
        {
            long deadline = Environment.TickCount64 + 1000;
            while (_handshakeThreads > 0 && Environment.TickCount64 < deadline) Monitor.Wait(_lock, PollInterval);
        }
    }
}
