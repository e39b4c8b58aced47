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

    public NullDevice(string name, long stateSize)
    {
        if (stateSize < 1 || stateSize > SimStream.MaxStateSize)
            throw new ArgumentOutOfRangeException(nameof(stateSize), "state size must be between 1 byte and 1 TiB");
        Name = name;
        StateSize = stateSize;
        _pattern = GC.AllocateUninitializedArray<byte>(2 * PeriodBytes, pinned: true);
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(_pattern.AsSpan());
        ulong seed = SimStream.SeedOf(name);
        for (int k = 0; k < PeriodWords; k++)
            words[k] = words[PeriodWords + k] = SimStream.Word(seed, -2, k);
        _config = OwnConfig();
    }

    public string Name { get; }
    public long StateSize { get; }
    public MigrationFlags Flags => MigrationFlags.StopCopy | MigrationFlags.P2P;
    /// <summary>Every null device, on any host: a stream of no format but its bytes.</summary>
    public static DeviceIdentity NullIdentity { get; } = new("vfio-mig-null", "simulated", "");
    public DeviceIdentity Identity => NullIdentity;
    public IEnumerable<Type> DataPathTypes => [typeof(NullDevice), typeof(Session), typeof(SoftwareTransitions)];

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

    public ulong? StopCopySizeEstimate() => (ulong)StateSize;

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
                _state = next;
                if (from is MigrationState.StopCopy or MigrationState.Resuming)
                {
                    _session?.End();
                    _session = null;
                }
                if (from == MigrationState.Stop && next is MigrationState.StopCopy or MigrationState.Resuming)
                {
                    // Every session reads the state from its start; the engine owns (and disposes) the stream.
                    _session = new Session(this, saving: next == MigrationState.StopCopy);
                    stream = _session;
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

    /// <summary>One STOP_COPY session (the state, in place) or RESUMING session (writes swallowed).</summary>
    private sealed class Session(NullDevice device, bool saving) : IInPlaceDataStream
    {
        private long _offset;
        private volatile bool _ended;
        private bool _disposed; // the engine's use of the stream ended (the session goes on, as a data fd's does)

        public void End() => _ended = true;

        public ReadOnlyMemory<byte> ReadInPlace(int max)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!saving) throw new VfioException($"read(migration data fd of {device.Name})", Libc.EINVAL, "the device is resuming");
            if (_ended) return ReadOnlyMemory<byte>.Empty; // the session ended: like a data fd, reads end at once
            int n = (int)Math.Min(Math.Min(max, PeriodBytes), device.StateSize - _offset);
            var chunk = device._pattern.AsMemory((int)(_offset % PeriodBytes), n);
            _offset += n;
            return chunk;
        }

        public DataRead Read(Span<byte> buffer)
        {
            var chunk = ReadInPlace(buffer.Length);
            chunk.Span.CopyTo(buffer);
            return new DataRead(chunk.Length, chunk.IsEmpty ? DataReadStatus.EndOfStream : DataReadStatus.Data);
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
