using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>Each main-channel message round-trips, and every malformed body docs/protocol.md names is refused.</summary>
public class MessageTests
{
    private static byte[] Encode<T>(in T m) where T : struct, IMessage<T>
    {
        var b = new byte[T.MaxBodySize];
        return b.AsSpan(0, MessageCodec.Write(m, b)).ToArray();
    }

    private static T RoundTrip<T>(in T m) where T : struct, IMessage<T> => MessageCodec.Read<T>(Encode(m));

    private static string Refused<T>(byte[] body) where T : struct, IMessage<T> =>
        Assert.Throws<ProtocolException>(() => MessageCodec.Read<T>(body)).Message;

    private static readonly DeviceListMessage s_list = new(1 << 20, LoadingMode.Coupled,
        [
            new DeviceOffer("0000:3b:00.2", 64 << 20, MigrationFlags.StopCopy | MigrationFlags.P2P,
                new DeviceIdentity("mlx5_vfio_pci", "6.12.95-amd64", "28.39.1002")),
            new DeviceOffer("sim:vf1", 0, MigrationFlags.StopCopy),
        ]);

    public static TheoryData<string> Kinds => new(Enum.GetNames<MessageType>());

    /// <summary>One message of each type with non-trivial fields, as its encoded body.</summary>
    private static (byte[] Body, Func<byte[], object> Read, object Value) Sample(MessageType type) => type switch
    {
        MessageType.DeviceList => (Encode(s_list), b => MessageCodec.Read<DeviceListMessage>(b), s_list),
        MessageType.Accept => Sample(new AcceptMessage(4, ["a", "ü-β"])),
        MessageType.Switchover => Sample(new SwitchoverMessage(1_764_400_000_123_456)),
        MessageType.Credit => Sample(new CreditMessage(3, 2)),
        MessageType.DeviceDone => Sample(new DeviceDoneMessage(1, 64, 64 << 20, 0xFEEDFACE_CAFEBEEF, 256, 0x1234)),
        MessageType.DeviceResult => Sample(new DeviceResultMessage(2, true, 1 << 26, 64, 10, 200, 3, 1000, 2000, 4 << 20, "late")),
        MessageType.Result => Sample(new ResultMessage(true, 122, null)),
        MessageType.Error => Sample(new ErrorMessage(7, "buffer 3: CRC32C mismatch")),
        MessageType.Heartbeat => Sample(new HeartbeatMessage()),
        MessageType.Commit => Sample(new CommitMessage()),
        MessageType.Running => Sample(new RunningMessage(1_764_400_000_654_321)),
        MessageType.PrecopyMark => Sample(new PrecopyMarkMessage(5, 1024)),
        MessageType.PrecopyAck => Sample(new PrecopyAckMessage(6)),
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };

    private static (byte[], Func<byte[], object>, object) Sample<T>(T m) where T : struct, IMessage<T> =>
        (Encode(m), b => MessageCodec.Read<T>(b), m);

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Every_message_round_trips_and_refuses_a_short_or_long_body(string kind)
    {
        var type = Enum.Parse<MessageType>(kind);
        var (body, read, value) = Sample(type);
        var back = read(body);
        if (value is DeviceListMessage list)
        {
            var got = (DeviceListMessage)back;
            Assert.Equal((list.BufferSize, list.SourceLoading), (got.BufferSize, got.SourceLoading));
            Assert.Equal(list.Devices, got.Devices);
        }
        else if (value is AcceptMessage accept)
        {
            Assert.Equal(accept.Window, ((AcceptMessage)back).Window);
            Assert.Equal(accept.DeviceNames, ((AcceptMessage)back).DeviceNames);
        }
        else Assert.Equal(value, back);
        Assert.True(body.Length <= MessageCodec.MaxBodySize(type));

        // Every shorter body is truncated; one byte more is a body longer than its fields.
        for (int n = 0; n < body.Length; n++)
            Assert.Contains("truncated", Assert.Throws<ProtocolException>(() => read(body[..n])).Message);
        if (body.Length < MessageCodec.MaxBodySize(type))
            Assert.Contains("after its last field", Assert.Throws<ProtocolException>(() => read([.. body, 0])).Message);
    }

    [Fact]
    public void Optional_fields_round_trip_as_absent()
    {
        Assert.Null(RoundTrip(new DeviceDoneMessage(0, 1, 2, 3, 4, null)).Digest);
        Assert.Null(RoundTrip(new ErrorMessage(null, "not about one device")).Device);
        Assert.Null(RoundTrip(new DeviceResultMessage(0, false, 0, 0, 0, 0, 0, 0, 0, 0, null)).Error);
        Assert.Equal(new ResultMessage(false, 0, "no"), RoundTrip(new ResultMessage(false, 0, "no")));
    }

    [Fact]
    public void Limits_of_the_protocol_are_refused_in_the_body()
    {
        var list = Encode(s_list);
        BinaryPrimitives.WriteUInt32LittleEndian(list, Protocol.MaxBufferSize + 1);
        Assert.Contains("buffer size", Refused<DeviceListMessage>(list));
        list = Encode(s_list);
        BinaryPrimitives.WriteUInt32LittleEndian(list.AsSpan(4), Protocol.MaxDevices + 1);
        Assert.Contains("device count", Refused<DeviceListMessage>(list));

        var accept = Encode(new AcceptMessage(4, ["a"]));
        BinaryPrimitives.WriteUInt32LittleEndian(accept, Protocol.MaxWindow + 1);
        Assert.Contains("window", Refused<AcceptMessage>(accept));
        BinaryPrimitives.WriteUInt32LittleEndian(accept, 0);
        Assert.Contains("window", Refused<AcceptMessage>(accept));

        var credit = Encode(new CreditMessage(0, 1));
        BinaryPrimitives.WriteUInt32LittleEndian(credit, Protocol.MaxDevices);
        Assert.Contains("device", Refused<CreditMessage>(credit));

        var done = Encode(new DeviceDoneMessage(0, 1, 2, 3, 4, 5));
        BinaryPrimitives.WriteUInt32LittleEndian(done.AsSpan(28), 2); // "has digest" must be 0 or 1
        Assert.Contains("0 or 1", Refused<DeviceDoneMessage>(done));

        var error = Encode(new ErrorMessage(1, "x"));
        BinaryPrimitives.WriteUInt32LittleEndian(error, Protocol.MaxDevices);
        Assert.Contains("device", Refused<ErrorMessage>(error));
    }

    [Fact]
    public void Device_identities_round_trip_and_are_refused_too_long_or_with_a_control_character()
    {
        var got = RoundTrip(s_list).Devices;
        Assert.Equal(new DeviceIdentity("mlx5_vfio_pci", "6.12.95-amd64", "28.39.1002"), got[0].Identity);
        Assert.Equal(DeviceIdentity.Unknown, got[1].Identity);

        // The last device's firmware is the body's last field before the u32 precopy flag: u16 length + bytes.
        var one = new DeviceListMessage(4096, LoadingMode.Decoupled,
            [new DeviceOffer("d", 0, MigrationFlags.StopCopy, new DeviceIdentity("drv", "6.3.0", "fw"))]);
        var body = Encode(one);
        body[^5] = (byte)'\n';
        Assert.Contains("control character in a device's firmware", Refused<DeviceListMessage>(body));
        body = Encode(one);
        body[^9] = 0x7F; // the kernel's last byte (before the firmware's u16 length and 2 bytes, and the flag): DEL
        Assert.Contains("control character in a device's kernel", Refused<DeviceListMessage>(body));
        var longDriver = Encode(new DeviceListMessage(4096, LoadingMode.Decoupled,
            [new DeviceOffer("d", 0, MigrationFlags.StopCopy, new DeviceIdentity("", "", ""))]));
        // Replace the empty driver (u16 0 after name and the two u64s) by a 65-byte one.
        int at = 12 + 2 + 1 + 16;
        byte[] tooLong = [.. longDriver[..at], 65, 0, .. Enumerable.Repeat((byte)'x', 65), .. longDriver[(at + 2)..]];
        Assert.Contains($"a string of 65 bytes (at most {Protocol.MaxIdentityBytes})", Refused<DeviceListMessage>(tooLong));

        // A sender cuts a longer version at a character boundary.
        var cut = RoundTrip(new DeviceListMessage(4096, LoadingMode.Decoupled,
            [new DeviceOffer("d", 0, MigrationFlags.StopCopy, new DeviceIdentity(new string('é', 40), "", ""))]));
        Assert.Equal(new string('é', Protocol.MaxIdentityBytes / 2), cut.Devices[0].Identity.Driver);
    }

    [Fact]
    public void Strings_are_checked_for_length_and_utf8_and_cut_at_a_character_boundary_when_written()
    {
        var error = Encode(new ErrorMessage(null, "ab"));
        error[^1] = 0xFF;
        Assert.Contains("UTF-8", Refused<ErrorMessage>(error));

        var tooLong = new byte[4 + 2 + Protocol.MaxTextBytes + 1];
        BinaryPrimitives.WriteUInt32LittleEndian(tooLong, uint.MaxValue);
        BinaryPrimitives.WriteUInt16LittleEndian(tooLong.AsSpan(4), Protocol.MaxTextBytes + 1);
        Assert.Contains($"{Protocol.MaxTextBytes + 1} bytes", Assert.Throws<ProtocolException>(() =>
        {
            var r = new MessageReader(tooLong, MessageType.Error);
            ErrorMessage.Read(ref r);
        }).Message);

        // A name of 2-byte characters longer than the limit is cut to whole characters within it.
        string name = new('é', Protocol.MaxNameBytes);
        var sent = RoundTrip(new AcceptMessage(2, [name])).DeviceNames[0];
        Assert.Equal(new string('é', Protocol.MaxNameBytes / 2), sent);
    }

    [Fact]
    public void The_largest_message_fits_the_protocol_maximum()
    {
        Assert.Equal(DeviceListMessage.MaxBodySize, MessageCodec.LargestBody);
        Assert.True(MessageCodec.LargestBody <= Protocol.MaxMessageBody);
        var full = new DeviceListMessage(1 << 20, LoadingMode.Decoupled,
            Enumerable.Repeat(new DeviceOffer(new string('x', 2000), ulong.MaxValue, MigrationFlags.StopCopy,
                new DeviceIdentity(new string('d', 100), new string('k', 100), new string('f', 100))), Protocol.MaxDevices).ToArray());
        Assert.Equal(DeviceListMessage.MaxBodySize, Encode(full).Length);
    }

    [Fact]
    public void Main_channel_refuses_unknown_types_and_bodies_beyond_their_type_and_reports_the_peers_error()
    {
        // (a refused message ends the connection in the engine: each case gets its own)
        using (var bad = new SocketPair())
        {
            bad.SendRaw(99, []);
            var channel = new MainChannel(bad.A, "source");
            Assert.Contains("unknown message type 99", Assert.Throws<ProtocolException>(() => channel.TryReceive(out _)).Message);
        }
        using (var big = new SocketPair())
        {
            big.SendRaw((ushort)MessageType.Credit, new byte[9]);
            var channel = new MainChannel(big.A, "source");
            Assert.Contains("at most 8", Assert.Throws<ProtocolException>(() => channel.TryReceive(out _)).Message);
        }

        using var pair = new SocketPair();
        var main = new MainChannel(pair.A, "source");
        var peer = new MainChannel(pair.B, "destination");
        peer.Send(new HeartbeatMessage());
        peer.Send(new ErrorMessage(1, "device refused the stream"));
        var e = Assert.Throws<MigrationException>(() => main.Expect<SwitchoverMessage>("before the switchover"));
        Assert.Equal((FailureOrigin.Peer, (int?)1), (e.Origin, e.Device));
        Assert.Contains("refused the stream", e.Message);

        peer.Send(new CreditMessage(0, 1));
        Assert.Contains("expected Switchover, got Credit", Assert.Throws<ProtocolException>(() => main.Expect<SwitchoverMessage>("")).Message);
    }

    /// <summary>Two connected loopback TCP connections.</summary>
    private sealed class SocketPair : IDisposable
    {
        public SocketPair()
        {
            using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 1);
            var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            client.Connect(listener.LocalEndPoint!);
            A = new Connection(listener.Accept(), TimeSpan.FromSeconds(5), "main channel") { ReceiveTimeout = TimeSpan.FromSeconds(5) };
            B = new Connection(client, TimeSpan.FromSeconds(5), "main channel") { ReceiveTimeout = TimeSpan.FromSeconds(5) };
        }

        public Connection A { get; }
        public Connection B { get; }

        public void SendRaw(ushort type, byte[] body)
        {
            var b = new byte[Protocol.MessageHeaderSize + body.Length];
            BinaryPrimitives.WriteUInt16LittleEndian(b, type);
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), (uint)body.Length);
            body.CopyTo(b, Protocol.MessageHeaderSize);
            B.WriteAll(b);
        }

        public void Dispose()
        {
            A.Dispose();
            B.Dispose();
        }
    }
}

/// <summary>docs/protocol.md is the protocol a stranger implements: its table of messages must say what the code does.</summary>
public class ProtocolDocumentTests
{
    [Fact]
    public void Message_table_gives_each_types_number_and_largest_body()
    {
        var rows = File.ReadLines(Path.Combine(RepoPaths.Root(), "docs", "protocol.md"))
            .Select(l => l.Split('|', StringSplitOptions.TrimEntries))
            .Where(c => c.Length == 7 && Enum.GetNames<MessageType>().Contains(c[2]))
            .ToDictionary(c => Enum.Parse<MessageType>(c[2]), c => (Number: int.Parse(c[1]), Max: int.Parse(c[5])));
        Assert.Equal(Enum.GetValues<MessageType>().Order(), rows.Keys.Order());
        foreach (var (type, row) in rows)
        {
            Assert.Equal((int)type, row.Number);
            Assert.True(MessageCodec.MaxBodySize(type) == row.Max, $"{type}: the document says {row.Max}, the code {MessageCodec.MaxBodySize(type)}");
        }
    }
}
