using System.Diagnostics;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>The pieces: CRC32C, packet/handshake validation, the reorder queue's checks, the simulated device.</summary>
public class UnitTests
{
    [Fact]
    public void Crc32C_matches_the_standard_check_value()
    {
        Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8));
        var data = Enumerable.Range(0, 1000).Select(i => (byte)i).ToArray();
        uint split = ~Crc32C.Append(Crc32C.Append(0xFFFFFFFF, data.AsSpan(0, 333)), data.AsSpan(333));
        Assert.Equal(Crc32C.Compute(data), split);
    }

    [Fact]
    public void Crc32C_interleaved_lanes_and_folding_agree_with_one_lane_for_every_length_and_offset()
    {
        var data = new byte[70_000];
        new Random(7).NextBytes(data);
        // (also across the folding path's thresholds where the CPU has it: 1024 bytes, 256-byte steps, 16-byte lanes)
        int[] lengths = [0, 1, 7, 8, 1023, 1024, 1025, 1039, 1040, 1279, 1280, 1296, 12_287, 12_288, 12_289, 24_576, 30_001, 65_536, 69_999];
        foreach (int len in lengths)
            foreach (int off in new[] { 0, 1, 3 })
            {
                var span = data.AsSpan(off, Math.Min(len, data.Length - off));
                Assert.Equal(Crc32C.AppendSimple(0xFFFFFFFF, span), Crc32C.Append(0xFFFFFFFF, span));
                Assert.Equal(Crc32C.AppendSimple(0x12345678, span), Crc32C.Append(0x12345678, span));
            }
    }

    [Fact]
    public void Packet_header_round_trips_and_bad_ones_are_refused()
    {
        var b = new byte[Protocol.PacketHeaderSize];
        new PacketHeader(3, PacketFlags.Data, 17, 4096, 0xdeadbeef).Write(b);
        Assert.Equal(new PacketHeader(3, PacketFlags.Data, 17, 4096, 0xdeadbeef), PacketHeader.Read(b, 1));

        var bad = (byte[])b.Clone(); bad[0] ^= 1;
        Assert.Contains("magic", Assert.Throws<ProtocolException>(() => PacketHeader.Read(bad, 1)).Message);
        bad = (byte[])b.Clone(); bad[9] ^= 1;
        Assert.Contains("header CRC", Assert.Throws<ProtocolException>(() => PacketHeader.Read(bad, 1)).Message);
        new PacketHeader(3, PacketFlags.Data | PacketFlags.End, 17, 4096, 0).Write(bad);
        Assert.Contains("flags", Assert.Throws<ProtocolException>(() => PacketHeader.Read(bad, 1)).Message);
        new PacketHeader(3, PacketFlags.Data, 17, Protocol.MaxBufferSize + 1, 0).Write(bad);
        Assert.Contains("length", Assert.Throws<ProtocolException>(() => PacketHeader.Read(bad, 1)).Message);
    }

    /// <summary>Found by the fuzzer: a channel end with a payload length or a device was accepted, its payload left unread.</summary>
    [Fact]
    public void A_channel_end_with_a_device_or_a_payload_is_refused()
    {
        var b = new byte[Protocol.PacketHeaderSize];
        new PacketHeader(Protocol.ChannelEndDevice, PacketFlags.ChannelEnd, 0, 0, 0).Write(b);
        Assert.Equal(PacketFlags.ChannelEnd, PacketHeader.Read(b, 1).Flags);
        new PacketHeader(Protocol.ChannelEndDevice, PacketFlags.ChannelEnd, 0, 16, 0).Write(b);
        Assert.Contains("channel-end packet", Assert.Throws<ProtocolException>(() => PacketHeader.Read(b, 1)).Message);
        new PacketHeader(2, PacketFlags.ChannelEnd, 0, 0, 0).Write(b);
        Assert.Contains("channel-end packet", Assert.Throws<ProtocolException>(() => PacketHeader.Read(b, 1)).Message);
    }

    [Fact]
    public void Handshake_checks_magic_version_and_crc()
    {
        var b = new byte[Protocol.HandshakeSize];
        new Handshake(2, 0x1234, 6).Write(b);
        Assert.Equal(new Handshake(2, 0x1234, 6), Handshake.Read(b));
        var v = (byte[])b.Clone(); v[4] = (byte)(Protocol.Version + 1);
        Assert.Contains("version", Assert.Throws<ProtocolException>(() => Handshake.Read(v)).Message);
        var c = (byte[])b.Clone(); c[10] ^= 1;
        Assert.Contains("CRC", Assert.Throws<ProtocolException>(() => Handshake.Read(c)).Message);
        var m = (byte[])b.Clone(); m[0] = 0;
        Assert.Contains("magic", Assert.Throws<ProtocolException>(() => Handshake.Read(m)).Message);
    }

    [Fact]
    public void Reorder_queue_refuses_duplicates_out_of_window_and_data_after_end()
    {
        using var dev = new SimulatedDevice("sim:q", TestDevices.Fast());
        dev.SetState(MigrationState.Stop);
        using var stream = dev.SetState(MigrationState.Resuming)!;
        var pool = new BufferPool(4096, 8);
        var timeline = new RunTimeline();
        var sink = new DeviceSink(0, dev, stream, 4, pool, timeline.AddTrack("t", "loader", "destination", 0));
        sink.Offer(1, PacketFlags.Data, pool.Rent(), 10, 0, 1);
        Assert.Contains("duplicate", Assert.Throws<ProtocolException>(() => sink.Offer(1, PacketFlags.Data, pool.Rent(), 10, 0, 2)).Message);
        Assert.Contains("outside the window", Assert.Throws<ProtocolException>(() => sink.Offer(4, PacketFlags.Data, pool.Rent(), 10, 0, 1)).Message);
        Assert.Contains("before data buffer 1",
            Assert.Throws<ProtocolException>(() => sink.Offer(0, PacketFlags.Config | PacketFlags.End, pool.Rent(), 10, 0, 1)).Message);
        sink.Offer(2, PacketFlags.Config | PacketFlags.End, pool.Rent(), 10, 0, 1);
        Assert.Contains("after the device's end",
            Assert.Throws<ProtocolException>(() => sink.Offer(3, PacketFlags.Data, pool.Rent(), 10, 0, 1)).Message);
        Assert.Equal(20, sink.Report.MaxQueuedBytes);
        dev.Reset();
    }

    [Theory]
    [InlineData(4096, 100)]
    [InlineData(300_001, 10_007)]
    [InlineData(64 << 20, 4 << 20)]
    [InlineData(1 << 20, 1 << 20)]
    public void Sim_stream_has_exactly_the_state_size_and_parses(long size, int record)
    {
        var gen = new SimStreamGenerator(SimStream.SeedOf("x"), size, record);
        var parser = new SimStreamParser();
        var buf = new byte[77_777];
        long total = 0;
        int n;
        while ((n = gen.Fill(buf)) > 0)
        {
            total += n;
            var span = buf.AsSpan(0, n);
            while (!span.IsEmpty)
            {
                int k = (int)Math.Min(span.Length, parser.UntilBoundary);
                parser.Consume(span[..k]);
                span = span[k..];
            }
        }
        Assert.Equal(size, total);
        Assert.True(parser.Complete, parser.Progress);
        Assert.Equal(SimStream.Layout(size, record).Records, parser.DataRecords);
    }

    [Fact]
    public void Sim_devices_of_different_names_differ_and_of_one_name_agree()
    {
        var o = TestDevices.Fast();
        Assert.Equal(new SimulatedDevice("sim:a", o).StateDigest(), new SimulatedDevice("sim:a", o).StateDigest());
        Assert.NotEqual(new SimulatedDevice("sim:a", o).StateDigest(), new SimulatedDevice("sim:b", o).StateDigest());
    }

    [Fact]
    public void Sim_write_completing_a_record_blocks_for_the_load()
    {
        // Two records of 256 KiB at 8 MiB/s: about 31 ms each.
        var o = new SimulatedDeviceOptions { StateSize = 512 << 10, RecordDataSize = (256 << 10) - 100, LoadBytesPerSecond = 8 << 20 };
        var src = new SimulatedDevice("sim:w", o);
        var dst = new SimulatedDevice("sim:w2", o);
        src.SetState(MigrationState.Stop);
        var stream = Read(src);
        dst.SetState(MigrationState.Stop);
        using var w = dst.SetState(MigrationState.Resuming)!;
        var sw = Stopwatch.StartNew();
        // Past the end of the first record: the write cannot return before that record's load is over.
        w.WriteAll(stream.AsSpan(0, 460 << 10));
        var first = sw.Elapsed;
        w.WriteAll(stream.AsSpan(460 << 10));
        dst.SetState(MigrationState.Stop);
        var all = sw.Elapsed;
        Assert.True(first.TotalMilliseconds >= 25, $"first write returned after {first.TotalMilliseconds} ms");
        Assert.True(all.TotalMilliseconds >= 55, $"both records loaded after {all.TotalMilliseconds} ms");
        dst.RestoreConfig(src.SaveConfig());
        Assert.Equal(src.StateDigest(), dst.StateDigest());
    }

    [Fact]
    public void Sim_reset_cuts_a_load_in_progress_short_and_its_write_fails()
    {
        // One record of 1 MiB at 1 MiB/s: its load would last a second.
        var o = new SimulatedDeviceOptions { StateSize = 1 << 20, RecordDataSize = 1 << 20, LoadBytesPerSecond = 1 << 20 };
        var src = new SimulatedDevice("sim:r", o);
        var pf = new SimulatedPf();
        var dst = new SimulatedDevice("sim:r2", o, pf);
        src.SetState(MigrationState.Stop);
        var stream = Read(src);
        dst.SetState(MigrationState.Stop);
        using var w = dst.SetState(MigrationState.Resuming)!;
        var writer = Task.Run(() => w.WriteAll(stream), TestContext.Current.CancellationToken);
        Assert.True(SpinWait.SpinUntil(() => pf.PeakConcurrentLoads > 0, TimeSpan.FromSeconds(10)), "the load never began");
        var sw = Stopwatch.StartNew();
        dst.Reset();
        var e = Assert.Throws<AggregateException>(() => writer.Wait(5000, TestContext.Current.CancellationToken));
        Assert.Contains("reset during a load", Assert.IsType<VfioException>(e.InnerException).Message);
        Assert.True(sw.Elapsed < TimeSpan.FromMilliseconds(500), $"the write ended {sw.Elapsed.TotalMilliseconds} ms after the reset, not at once");
        Assert.Equal(MigrationState.Running, dst.GetState());
    }

    [Fact]
    public void Sim_device_refuses_garbage_like_a_real_one()
    {
        var dev = new SimulatedDevice("sim:g", TestDevices.Fast());
        dev.SetState(MigrationState.Stop);
        var w = dev.SetState(MigrationState.Resuming)!;
        var garbage = new byte[200_000];
        new Random(1).NextBytes(garbage);
        try { w.WriteAll(garbage); } catch (VfioException) { /* the write may fail: the session is poisoned */ }
        var e = Assert.Throws<VfioException>(() => dev.SetState(MigrationState.Stop));
        Assert.Contains("refused", e.Message);
        Assert.Equal(MigrationState.Error, dev.GetState());
        Assert.Throws<VfioException>(() => dev.SetState(MigrationState.Running));
        dev.Reset();
        Assert.Equal(MigrationState.Running, dev.GetState());
        w.Dispose();
    }

    [Fact]
    public void Sim_device_walks_the_state_machine_and_its_data_fd_dies_with_the_session()
    {
        var dev = new SimulatedDevice("sim:s", TestDevices.Fast());
        Assert.Null(dev.SetState(MigrationState.Stop)); // RUNNING -> RUNNING_P2P -> STOP
        Assert.Equal(MigrationState.Stop, dev.GetState());
        var r = dev.SetState(MigrationState.StopCopy)!;
        var buf = new byte[1000];
        Assert.Equal(DataReadStatus.Data, r.Read(buf).Status);
        Assert.Null(dev.SetState(MigrationState.Running));
        Assert.NotEqual(DataReadStatus.Data, r.Read(buf).Status);
        r.Dispose();
        Assert.Throws<VfioException>(() => dev.SetState(MigrationState.Error));
        // As the kernel: never PRE_COPY from STOP_COPY.
        dev.SetState(MigrationState.StopCopy)!.Dispose();
        Assert.Throws<VfioException>(() => dev.SetState(MigrationState.PreCopy));
    }

    internal static byte[] Read(SimulatedDevice d)
    {
        using var r = d.SetState(MigrationState.StopCopy)!;
        var ms = new MemoryStream();
        var buf = new byte[65536];
        while (true)
        {
            var x = r.Read(buf);
            if (x.Status != DataReadStatus.Data) break;
            ms.Write(buf, 0, x.Bytes);
        }
        d.SetState(MigrationState.Stop);
        return ms.ToArray();
    }
}
