using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.InteropServices;

using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// The simulated device's migration stream: mlx5-style records, each a 16-byte little-endian header
/// {u64 record_size, u32 flags, u32 tag} + payload. The device's state is n data regions (one per data record), each
/// at a generation (0 as named; the device bumps it when it dirties the region in PRE_COPY). A STOP_COPY stream is
/// exactly StateSize bytes:
/// <list type="number">
/// <item>tag 1 (STOP_COPY_SIZE, flags OPTIONAL), payload u64 total stream bytes (as mlx5 sends);</item>
/// <item>tag 0x5A11 (simulator descriptor, OPTIONAL), payload {u64 seed, u32 data records, u32 record data size,
/// u64 total bytes, u32 flags (PRECOPY 1), u32 CRC32C of the preceding 28 bytes};</item>
/// <item>n data records, tag 0 ("firmware image"), payload {u32 sequence, u32 'SIMD', u32 generation, u32 0} + data +
/// {u32 CRC32C(data), u32 'SIMT'}; all data records hold RecordDataSize bytes of data but the last.</item>
/// </list>
/// A stream opened by PRE_COPY (descriptor flag PRECOPY) starts with the same StateSize bytes, the initial image (each
/// region at its generation when its record is read), then goes on with dirty records, tag 0x5A12, payload
/// {u32 region, u32 'SIMP', u32 generation (newer than the region's last one), u32 dirty record sequence} + the
/// region's data + trailer as above, and ends with one end record, tag 0x5A13, payload {u64 dirty records,
/// u64 stream bytes before this record, u32 0, u32 CRC32C of the preceding 20 bytes}.
/// Data bytes are a counter-based pseudo-random function of (seed, region, generation, offset): deterministic, cheap to
/// generate.
/// </summary>
public static class SimStream
{
    public const uint TagStopCopySize = 1;
    public const uint TagDescriptor = 0x5A11;
    public const uint TagData = 0;
    public const uint TagDirty = 0x5A12;
    public const uint TagEnd = 0x5A13;
    public const uint FlagOptional = 1;
    public const int HeaderSize = 16;
    public const int Record0Size = HeaderSize + 8;
    public const int DescriptorPayload = 32;
    public const int Record1Size = HeaderSize + DescriptorPayload;
    public const int DataOverhead = HeaderSize + 16 + 8;
    public const uint DataMagic = 0x444D4953;  // "SIMD"
    public const uint TrailerMagic = 0x544D4953; // "SIMT"
    public const uint DirtyMagic = 0x504D4953;   // "SIMP"
    public const uint DescriptorPrecopy = 1;
    public const int EndPayload = 24;
    public const int EndRecordSize = HeaderSize + EndPayload;
    public const long MinStateSize = 4096;
    public const long MaxStateSize = 1L << 40;

    public static ulong SeedOf(string name) => XxHash64.HashToUInt64(System.Text.Encoding.UTF8.GetBytes(name));

    /// <summary>Number of data records and the data length of the last one.</summary>
    public static (int Records, int LastLength) Layout(long stateSize, int recordDataSize)
    {
        if (stateSize < MinStateSize || stateSize > MaxStateSize)
            throw new ArgumentOutOfRangeException(nameof(stateSize), $"state size must be between {MinStateSize} and {MaxStateSize} bytes");
        long avail = stateSize - Record0Size - Record1Size;
        long per = (long)recordDataSize + DataOverhead;
        long records = (avail + per - 1) / per;
        long last = avail - (records - 1) * per - DataOverhead;
        if (last <= 0) { records--; last = avail - (records - 1) * per - DataOverhead; }
        if (records > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(recordDataSize), "too many records");
        return ((int)records, (int)last);
    }

    public static ulong Word(ulong seed, int sequence, long wordIndex)
    {
        ulong z = seed + ((ulong)(uint)sequence << 40) + (ulong)wordIndex * 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Words in a seed's pattern: a prime, so that buffers 1 MiB apart, or records, never line up with it.</summary>
    public const int PatternWords = 65521;
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<ulong, byte[]> s_patterns = new();

    /// <summary>
    /// A seed's pattern, PatternWords pseudo-random words, stored twice in a row so that any window of up to
    /// PatternWords x 8 bytes is contiguous. Made once per seed (about 0.5 MiB), shared by every device of that content.
    /// </summary>
    private static byte[] Pattern(ulong seed) => s_patterns.GetOrAdd(seed, sd =>
    {
        var p = new byte[2 * PatternWords * 8];
        var w = MemoryMarshal.Cast<byte, ulong>(p.AsSpan());
        for (int k = 0; k < PatternWords; k++)
            w[k] = w[PatternWords + k] = BitConverter.IsLittleEndian ? Word(sd, -3, k) : BinaryPrimitives.ReverseEndianness(Word(sd, -3, k));
        if (s_patterns.Count > 256) s_patterns.Clear(); // many contents in one process (tests): keep memory bounded
        return p;
    });

    /// <summary>
    /// Fills dst with data bytes [offset, offset+dst.Length) of data region <paramref name="sequence"/> at generation 0:
    /// the seed's pattern, rotated by an amount that depends on the region, so it costs a memory copy per byte (the
    /// simulated device must be cheap beside the engine it is used to measure).
    /// </summary>
    public static void FillData(ulong seed, int sequence, long offset, Span<byte> dst) => FillData(seed, sequence, 0, offset, dst);

    /// <summary>As above, for the region at <paramref name="generation"/> (another rotation of the same pattern).</summary>
    public static void FillData(ulong seed, int sequence, uint generation, long offset, Span<byte> dst)
    {
        var pattern = Pattern(seed);
        const long period = PatternWords * 8L;
        long rotation = (long)(Word(seed + generation * 0xD1B54A32D192ED03UL, sequence, -1) % PatternWords) * 8;
        long pos = (offset + rotation) % period;
        while (!dst.IsEmpty)
        {
            int n = (int)Math.Min(dst.Length, period);
            pattern.AsSpan((int)pos, n).CopyTo(dst);
            dst = dst[n..];
            pos = (pos + n) % period;
        }
    }

    /// <summary>The CRC32C of a region's <paramref name="length"/> data bytes at a generation (generated for the purpose).</summary>
    public static uint DataCrc(ulong seed, int sequence, uint generation, int length)
    {
        var buf = System.Buffers.ArrayPool<byte>.Shared.Rent(64 << 10);
        uint crc = 0xFFFF_FFFFu;
        for (long o = 0; o < length; o += buf.Length)
        {
            var chunk = buf.AsSpan(0, (int)Math.Min(buf.Length, length - o));
            FillData(seed, sequence, generation, o, chunk);
            crc = Crc32C.Append(crc, chunk);
        }
        System.Buffers.ArrayPool<byte>.Shared.Return(buf);
        return ~crc;
    }

    public static void WriteHeader(Span<byte> b, long recordSize, uint flags, uint tag)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)recordSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], tag);
    }

    /// <summary>The descriptor's 32-byte payload.</summary>
    public static void WriteDescriptor(Span<byte> p, ulong seed, int records, int recordDataSize, long stateSize, uint flags)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(p, seed);
        BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)records);
        BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)recordDataSize);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], (ulong)stateSize);
        BinaryPrimitives.WriteUInt32LittleEndian(p[24..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(p[28..], Crc32C.Compute(p[..28]));
    }

    /// <summary>A data or dirty record's 16-byte sub-header.</summary>
    public static void WriteSubHeader(Span<byte> b, int region, uint magic, uint generation, uint last)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)region);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], magic);
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], generation);
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], last);
    }

    /// <summary>
    /// The hash of a state: what <see cref="SimStreamParser.StreamHash"/> gives for the STOP_COPY stream of the regions at
    /// these generations with these data CRCs (<paramref name="region"/> gives both for each), computed without the data.
    /// A PRE_COPY stream that ends in the same state has the same state hash, however many dirty records it took.
    /// </summary>
    public static ulong StateHash(ulong seed, long stateSize, int recordDataSize, Func<int, (uint Generation, uint Crc)> region)
    {
        var (records, last) = Layout(stateSize, recordDataSize);
        var h = new XxHash3();
        Span<byte> b = stackalloc byte[HeaderSize + DescriptorPayload];
        WriteHeader(b, 8, FlagOptional, TagStopCopySize);
        BinaryPrimitives.WriteUInt64LittleEndian(b[HeaderSize..], (ulong)stateSize);
        h.Append(b[..Record0Size]);
        WriteHeader(b, DescriptorPayload, FlagOptional, TagDescriptor);
        WriteDescriptor(b[HeaderSize..], seed, records, recordDataSize, stateSize, 0);
        h.Append(b[..Record1Size]);
        for (int k = 0; k < records; k++)
        {
            var (generation, crc) = region(k);
            WriteHeader(b, 24 + (k == records - 1 ? last : recordDataSize), 0, TagData);
            WriteSubHeader(b[HeaderSize..], k, DataMagic, generation, 0);
            BinaryPrimitives.WriteUInt32LittleEndian(b[32..], crc);
            BinaryPrimitives.WriteUInt32LittleEndian(b[36..], TrailerMagic);
            h.Append(b[..40]);
        }
        return h.GetCurrentHashAsUInt64();
    }

    /// <summary>The digest a simulated device reports: a hash of the stream's hash and the config state.</summary>
    public static ulong Digest(ulong streamHash, ReadOnlySpan<byte> config)
    {
        Span<byte> b = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(b, streamHash);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], XxHash3.HashToUInt64(config));
        return XxHash3.HashToUInt64(b);
    }
}
