using System.Buffers.Binary;
using System.Text;
using Vfio.Migration;

namespace Vfio.Fuzz;

/// <summary>
/// The contract every wire decoder keeps, whatever its input: it returns a value that re-encodes to the canonical form
/// of that input and lies within the protocol's limits, or it throws ProtocolException. Any other exception, a value
/// that re-encodes differently (a field the decoder let through unchecked) or an allocation beyond what the type's
/// largest body explains is a violation. Hangs are caught by the caller's time limit.
/// </summary>
public static class WireContract
{
    /// <summary>Input a fuzzer may hand the framing target; the rest is ignored (a test case, not a session).</summary>
    public const int MaxFramingInput = 2 << 20;

    /// <summary>Bytes a decoder may allocate beyond its type's limit: the refusal's exception and message, a lazy static.</summary>
    private const long AllocationSlack = 64 << 10;

    /// <summary>Checks one input of <paramref name="target"/>; throws ContractViolationException when the decoder breaks it.</summary>
    public static Outcome Check(WireTarget target, ReadOnlySpan<byte> input) => target switch
    {
        WireTarget.Handshake => Handshake(CrcCovered(input, Protocol.HandshakeSize)),
        WireTarget.HandshakeReply => HandshakeReply(Fixed(input, Protocol.HandshakeReplySize)),
        WireTarget.PacketHeader => PacketHeader(CrcCovered(input, Protocol.PacketHeaderSize)),
        WireTarget.Body => input.IsEmpty ? Outcome.NotApplicable : Body((MessageType)input[0], input[1..]),
        WireTarget.Framing => FramingContract.Check(input[..Math.Min(input.Length, MaxFramingInput)]),
        _ => throw new ArgumentOutOfRangeException(nameof(target)),
    };

    /// <summary>A fixed-size structure read from the wire: the input cut or zero-padded to its size.</summary>
    private static byte[] Fixed(ReadOnlySpan<byte> input, int size)
    {
        var b = new byte[size];
        input[..Math.Min(size, input.Length)].CopyTo(b);
        return b;
    }

    /// <summary>
    /// A structure whose bytes 0..27 a CRC32C at 28 covers: the first input byte is the mode, the rest the structure.
    /// Mode bit 0 set: the harness writes the right CRC, so that the fuzzer reaches the checks behind it (a mutation
    /// alone almost never keeps a CRC valid); clear: the bytes as they are, a bad CRC included.
    /// </summary>
    private static byte[] CrcCovered(ReadOnlySpan<byte> input, int size)
    {
        if (input.IsEmpty) return new byte[size];
        var b = Fixed(input[1..], size);
        if ((input[0] & 1) != 0) BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(28), Crc32C.Compute(b.AsSpan(0, 28)));
        return b;
    }

    public static Outcome Handshake(byte[] b)
    {
        if (!Decode(() => Migration.Handshake.Read(b), "handshake", out var h)) return Outcome.Refused;
        var again = new byte[Protocol.HandshakeSize];
        h.Write(again);
        // Bytes 18..27 are reserved (the decoder need not look at them), so only the fields and a valid CRC must agree.
        Require(again.AsSpan(0, 18).SequenceEqual(b.AsSpan(0, 18)), "handshake: accepted, but re-encodes its fields differently");
        Require(BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(28)) == Crc32C.Compute(b.AsSpan(0, 28)), "handshake: accepted a bad CRC");
        Require(Migration.Handshake.Read(again) == h, "handshake: its re-encoding decodes to another value");
        return Outcome.Accepted;
    }

    public static Outcome HandshakeReply(byte[] b)
    {
        if (!Decode(() => Migration.HandshakeReply.Read(b), "handshake reply", out var r)) return Outcome.Refused;
        var again = new byte[Protocol.HandshakeReplySize];
        r.Write(again);
        Require(again.AsSpan().SequenceEqual(b), "handshake reply: accepted, but re-encodes differently");
        return Outcome.Accepted;
    }

    public static Outcome PacketHeader(byte[] b)
    {
        if (!Decode(() => Migration.PacketHeader.Read(b, 1), "packet header", out var h)) return Outcome.Refused;
        var again = new byte[Protocol.PacketHeaderSize];
        h.Write(again);
        // Bytes 20..27 are reserved and must be 0, so an accepted header re-encodes to every byte it was read from.
        Require(again.AsSpan(0, 28).SequenceEqual(b.AsSpan(0, 28)), "packet header: accepted, but re-encodes differently (reserved bytes?)");
        Require(BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(28)) == Crc32C.Compute(b.AsSpan(0, 28)), "packet header: accepted a bad CRC");
        Require(h.Flags is PacketFlags.Data or (PacketFlags.Config | PacketFlags.End) or PacketFlags.ChannelEnd,
            $"packet header: accepted flags 0x{(ushort)h.Flags:x}");
        Require(h.Length is >= 0 and <= Protocol.MaxBufferSize, $"packet header: accepted length {h.Length}");
        // A channel end carries no payload and names no device (docs/protocol.md section 3): nothing in a session decides that.
        Require(h.Flags != PacketFlags.ChannelEnd || (h.Device == Protocol.ChannelEndDevice && h.Length == 0 && h.Buffer == 0 && h.PayloadCrc == 0),
            $"packet header: accepted a channel end for device {h.Device}, buffer {h.Buffer}, {h.Length} payload bytes, CRC {h.PayloadCrc:x}");
        return Outcome.Accepted;
    }

    /// <summary>A body decoded as its type through MessageCodec.Read, as the main channel does.</summary>
    public static Outcome Body(MessageType type, ReadOnlySpan<byte> body) => type switch
    {
        MessageType.DeviceList => Body<DeviceListMessage>(body),
        MessageType.Accept => Body<AcceptMessage>(body),
        MessageType.Switchover => Body<SwitchoverMessage>(body),
        MessageType.Credit => Body<CreditMessage>(body),
        MessageType.DeviceDone => Body<DeviceDoneMessage>(body),
        MessageType.DeviceResult => Body<DeviceResultMessage>(body),
        MessageType.Result => Body<ResultMessage>(body),
        MessageType.Error => Body<ErrorMessage>(body),
        MessageType.Heartbeat => Body<HeartbeatMessage>(body),
        MessageType.Commit => Body<CommitMessage>(body),
        MessageType.Running => Body<RunningMessage>(body),
        MessageType.PrecopyMark => Body<PrecopyMarkMessage>(body),
        MessageType.PrecopyAck => Body<PrecopyAckMessage>(body),
        _ => Outcome.NotApplicable,
    };

    public static Outcome Body<T>(ReadOnlySpan<byte> body) where T : struct, IMessage<T>
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        T m;
        try { m = MessageCodec.Read<T>(body); }
        catch (ProtocolException) { return Refused<T>(before); }
        catch (Exception e) { throw new ContractViolationException($"{T.Type}: {e.GetType().Name} instead of a ProtocolException", e); }
        CheckAllocation<T>(before);
        var again = new byte[T.MaxBodySize];
        int n = MessageCodec.Write(m, again);
        Require(again.AsSpan(0, n).SequenceEqual(Canonical(T.Type, body)),
            $"{T.Type}: accepted, but re-encodes differently ({n} bytes, not {body.Length})");
        WithinLimits(m);
        return Outcome.Accepted;
    }

    /// <summary>
    /// The body with its don't-care bytes as the writer sets them: the digest of a DeviceDone whose has-digest is 0 means
    /// nothing (docs/protocol.md), so a decoder may ignore it.
    /// </summary>
    private static byte[] Canonical(MessageType type, ReadOnlySpan<byte> body)
    {
        var c = body.ToArray();
        bool digestless = c.Length == DeviceDoneMessage.MaxBodySize && BinaryPrimitives.ReadUInt32LittleEndian(c.AsSpan(28)) == 0;
        if (type == MessageType.DeviceDone && digestless)
            c.AsSpan(32, 8).Clear();
        return c;
    }

    private static Outcome Refused<T>(long before) where T : struct, IMessage<T>
    {
        CheckAllocation<T>(before);
        return Outcome.Refused;
    }

    /// <summary>A decoded value holds no more than its type's largest body explains: UTF-16 strings, arrays, the value itself.</summary>
    private static void CheckAllocation<T>(long before) where T : struct, IMessage<T>
    {
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        long limit = 4L * T.MaxBodySize + AllocationSlack;
        Require(allocated <= limit, $"{T.Type}: decoding allocated {allocated} bytes (at most {limit})");
    }

    /// <summary>The ranges docs/protocol.md section 2 gives, checked on the decoded value.</summary>
    private static void WithinLimits<T>(in T m) where T : struct, IMessage<T>
    {
        switch (m)
        {
            case DeviceListMessage d:
                Require(d.BufferSize is >= Protocol.MinBufferSize and <= Protocol.MaxBufferSize, $"DeviceList: buffer size {d.BufferSize}");
                Require(d.Devices.Length <= Protocol.MaxDevices, $"DeviceList: {d.Devices.Length} devices");
                foreach (var o in d.Devices) Text(o.Name, Protocol.MaxNameBytes, "DeviceList: device name");
                break;
            case AcceptMessage a:
                Require(a.Window is >= Protocol.MinWindow and <= Protocol.MaxWindow, $"Accept: window {a.Window}");
                Require(a.DeviceNames.Length <= Protocol.MaxDevices, $"Accept: {a.DeviceNames.Length} devices");
                foreach (var n in a.DeviceNames) Text(n, Protocol.MaxNameBytes, "Accept: device name");
                break;
            case CreditMessage c:
                Device(c.Device, "Credit");
                break;
            case DeviceDoneMessage d:
                Device(d.Device, "DeviceDone");
                break;
            case DeviceResultMessage r:
                Device(r.Device, "DeviceResult");
                Text(r.Error ?? "", Protocol.MaxTextBytes, "DeviceResult: error");
                break;
            case ResultMessage r:
                Text(r.Message ?? "", Protocol.MaxTextBytes, "Result: message");
                break;
            case ErrorMessage e:
                if (e.Device is int device) Device(device, "Error");
                Text(e.Message, Protocol.MaxTextBytes, "Error: message");
                break;
        }
    }

    private static void Device(int device, string type) =>
        Require(device is >= 0 and < Protocol.MaxDevices, $"{type}: accepted device {device}");

    private static void Text(string s, int maxBytes, string what) =>
        Require(Encoding.UTF8.GetByteCount(s) <= maxBytes, $"{what} of {Encoding.UTF8.GetByteCount(s)} bytes");

    private static bool Decode<T>(Func<T> read, string what, out T value)
    {
        try
        {
            value = read();
            return true;
        }
        catch (ProtocolException)
        {
            value = default!;
            return false;
        }
        catch (Exception e) { throw new ContractViolationException($"{what}: {e.GetType().Name} instead of a ProtocolException", e); }
    }

    internal static void Require(bool holds, string violation)
    {
        if (!holds) throw new ContractViolationException(violation);
    }
}
