using System.Net;
using System.Net.Sockets;

namespace Vfio.Migration;

/// <summary>One TCP connection (main or data channel) in blocking mode, used only from dedicated threads.</summary>
internal sealed class Connection : IDataChannelWriter, IDisposable
{
    public const int SocketBufferBytes = 8 << 20;
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
    public string Name { get; }

    /// <summary>Receive timeout for this connection (0 = none; data channels rely on the main channel's heartbeats).</summary>
    public TimeSpan ReceiveTimeout { set => Socket.ReceiveTimeout = Milliseconds(value); }

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

    /// <summary>Reads exactly dst.Length bytes. False on a clean EOF before the first byte; EOF in the middle is an error.</summary>
    public bool ReadExact(Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length)
        {
            int n;
            try { n = Socket.Receive(dst[done..]); }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut || e.SocketErrorCode == SocketError.WouldBlock)
            { throw new TransportException($"{Name}: peer silent for longer than the timeout"); }
            catch (SocketException e) { throw new TransportException($"{Name}: receive failed: {Describe(e)}"); }
            catch (ObjectDisposedException) { throw new TransportException($"{Name}: closed"); }
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

    /// <summary>Unblocks any thread in a send or receive on this connection.</summary>
    public void Abort()
    {
        try { Socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
        Dispose();
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
            Socket.Dispose();
    }
}
