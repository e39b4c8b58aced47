using System.Buffers.Binary;
using System.Text;

namespace Vfio.Migration;

/// <summary>Constants and encodings of the wire protocol; docs/protocol.md is the prose version. All integers little-endian.</summary>
public static class Protocol
{
    public const uint HandshakeMagic = 0x47494D56;      // "VMIG"
    public const uint HandshakeReplyMagic = 0x41494D56; // "VMIA"
    public const uint PacketMagic = 0x50444D56;         // "VMDP"
    /// <summary>3: the device list carries each device's driver, kernel and firmware (2 did not; 1 had no commit point).</summary>
    public const ushort Version = 4;
    public const int HandshakeSize = 32;
    public const int HandshakeReplySize = 16;
    public const int PacketHeaderSize = 32;
    public const int MessageHeaderSize = 8;
    /// <summary>No message body is larger (the largest, a DeviceList of MaxDevices devices, is about 310 KiB).</summary>
    public const int MaxMessageBody = 1 << 20;
    /// <summary>UTF-8 bytes of a device name on the wire (longer names are cut at a character boundary).</summary>
    public const int MaxNameBytes = 1024;
    /// <summary>UTF-8 bytes of an error or result text on the wire (longer texts are cut at a character boundary).</summary>
    public const int MaxTextBytes = 4096;
    /// <summary>UTF-8 bytes of a driver name, kernel release or firmware version in the device list.</summary>
    public const int MaxIdentityBytes = 64;
    public const int MinWindow = 1;
    public const int MaxWindow = 4096;
    public const int MaxChannels = 64;
    public const int MaxDevices = 256;
    public const int MinBufferSize = 4096;
    public const int MaxBufferSize = 64 << 20;
    public const ushort ChannelEndDevice = 0xFFFF;
}

/// <summary>Status in a handshake reply.</summary>
public enum HandshakeStatus : ushort
{
    Ok = 0,
    BadMagicOrVersion = 1,
    UnknownSession = 2,
    BadChannelIndex = 3,
    DuplicateChannel = 4,
    /// <summary>A main channel while another source's session is being served.</summary>
    Busy = 5,
}

/// <summary>The first 32 bytes on every connection: magic, version, channel index (0 = main), session id, channel count, CRC32C.</summary>
public readonly record struct Handshake(ushort ChannelIndex, ulong SessionId, ushort DataChannels)
{
    public void Write(Span<byte> b)
    {
        b[..Protocol.HandshakeSize].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(b, Protocol.HandshakeMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(b[4..], Protocol.Version);
        BinaryPrimitives.WriteUInt16LittleEndian(b[6..], ChannelIndex);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], SessionId);
        BinaryPrimitives.WriteUInt16LittleEndian(b[16..], DataChannels);
        BinaryPrimitives.WriteUInt32LittleEndian(b[28..], Crc32C.Compute(b[..28]));
    }

    /// <summary>Parses and validates; a wrong magic, version or CRC is a ProtocolException.</summary>
    public static Handshake Read(ReadOnlySpan<byte> b)
    {
        uint magic = BinaryPrimitives.ReadUInt32LittleEndian(b);
        if (magic != Protocol.HandshakeMagic)
            throw new ProtocolException($"handshake: bad magic 0x{magic:x8} (not a vfio-mig peer)");
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(b[4..]);
        if (version != Protocol.Version)
            throw new ProtocolException($"handshake: protocol version {version}, this side speaks {Protocol.Version}");
        if (BinaryPrimitives.ReadUInt32LittleEndian(b[28..]) != Crc32C.Compute(b[..28]))
            throw new ProtocolException("handshake: CRC mismatch");
        return new Handshake(BinaryPrimitives.ReadUInt16LittleEndian(b[6..]), BinaryPrimitives.ReadUInt64LittleEndian(b[8..]),
            BinaryPrimitives.ReadUInt16LittleEndian(b[16..]));
    }
}

/// <summary>The destination's 16-byte answer to a handshake: magic, version, status, the session id it answers.</summary>
public readonly record struct HandshakeReply(HandshakeStatus Status, ulong SessionId)
{
    public void Write(Span<byte> b)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(b, Protocol.HandshakeReplyMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(b[4..], Protocol.Version);
        BinaryPrimitives.WriteUInt16LittleEndian(b[6..], (ushort)Status);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], SessionId);
    }

    public static HandshakeReply Read(ReadOnlySpan<byte> b)
    {
        if (BinaryPrimitives.ReadUInt32LittleEndian(b) != Protocol.HandshakeReplyMagic
            || BinaryPrimitives.ReadUInt16LittleEndian(b[4..]) != Protocol.Version)
            throw new ProtocolException("handshake reply: bad magic or version (not a vfio-mig peer)");
        return new HandshakeReply((HandshakeStatus)BinaryPrimitives.ReadUInt16LittleEndian(b[6..]), BinaryPrimitives.ReadUInt64LittleEndian(b[8..]));
    }
}

[Flags]
public enum PacketFlags : ushort
{
    None = 0,
    Data = 1,
    Config = 2,
    End = 4,
    ChannelEnd = 8,
}

/// <summary>Data packet header (32 bytes): magic, device, flags, buffer index, payload length, payload CRC32C, header CRC32C.</summary>
public readonly record struct PacketHeader(ushort Device, PacketFlags Flags, uint Buffer, int Length, uint PayloadCrc)
{
    public void Write(Span<byte> b)
    {
        b[..Protocol.PacketHeaderSize].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(b, Protocol.PacketMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(b[4..], Device);
        BinaryPrimitives.WriteUInt16LittleEndian(b[6..], (ushort)Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], Buffer);
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], (uint)Length);
        BinaryPrimitives.WriteUInt32LittleEndian(b[16..], PayloadCrc);
        BinaryPrimitives.WriteUInt32LittleEndian(b[28..], Crc32C.Compute(b[..28]));
    }

    /// <summary>
    /// Parses and validates what can be checked without session context: magic, header CRC, flags, reserved bytes, the
    /// fields of a channel-end packet and the protocol's largest length (the receiver checks the rest against its session).
    /// </summary>
    public static PacketHeader Read(ReadOnlySpan<byte> b, int channel)
    {
        uint magic = BinaryPrimitives.ReadUInt32LittleEndian(b);
        if (magic != Protocol.PacketMagic)
            throw new ProtocolException($"channel {channel}: bad packet magic 0x{magic:x8}");
        if (BinaryPrimitives.ReadUInt32LittleEndian(b[28..]) != Crc32C.Compute(b[..28]))
            throw new ProtocolException($"channel {channel}: packet header CRC mismatch");
        var flags = (PacketFlags)BinaryPrimitives.ReadUInt16LittleEndian(b[6..]);
        if (flags != PacketFlags.Data && flags != (PacketFlags.Config | PacketFlags.End) && flags != PacketFlags.ChannelEnd)
            throw new ProtocolException($"channel {channel}: invalid packet flags 0x{(ushort)flags:x}");
        ushort device = BinaryPrimitives.ReadUInt16LittleEndian(b[4..]);
        uint buffer = BinaryPrimitives.ReadUInt32LittleEndian(b[8..]);
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(b[12..]);
        uint payloadCrc = BinaryPrimitives.ReadUInt32LittleEndian(b[16..]);
        if (length > Protocol.MaxBufferSize)
            throw new ProtocolException($"channel {channel}: packet length {length} exceeds the protocol maximum");
        if (BinaryPrimitives.ReadUInt64LittleEndian(b[20..]) != 0)
            throw new ProtocolException($"channel {channel}: packet with non-zero reserved bytes");
        if (flags == PacketFlags.ChannelEnd && (device != Protocol.ChannelEndDevice || buffer != 0 || length != 0 || payloadCrc != 0))
            throw new ProtocolException($"channel {channel}: channel-end packet with device {device}, buffer {buffer}, length {length}, "
                + $"payload CRC 0x{payloadCrc:x8} (must be 0xffff, 0, 0, 0)");
        return new PacketHeader(device, flags, buffer, (int)length, payloadCrc);
    }
}

public enum MessageType : ushort
{
    DeviceList = 1,
    Accept = 2,
    Switchover = 3,
    Credit = 4,
    DeviceDone = 5,
    DeviceResult = 6,
    Result = 7,
    Error = 8,
    Heartbeat = 9,
    Commit = 10,
    Running = 11,
    PrecopyMark = 12,
    PrecopyAck = 13,
}

/// <summary>Little-endian writer for main-channel message bodies, into a buffer of the message's maximum size.</summary>
public ref struct MessageWriter(Span<byte> buffer)
{
    private readonly Span<byte> _b = buffer;
    private int _pos = 0;
    public readonly int Length => _pos;
    public void U16(ushort v) { BinaryPrimitives.WriteUInt16LittleEndian(_b[_pos..], v); _pos += 2; }
    public void U32(uint v) { BinaryPrimitives.WriteUInt32LittleEndian(_b[_pos..], v); _pos += 4; }
    public void U64(ulong v) { BinaryPrimitives.WriteUInt64LittleEndian(_b[_pos..], v); _pos += 8; }
    public void I64(long v) { BinaryPrimitives.WriteInt64LittleEndian(_b[_pos..], v); _pos += 8; }

    /// <summary>u16 length + UTF-8 bytes, cut at a character boundary to at most <paramref name="maxBytes"/>.</summary>
    public void Str(string s, int maxBytes)
    {
        var room = _b.Slice(_pos + 2, Math.Min(maxBytes, _b.Length - _pos - 2));
        System.Text.Unicode.Utf8.FromUtf16(s, room, out _, out int n);
        U16((ushort)n);
        _pos += n;
    }
}

/// <summary>Little-endian reader with bounds checks: a short or malformed body is a ProtocolException, never an index exception.</summary>
public ref struct MessageReader(ReadOnlySpan<byte> body, MessageType type)
{
    private static readonly UTF8Encoding s_strict = new(false, true);
    private readonly ReadOnlySpan<byte> _b = body;
    private readonly MessageType _type = type;
    private int _pos = 0;

    private ReadOnlySpan<byte> Take(int n)
    {
        if (_pos + n > _b.Length) throw Malformed("truncated");
        var s = _b.Slice(_pos, n);
        _pos += n;
        return s;
    }

    public readonly ProtocolException Malformed(string what) => new($"main channel: {_type} message {what}");
    public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));
    public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
    public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));
    public long I64() => BinaryPrimitives.ReadInt64LittleEndian(Take(8));

    /// <summary>A u32 that must be 0 or 1.</summary>
    public bool Bool()
    {
        uint v = U32();
        return v <= 1 ? v == 1 : throw Malformed($"has {v} where 0 or 1 belongs");
    }

    /// <summary>A u32 count or index that must be below <paramref name="limit"/>.</summary>
    public int Below(int limit, string what)
    {
        uint v = U32();
        return v < (uint)limit ? (int)v : throw Malformed($"has {what} {v} (at most {limit - 1})");
    }

    public string Str(int maxBytes)
    {
        int n = U16();
        if (n > maxBytes) throw Malformed($"has a string of {n} bytes (at most {maxBytes})");
        try { return s_strict.GetString(Take(n)); }
        catch (DecoderFallbackException) { throw Malformed("has invalid UTF-8"); }
    }

    /// <summary>Every byte of the body must have been read: a longer body is malformed.</summary>
    public readonly void End()
    {
        if (_pos != _b.Length) throw Malformed($"has {_b.Length - _pos} bytes after its last field");
    }
}
