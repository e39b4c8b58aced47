using System.Buffers.Binary;
using System.Net;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>Every packet that docs/protocol.md section 3 forbids is refused: by the header's codec, or by the receiver against its session.</summary>
public class PacketValidationTests
{
    /// <summary>A header with the given fields and a valid header CRC (so that only the fields themselves can be wrong).</summary>
    private static byte[] Header(ushort device, ushort flags, uint buffer, uint length, uint payloadCrc = 0, ulong reserved = 0)
    {
        var b = new byte[Protocol.PacketHeaderSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Protocol.PacketMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), device);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(6), flags);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), buffer);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(12), length);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(16), payloadCrc);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(20), reserved);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(28), Crc32C.Compute(b.AsSpan(0, 28)));
        return b;
    }

    public static TheoryData<ushort> ForbiddenFlags => new(
        Enumerable.Range(0, 16).Select(f => (ushort)f).Where(f => f is not (1 or 6 or 8)).Append((ushort)0x10).Append((ushort)0x8001));

    [Theory]
    [MemberData(nameof(ForbiddenFlags))]
    public void Every_flag_combination_but_data_config_end_and_channel_end_is_refused(ushort flags)
    {
        var e = Assert.Throws<ProtocolException>(() => PacketHeader.Read(Header(0, flags, 0, 0), 3));
        Assert.Equal($"channel 3: invalid packet flags 0x{flags:x}", e.Message);
    }

    [Fact]
    public void The_three_allowed_kinds_are_read_back()
    {
        Assert.Equal(new PacketHeader(2, PacketFlags.Data, 5, 100, 7), PacketHeader.Read(Header(2, 1, 5, 100, 7), 1));
        Assert.Equal(new PacketHeader(2, PacketFlags.Config | PacketFlags.End, 6, 0, 0), PacketHeader.Read(Header(2, 6, 6, 0), 1));
        Assert.Equal(new PacketHeader(Protocol.ChannelEndDevice, PacketFlags.ChannelEnd, 0, 0, 0), PacketHeader.Read(Header(0xFFFF, 8, 0, 0), 1));
    }

    [Theory]
    [InlineData((ushort)0xFFFF, 0u, 5u, 0u)] // a payload
    [InlineData((ushort)0xFFFF, 0u, 0u, 0x1234u)] // a payload CRC without a payload
    [InlineData((ushort)0, 0u, 0u, 0u)] // about a device
    [InlineData((ushort)0xFFFF, 3u, 0u, 0u)] // a buffer index
    public void A_channel_end_carries_nothing(ushort device, uint buffer, uint length, uint crc)
    {
        var e = Assert.Throws<ProtocolException>(() => PacketHeader.Read(Header(device, 8, buffer, length, crc), 2));
        Assert.StartsWith("channel 2: channel-end packet with ", e.Message);
        Assert.EndsWith("(must be 0xffff, 0, 0, 0)", e.Message);
    }

    [Fact]
    public void Reserved_bytes_and_lengths_past_the_protocol_maximum_are_refused()
    {
        foreach (ulong reserved in new[] { 1UL, 1UL << 63 })
            Assert.Contains("non-zero reserved",
                Assert.Throws<ProtocolException>(() => PacketHeader.Read(Header(0, 1, 0, 10, reserved: reserved), 1)).Message);
        Assert.Contains("exceeds the protocol maximum",
            Assert.Throws<ProtocolException>(() => PacketHeader.Read(Header(0, 6, 0, Protocol.MaxBufferSize + 1u), 1)).Message);
        Assert.Contains("exceeds the protocol maximum",
            Assert.Throws<ProtocolException>(() => PacketHeader.Read(Header(0, 1, 0, uint.MaxValue), 1)).Message);
    }

    /// <summary>
    /// A raw source that opens a session with one device and one data channel (32 KiB buffers) and writes the packet
    /// <paramref name="header"/> followed by <paramref name="payload"/> bytes: the destination's Error must name the violation.
    /// </summary>
    private static (MigrationException Peer, RunReport Destination) SendPacket(byte[] header, int payload)
    {
        var (_, dst) = TestDevices.Pairs(1);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 4);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var destination = new MigrationDestination(dst, TestDevices.Options(1) with { Timeout = TimeSpan.FromSeconds(5) });
        RunReport? report = null;
        var t = new Thread(() => report = destination.Run(listener)) { IsBackground = true };
        t.Start();
        using var main = Connect(ep, 0);
        var channel = new MainChannel(main, "destination");
        channel.Send(new DeviceListMessage(32 << 10, LoadingMode.Decoupled, [new DeviceOffer("sim:vf0", 0, MigrationFlags.StopCopy)]));
        channel.Expect<AcceptMessage>("before accepting");
        using var data = Connect(ep, 1);
        data.WritePacket(header, new byte[payload]);
        var e = Assert.Throws<MigrationException>(() => channel.Expect<SwitchoverMessage>("after the packet"));
        Assert.True(t.Join(TimeSpan.FromSeconds(20)));
        Assert.False(report!.Ok);
        Assert.Equal(MigrationState.Running, dst[0].GetState());
        return (e, report);
    }

    [Theory]
    [InlineData(false, 0, "precopy mark in a run that is not live")]
    [InlineData(true, 1, "precopy mark for unknown device 1")]
    public void A_precopy_mark_out_of_place_fails_the_session_and_resets_the_destination(bool live, int device, string error)
    {
        var (_, dst) = TestDevices.Pairs(1);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 4);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var destination = new MigrationDestination(dst, TestDevices.Options(1) with { Timeout = TimeSpan.FromSeconds(5) });
        RunReport? report = null;
        var t = new Thread(() => report = destination.Run(listener)) { IsBackground = true };
        t.Start();
        using var main = Connect(ep, 0);
        var channel = new MainChannel(main, "destination");
        channel.Send(new DeviceListMessage(32 << 10, LoadingMode.Decoupled, [new DeviceOffer("sim:vf0", 0, MigrationFlags.StopCopy)], live));
        channel.Expect<AcceptMessage>("before accepting");
        using var data = Connect(ep, 1);
        channel.Send(new PrecopyMarkMessage(device, 0));
        var e = Assert.Throws<MigrationException>(() => channel.Expect<SwitchoverMessage>("after the mark"));
        Assert.Contains(error, e.Message, StringComparison.Ordinal);
        Assert.True(t.Join(TimeSpan.FromSeconds(20)));
        Assert.False(report!.Ok);
        Assert.Equal(MigrationState.Running, dst[0].GetState());
    }

    private static Connection Connect(IPEndPoint ep, ushort channel)
    {
        var c = Connection.Connect(ep, TimeSpan.FromSeconds(5), $"channel {channel}");
        c.ReceiveTimeout = TimeSpan.FromSeconds(5);
        var hs = new byte[Protocol.HandshakeSize];
        new Handshake(channel, 7, 1).Write(hs);
        c.WriteAll(hs);
        var reply = new byte[Protocol.HandshakeReplySize];
        Assert.True(c.ReadExact(reply));
        Assert.Equal(HandshakeStatus.Ok, HandshakeReply.Read(reply).Status);
        return c;
    }

    public static TheoryData<string, int, string, int?> SessionCases => new()
    {
        // header (device, flags, buffer, length) as "d f b l", payload bytes sent, what the Error says, about which device
        { "65535 8 0 16", 16, "channel-end packet with device 65535, buffer 0, length 16", null },
        { "0 1 0 0", 0, "payload length 0", 0 },
        { "0 1 0 32769", 32769, "payload length 32769 (buffer size 32768)", 0 },
        { "0 6 0 32769", 32769, "payload length 32769 (buffer size 32768)", 0 },
        { "1 1 0 10", 10, "packet for device 1, the session has 1", null },
        { "65535 1 0 10", 10, "packet for device 65535, the session has 1", null },
        { "0 2 0 0", 0, "invalid packet flags 0x2", null },
        { "0 9 0 0", 0, "invalid packet flags 0x9", null },
    };

    [Theory]
    [MemberData(nameof(SessionCases))]
    public void A_forbidden_packet_on_a_data_channel_fails_the_session_naming_it(string fields, int payload, string expected, int? device)
    {
        var f = fields.Split(' ').Select(uint.Parse).ToArray();
        var (peer, report) = SendPacket(Header((ushort)f[0], (ushort)f[1], f[2], f[3]), payload);
        Assert.Equal(FailureOrigin.Peer, peer.Origin);
        Assert.Contains(expected, peer.Message);
        Assert.Equal(device, peer.Device);
        Assert.Equal((FailureOrigin.Local, device), (report.Failure!.Origin, report.Failure.Device));
    }
}
