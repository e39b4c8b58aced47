using System.Buffers.Binary;
using System.IO.Hashing;

using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>A stream the simulated device refuses (the write fails and the session is poisoned).</summary>
public sealed class SimStreamException(string message) : Exception(message);

/// <summary>
/// Parses and checks a simulated stream as a resuming device receives it: record order, sizes, per-record CRC,
/// generations, completeness. Tells the device how many bytes it may read before the current record is complete.
/// </summary>
public sealed class SimStreamParser
{
    private enum Kind { Size, Descriptor, Data, Dirty, End }

    private readonly byte[] _header = new byte[SimStream.HeaderSize + SimStream.DescriptorPayload];
    private readonly XxHash3 _hash = new();
    private readonly byte[] _trailer = new byte[8];
    // Per data region, as loaded: generation << 32 | CRC32C of its data. Grows with the initial image's records (each
    // at least DataOverhead bytes of input), so a descriptor that announces many records allocates nothing by itself.
    private readonly List<ulong> _regions = [];
    private int _phase; // 0 = header, 1 = payload
    private int _headerFill;
    private long _recordSize;
    private Kind _kind;
    private long _payloadOffset;
    private int _recordIndex; // records seen so far (0, 1, then data; then dirty and end records)
    private int _region;
    private uint _generation;
    private uint _crc;
    private bool _ended;
    private List<uint>? _crcs;

    public long TotalBytes { get; private set; } = -1;
    public long Consumed { get; private set; }
    public int DataRecords { get; private set; } = -1;
    public int RecordDataSize { get; private set; }
    public ulong Seed { get; private set; }
    public int DataRecordsDone { get; private set; }
    /// <summary>The descriptor says the stream was opened by PRE_COPY: dirty records and an end record follow the initial image.</summary>
    public bool Precopy { get; private set; }
    public uint DirtyRecords { get; private set; }
    /// <summary>Some region was loaded at a generation other than 0 (the device's state is not the one its name gives).</summary>
    public bool Dirtied { get; private set; }

    private int LastLength { get; set; }

    public bool Complete => Precopy
        ? _ended
        : DataRecords >= 0 && DataRecordsDone == DataRecords && Consumed == TotalBytes && _phase == 0 && _headerFill == 0;

    /// <summary>
    /// The content digest of what was parsed: XxHash3 over every record header, the small records' payloads and each
    /// data record's sub-header and CRC32C trailer (checked against the data). Cheap: the data bytes are hashed only by the CRC.
    /// </summary>
    public ulong StreamHash => _hash.GetCurrentHashAsUInt64();

    /// <summary>
    /// The hash of the state loaded (<see cref="SimStream.StateHash"/>): for a STOP_COPY stream its stream hash, for a
    /// complete PRE_COPY stream that of the regions as its last records left them.
    /// </summary>
    public ulong StateHash => Precopy
        ? SimStream.StateHash(Seed, TotalBytes, RecordDataSize, k => ((uint)(_regions[k] >> 32), (uint)_regions[k]))
        : StreamHash;

    /// <summary>Region <paramref name="k"/> as loaded: its generation and its data's CRC32C.</summary>
    public (uint Generation, uint Crc) Region(int k) => ((uint)(_regions[k] >> 32), (uint)_regions[k]);

    /// <summary>Parses a whole generated stream (the source device's own digest).</summary>
    public static ulong HashOf(SimStreamGenerator generator) => HashAndCrcsOf(generator).Hash;

    /// <summary>The stream's digest and each data record's CRC32C (which later generators of the same content reuse).</summary>
    public static (ulong Hash, uint[] Crcs) HashAndCrcsOf(SimStreamGenerator generator)
    {
        var parser = new SimStreamParser { _crcs = [] };
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

    /// <summary>Bytes that may be read before a record boundary (the device reads no further before loading).</summary>
    public long UntilBoundary => _phase == 0 ? SimStream.HeaderSize - _headerFill : _recordSize - _payloadOffset;

    /// <summary>Consumes bytes (never across a record boundary); returns the size of the record it completed, or 0.</summary>
    public long Consume(ReadOnlySpan<byte> data)
    {
        if (data.Length > UntilBoundary) throw new InvalidOperationException("read across a record boundary");
        if (_ended)
            throw new SimStreamException("data after the end record");
        if (!Precopy && TotalBytes >= 0 && Consumed + data.Length > TotalBytes)
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
        uint tag = BinaryPrimitives.ReadUInt32LittleEndian(_header.AsSpan(12));
        switch (_recordIndex)
        {
            case 0:
                if (tag != SimStream.TagStopCopySize || _recordSize != 8)
                    throw new SimStreamException($"first record must be STOP_COPY_SIZE (tag 1, 8 bytes), got tag {tag} size {_recordSize}");
                _kind = Kind.Size;
                break;
            case 1:
                if (tag != SimStream.TagDescriptor || _recordSize != SimStream.DescriptorPayload)
                    throw new SimStreamException($"second record must be the simulator descriptor, got tag {tag} size {_recordSize}");
                _kind = Kind.Descriptor;
                break;
            default:
                int seq = _recordIndex - 2;
                if (seq < DataRecords)
                {
                    long expect = 24 + (seq == DataRecords - 1 ? LastLength : RecordDataSize);
                    if (tag != SimStream.TagData || flags != 0 || _recordSize != expect)
                        throw new SimStreamException($"data record {seq}: tag {tag} flags {flags} size {_recordSize}, expected tag 0 size {expect}");
                    _kind = Kind.Data;
                }
                else if (!Precopy)
                    throw new SimStreamException($"record after the last data record ({DataRecords} announced)");
                else if (tag == SimStream.TagDirty && flags == 0
                    && (_recordSize == 24 + RecordDataSize || _recordSize == 24 + LastLength))
                    _kind = Kind.Dirty;
                else if (tag == SimStream.TagEnd && flags == 0 && _recordSize == SimStream.EndPayload)
                    _kind = Kind.End;
                else
                    throw new SimStreamException($"after the initial image: tag {tag} flags {flags} size {_recordSize} is neither "
                        + "a dirty record nor the end record");
                _crc = 0xFFFF_FFFFu;
                break;
        }
        _phase = 1;
        _payloadOffset = 0;
    }

    private void ConsumePayload(ReadOnlySpan<byte> data)
    {
        if (_kind is Kind.Size or Kind.Descriptor or Kind.End)
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
                if (_payloadOffset == 16) CheckSubHeader(dataLen);
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

    private void CheckSubHeader(long dataLen)
    {
        var b = _header.AsSpan(SimStream.HeaderSize, 16);
        uint region = BinaryPrimitives.ReadUInt32LittleEndian(b);
        uint magic = BinaryPrimitives.ReadUInt32LittleEndian(b[4..]);
        _generation = BinaryPrimitives.ReadUInt32LittleEndian(b[8..]);
        uint last = BinaryPrimitives.ReadUInt32LittleEndian(b[12..]);
        if (_kind == Kind.Data)
        {
            if (region != _recordIndex - 2 || magic != SimStream.DataMagic || last != 0)
                throw new SimStreamException($"data record out of order: sequence {region}, expected {_recordIndex - 2}");
            _region = (int)region;
            return;
        }
        if (magic != SimStream.DirtyMagic || last != DirtyRecords)
            throw new SimStreamException($"dirty record out of order: sequence {last}, expected {DirtyRecords}");
        if (region >= (uint)DataRecords)
            throw new SimStreamException($"dirty record {last}: region {region} of {DataRecords}");
        _region = (int)region;
        if (dataLen != (_region == DataRecords - 1 ? LastLength : RecordDataSize))
            throw new SimStreamException($"dirty record {last}: {dataLen} data bytes for region {region}");
        if (_generation <= (uint)(_regions[_region] >> 32))
            throw new SimStreamException($"dirty record {last}: region {region} at generation {_generation}, "
                + $"not newer than its generation {(uint)(_regions[_region] >> 32)}");
    }

    private void FinishRecord()
    {
        var p = _header.AsSpan(SimStream.HeaderSize);
        switch (_kind)
        {
            case Kind.Size:
                _hash.Append(p[..8]);
                TotalBytes = (long)BinaryPrimitives.ReadUInt64LittleEndian(p);
                if (TotalBytes < SimStream.MinStateSize || TotalBytes > SimStream.MaxStateSize)
                    throw new SimStreamException($"implausible stream size {TotalBytes}");
                break;
            case Kind.Descriptor:
                _hash.Append(p[..SimStream.DescriptorPayload]);
                if (BinaryPrimitives.ReadUInt32LittleEndian(p[28..]) != Crc32C.Compute(p[..28]))
                    throw new SimStreamException("descriptor checksum mismatch");
                Seed = BinaryPrimitives.ReadUInt64LittleEndian(p);
                RecordDataSize = (int)BinaryPrimitives.ReadUInt32LittleEndian(p[12..]);
                if ((long)BinaryPrimitives.ReadUInt64LittleEndian(p[16..]) != TotalBytes || RecordDataSize <= 0)
                    throw new SimStreamException("descriptor disagrees with the announced stream size");
                uint flags = BinaryPrimitives.ReadUInt32LittleEndian(p[24..]);
                if ((flags & ~SimStream.DescriptorPrecopy) != 0)
                    throw new SimStreamException($"descriptor flags 0x{flags:x}: unknown");
                Precopy = flags == SimStream.DescriptorPrecopy;
                int records;
                try { (records, LastLength) = SimStream.Layout(TotalBytes, RecordDataSize); }
                catch (ArgumentOutOfRangeException) { throw new SimStreamException("descriptor describes an impossible layout"); }
                if (records != (int)BinaryPrimitives.ReadUInt32LittleEndian(p[8..]))
                    throw new SimStreamException("descriptor record count disagrees with the layout");
                DataRecords = records;
                break;
            case Kind.Data or Kind.Dirty:
                uint crc = BinaryPrimitives.ReadUInt32LittleEndian(_trailer);
                string what = _kind == Kind.Data ? $"data record {_recordIndex - 2}" : $"dirty record {DirtyRecords}";
                if (BinaryPrimitives.ReadUInt32LittleEndian(_trailer.AsSpan(4)) != SimStream.TrailerMagic)
                    throw new SimStreamException($"{what}: bad trailer");
                if (crc != ~_crc)
                    throw new SimStreamException($"{what}: checksum mismatch (corrupt data)");
                _hash.Append(_header.AsSpan(SimStream.HeaderSize, 16));
                _hash.Append(_trailer);
                ulong entry = (ulong)_generation << 32 | crc;
                if (_generation != 0) Dirtied = true;
                if (_kind == Kind.Data)
                {
                    _regions.Add(entry);
                    _crcs?.Add(crc);
                    DataRecordsDone++;
                }
                else
                {
                    _regions[_region] = entry;
                    DirtyRecords++;
                }
                break;
            case Kind.End:
                if (BinaryPrimitives.ReadUInt32LittleEndian(p[20..]) != Crc32C.Compute(p[..20])
                    || BinaryPrimitives.ReadUInt32LittleEndian(p[16..]) != 0)
                    throw new SimStreamException("end record checksum mismatch");
                ulong dirty = BinaryPrimitives.ReadUInt64LittleEndian(p), before = BinaryPrimitives.ReadUInt64LittleEndian(p[8..]);
                if (dirty != DirtyRecords || before != (ulong)(Consumed - SimStream.EndRecordSize))
                    throw new SimStreamException($"end record: {dirty} dirty records in {before} bytes announced, "
                        + $"{DirtyRecords} in {Consumed - SimStream.EndRecordSize} received");
                _ended = true;
                break;
        }
    }

    public string Progress => DataRecords < 0
        ? $"{Consumed} bytes, stream header incomplete"
        : Precopy && DataRecordsDone == DataRecords
        ? $"{Consumed} bytes, initial image of {TotalBytes} bytes and {DirtyRecords} dirty records, no end record"
        : $"{Consumed} of {TotalBytes} bytes, {DataRecordsDone} of {DataRecords} data records";
}
