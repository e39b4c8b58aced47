using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;

namespace Vfio.Migration;

/// <summary>
/// One TCP connection (main or data channel) in blocking mode, used only from dedicated threads; with TLS, an SslStream
/// over it, whose synchronous reads and writes block in the socket's own calls (so the socket timeouts and
/// <see cref="Abort"/> work alike). Threads: the one that makes it runs the TLS handshake before handing it on; then
/// one thread reads and one writes at a time (SslStream allows one of each at once), and any thread may abort it.
/// </summary>
internal sealed class Connection : IDataChannelWriter, IDisposable
{
    public const int SocketBufferBytes = 8 << 20;
    private SslStream? _tls;
    private int _disposed;

    public Connection(Socket socket, TimeSpan timeout, string name)
    {
        Socket = socket;
        Name = name;
        socket.NoDelay = true;
        try
        {
            socket.SendBufferSize = SocketBufferBytes;
            socket.ReceiveBufferSize = SocketBufferBytes;
        }
        catch (SocketException) { /* capped by net.core.[rw]mem_max: keep what the kernel gives */ }
        socket.SendTimeout = Milliseconds(timeout);
    }

    /// <summary>A socket timeout: whole milliseconds, rounded up, since 0 would mean none.</summary>
    private static int Milliseconds(TimeSpan t) => t <= TimeSpan.Zero ? 0 : (int)Math.Min(int.MaxValue, Math.Ceiling(t.TotalMilliseconds));

    public Socket Socket { get; }
    /// <summary>What errors call it ("main channel", "data channel 3"): set by the thread that owns it before handing it on.</summary>
    public string Name { get; set; }
    public bool Secure => _tls is not null;

    /// <summary>Receive timeout for this connection (0 = none; data channels rely on the main channel's heartbeats).</summary>
    public TimeSpan ReceiveTimeout { set => Socket.ReceiveTimeout = Milliseconds(value); }
    /// <summary>How long a send may wait for the peer to read.</summary>
    public TimeSpan SendTimeout { set => Socket.SendTimeout = Milliseconds(value); }

    public static Connection Connect(IPEndPoint endpoint, TimeSpan timeout, string name)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // A blocking connect, whose timeout Linux takes from SO_SNDTIMEO. Not .NET's ConnectAsync: after an async
            // operation a socket stays non-blocking underneath, and every blocking Send/Receive that has to wait then
            // goes through .NET's epoll thread and a spinning event (measurably slower on the data path).
            socket.SendTimeout = Milliseconds(timeout);
            socket.Connect(endpoint);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.InProgress or SocketError.WouldBlock or SocketError.TimedOut)
        {
            socket.Dispose();
            throw new TransportException($"connect to {endpoint} ({name}): timed out after {timeout.TotalSeconds:0.#} s");
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new TransportException($"connect to {endpoint} ({name}): {Describe(e)}");
        }
        return new Connection(socket, timeout, name);
    }

    /// <summary>The source's side of the TLS handshake, before any byte of ours; bounded by the socket timeouts.</summary>
    public void SecureAsClient(TlsSettings tls) => Authenticate(tls, server: false);

    /// <summary>The destination's side of the TLS handshake, before any byte of ours; bounded by the socket timeouts.</summary>
    public void SecureAsServer(TlsSettings tls) => Authenticate(tls, server: true);

    private void Authenticate(TlsSettings tls, bool server)
    {
        var check = new PeerCheck(tls.PeerName, server ? "source" : "destination");
        var records = new SocketRecordStream(Socket);
        var ssl = new SslStream(records, leaveInnerStreamOpen: false);
        try
        {
            if (server) ssl.AuthenticateAsServer(tls.ServerOptions(check));
            else ssl.AuthenticateAsClient(tls.ClientOptions(check));
        }
        catch (Exception e) when (IsTlsFailure(e) || Volatile.Read(ref _disposed) != 0)
        {
            ssl.Dispose();
            throw new TransportException($"{Name}: TLS: {check.Refusal ?? HandshakeFailure(e)}");
        }
        records.StartBuffering();
        _tls = ssl;
    }

    private static string HandshakeFailure(Exception e) => SocketErrorOf(e) switch
    {
        SocketError.TimedOut or SocketError.WouldBlock => "handshake timed out (the peer sent nothing, or does not speak TLS)",
        _ when e is ObjectDisposedException || e is not (IOException or AuthenticationException) => "closed during the handshake",
        _ when e is IOException && e.InnerException is null =>
            "the peer closed the connection during the handshake (it refused this side's certificate, or does not speak TLS)",
        _ => $"handshake failed (does the peer use TLS, with a certificate from --tls-ca?): {Innermost(e)}",
    };

    private static SocketError? SocketErrorOf(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
            if (e is SocketException s) return s.SocketErrorCode;
        return null;
    }

    private static string Innermost(Exception e)
    {
        while (e.InnerException is not null) e = e.InnerException;
        return e.Message;
    }

    /// <summary>What SslStream throws when the connection fails (once it was aborted, whatever it throws counts as closed).</summary>
    private static bool IsTlsFailure(Exception e) => e is IOException or AuthenticationException or ObjectDisposedException;

    /// <summary>A read or write of a TLS connection failed: its error, as the plain path words it.</summary>
    private TransportException TlsFailure(Exception e, bool receive) => SocketErrorOf(e) switch
    {
        SocketError.TimedOut or SocketError.WouldBlock => new TransportException(receive
            ? $"{Name}: peer silent for longer than the timeout"
            : $"{Name}: peer stopped reading for longer than the timeout"),
        _ when e is ObjectDisposedException || Volatile.Read(ref _disposed) != 0 => new TransportException($"{Name}: closed"),
        _ => new TransportException($"{Name}: {(receive ? "receive" : "send")} failed: TLS: {Innermost(e)}"),
    };

    /// <summary>Reads exactly dst.Length bytes. False on a clean EOF before the first byte; EOF in the middle is an error.</summary>
    public bool ReadExact(Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length)
        {
            int n;
            if (_tls is null)
            {
                try { n = Socket.Receive(dst[done..]); }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut || e.SocketErrorCode == SocketError.WouldBlock)
                { throw new TransportException($"{Name}: peer silent for longer than the timeout"); }
                catch (SocketException e) { throw new TransportException($"{Name}: receive failed: {Describe(e)}"); }
                catch (ObjectDisposedException) { throw new TransportException($"{Name}: closed"); }
            }
            else
            {
                try { n = _tls.Read(dst[done..]); }
                catch (Exception e) when (IsTlsFailure(e) || Volatile.Read(ref _disposed) != 0) { throw TlsFailure(e, receive: true); }
            }
            if (n == 0)
            {
                if (done == 0) return false;
                throw new ProtocolException($"{Name}: connection closed in the middle of a packet ({done} of {dst.Length} bytes)");
            }
            done += n;
        }
        return true;
    }

    public void WriteAll(ReadOnlySpan<byte> src)
    {
        if (_tls is not null)
        {
            try
            {
                _tls.Write(src);
                _tls.Flush();
            }
            catch (Exception e) when (IsTlsFailure(e) || Volatile.Read(ref _disposed) != 0) { throw TlsFailure(e, receive: false); }
            return;
        }
        try
        {
            while (!src.IsEmpty)
            {
                int n = Socket.Send(src);
                src = src[n..];
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut || e.SocketErrorCode == SocketError.WouldBlock)
        { throw new TransportException($"{Name}: peer stopped reading for longer than the timeout"); }
        catch (SocketException e) { throw new TransportException($"{Name}: send failed: {Describe(e)}"); }
        catch (ObjectDisposedException) { throw new TransportException($"{Name}: closed"); }
    }

    /// <summary>
    /// Sends a packet's header and payload with one writev(2) (more when the kernel takes them in parts): two sends
    /// would put the header in a segment of its own (TCP_NODELAY) and wake the receiver for 24 bytes.
    /// </summary>
    public unsafe void WritePacket(ReadOnlySpan<byte> header, ReadOnlySpan<byte> payload)
    {
        if (_tls is not null)
        {
            WriteTlsPacket(header, payload);
            return;
        }
        try
        {
            // h, p: the caller's spans, pinned by fixed for every writev; iov: stack memory of this frame.
            fixed (byte* h = header)
            fixed (byte* p = payload)
            {
                nint* iov = stackalloc nint[4];
                long done = 0, total = header.Length + payload.Length;
                while (done < total)
                {
                    int count = 0;
                    if (done < header.Length)
                    {
                        iov[0] = (nint)(h + done);
                        iov[1] = (nint)(header.Length - done);
                        count = 1;
                    }
                    long inPayload = Math.Max(0, done - header.Length);
                    iov[2 * count] = (nint)(p + inPayload);
                    iov[2 * count + 1] = (nint)(payload.Length - inPayload);
                    nint n = Interop.Libc.Writev(Socket.SafeHandle, iov, count + 1);
                    if (n > 0) { done += n; continue; }
                    int errno = n == 0 ? Interop.Libc.EPIPE : System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                    if (errno == Interop.Libc.EINTR) continue;
                    if (errno == Interop.Libc.EAGAIN) throw new TransportException($"{Name}: peer stopped reading for longer than the timeout");
                    throw new TransportException($"{Name}: send failed: {ErrnoNames.Describe(errno)}");
                }
            }
        }
        catch (ObjectDisposedException) { throw new TransportException($"{Name}: closed"); }
    }

    /// <summary>A socket error as its errno's name and meaning (on Linux the native code of a SocketException is the errno).</summary>
    public static string Describe(SocketException e) => ErrnoNames.Describe(e.NativeErrorCode);

    /// <summary>TLS: header and payload, two records that leave in one send (<see cref="SocketRecordStream"/> buffers them).</summary>
    private void WriteTlsPacket(ReadOnlySpan<byte> header, ReadOnlySpan<byte> payload)
    {
        try
        {
            _tls!.Write(header);
            _tls.Write(payload);
            _tls.Flush();
        }
        catch (Exception e) when (IsTlsFailure(e) || Volatile.Read(ref _disposed) != 0) { throw TlsFailure(e, receive: false); }
    }

    /// <summary>Unblocks any thread in a send or receive on this connection.</summary>
    public void Abort()
    {
        try { Socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
        Dispose();
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            Socket.Dispose();
            _tls?.Dispose(); // after the socket: a thread blocked in it has been woken
        }
    }
}
