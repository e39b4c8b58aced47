using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>A peer speaking the wire protocol by hand (from the message codecs), to say what the engine never would.</summary>
internal sealed class RawPeer : IDisposable
{
    private readonly TcpClient _client;
    private readonly NetworkStream _stream;

    private RawPeer(TcpClient client, HandshakeReply reply)
    {
        _client = client;
        _stream = client.GetStream();
        Reply = reply;
    }

    public HandshakeReply Reply { get; }

    public static RawPeer Connect(IPEndPoint ep, ushort channel, ulong session, ushort dataChannels)
    {
        var client = new TcpClient { ReceiveTimeout = 10_000 };
        client.Connect(ep);
        var hs = new byte[Protocol.HandshakeSize];
        new Handshake(channel, session, dataChannels).Write(hs);
        client.GetStream().Write(hs);
        var reply = new byte[Protocol.HandshakeReplySize];
        client.GetStream().ReadExactly(reply);
        return new RawPeer(client, HandshakeReply.Read(reply));
    }

    public void Send<T>(in T message) where T : struct, IMessage<T>
    {
        var b = new byte[Protocol.MessageHeaderSize + T.MaxBodySize];
        int n = MessageCodec.Write(message, b.AsSpan(Protocol.MessageHeaderSize));
        BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)T.Type);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), (uint)n);
        _stream.Write(b, 0, Protocol.MessageHeaderSize + n);
    }

    /// <summary>Bytes as they are, framed or not.</summary>
    public void SendRaw(byte[] bytes) => _stream.Write(bytes);

    /// <summary>The type of the next message (its body is read and dropped).</summary>
    public MessageType ReceiveType()
    {
        var header = new byte[Protocol.MessageHeaderSize];
        _stream.ReadExactly(header);
        _stream.ReadExactly(new byte[BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4))]);
        return (MessageType)BinaryPrimitives.ReadUInt16LittleEndian(header);
    }

    public void Dispose() => _client.Dispose();
}
