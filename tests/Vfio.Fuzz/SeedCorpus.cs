using System.Buffers.Binary;
using Vfio.Core;
using Vfio.Migration;

namespace Vfio.Fuzz;

/// <summary>One input of a target's corpus, named for what it is.</summary>
public sealed record Seed(WireTarget Target, string Name, byte[] Bytes);

/// <summary>
/// The corpus a fuzzer starts from, made by the protocol's own encoders (so it follows their format): a valid encoding
/// of every structure and message type, and the malformed cases docs/protocol.md says the receiver refuses.
/// </summary>
public static class SeedCorpus
{
    private const ulong Session = 0x0123_4567_89AB_CDEF;

    public static IEnumerable<Seed> All() => Valid().Concat(Malformed());

    /// <summary>A handshake or packet header as its target takes it: mode 0 (the bytes as they are), then the structure.</summary>
    private static byte[] Raw(byte[] structure) => [0, .. structure];

    /// <summary>Inputs every decoder must accept.</summary>
    public static IEnumerable<Seed> Valid()
    {
        yield return new(WireTarget.Handshake, "main", Raw(Handshake(0, 4)));
        yield return new(WireTarget.Handshake, "data-64-of-64", Raw(Handshake(64, 64)));
        // Mode 1: the harness writes the CRC; reserved bytes are ignored by the receiver.
        yield return new(WireTarget.Handshake, "reserved-set-crc-by-harness",
            [1, .. Handshake(1, 1).AsSpan(0, 18), .. Enumerable.Repeat((byte)0xA5, 14)]);
        foreach (var status in Enum.GetValues<HandshakeStatus>())
            yield return new(WireTarget.HandshakeReply, $"status-{(ushort)status}", Reply(status));
        yield return new(WireTarget.PacketHeader, "data", Raw(Header(3, PacketFlags.Data, 7, 1 << 20)));
        yield return new(WireTarget.PacketHeader, "data-largest", Raw(Header(255, PacketFlags.Data, uint.MaxValue, Protocol.MaxBufferSize)));
        yield return new(WireTarget.PacketHeader, "config-end", Raw(Header(0, PacketFlags.Config | PacketFlags.End, 12, 256)));
        yield return new(WireTarget.PacketHeader, "channel-end", Raw(Header(Protocol.ChannelEndDevice, PacketFlags.ChannelEnd, 0, 0)));
        foreach (var (name, body) in ValidBodies())
            yield return new(WireTarget.Body, name, body);
        yield return new(WireTarget.Framing, "source-session", Frames(SourceSession()));
        yield return new(WireTarget.Framing, "destination-session", Frames(DestinationSession()));
        yield return new(WireTarget.Framing, "empty", []);
    }

    /// <summary>Inputs every decoder must refuse.</summary>
    public static IEnumerable<Seed> Malformed()
    {
        var hs = Handshake(0, 4);
        yield return new(WireTarget.Handshake, "bad-magic", Raw(Patched(hs, 0, 0x47494D57u, withCrc: true)));
        // A packet header's reserved bytes must be 0 (the harness writes a valid CRC over them).
        yield return new(WireTarget.PacketHeader, "reserved-set-crc-by-harness",
            [1, .. Header(2, PacketFlags.Data, 1, 1).AsSpan(0, 20), .. Enumerable.Repeat((byte)0x5A, 12)]);
        yield return new(WireTarget.Handshake, "version-1", Raw(Patched16(hs, 4, 1, withCrc: true)));
        yield return new(WireTarget.Handshake, "bad-crc", Raw(Patched(hs, 28, ~BinaryPrimitives.ReadUInt32LittleEndian(hs.AsSpan(28)))));
        yield return new(WireTarget.Handshake, "short", Raw(hs[..31]));
        yield return new(WireTarget.HandshakeReply, "bad-magic", Patched(Reply(HandshakeStatus.Ok), 0, Protocol.HandshakeMagic));
        yield return new(WireTarget.HandshakeReply, "version-1", Patched16(Reply(HandshakeStatus.Ok), 4, 1));
        var data = Header(1, PacketFlags.Data, 0, 4096);
        yield return new(WireTarget.PacketHeader, "bad-magic", Raw(Patched(data, 0, Protocol.HandshakeMagic, withCrc: true)));
        yield return new(WireTarget.PacketHeader, "bad-crc", Raw(Patched(data, 28, 0)));
        foreach (ushort flags in new ushort[] { 0, 2, 3, 4, 9, 14, 0x8001 })
            yield return new(WireTarget.PacketHeader, $"flags-0x{flags:x}", Raw(Patched16(data, 6, flags, withCrc: true)));
        yield return new(WireTarget.PacketHeader, "length-over-64MiB", Raw(Patched(data, 12, Protocol.MaxBufferSize + 1u, withCrc: true)));
        yield return new(WireTarget.PacketHeader, "length-negative", Raw(Patched(data, 12, 0x8000_0000u, withCrc: true)));
        var end = Header(Protocol.ChannelEndDevice, PacketFlags.ChannelEnd, 0, 0);
        yield return new(WireTarget.PacketHeader, "channel-end-with-payload", Raw(Patched(end, 12, 16, withCrc: true)));
        yield return new(WireTarget.PacketHeader, "channel-end-for-device-0", Raw(Patched16(end, 4, 0, withCrc: true)));
        foreach (var (name, body) in MalformedBodies())
            yield return new(WireTarget.Body, name, body);
        foreach (var (name, stream) in MalformedFrames())
            yield return new(WireTarget.Framing, name, stream);
    }

    private static IEnumerable<(string, byte[])> ValidBodies()
    {
        static DeviceOffer Offer(int i) => new($"0000:3b:00.{i}", (ulong)i << 30, MigrationFlags.StopCopy | MigrationFlags.P2P);
        yield return ("device-list", Body(new DeviceListMessage(1 << 20, LoadingMode.Decoupled, [Offer(1), Offer(2)])));
        yield return ("device-list-none", Body(new DeviceListMessage(Protocol.MinBufferSize, LoadingMode.Coupled, [])));
        yield return ("device-list-largest", Body(new DeviceListMessage(Protocol.MaxBufferSize, (LoadingMode)77,
            [.. Enumerable.Range(0, Protocol.MaxDevices)
                .Select(i => new DeviceOffer(LongName('d', i), ulong.MaxValue, (MigrationFlags)ulong.MaxValue))])));
        yield return ("device-list-unicode", Body(new DeviceListMessage(65536, LoadingMode.Decoupled,
            [new("sim:gerät-β-设备-🚀", 0, MigrationFlags.StopCopy | MigrationFlags.PreCopy)])));
        yield return ("accept", Body(new AcceptMessage(4, ["sim:a", "sim:b"])));
        yield return ("accept-largest", Body(new AcceptMessage(Protocol.MaxWindow,
            [.. Enumerable.Range(0, Protocol.MaxDevices).Select(i => LongName('n', i))])));
        yield return ("accept-window-1", Body(new AcceptMessage(Protocol.MinWindow, ["x"])));
        yield return ("switchover", Body(new SwitchoverMessage(1_767_225_600_000_000)));
        yield return ("switchover-negative", Body(new SwitchoverMessage(long.MinValue)));
        yield return ("credit", Body(new CreditMessage(0, 2)));
        yield return ("credit-device-255", Body(new CreditMessage(Protocol.MaxDevices - 1, uint.MaxValue)));
        yield return ("device-done-digest", Body(new DeviceDoneMessage(1, 64, 64 << 20, 0xDEADBEEF, 256, 0x1234_5678_9ABC_DEF0)));
        yield return ("device-done-no-digest", Body(new DeviceDoneMessage(255, 0, 0, 0, 0, null)));
        // The digest means nothing when has-digest is 0 (the fuzzer's first find: the decoder ignores it).
        yield return ("device-done-digest-without-flag", Patched(Body(new DeviceDoneMessage(3, 1, 2, 3, 4, null)), 33, 0xDEADBEEF));
        yield return ("device-result", Body(new DeviceResultMessage(0, true, 64 << 20, 64, 10, 200_000, 300, 1, 2, 4 << 20, null)));
        yield return ("device-result-error", Body(new DeviceResultMessage(255, false, -1, -1, -5, long.MaxValue, 0, 0, 0, 0,
            "device 3: RESUMING->STOP failed: EIO")));
        yield return ("device-result-longest-error", Body(new DeviceResultMessage(1, false, 0, 0, 0, 0, 0, 0, 0, 0,
            new string('e', Protocol.MaxTextBytes))));
        yield return ("result-ok", Body(new ResultMessage(true, 1_767_225_600_500_000, null)));
        yield return ("result-failed", Body(new ResultMessage(false, 0, "2 of 4 devices failed")));
        yield return ("error-device", Body(new ErrorMessage(7, "loading buffer 3 has not returned after 60 s")));
        yield return ("error-no-device", Body(new ErrorMessage(null, "timed out")));
        yield return ("error-longest", Body(new ErrorMessage(null, string.Concat(Enumerable.Repeat("ä€", Protocol.MaxTextBytes / 5)))));
        yield return ("heartbeat", Body(new HeartbeatMessage()));
        yield return ("commit", Body(new CommitMessage()));
        yield return ("running", Body(new RunningMessage(1_767_225_600_600_000)));
        yield return ("precopy-mark", Body(new PrecopyMarkMessage(2, 512)));
        yield return ("precopy-ack", Body(new PrecopyAckMessage(2)));
    }

    private static IEnumerable<(string, byte[])> MalformedBodies()
    {
        var list = Body(new DeviceListMessage(1 << 20, LoadingMode.Decoupled, [new("sim:a", 5, MigrationFlags.StopCopy)]));
        yield return ("device-list-buffer-4095", Patched(list, 1, Protocol.MinBufferSize - 1u));
        yield return ("device-list-buffer-over-64MiB", Patched(list, 1, Protocol.MaxBufferSize + 1u));
        yield return ("device-list-257-devices", Patched(list, 5, Protocol.MaxDevices + 1u));
        yield return ("device-list-count-huge", Patched(list, 5, uint.MaxValue));
        yield return ("device-list-count-beyond-body", Patched(list, 5, 2));
        yield return ("device-list-truncated", list[..^1]);
        yield return ("device-list-trailing-byte", [.. list, 0]);
        yield return ("device-list-name-1025", Patched16(Body(new DeviceListMessage(4096, LoadingMode.Decoupled,
            [new(LongName('x', 0), 0, MigrationFlags.StopCopy)])), 13, Protocol.MaxNameBytes + 1));
        yield return ("device-list-name-bad-utf8", Patched(list, 15, 0xFF_BF_80_C0u));
        yield return ("device-list-name-overlong-utf8", Patched16(list, 15, 0xAF_C0));
        yield return ("device-list-name-lone-surrogate", [.. list[..13], 5, 0, 0xED, 0xA0, 0x80, 0x61, 0x61, .. list[20..]]);
        yield return ("device-list-oversize", [.. list, .. new byte[DeviceListMessage.MaxBodySize]]);
        var accept = Body(new AcceptMessage(4, ["sim:a"]));
        yield return ("accept-window-0", Patched(accept, 1, 0));
        yield return ("accept-window-4097", Patched(accept, 1, Protocol.MaxWindow + 1u));
        yield return ("accept-257-devices", Patched(accept, 5, Protocol.MaxDevices + 1u));
        yield return ("accept-trailing-byte", [.. accept, 0]);
        yield return ("switchover-short", Body(new SwitchoverMessage(1))[..^1]);
        yield return ("switchover-long", [.. Body(new SwitchoverMessage(1)), 0]);
        yield return ("credit-device-256", Patched(Body(new CreditMessage(0, 1)), 1, Protocol.MaxDevices));
        var done = Body(new DeviceDoneMessage(0, 1, 2, 3, 4, 5));
        yield return ("device-done-device-256", Patched(done, 1, Protocol.MaxDevices));
        yield return ("device-done-has-digest-2", Patched(done, 29, 2));
        yield return ("device-done-short", done[..^1]);
        var result = Body(new DeviceResultMessage(0, true, 1, 1, 0, 0, 0, 0, 0, 0, null));
        yield return ("device-result-verified-2", Patched(result, 5, 2));
        yield return ("device-result-device-256", Patched(result, 1, Protocol.MaxDevices));
        yield return ("device-result-error-4097", [.. Patched16(result, result.Length - 2, Protocol.MaxTextBytes + 1),
            .. Enumerable.Repeat((byte)'e', Protocol.MaxTextBytes + 1)]);
        yield return ("result-ok-2", Patched(Body(new ResultMessage(true, 0, "x")), 1, 2));
        yield return ("result-string-past-end", Patched16(Body(new ResultMessage(true, 0, "x")), 13, 2));
        var error = Body(new ErrorMessage(1, "x"));
        yield return ("error-device-256", Patched(error, 1, Protocol.MaxDevices));
        yield return ("error-device-fffffffe", Patched(error, 1, uint.MaxValue - 1));
        yield return ("heartbeat-with-body", [.. Body(new HeartbeatMessage()), 0]);
        yield return ("commit-with-body", [.. Body(new CommitMessage()), 1]);
        yield return ("running-short", Body(new RunningMessage(1))[..5]);
    }

    private static IEnumerable<(string, byte[])> MalformedFrames()
    {
        byte[] Frame(ushort type, uint length, byte[] body)
        {
            var f = new byte[Protocol.MessageHeaderSize + body.Length];
            BinaryPrimitives.WriteUInt16LittleEndian(f, type);
            BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(4), length);
            body.CopyTo(f, Protocol.MessageHeaderSize);
            return f;
        }
        var heartbeat = Frames([Body(new HeartbeatMessage())]);
        yield return ("type-0", Frame(0, 0, []));
        yield return ("type-14-after-heartbeat", [.. heartbeat, .. Frame(14, 0, [])]);
        yield return ("device-list-over-max", Frame((ushort)MessageType.DeviceList, (uint)DeviceListMessage.MaxBodySize + 1, []));
        yield return ("length-4GiB", Frame((ushort)MessageType.Error, uint.MaxValue, []));
        yield return ("heartbeat-length-1", Frame((ushort)MessageType.Heartbeat, 1, [0]));
        yield return ("header-cut", heartbeat[..5]);
        yield return ("body-cut", Frames([Body(new CreditMessage(1, 2))])[..12]);
        yield return ("credit-device-256", [.. heartbeat, .. Frames([Patched(Body(new CreditMessage(0, 1)), 1, Protocol.MaxDevices)])]);
        yield return ("error-bad-utf8", Frame((ushort)MessageType.Error, 8, [0xFF, 0xFF, 0xFF, 0xFF, 2, 0, 0xC3, 0x28]));
    }

    private static byte[][] SourceSession() =>
    [
        Body(new DeviceListMessage(1 << 20, LoadingMode.Decoupled, [new("sim:a", 1 << 26, MigrationFlags.StopCopy | MigrationFlags.P2P)])),
        Body(new HeartbeatMessage()),
        Body(new SwitchoverMessage(1_767_225_600_000_000)),
        Body(new DeviceDoneMessage(0, 64, 1 << 26, 42, 256, 7)),
        Body(new CommitMessage()),
    ];

    private static byte[][] DestinationSession() =>
    [
        Body(new AcceptMessage(4, ["sim:b"])),
        Body(new CreditMessage(0, 2)),
        Body(new CreditMessage(0, 1)),
        Body(new HeartbeatMessage()),
        Body(new DeviceResultMessage(0, true, 1 << 26, 64, 10, 20, 30, 40, 50, 4 << 20, null)),
        Body(new ResultMessage(true, 1_767_225_600_500_000, null)),
        Body(new RunningMessage(1_767_225_600_600_000)),
        Body(new ErrorMessage(null, "late")),
    ];

    /// <summary>A body target input: the type byte, then the body as the message writes it.</summary>
    public static byte[] Body<T>(in T message) where T : struct, IMessage<T>
    {
        var b = new byte[1 + T.MaxBodySize];
        b[0] = (byte)T.Type;
        int n = MessageCodec.Write(message, b.AsSpan(1));
        return b[..(1 + n)];
    }

    /// <summary>Body target inputs as a main channel carries them: each framed by its 8-byte header.</summary>
    private static byte[] Frames(byte[][] bodies)
    {
        var stream = new List<byte>();
        Span<byte> header = stackalloc byte[Protocol.MessageHeaderSize];
        foreach (var b in bodies)
        {
            header.Clear();
            BinaryPrimitives.WriteUInt16LittleEndian(header, b[0]);
            BinaryPrimitives.WriteUInt32LittleEndian(header[4..], (uint)(b.Length - 1));
            stream.AddRange(header);
            stream.AddRange(b.AsSpan(1));
        }
        return [.. stream];
    }

    private static byte[] Handshake(ushort channel, ushort channels)
    {
        var b = new byte[Protocol.HandshakeSize];
        new Handshake(channel, Session, channels).Write(b);
        return b;
    }

    private static byte[] Reply(HandshakeStatus status)
    {
        var b = new byte[Protocol.HandshakeReplySize];
        new HandshakeReply(status, Session).Write(b);
        return b;
    }

    private static byte[] Header(ushort device, PacketFlags flags, uint buffer, int length)
    {
        var b = new byte[Protocol.PacketHeaderSize];
        // A channel end carries no payload, so no payload CRC either.
        new PacketHeader(device, flags, buffer, length, flags == PacketFlags.ChannelEnd ? 0u : 0xC0FFEEu).Write(b);
        return b;
    }

    /// <summary>A name of exactly MaxNameBytes ASCII bytes.</summary>
    private static string LongName(char c, int i) => $"{i:d3}".PadRight(Protocol.MaxNameBytes, c);

    /// <summary>A copy with a u32 replaced; <paramref name="withCrc"/> recomputes a handshake's or header's CRC (only the field is wrong).</summary>
    private static byte[] Patched(byte[] b, int offset, uint value, bool withCrc = false)
    {
        var c = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(c.AsSpan(offset), value);
        return withCrc ? WithCrc(c) : c;
    }

    private static byte[] Patched16(byte[] b, int offset, ushort value, bool withCrc = false)
    {
        var c = (byte[])b.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(c.AsSpan(offset), value);
        return withCrc ? WithCrc(c) : c;
    }

    private static byte[] WithCrc(byte[] b)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(28), Crc32C.Compute(b.AsSpan(0, 28)));
        return b;
    }
}
