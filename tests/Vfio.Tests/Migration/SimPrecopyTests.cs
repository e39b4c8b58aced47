using System.Buffers.Binary;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>The simulated and null devices' PRE_COPY: mlx5's precopy rules, the stream's continuity and its checks.</summary>
public sealed class SimPrecopyTests
{
    // 32 regions of 16 KiB; at 64 MiB/s the device dirties a region every 0.25 ms.
    private static SimulatedDeviceOptions Dirtying(double rate = 64 << 20) => new()
    {
        StateSize = 512 << 10,
        RecordDataSize = 16 << 10,
        LoadBytesPerSecond = 0,
        DirtyBytesPerSecond = rate,
    };

    private static long RecordBytes => SimStream.DataOverhead + (16 << 10);

    /// <summary>Reads until the device has nothing for now or the stream ends; returns the bytes and the status that stopped it.</summary>
    private static (byte[] Bytes, DataReadStatus Status) Drain(IDeviceDataStream s)
    {
        var ms = new MemoryStream();
        var buf = new byte[40_000];
        while (true)
        {
            var r = s.Read(buf);
            if (r.Status != DataReadStatus.Data) return (ms.ToArray(), r.Status);
            ms.Write(buf, 0, r.Bytes);
        }
    }

    private static void Idle(int ms) => Thread.Sleep(ms);

    [Fact]
    public void Data_dirtied_in_pre_copy_becomes_readable_only_after_the_precopy_info_call()
    {
        var o = Dirtying();
        using var dev = new SimulatedDevice("sim:p", o);
        Assert.True(dev.Flags.HasFlag(MigrationFlags.PreCopy));
        using var s = dev.SetState(MigrationState.PreCopy)!;
        Assert.NotNull(s);

        // Nothing was read: the initial image is all there is (regions dirtied before their record begins are simply
        // read at their newer content), so nothing is dirty yet.
        var first = s.GetPrecopyInfo();
        Assert.Equal((ulong)o.StateSize, first.InitialBytes);
        Assert.Equal(0UL, first.DirtyBytes);

        var (initial, status) = Drain(s);
        Assert.Equal(o.StateSize, initial.Length); // exactly the initial image, then ENOMSG
        Assert.Equal(DataReadStatus.NoDataForNow, status);
        Idle(30);
        // The device ran (and dirtied regions already sent), but without the info call nothing is readable.
        Assert.Equal(DataReadStatus.NoDataForNow, Drain(s).Status);
        Assert.Empty(Drain(s).Bytes);

        var info = s.GetPrecopyInfo();
        Assert.Equal(0UL, info.InitialBytes);
        Assert.True(info.DirtyBytes > 0, "the device dirtied nothing in 30 ms at 64 MiB/s");
        Assert.True(info.DirtyBytes <= (ulong)(32 * RecordBytes), $"{info.DirtyBytes} dirty bytes: more than every region once");
        // What a switchover would still move: at least what is readable now, and the end record.
        ulong estimate = dev.StopCopySizeEstimate()!.Value;
        Assert.True(estimate >= info.DirtyBytes + SimStream.EndRecordSize, $"estimate {estimate}, dirty {info.DirtyBytes}");
        var (dirty, after) = Drain(s);
        Assert.Equal((long)info.DirtyBytes, dirty.Length); // exactly what the info call made readable
        Assert.Equal(DataReadStatus.NoDataForNow, after);
    }

    [Fact]
    public void A_region_dirtied_before_its_record_is_read_is_sent_once_at_its_new_content()
    {
        // About 100 regions' worth of dirt over 32 regions before anything is read: nearly every region is hit.
        var o = Dirtying(16 << 20);
        using var dev = new SimulatedDevice("sim:early", o);
        using var s = dev.SetState(MigrationState.PreCopy)!;
        Idle(100);
        var read = System.Diagnostics.Stopwatch.StartNew();
        var (initial, _) = Drain(s);
        var info = s.GetPrecopyInfo();
        double readMs = read.Elapsed.TotalMilliseconds;
        var parser = Parse(initial);
        int newer = Enumerable.Range(0, parser.DataRecords).Count(k => parser.Region(k).Generation > 0);
        Assert.True(newer >= 24, $"{newer} of {parser.DataRecords} initial records carry the dirt from before they were read");
        // What they carry is not owed again: only the dirt from while the image was read (a region per ms on average,
        // twice that and a few allowed for) is.
        double allowed = (2 * readMs + 4) * RecordBytes;
        Assert.True(info.DirtyBytes <= allowed, $"{info.DirtyBytes} dirty bytes after an initial image read in {readMs:0.0} ms");
    }

    [Fact]
    public void The_precopy_stream_goes_on_into_stop_copy_and_loads_the_final_state()
    {
        var o = Dirtying();
        using var src = new SimulatedDevice("sim:live", o);
        string named = Digest(new SimulatedDevice("sim:live", o));
        var stream = new MemoryStream();
        using (var s = src.SetState(MigrationState.PreCopy)!)
        {
            for (int round = 0; round < 4; round++)
            {
                stream.Write(Drain(s).Bytes);
                Idle(10);
                s.GetPrecopyInfo();
            }
            Idle(10);
            // PRE_COPY -> PRE_COPY_P2P -> STOP_COPY on the same stream: no new one.
            Assert.Null(src.SetState(MigrationState.StopCopy));
            Assert.Throws<VfioException>(() => s.GetPrecopyInfo()); // only in PRE_COPY
            var (rest, end) = Drain(s);
            Assert.Equal(DataReadStatus.EndOfStream, end);
            stream.Write(rest);
            Assert.Equal(0UL, src.StopCopySizeEstimate());
        }
        src.SetState(MigrationState.Stop);
        Assert.True(stream.Length > o.StateSize + 4 * RecordBytes, $"{stream.Length} bytes: hardly any dirty records");
        Assert.NotEqual(named, Digest(src)); // it ran: its state is not the one its name gives

        using var dst = new SimulatedDevice("sim:other", o);
        Assert.Null(Load(dst, stream.ToArray(), src.SaveConfig()));
        Assert.Equal(Digest(src), Digest(dst));
    }

    [Fact]
    public void A_device_that_left_pre_copy_keeps_its_dirtied_state_and_stop_copy_moves_it_exactly()
    {
        var o = Dirtying();
        using var src = new SimulatedDevice("sim:abort", o);
        string before = Digest(src);
        using (var s = src.SetState(MigrationState.PreCopy)!)
        {
            Drain(s);
            Idle(20);
            s.GetPrecopyInfo();
            Drain(s);
            Idle(20);
        }
        Assert.Null(src.SetState(MigrationState.Running)); // the migration was aborted
        string after = Digest(src);
        Assert.NotEqual(before, after);
        Idle(20);
        Assert.Equal(after, Digest(src)); // in RUNNING the device holds still

        src.SetState(MigrationState.Stop);
        var plain = UnitTests.Read(src);
        Assert.Equal(o.StateSize, plain.Length); // a STOP_COPY stream: exactly the state size
        using var dst = new SimulatedDevice("sim:other", o);
        Assert.Null(Load(dst, plain, src.SaveConfig()));
        Assert.Equal(Digest(src), Digest(dst));

        // The stream's own hash is the state hash the device computes without the data.
        var parser = Parse(plain);
        Assert.Equal(parser.StreamHash, SimStream.StateHash(parser.Seed, parser.TotalBytes, parser.RecordDataSize, parser.Region));
        Assert.True(parser.Dirtied);
    }

    [Fact]
    public void A_corrupted_misordered_or_truncated_precopy_stream_is_refused()
    {
        var (stream, records, config, digest) = LiveStream();
        var dirty = records.Where(r => r.Tag == SimStream.TagDirty).ToList();
        Assert.True(dirty.Count >= 3, $"{dirty.Count} dirty records");
        var end = records[^1];
        Assert.Equal(SimStream.TagEnd, end.Tag);

        // The stream as it is loads, and to the source's state.
        using (var ok = new SimulatedDevice("sim:ok", Dirtying()))
        {
            Assert.Null(Load(ok, stream, config));
            Assert.Equal(digest, Digest(ok));
        }

        var corrupt = (byte[])stream.Clone();
        corrupt[dirty[1].Offset + 40 + 100] ^= 0x10; // a data byte of a dirty record
        Assert.Contains("checksum mismatch", Refused(corrupt));

        var swapped = Splice(stream, dirty[0], dirty[1]);
        Assert.Contains("out of order", Refused(swapped));

        var dropped = Concat(stream[..dirty[1].Offset], stream[(dirty[1].Offset + dirty[1].Size)..]);
        Assert.Contains("out of order", Refused(dropped));

        var truncated = stream[..end.Offset];
        Assert.Contains("incomplete stream", Refused(truncated));

        var extra = Concat(stream, stream[dirty[0].Offset..(dirty[0].Offset + dirty[0].Size)]);
        Assert.Contains("after the end record", Refused(extra));

        // A dirty record renumbered to follow the others but older than what its region has: refused by generation.
        var stale = Concat(stream[..end.Offset], stream[dirty[^1].Offset..(dirty[^1].Offset + dirty[^1].Size)]);
        BinaryPrimitives.WriteUInt32LittleEndian(stale.AsSpan(end.Offset + 28), (uint)dirty.Count);
        Assert.Contains("not newer", Refused(stale));

        // A STOP_COPY stream with a dirty record after its last data record.
        using var plainSrc = new SimulatedDevice("sim:plain", Dirtying());
        plainSrc.SetState(MigrationState.Stop);
        var plain = UnitTests.Read(plainSrc);
        Assert.Contains("beyond the end of the stream", Refused(Concat(plain, stream[dirty[0].Offset..(dirty[0].Offset + dirty[0].Size)])));
    }

    [Fact]
    public void Precopy_info_on_a_stop_copy_stream_fails_with_einval()
    {
        using var dev = new SimulatedDevice("sim:i", Dirtying());
        dev.SetState(MigrationState.Stop);
        using var s = dev.SetState(MigrationState.StopCopy)!;
        var e = Assert.Throws<VfioException>(() => s.GetPrecopyInfo());
        Assert.Equal(Vfio.Interop.Libc.EINVAL, e.Errno);
    }

    [Fact]
    public void Null_device_pre_copy_follows_the_same_rules_in_place()
    {
        const long size = 300_000;
        using var dev = new NullDevice("null:p", size, dirtyBytesPerSecond: 64 << 20);
        Assert.True(dev.Flags.HasFlag(MigrationFlags.PreCopy));
        var s = Assert.IsAssignableFrom<IInPlaceDataStream>(dev.SetState(MigrationState.PreCopy));
        long read = 0;
        ReadOnlyMemory<byte> chunk;
        while (!(chunk = s.ReadInPlace(64 << 10)).IsEmpty) read += chunk.Length;
        Assert.Equal(size, read); // the initial image, then nothing for now
        Idle(20);
        Assert.True(s.ReadInPlace(64 << 10).IsEmpty); // dirtied, but not readable before the info call
        Assert.Equal(DataReadStatus.NoDataForNow, s.Read(new byte[100]).Status);
        var info = s.GetPrecopyInfo();
        Assert.Equal(0UL, info.InitialBytes);
        Assert.InRange(info.DirtyBytes, 1UL, (ulong)size); // at most the whole state is outstanding
        long dirty = 0;
        while (!(chunk = s.ReadInPlace(64 << 10)).IsEmpty) dirty += chunk.Length;
        Assert.Equal((long)info.DirtyBytes, dirty);
        Idle(10);
        Assert.Null(dev.SetState(MigrationState.StopCopy));
        long rest = 0;
        while (!(chunk = s.ReadInPlace(64 << 10)).IsEmpty) rest += chunk.Length;
        Assert.True(rest > 0, "what was dirtied since the last info is sent in STOP_COPY");
        Assert.Equal(DataReadStatus.EndOfStream, s.Read(new byte[100]).Status); // in STOP_COPY, empty is the end
        Assert.Throws<VfioException>(() => s.GetPrecopyInfo());
        s.Dispose();
        dev.SetState(MigrationState.Running);
    }

    // --- helpers ---

    private static string Digest(SimulatedDevice d) => $"{d.StateDigest():x16}";

    private readonly record struct Record(int Offset, int Size, uint Tag);

    private static List<Record> Records(byte[] stream)
    {
        var list = new List<Record>();
        for (int o = 0; o < stream.Length;)
        {
            int size = SimStream.HeaderSize + (int)BinaryPrimitives.ReadUInt64LittleEndian(stream.AsSpan(o));
            list.Add(new Record(o, size, BinaryPrimitives.ReadUInt32LittleEndian(stream.AsSpan(o + 12))));
            o += size;
        }
        return list;
    }

    /// <summary>A complete precopy stream with dirty records, its records, the source's config and final digest.</summary>
    private static (byte[] Stream, List<Record> Records, byte[] Config, string Digest) LiveStream()
    {
        using var src = new SimulatedDevice("sim:src", Dirtying());
        var ms = new MemoryStream();
        using (var s = src.SetState(MigrationState.PreCopy)!)
        {
            for (int round = 0; round < 3; round++)
            {
                ms.Write(Drain(s).Bytes);
                Idle(10);
                s.GetPrecopyInfo();
            }
            src.SetState(MigrationState.StopCopy);
            ms.Write(Drain(s).Bytes);
        }
        src.SetState(MigrationState.Stop);
        var bytes = ms.ToArray();
        return (bytes, Records(bytes), src.SaveConfig(), Digest(src));
    }

    private static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    /// <summary>The stream with records a and b (a before b) swapped.</summary>
    private static byte[] Splice(byte[] s, Record a, Record b) => Concat(
        s[..a.Offset], s[b.Offset..(b.Offset + b.Size)], s[(a.Offset + a.Size)..b.Offset], s[a.Offset..(a.Offset + a.Size)],
        s[(b.Offset + b.Size)..]);

    private static SimStreamParser Parse(byte[] stream)
    {
        var p = new SimStreamParser();
        var span = stream.AsSpan();
        while (!span.IsEmpty)
        {
            int k = (int)Math.Min(span.Length, p.UntilBoundary);
            p.Consume(span[..k]);
            span = span[k..];
        }
        return p;
    }

    /// <summary>Loads a stream into a resuming device: null when it is accepted, else why the device refused it.</summary>
    private static string? Load(SimulatedDevice dst, byte[] stream, byte[] config)
    {
        dst.SetState(MigrationState.Stop);
        using var w = dst.SetState(MigrationState.Resuming)!;
        try
        {
            w.WriteAll(stream);
            dst.SetState(MigrationState.Stop);
        }
        catch (VfioException e)
        {
            if (dst.GetState() == MigrationState.Resuming)
            {
                // The write failed: the session is poisoned, and leaving RESUMING fails too.
                var stop = Assert.Throws<VfioException>(() => dst.SetState(MigrationState.Stop));
                Assert.Equal(Vfio.Interop.Libc.EIO, stop.Errno);
            }
            Assert.Equal(MigrationState.Error, dst.GetState());
            dst.Reset();
            return e.Message;
        }
        dst.RestoreConfig(config);
        dst.SetState(MigrationState.Running);
        return null;
    }

    private static string Refused(byte[] stream)
    {
        using var dst = new SimulatedDevice("sim:dst", Dirtying());
        return Load(dst, stream, []) ?? "accepted";
    }
}
