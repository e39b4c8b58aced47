using System.Buffers.Binary;
using System.IO.Hashing;
using Vfio.Interop;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// A small device with PRE_COPY that follows mlx5's precopy rules exactly, to drive the engine's live phase: its state
/// is <see cref="Pages"/> pages; its stream is records (u32 page index + the page); the initial image is every page;
/// while in PRE_COPY each VFIO_MIG_GET_PRECOPY_INFO first lets the device "run" (it dirties
/// <see cref="DirtyPagesPerInfo"/> pages, for <see cref="DirtyingInfos"/> calls) and then makes the pages dirtied
/// since the last call readable. Reads find nothing else (ENOMSG), so an engine that never asks would never see
/// them. STOP_COPY sends what is dirty and unread, then ends. On the destination, records overwrite pages in order.
/// Everything is under one lock: the engine calls it from its threads.
/// </summary>
internal sealed class PagedDevice(string name, int pages, bool preCopy = true) : IMigrationDevice
{
    public const int PageSize = 4096;
    private const int RecordSize = 4 + PageSize;
    private readonly object _lock = new();
    private readonly byte[] _state = Seeded(name, pages);
    private MigrationState _deviceState = MigrationState.Running;
    private Session? _session;

    public string Name => name;
    public int Pages => pages;
    public MigrationFlags Flags => MigrationFlags.StopCopy | MigrationFlags.P2P | (preCopy ? MigrationFlags.PreCopy : 0);
    public int DirtyPagesPerInfo { get; init; }
    /// <summary>How many precopy info calls dirty pages (the device "runs" for that long); int.MaxValue: forever.</summary>
    public int DirtyingInfos { get; set; }
    public int InfoCalls { get; private set; }

    private static byte[] Seeded(string name, int pages)
    {
        var state = new byte[pages * PageSize];
        new Random(name.GetHashCode(StringComparison.Ordinal)).NextBytes(state);
        return state;
    }

    public MigrationState GetState()
    {
        lock (_lock) return _deviceState;
    }

    public IDeviceDataStream? SetState(MigrationState target)
    {
        lock (_lock)
        {
            var from = _deviceState;
            _deviceState = target;
            switch (from, target)
            {
                case (MigrationState.Running, MigrationState.PreCopy) or (MigrationState.RunningP2P, MigrationState.PreCopyP2P):
                    return _session = new Session(this, resuming: false);
                case (MigrationState.Stop, MigrationState.StopCopy):
                    _session = new Session(this, resuming: false);
                    _session.StopCopy();
                    return _session;
                case (MigrationState.Stop, MigrationState.Resuming):
                    return _session = new Session(this, resuming: true);
                case (MigrationState.PreCopy or MigrationState.PreCopyP2P, MigrationState.StopCopy):
                    _session!.StopCopy();
                    return null;
                case (MigrationState.Resuming, MigrationState.Stop) when _session!.Partial != 0:
                    _deviceState = MigrationState.Error;
                    throw new VfioException("RESUMING->STOP", Libc.EIO, "a record cut short");
                default:
                    if (target is MigrationState.Running or MigrationState.Stop or MigrationState.RunningP2P) _session = null;
                    return null;
            }
        }
    }

    public ulong? StopCopySizeEstimate()
    {
        lock (_lock) return _session is { } s ? (ulong)s.RemainingBytes : (ulong)_state.Length / PageSize * RecordSize;
    }

    public byte[] SaveConfig() => [];
    public void RestoreConfig(ReadOnlySpan<byte> config) { }

    public void Reset()
    {
        lock (_lock)
        {
            _deviceState = MigrationState.Running;
            _session = null;
            Seeded(name, pages).CopyTo(_state, 0);
        }
    }

    public ulong? StateDigest()
    {
        lock (_lock) return XxHash64.HashToUInt64(_state);
    }

    public IEnumerable<Type> DataPathTypes => [typeof(PagedDevice), typeof(Session)];
    public void Dispose() { }

    private sealed class Session(PagedDevice device, bool resuming) : IDeviceDataStream
    {
        private readonly Queue<int> _readable = new(resuming ? [] : Enumerable.Range(0, device.Pages));
        private readonly HashSet<int> _queued = resuming ? [] : [.. Enumerable.Range(0, device.Pages)];
        private readonly HashSet<int> _dirty = [];
        private readonly byte[] _record = new byte[RecordSize];
        private int _initialLeft = resuming ? 0 : device.Pages;
        private int _recordAt = RecordSize; // bytes of _record already read (source) or written (destination)
        private bool _stopCopy;

        public int Partial => _recordAt % RecordSize;
        public long RemainingBytes => (long)(_readable.Count + _dirty.Count) * RecordSize + (RecordSize - _recordAt);

        public void StopCopy()
        {
            _stopCopy = true;
            Publish();
        }

        /// <summary>Pages dirtied so far become readable (each once, at its content when its record is read).</summary>
        private void Publish()
        {
            foreach (int p in _dirty)
                if (_queued.Add(p)) _readable.Enqueue(p);
            _dirty.Clear();
        }

        public DataRead Read(Span<byte> buffer)
        {
            lock (device._lock)
            {
                int n = 0;
                while (n < buffer.Length)
                {
                    if (_recordAt == RecordSize)
                    {
                        if (!_readable.TryDequeue(out int page)) break;
                        _queued.Remove(page);
                        if (_initialLeft > 0) _initialLeft--;
                        BinaryPrimitives.WriteInt32LittleEndian(_record, page);
                        device._state.AsSpan(page * PageSize, PageSize).CopyTo(_record.AsSpan(4));
                        _recordAt = 0;
                    }
                    int c = Math.Min(buffer.Length - n, RecordSize - _recordAt);
                    _record.AsSpan(_recordAt, c).CopyTo(buffer[n..]);
                    (_recordAt, n) = (_recordAt + c, n + c);
                }
                if (n > 0) return new DataRead(n, DataReadStatus.Data);
                return _stopCopy ? new DataRead(0, DataReadStatus.EndOfStream) : new DataRead(0, DataReadStatus.NoDataForNow);
            }
        }

        public PrecopyInfo GetPrecopyInfo()
        {
            lock (device._lock)
            {
                if (device._deviceState is not (MigrationState.PreCopy or MigrationState.PreCopyP2P))
                    throw new VfioException("VFIO_MIG_GET_PRECOPY_INFO", Libc.EINVAL, $"in {device._deviceState}");
                device.InfoCalls++;
                if (device.InfoCalls <= device.DirtyingInfos)
                    for (int i = 0; i < device.DirtyPagesPerInfo; i++)
                    {
                        int page = Random.Shared.Next(device.Pages);
                        device._state[page * PageSize + Random.Shared.Next(PageSize)]++;
                        _dirty.Add(page);
                    }
                Publish();
                return new PrecopyInfo((ulong)_initialLeft * RecordSize, (ulong)(_readable.Count - _initialLeft) * RecordSize);
            }
        }

        public void WriteAll(ReadOnlySpan<byte> data)
        {
            lock (device._lock)
            {
                if (device._deviceState != MigrationState.Resuming) throw new VfioException("write", Libc.EINVAL, "not RESUMING");
                foreach (byte b in data)
                {
                    if (_recordAt == RecordSize) _recordAt = 0;
                    _record[_recordAt++] = b;
                    if (_recordAt < RecordSize) continue;
                    int page = BinaryPrimitives.ReadInt32LittleEndian(_record);
                    if ((uint)page >= (uint)device.Pages) throw new VfioException("write", Libc.EINVAL, $"page {page}");
                    _record.AsSpan(4).CopyTo(device._state.AsSpan(page * PageSize));
                }
            }
        }

        public void Dispose() { }
    }
}
