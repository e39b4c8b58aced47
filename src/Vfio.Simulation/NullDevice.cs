using Vfio.Interop;
using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// A device with no cost (<c>null:NAME</c>): it measures the transport alone. Its state lies in memory, a
/// name-derived block of <see cref="PeriodBytes"/> (just under 4 MiB, a prime number of words, so that buffers never
/// line up with it) repeated to the state size. Saving, the engine sends the state from where it lies
/// (<see cref="IInPlaceDataStream"/>): reading a copy into the engine's buffer would be a device's cost (on a real
/// VF, the kernel copying from the driver's buffers), not the transport's. Resuming, it swallows writes at no cost.
/// It keeps no digest, so a run over null devices is verified by the byte count and the stream checksum (every
/// buffer's CRC32C, in order), which is what the transport is responsible for.
/// <para>PRE_COPY, with mlx5's rules as the simulated device has them: the initial image (the state), then the bytes
/// the device dirtied at its dirty rate while it ran (at most the state size outstanding), readable only once
/// VFIO_MIG_GET_PRECOPY_INFO was called after they were dirtied; PRE_COPY(_P2P)->STOP_COPY sends what is still dirty,
/// then ends. An in-place read that finds nothing is "nothing for now" in PRE_COPY and the end only in STOP_COPY
/// (<see cref="IInPlaceDataStream"/>), so the stream ends only after STOP_COPY.</para>
/// Threads: _state, _session, _config and a PRE_COPY session's fields are under _lock; a STOP_COPY session's offset
/// belongs to the engine's thread that reads it.
/// </summary>
public sealed class NullDevice : IMigrationDevice
{
    private const int PeriodWords = 524287; // 2^19 - 1, a prime
    public const int PeriodBytes = PeriodWords * 8;
    private readonly object _lock = new();
    private readonly byte[] _pattern; // the block twice in a row: any window of up to PeriodBytes is contiguous
    private MigrationState _state = MigrationState.Running;
    private Session? _session;
    private byte[] _config;
    private bool _disposed;

    public NullDevice(string name, long stateSize, double dirtyBytesPerSecond = 0)
    {
        if (stateSize < 1 || stateSize > SimStream.MaxStateSize)
            throw new ArgumentOutOfRangeException(nameof(stateSize), "state size must be between 1 byte and 1 TiB");
        if (!(dirtyBytesPerSecond >= 0)) throw new ArgumentOutOfRangeException(nameof(dirtyBytesPerSecond), "dirty rate must not be negative");
        Name = name;
        StateSize = stateSize;
        DirtyBytesPerSecond = dirtyBytesPerSecond;
        _pattern = GC.AllocateUninitializedArray<byte>(2 * PeriodBytes, pinned: true);
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(_pattern.AsSpan());
        ulong seed = SimStream.SeedOf(name);
        for (int k = 0; k < PeriodWords; k++)
            words[k] = words[PeriodWords + k] = SimStream.Word(seed, -2, k);
        _config = OwnConfig();
    }

    public string Name { get; }
    public long StateSize { get; }
    /// <summary>Bytes the device dirties per second while it runs in PRE_COPY.</summary>
    public double DirtyBytesPerSecond { get; }
    public MigrationFlags Flags => MigrationFlags.StopCopy | MigrationFlags.P2P | MigrationFlags.PreCopy;
    /// <summary>Every null device, on any host: a stream of no format but its bytes.</summary>
    public static DeviceIdentity NullIdentity { get; } = new("vfio-mig-null", "simulated", "");
    public DeviceIdentity Identity => NullIdentity;
    public IEnumerable<Type> DataPathTypes => [typeof(NullDevice), typeof(Session), typeof(SoftwareTransitions), typeof(DirtyClock)];

    private byte[] OwnConfig()
    {
        var c = new byte[256];
        SimStream.FillData(SimStream.SeedOf(Name) ^ 0xC0F1, -1, 0, c);
        return c;
    }

    public MigrationState GetState()
    {
        lock (_lock) return _state;
    }

    /// <summary>The state size; during a PRE_COPY session, what a switchover now would still move.</summary>
    public ulong? StopCopySizeEstimate()
    {
        lock (_lock) return (ulong)(_session is { Live: true } s ? s.Remaining(MigrationClock.NowUs) : StateSize);
    }

    public byte[] SaveConfig()
    {
        lock (_lock) return (byte[])_config.Clone();
    }

    public void RestoreConfig(ReadOnlySpan<byte> config)
    {
        lock (_lock) _config = SoftwareTransitions.RestoredConfig(Name, _state, config);
    }

    public ulong? StateDigest() => null;

    public IDeviceDataStream? SetState(MigrationState target)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (target == _state) return null;
            IDeviceDataStream? stream = null;
            foreach (var next in SoftwareTransitions.Path(Name, _state, target, Flags, out _))
            {
                var from = _state;
                long now = MigrationClock.NowUs;
                _state = next;
                if (from is MigrationState.StopCopy or MigrationState.Resuming
                    || (from is MigrationState.PreCopy or MigrationState.PreCopyP2P && next is MigrationState.Running or MigrationState.RunningP2P))
                {
                    _session?.End();
                    _session = null;
                }
                // Every session reads the state from its start; the engine owns (and disposes) the stream.
                switch (from, next)
                {
                    case (MigrationState.Stop, MigrationState.StopCopy or MigrationState.Resuming):
                        stream = _session = new Session(this, saving: next == MigrationState.StopCopy, live: false, -1);
                        break;
                    case (MigrationState.Running, MigrationState.PreCopy) or (MigrationState.RunningP2P, MigrationState.PreCopyP2P):
                        stream = _session = new Session(this, saving: true, live: true, next == MigrationState.PreCopy ? now : -1);
                        break;
                    case (MigrationState.PreCopy, MigrationState.PreCopyP2P):
                        _session!.Pause(now);
                        break;
                    case (MigrationState.PreCopyP2P, MigrationState.PreCopy):
                        _session!.Resume(now);
                        break;
                    case (MigrationState.PreCopy or MigrationState.PreCopyP2P, MigrationState.StopCopy):
                        _session!.EnterStopCopy(now);
                        break;
                }
            }
            return stream;
        }
    }

    public void Reset()
    {
        lock (_lock)
        {
            _session?.End();
            _session = null;
            _state = MigrationState.Running;
            _config = OwnConfig();
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            _session?.End();
            _session = null;
        }
    }

    public override string ToString() => Name;

    /// <summary>
    /// One STOP_COPY session (the state, in place), PRE_COPY session (the state, then dirty bytes, in place) or RESUMING
    /// session (writes swallowed). A PRE_COPY session's fields are under the device's lock.
    /// </summary>
    private sealed class Session(NullDevice device, bool saving, bool live, long runningSinceUs) : IInPlaceDataStream
    {
        private long _offset;
        private volatile bool _ended;
        private bool _disposed; // the engine's use of the stream ended (the session goes on, as a data fd's does)
        private readonly DirtyClock _dirt = new(device.DirtyBytesPerSecond, 1, runningSinceUs);
        private long _pending;   // live: bytes dirtied since the last precopy info
        private long _readable;  // live: dirty bytes readable
        private bool _stopCopy;

        public bool Live => live;

        public void End() => _ended = true;

        private long InitialLeft => Math.Max(0, device.StateSize - _offset);

        private void Run(long nowUs) =>
            _pending = Math.Min(_pending + _dirt.Advance(nowUs, device.StateSize), device.StateSize - _readable);

        public long Remaining(long nowUs)
        {
            Run(nowUs);
            return InitialLeft + _readable + _pending;
        }

        public void Pause(long nowUs)
        {
            Run(nowUs);
            _dirt.Stop();
        }

        public void Resume(long nowUs) => _dirt.Start(nowUs);

        public void EnterStopCopy(long nowUs)
        {
            Pause(nowUs);
            _readable += _pending;
            _pending = 0;
            _stopCopy = true;
        }

        public PrecopyInfo GetPrecopyInfo()
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            lock (device._lock)
            {
                if (!live || _ended || device._state is not (MigrationState.PreCopy or MigrationState.PreCopyP2P))
                    throw new VfioException($"VFIO_MIG_GET_PRECOPY_INFO on {device.Name}", Libc.EINVAL, $"the device is in {device._state}");
                Run(MigrationClock.NowUs);
                _readable += _pending;
                _pending = 0;
                return new PrecopyInfo((ulong)InitialLeft, (ulong)_readable);
            }
        }

        public ReadOnlyMemory<byte> ReadInPlace(int max)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!saving) throw new VfioException($"read(migration data fd of {device.Name})", Libc.EINVAL, "the device is resuming");
            if (_ended) return ReadOnlyMemory<byte>.Empty; // the session ended: like a data fd, reads end at once
            if (!live) return Next(max, device.StateSize - _offset);
            lock (device._lock)
            {
                if (_ended) return ReadOnlyMemory<byte>.Empty;
                long initial = InitialLeft;
                var chunk = Next(max, initial > 0 ? initial : _readable);
                if (initial == 0) _readable -= chunk.Length;
                return chunk;
            }
        }

        /// <summary>The next bytes of the stream, at most <paramref name="available"/>: the state's pattern, from where the last ended.</summary>
        private ReadOnlyMemory<byte> Next(int max, long available)
        {
            int n = (int)Math.Min(Math.Min(max, PeriodBytes), available);
            var chunk = device._pattern.AsMemory((int)(_offset % PeriodBytes), n);
            _offset += n;
            return chunk;
        }

        public DataRead Read(Span<byte> buffer)
        {
            var chunk = ReadInPlace(buffer.Length);
            chunk.Span.CopyTo(buffer);
            if (!chunk.IsEmpty) return new DataRead(chunk.Length, DataReadStatus.Data);
            bool nothingForNow;
            lock (device._lock) nothingForNow = live && !_ended && !_stopCopy;
            return new DataRead(0, nothingForNow ? DataReadStatus.NoDataForNow : DataReadStatus.EndOfStream);
        }

        public void WriteAll(ReadOnlySpan<byte> data)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (saving) throw new VfioException($"write(migration data fd of {device.Name})", Libc.EINVAL, "the device is saving");
            if (_ended) throw new VfioException($"write(migration data fd of {device.Name})", Libc.EPIPE, "the session has ended");
        }

        public void Dispose() => _disposed = true;
    }
}
