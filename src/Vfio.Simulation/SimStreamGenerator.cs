using System.Buffers.Binary;

using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// What a saving device tells its stream generator about its regions: their generation and known CRC when a record of
/// one begins, and, for a PRE_COPY stream, which dirty region to send next.
/// </summary>
internal interface ISimRegionSource
{
    /// <summary>A record of <paramref name="region"/> begins: its generation now, and its data's CRC32C if known.</summary>
    (uint Generation, uint? Crc) Begin(int region);

    /// <summary>The record of <paramref name="region"/> at <paramref name="generation"/> was produced; its data's CRC32C.</summary>
    void Done(int region, uint generation, uint crc);

    /// <summary>PRE_COPY streams, after the initial image: the next dirty region to send, -1 for none now, -2 for the end.</summary>
    int NextDirty();
}

/// <summary>Produces a simulated device's stream sequentially, in chunks of any size (the format: <see cref="SimStream"/>).</summary>
public sealed class SimStreamGenerator
{
    private enum Kind { Size, Descriptor, Data, Dirty, End, Waiting, Ended }

    private readonly ulong _seed;
    private readonly long _stateSize;
    private readonly int _recordData;
    private readonly int _records;
    private readonly int _lastLength;
    private readonly byte[] _small = new byte[64];
    private readonly uint[]? _knownCrcs;
    private readonly ISimRegionSource? _regions;
    private readonly bool _precopy;
    private long _produced;
    private Kind _kind;
    private int _region;          // the current data or dirty record's region
    private uint _generation;     // and its generation
    private bool _crcKnown;       // its data's CRC is known (then only the pattern is copied)
    private uint _recordCrc;
    private int _part;            // 0 = prefix (small), 1 = data, 2 = trailer (small)
    private int _partLength;
    private long _partOffset;
    private long _recordEnd;      // stream offset where the current record ends
    private uint _crc = 0xFFFF_FFFFu;
    private uint _dirtyRecords;

    /// <summary>
    /// A generator of the STOP_COPY stream of (seed, size, record size), every region at generation 0.
    /// <paramref name="knownCrcs"/>: each data record's CRC32C, when known (from an earlier pass over the same content):
    /// the generator then only copies its pattern.
    /// </summary>
    public SimStreamGenerator(ulong seed, long stateSize, int recordDataSize, uint[]? knownCrcs = null)
        : this(seed, stateSize, recordDataSize, knownCrcs, null, false)
    {
    }

    /// <summary>
    /// A generator whose regions' generations and CRCs come from <paramref name="regions"/>; with
    /// <paramref name="precopy"/>, the stream of a PRE_COPY session (initial image, dirty records, end record).
    /// </summary>
    internal SimStreamGenerator(ulong seed, long stateSize, int recordDataSize, uint[]? knownCrcs, ISimRegionSource? regions, bool precopy)
    {
        _seed = seed;
        _stateSize = stateSize;
        _recordData = recordDataSize;
        (_records, _lastLength) = SimStream.Layout(stateSize, recordDataSize);
        if (knownCrcs is not null && knownCrcs.Length == _records) _knownCrcs = knownCrcs;
        _regions = regions;
        _precopy = precopy;
        BeginRecordZero();
    }

    /// <summary>Bytes produced so far.</summary>
    public long Produced => _produced;
    /// <summary>Bytes of the initial image (the first StateSize bytes) not produced yet.</summary>
    public long InitialLeft => Math.Max(0, _stateSize - _produced);
    /// <summary>Bytes of a dirty record in progress not produced yet.</summary>
    internal long DirtyRecordLeft => _kind == Kind.Dirty ? _recordEnd - _produced : 0;
    /// <summary>The end record has been produced: nothing follows.</summary>
    public bool Ended => _kind == Kind.Ended;

    private void BeginSmall(Kind kind, int length)
    {
        _kind = kind;
        _part = 0; _partLength = length; _partOffset = 0;
        _recordEnd = _produced + length;
    }

    private void BeginRecordZero()
    {
        SimStream.WriteHeader(_small, 8, SimStream.FlagOptional, SimStream.TagStopCopySize);
        BinaryPrimitives.WriteUInt64LittleEndian(_small.AsSpan(16), (ulong)_stateSize);
        BeginSmall(Kind.Size, SimStream.Record0Size);
    }

    private void BeginDescriptor()
    {
        SimStream.WriteHeader(_small, SimStream.DescriptorPayload, SimStream.FlagOptional, SimStream.TagDescriptor);
        SimStream.WriteDescriptor(_small.AsSpan(SimStream.HeaderSize), _seed, _records, _recordData, _stateSize,
            _precopy ? SimStream.DescriptorPrecopy : 0);
        BeginSmall(Kind.Descriptor, SimStream.Record1Size);
    }

    private int DataLength(int region) => region == _records - 1 ? _lastLength : _recordData;

    /// <summary>A data record (the initial image's) or a dirty record of <paramref name="region"/>.</summary>
    private void BeginRegion(Kind kind, int region)
    {
        _region = region;
        if (_regions is null)
            (_generation, _crcKnown, _recordCrc) = (0, _knownCrcs is not null, _knownCrcs is null ? 0 : _knownCrcs[region]);
        else
        {
            var (generation, crc) = _regions.Begin(region);
            (_generation, _crcKnown, _recordCrc) = (generation, crc.HasValue, crc.GetValueOrDefault());
        }
        int length = DataLength(region);
        SimStream.WriteHeader(_small, 16 + length + 8, 0, kind == Kind.Data ? SimStream.TagData : SimStream.TagDirty);
        if (kind == Kind.Data)
            SimStream.WriteSubHeader(_small.AsSpan(16), region, SimStream.DataMagic, _generation, 0);
        else
            SimStream.WriteSubHeader(_small.AsSpan(16), region, SimStream.DirtyMagic, _generation, _dirtyRecords++);
        BeginSmall(kind, 32);
        _recordEnd = _produced + SimStream.DataOverhead + length;
        _crc = 0xFFFF_FFFFu;
    }

    private void BeginEnd()
    {
        SimStream.WriteHeader(_small, SimStream.EndPayload, 0, SimStream.TagEnd);
        var p = _small.AsSpan(SimStream.HeaderSize, SimStream.EndPayload);
        BinaryPrimitives.WriteUInt64LittleEndian(p, _dirtyRecords);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], (ulong)_produced);
        BinaryPrimitives.WriteUInt32LittleEndian(p[16..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(p[20..], Crc32C.Compute(p[..20]));
        BeginSmall(Kind.End, SimStream.EndRecordSize);
    }

    /// <summary>
    /// Fills dst with the next bytes; returns how many: fewer than asked at the end of the stream or, in a PRE_COPY
    /// stream, when the device has nothing more for now (0: nothing at all).
    /// </summary>
    public int Fill(Span<byte> dst)
    {
        int done = 0;
        while (done < dst.Length)
        {
            if (_partOffset == _partLength && !Advance()) break;
            int n = (int)Math.Min(dst.Length - done, _partLength - _partOffset);
            var d = dst.Slice(done, n);
            if (_part == 1)
            {
                SimStream.FillData(_seed, _region, _generation, _partOffset, d);
                if (!_crcKnown) _crc = Crc32C.Append(_crc, d);
            }
            else
                _small.AsSpan((int)_partOffset, n).CopyTo(d);
            done += n;
            _produced += n;
            _partOffset += n;
        }
        return done;
    }

    /// <summary>Moves to the next part; false when there is none (the end, or nothing for now).</summary>
    private bool Advance()
    {
        if (_kind is Kind.Data or Kind.Dirty && _part == 0)
        {
            _part = 1; _partLength = DataLength(_region); _partOffset = 0;
            return true;
        }
        if (_kind is Kind.Data or Kind.Dirty && _part == 1)
        {
            uint crc = _crcKnown ? _recordCrc : ~_crc;
            _regions?.Done(_region, _generation, crc);
            BinaryPrimitives.WriteUInt32LittleEndian(_small, crc);
            BinaryPrimitives.WriteUInt32LittleEndian(_small.AsSpan(4), SimStream.TrailerMagic);
            _part = 2; _partLength = 8; _partOffset = 0;
            return true;
        }
        switch (_kind)
        {
            case Kind.Size:
                BeginDescriptor();
                return true;
            case Kind.Descriptor when _records > 0:
                BeginRegion(Kind.Data, 0);
                return true;
            case Kind.Data when _region + 1 < _records:
                BeginRegion(Kind.Data, _region + 1);
                return true;
            case Kind.End or Kind.Ended:
                _kind = Kind.Ended;
                return false;
        }
        // The initial image is complete (or a dirty record is): a STOP_COPY stream ends, a PRE_COPY one goes on.
        if (!_precopy)
        {
            _kind = Kind.Ended;
            return false;
        }
        int next = _regions!.NextDirty();
        if (next >= 0) BeginRegion(Kind.Dirty, next);
        else if (next == -2) BeginEnd();
        else
        {
            _kind = Kind.Waiting;
            _part = 0; _partLength = 0; _partOffset = 0;
            return false;
        }
        return true;
    }
}
