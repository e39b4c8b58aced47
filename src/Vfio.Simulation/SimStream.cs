using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.InteropServices;

using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// The simulated device's migration stream: mlx5-style records, each a 16-byte little-endian header
/// {u64 record_size, u32 flags, u32 tag} + payload, exactly StateSize bytes in all:
/// <list type="number">
/// <item>tag 1 (STOP_COPY_SIZE, flags OPTIONAL), payload u64 total stream bytes (as mlx5 sends);</item>
/// <item>tag 0x5A11 (simulator descriptor, OPTIONAL), payload {u64 seed, u32 data records, u32 record data size,
/// u64 total bytes, u32 reserved, u32 CRC32C of the preceding 28 bytes};</item>
/// <item>n data records, tag 0 ("firmware image"), payload {u32 sequence, u32 'SIMD', u64 reserved} + data +
/// {u32 CRC32C(data), u32 'SIMT'}; all data records hold RecordDataSize bytes of data but the last.</item>
/// </list>
/// Data bytes are a counter-based pseudo-random function of (seed, sequence, offset): deterministic, cheap to generate.
/// </summary>
public static class SimStream
{
    public const uint TagStopCopySize = 1;
    public const uint TagDescriptor = 0x5A11;
    public const uint TagData = 0;
    public const uint FlagOptional = 1;
    public const int HeaderSize = 16;
    public const int Record0Size = HeaderSize + 8;
    public const int DescriptorPayload = 32;
    public const int Record1Size = HeaderSize + DescriptorPayload;
    public const int DataOverhead = HeaderSize + 16 + 8;
    public const uint DataMagic = 0x444D4953;  // "SIMD"
    public const uint TrailerMagic = 0x544D4953; // "SIMT"
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
    /// Fills dst with data bytes [offset, offset+dst.Length) of data record <paramref name="sequence"/>: the seed's
    /// pattern, rotated by an amount that depends on the record, so it costs a memory copy per byte (the simulated
    /// device must be cheap beside the engine it is used to measure).
    /// </summary>
    public static void FillData(ulong seed, int sequence, long offset, Span<byte> dst)
    {
        var pattern = Pattern(seed);
        const long period = PatternWords * 8L;
        long rotation = (long)((ulong)Word(seed, sequence, -1) % PatternWords) * 8;
        long pos = (offset + rotation) % period;
        while (!dst.IsEmpty)
        {
            int n = (int)Math.Min(dst.Length, period);
            pattern.AsSpan((int)pos, n).CopyTo(dst);
            dst = dst[n..];
            pos = (pos + n) % period;
        }
    }

    public static void WriteHeader(Span<byte> b, long recordSize, uint flags, uint tag)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)recordSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], tag);
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

/// <summary>Produces a simulated device's stream sequentially, in chunks of any size.</summary>
public sealed class SimStreamGenerator
{
    private readonly ulong _seed;
    private readonly long _stateSize;
    private readonly int _recordData;
    private readonly int _records;
    private readonly int _lastLength;
    private readonly byte[] _small = new byte[64];
    private long _produced;
    // current segment: -2 = record 0, -1 = record 1, k >= 0 = data record k
    private int _record = -2;
    private int _part;           // 0 = prefix (small), 1 = data, 2 = trailer (small)
    private int _partLength;
    private long _partOffset;
    private uint _crc = 0xFFFF_FFFFu;
    private readonly uint[]? _knownCrcs;

    /// <summary>
    /// A generator of the stream of (seed, size, record size). <paramref name="knownCrcs"/>: each data record's CRC32C,
    /// when known (from an earlier pass over the same content): the generator then only copies its pattern.
    /// </summary>
    public SimStreamGenerator(ulong seed, long stateSize, int recordDataSize, uint[]? knownCrcs = null)
    {
        _seed = seed;
        _stateSize = stateSize;
        _recordData = recordDataSize;
        (_records, _lastLength) = SimStream.Layout(stateSize, recordDataSize);
        if (knownCrcs is not null && knownCrcs.Length == _records) _knownCrcs = knownCrcs;
        BeginRecordZero();
    }

    private void BeginRecordZero()
    {
        SimStream.WriteHeader(_small, 8, SimStream.FlagOptional, SimStream.TagStopCopySize);
        BinaryPrimitives.WriteUInt64LittleEndian(_small.AsSpan(16), (ulong)_stateSize);
        _part = 0; _partLength = SimStream.Record0Size; _partOffset = 0;
    }

    private void BeginDescriptor()
    {
        var b = _small.AsSpan();
        SimStream.WriteHeader(b, SimStream.DescriptorPayload, SimStream.FlagOptional, SimStream.TagDescriptor);
        var p = b[16..];
        BinaryPrimitives.WriteUInt64LittleEndian(p, _seed);
        BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)_records);
        BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)_recordData);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], (ulong)_stateSize);
        BinaryPrimitives.WriteUInt32LittleEndian(p[24..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(p[28..], Crc32C.Compute(p[..28]));
        _part = 0; _partLength = SimStream.Record1Size; _partOffset = 0;
    }

    private int DataLength(int record) => record == _records - 1 ? _lastLength : _recordData;

    private void BeginDataPrefix()
    {
        var b = _small.AsSpan();
        SimStream.WriteHeader(b, 16 + DataLength(_record) + 8, 0, SimStream.TagData);
        BinaryPrimitives.WriteUInt32LittleEndian(b[16..], (uint)_record);
        BinaryPrimitives.WriteUInt32LittleEndian(b[20..], SimStream.DataMagic);
        BinaryPrimitives.WriteUInt64LittleEndian(b[24..], 0);
        _part = 0; _partLength = 32; _partOffset = 0; _crc = 0xFFFF_FFFFu;
    }

    /// <summary>Fills dst with the next bytes; returns how many (0 at the end of the stream).</summary>
    public int Fill(Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length && _produced < _stateSize)
        {
            long want = Math.Min(dst.Length - done, _stateSize - _produced);
            long left = _partLength - _partOffset;
            int n = (int)Math.Min(want, left);
            var d = dst.Slice(done, n);
            if (_part == 1)
            {
                SimStream.FillData(_seed, _record, _partOffset, d);
                if (_knownCrcs is null) _crc = Crc32C.Append(_crc, d);
            }
            else
                _small.AsSpan((int)_partOffset, n).CopyTo(d);
            done += n;
            _produced += n;
            _partOffset += n;
            if (_partOffset == _partLength)
                Advance();
        }
        return done;
    }

    private void Advance()
    {
        if (_record == -2) { _record = -1; BeginDescriptor(); return; }
        if (_record == -1) { _record = 0; if (_records > 0) BeginDataPrefix(); return; }
        if (_part == 0) { _part = 1; _partLength = DataLength(_record); _partOffset = 0; return; }
        if (_part == 1)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(_small, _knownCrcs is null ? ~_crc : _knownCrcs[_record]);
            BinaryPrimitives.WriteUInt32LittleEndian(_small.AsSpan(4), SimStream.TrailerMagic);
            _part = 2; _partLength = 8; _partOffset = 0;
            return;
        }
        _record++;
        if (_record < _records) BeginDataPrefix();
    }
}

/// <summary>A stream the simulated device refuses (the write fails and the session is poisoned).</summary>
public sealed class SimStreamException(string message) : Exception(message);

/// <summary>
/// Parses and checks a simulated stream as a resuming device receives it: record order, sizes, per-record
/// CRC, completeness. Tells the device how many bytes it may read before the current record is complete.
/// </summary>
public sealed class SimStreamParser
{
    private readonly byte[] _header = new byte[SimStream.HeaderSize + SimStream.DescriptorPayload];
    private readonly XxHash3 _hash = new();
    private int _phase; // 0 = header, 1 = payload
    private int _headerFill;
    private long _recordSize;
    private uint _tag;
    private long _payloadOffset;
    private int _recordIndex; // records seen so far (0, 1, then data)
    private uint _crc;
    private readonly byte[] _trailer = new byte[8];

    public long TotalBytes { get; private set; } = -1;
    public long Consumed { get; private set; }
    public int DataRecords { get; private set; } = -1;
    public int RecordDataSize { get; private set; }
    public ulong Seed { get; private set; }
    public int DataRecordsDone { get; private set; }

    public bool Complete => DataRecords >= 0 && DataRecordsDone == DataRecords && Consumed == TotalBytes && _phase == 0 && _headerFill == 0;

    /// <summary>
    /// The content digest of what was parsed: XxHash3 over every record header, the small records' payloads and each
    /// data record's sub-header and CRC32C trailer (checked against the data). Cheap: the data bytes are hashed only by the CRC.
    /// </summary>
    public ulong StreamHash => _hash.GetCurrentHashAsUInt64();

    /// <summary>Parses a whole generated stream (the source device's own digest).</summary>
    public static ulong HashOf(SimStreamGenerator generator) => HashAndCrcsOf(generator).Hash;

    /// <summary>The stream's digest and each data record's CRC32C (which later generators of the same content reuse).</summary>
    public static (ulong Hash, uint[] Crcs) HashAndCrcsOf(SimStreamGenerator generator)
    {
        var parser = new SimStreamParser { _crcs = new List<uint>() };
        var buf = new byte[256 << 10];
        int n;
        while ((n = generator.Fill(buf)) > 0)
        {
            var span = buf.AsSpan(0, n);
            while (!span.IsEmpty)
            {
                int k = (int)Math.Min(span.Length, parser.UntilBoundary);
                parser.Consume(span[..k]);
                span = span[k..];
            }
        }
        return (parser.StreamHash, parser._crcs.ToArray());
    }

    private List<uint>? _crcs;

    /// <summary>Bytes that may be read before a record boundary (the device reads no further before loading).</summary>
    public long UntilBoundary => _phase == 0 ? SimStream.HeaderSize - _headerFill : _recordSize - _payloadOffset;

    /// <summary>Consumes bytes (never across a record boundary); returns the size of the record it completed, or 0.</summary>
    public long Consume(ReadOnlySpan<byte> data)
    {
        if (data.Length > UntilBoundary) throw new InvalidOperationException("read across a record boundary");
        if (TotalBytes >= 0 && Consumed + data.Length > TotalBytes)
            throw new SimStreamException($"data beyond the end of the stream ({TotalBytes} bytes announced)");
        Consumed += data.Length;
        if (_phase == 0)
        {
            _hash.Append(data);
            data.CopyTo(_header.AsSpan(_headerFill));
            _headerFill += data.Length;
            if (_headerFill < SimStream.HeaderSize) return 0;
            StartRecord();
            return 0;
        }
        ConsumePayload(data);
        if (_payloadOffset < _recordSize) return 0;
        long size = SimStream.HeaderSize + _recordSize;
        FinishRecord();
        _phase = 0;
        _headerFill = 0;
        _recordIndex++;
        return size;
    }

    private void StartRecord()
    {
        _recordSize = (long)BinaryPrimitives.ReadUInt64LittleEndian(_header);
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(_header.AsSpan(8));
        _tag = BinaryPrimitives.ReadUInt32LittleEndian(_header.AsSpan(12));
        switch (_recordIndex)
        {
            case 0:
                if (_tag != SimStream.TagStopCopySize || _recordSize != 8)
                    throw new SimStreamException($"first record must be STOP_COPY_SIZE (tag 1, 8 bytes), got tag {_tag} size {_recordSize}");
                break;
            case 1:
                if (_tag != SimStream.TagDescriptor || _recordSize != SimStream.DescriptorPayload)
                    throw new SimStreamException($"second record must be the simulator descriptor, got tag {_tag} size {_recordSize}");
                break;
            default:
                int seq = _recordIndex - 2;
                if (seq >= DataRecords)
                    throw new SimStreamException($"record after the last data record ({DataRecords} announced)");
                long expect = 24 + (seq == DataRecords - 1 ? LastLength : RecordDataSize);
                if (_tag != SimStream.TagData || flags != 0 || _recordSize != expect)
                    throw new SimStreamException($"data record {seq}: tag {_tag} flags {flags} size {_recordSize}, expected tag 0 size {expect}");
                _crc = 0xFFFF_FFFFu;
                break;
        }
        _phase = 1;
        _payloadOffset = 0;
    }

    private int LastLength { get; set; }

    private void ConsumePayload(ReadOnlySpan<byte> data)
    {
        if (_recordIndex < 2)
        {
            data.CopyTo(_header.AsSpan(SimStream.HeaderSize + (int)_payloadOffset));
            _payloadOffset += data.Length;
            return;
        }
        long dataLen = _recordSize - 24;
        int i = 0;
        while (i < data.Length)
        {
            long o = _payloadOffset;
            if (o < 16)
            {
                int n = (int)Math.Min(16 - o, data.Length - i);
                data.Slice(i, n).CopyTo(_header.AsSpan(SimStream.HeaderSize + (int)o));
                i += n; _payloadOffset += n;
                if (_payloadOffset == 16)
                {
                    uint seq = BinaryPrimitives.ReadUInt32LittleEndian(_header.AsSpan(16));
                    uint magic = BinaryPrimitives.ReadUInt32LittleEndian(_header.AsSpan(20));
                    if (seq != _recordIndex - 2 || magic != SimStream.DataMagic)
                        throw new SimStreamException($"data record out of order: sequence {seq}, expected {_recordIndex - 2}");
                }
            }
            else if (o < 16 + dataLen)
            {
                int n = (int)Math.Min(16 + dataLen - o, data.Length - i);
                _crc = Crc32C.Append(_crc, data.Slice(i, n));
                i += n; _payloadOffset += n;
            }
            else
            {
                int n = (int)Math.Min(_recordSize - o, data.Length - i);
                data.Slice(i, n).CopyTo(_trailer.AsSpan((int)(o - 16 - dataLen)));
                i += n; _payloadOffset += n;
            }
        }
    }

    private void FinishRecord()
    {
        var p = _header.AsSpan(SimStream.HeaderSize);
        if (_recordIndex < 2) _hash.Append(p[..(int)_recordSize]);
        switch (_recordIndex)
        {
            case 0:
                TotalBytes = (long)BinaryPrimitives.ReadUInt64LittleEndian(p);
                if (TotalBytes < SimStream.MinStateSize || TotalBytes > SimStream.MaxStateSize)
                    throw new SimStreamException($"implausible stream size {TotalBytes}");
                break;
            case 1:
                if (BinaryPrimitives.ReadUInt32LittleEndian(p[28..]) != Crc32C.Compute(p[..28]))
                    throw new SimStreamException("descriptor checksum mismatch");
                Seed = BinaryPrimitives.ReadUInt64LittleEndian(p);
                RecordDataSize = (int)BinaryPrimitives.ReadUInt32LittleEndian(p[12..]);
                if ((long)BinaryPrimitives.ReadUInt64LittleEndian(p[16..]) != TotalBytes || RecordDataSize <= 0)
                    throw new SimStreamException("descriptor disagrees with the announced stream size");
                int records;
                try { (records, LastLength) = SimStream.Layout(TotalBytes, RecordDataSize); }
                catch (ArgumentOutOfRangeException) { throw new SimStreamException("descriptor describes an impossible layout"); }
                if (records != (int)BinaryPrimitives.ReadUInt32LittleEndian(p[8..]))
                    throw new SimStreamException("descriptor record count disagrees with the layout");
                DataRecords = records;
                break;
            default:
                uint crc = BinaryPrimitives.ReadUInt32LittleEndian(_trailer);
                if (BinaryPrimitives.ReadUInt32LittleEndian(_trailer.AsSpan(4)) != SimStream.TrailerMagic)
                    throw new SimStreamException($"data record {_recordIndex - 2}: bad trailer");
                if (crc != ~_crc)
                    throw new SimStreamException($"data record {_recordIndex - 2}: checksum mismatch (corrupt data)");
                _hash.Append(_header.AsSpan(SimStream.HeaderSize, 16));
                _hash.Append(_trailer);
                _crcs?.Add(crc);
                DataRecordsDone++;
                break;
        }
    }

    public string Progress => DataRecords < 0
        ? $"{Consumed} bytes, stream header incomplete"
        : $"{Consumed} of {TotalBytes} bytes, {DataRecordsDone} of {DataRecords} data records";
}
