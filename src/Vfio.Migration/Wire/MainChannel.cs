using System.Buffers.Binary;

namespace Vfio.Migration;

/// <summary>A received main-channel message; its body is valid until the next receive.</summary>
public readonly ref struct InboundMessage(MessageType type, ReadOnlySpan<byte> body)
{
    public MessageType Type { get; } = type;
    public ReadOnlySpan<byte> Body { get; } = body;

    /// <summary>Decodes the body as <typeparamref name="T"/>, which must be this message's type.</summary>
    public T As<T>() where T : struct, IMessage<T>
    {
        if (Type != T.Type) throw new ProtocolException($"main channel: expected {T.Type}, got {Type}");
        return MessageCodec.Read<T>(Body);
    }
}

/// <summary>Handles one message of a receive loop; false ends the loop.</summary>
internal delegate bool MessageHandler(in InboundMessage message);

/// <summary>
/// The main channel of either side: framed messages (u16 type, u16 reserved, u32 length, body), heartbeats, and the
/// Error message that tells the peer why this side gave up.
/// Threads: any thread may send (one lock keeps messages whole and in order; the send buffer belongs to the lock
/// holder). One thread at a time receives: the coordinator until it starts the receive thread, then that thread only;
/// the receive buffer belongs to it.
/// </summary>
internal sealed class MainChannel(Connection connection, string peerRole)
{
    private readonly object _sendLock = new();
    private readonly byte[] _sendBuffer = new byte[Protocol.MessageHeaderSize + MessageCodec.LargestBody];
    private readonly byte[] _receiveBuffer = new byte[Protocol.MessageHeaderSize + MessageCodec.LargestBody];

    public Connection Connection { get; } = connection;
    /// <summary>"source" or "destination": the peer, as messages about it name it.</summary>
    public string PeerRole { get; } = peerRole;

    public void Send<T>(in T message) where T : struct, IMessage<T>
    {
        lock (_sendLock)
        {
            var b = _sendBuffer.AsSpan();
            int length = MessageCodec.Write(message, b[Protocol.MessageHeaderSize..]);
            BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)T.Type);
            BinaryPrimitives.WriteUInt16LittleEndian(b[2..], 0);
            BinaryPrimitives.WriteUInt32LittleEndian(b[4..], (uint)length);
            Connection.WriteAll(b[..(Protocol.MessageHeaderSize + length)]);
        }
    }

    /// <summary>The next message; false on a clean end of the connection between messages.</summary>
    public bool TryReceive(out InboundMessage message)
    {
        message = default;
        var header = _receiveBuffer.AsSpan(0, Protocol.MessageHeaderSize);
        if (!Connection.ReadExact(header)) return false;
        var type = (MessageType)BinaryPrimitives.ReadUInt16LittleEndian(header);
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(header[4..]);
        int max = MessageCodec.MaxBodySize(type);
        if (!Enum.IsDefined(type))
            throw new ProtocolException($"{Connection.Name}: unknown message type {(ushort)type}");
        if (length > max)
            throw new ProtocolException($"{Connection.Name}: {type} message of {length} bytes (at most {max})");
        var body = _receiveBuffer.AsSpan(Protocol.MessageHeaderSize, (int)length);
        if (length > 0 && !Connection.ReadExact(body))
            throw new ProtocolException($"{Connection.Name}: connection closed in the middle of a message");
        message = new InboundMessage(type, body);
        return true;
    }

    /// <summary>
    /// The next message of type <typeparamref name="T"/>, for the steps of the sequence where only one can come;
    /// heartbeats are skipped, the peer's Error fails the run with its words.
    /// </summary>
    public T Expect<T>(string closedMeans) where T : struct, IMessage<T>
    {
        while (true)
        {
            if (!TryReceive(out var m))
                throw new TransportException($"{PeerRole} closed the main channel {closedMeans}");
            if (m.Type == MessageType.Heartbeat) continue;
            if (m.Type == MessageType.Error) throw PeerError(m.As<ErrorMessage>());
            return m.As<T>();
        }
    }

    /// <summary>
    /// Receives until <paramref name="handle"/> returns false or the connection ends: heartbeats are skipped, the peer's
    /// Error fails the run. A clean end fails the run unless <paramref name="endExpected"/> says it was due.
    /// </summary>
    public void ReceiveLoop(RunControl ctl, MessageHandler handle, Func<bool> endExpected, string closedMeans)
    {
        while (!ctl.Token.IsCancellationRequested)
        {
            if (!TryReceive(out var m))
            {
                if (!endExpected()) ctl.Fail(new RunFailure(FailureOrigin.Transport, $"{PeerRole} closed the main channel {closedMeans}"));
                return;
            }
            switch (m.Type)
            {
                case MessageType.Heartbeat:
                    continue;
                case MessageType.Error:
                    var e = m.As<ErrorMessage>();
                    ctl.Fail(new RunFailure(FailureOrigin.Peer, e.Message, e.Device));
                    return;
                default:
                    if (!handle(m)) return;
                    break;
            }
        }
    }

    /// <summary>
    /// Sends a heartbeat every second until <paramref name="done"/> is set or the run fails, calling
    /// <paramref name="everySecond"/> before each.
    /// </summary>
    public void Heartbeats(RunControl ctl, ManualResetEventSlim done, Action? everySecond = null)
    {
        // (ManualResetEventSlim's own timed wait: WaitHandle.WaitAny over kernel-style handles wakes measurably late.)
        while (true)
        {
            try { if (done.Wait(TimeSpan.FromSeconds(1), ctl.Token)) return; }
            catch (OperationCanceledException) { return; }
            everySecond?.Invoke();
            if (ctl.Token.IsCancellationRequested) return;
            Send(new HeartbeatMessage());
        }
    }

    /// <summary>Tells the peer why this side gives up; best effort within a second (the run is failing anyway).</summary>
    public void TrySendError(RunFailure failure)
    {
        try
        {
            Connection.Socket.SendTimeout = 1000;
            Send(new ErrorMessage(failure.Device, failure.Message));
        }
        catch (Exception e) when (e is MigrationException or ObjectDisposedException or InvalidOperationException) { }
    }

    private static MigrationException PeerError(in ErrorMessage e) => new(e.Message, e.Device, FailureOrigin.Peer);
}
