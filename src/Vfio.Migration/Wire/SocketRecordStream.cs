using System.Net.Sockets;

namespace Vfio.Migration;

/// <summary>
/// What SslStream reads and writes through: the socket, blocking, with a send buffer once the handshake is done.
/// SslStream writes one TLS record (at most 16 KiB) per call: straight on the socket that is a system call per record,
/// sixty-four per MiB where the plaintext path makes one, and a packet's header would travel alone. Buffered, one send
/// carries many records; <see cref="Flush"/> (SslStream.Flush) sends them, and the connection flushes after each message
/// and packet. Reads go straight to the socket (buffering them too measured no better: it trades system calls for a
/// copy). Errors are IOExceptions around the SocketException, as NetworkStream's.
/// Threads: one reader and one writer at a time (SslStream's rule); the send buffer belongs to the writer.
/// </summary>
internal sealed class SocketRecordStream(Socket socket) : Stream
{
    private const int BufferBytes = 256 << 10;
    private byte[]? _writeBuffer;
    private int _written;

    /// <summary>From now on writes are buffered (set after the handshake, whose flights SslStream does not flush).</summary>
    public void StartBuffering() => _writeBuffer = new byte[BufferBytes];

    public override int Read(Span<byte> buffer)
    {
        try { return socket.Receive(buffer); }
        catch (SocketException e) { throw new IOException($"receive failed: {e.Message}", e); }
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (_writeBuffer is null)
        {
            Send(buffer);
            return;
        }
        if (_written + buffer.Length > BufferBytes) Flush();
        if (buffer.Length >= BufferBytes)
        {
            Send(buffer);
            return;
        }
        buffer.CopyTo(_writeBuffer.AsSpan(_written));
        _written += buffer.Length;
    }

    public override void Flush()
    {
        if (_written == 0) return;
        int n = _written;
        _written = 0;
        Send(_writeBuffer.AsSpan(0, n));
    }

    private void Send(ReadOnlySpan<byte> buffer)
    {
        try
        {
            while (!buffer.IsEmpty) buffer = buffer[socket.Send(buffer)..];
        }
        catch (SocketException e) { throw new IOException($"send failed: {e.Message}", e); }
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
