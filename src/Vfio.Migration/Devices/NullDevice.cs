using Vfio.Interop;

namespace Vfio.Migration;

/// <summary>
/// A device with no cost (<c>null:NAME</c>): it measures the transport alone. Saving, its data fd reads a memfd of
/// the state size (sparse: a name-derived first page, zeros after it, so it costs neither time nor memory to make
/// and reading it is a copy from the page cache's zero page); resuming, its data fd is /dev/null, which swallows
/// writes at no cost. It keeps no digest, so a run over null devices is verified by the byte count and the stream
/// checksum (every buffer's CRC32C, in order), which is what the transport is responsible for.
/// </summary>
public sealed class NullDevice : IMigrationDevice
{
    private readonly object _lock = new();
    private readonly int _memfd;
    private MigrationState _state = MigrationState.Running;
    private byte[] _config;
    private bool _disposed;

    public NullDevice(string name, long stateSize)
    {
        if (stateSize < 1 || stateSize > SimStream.MaxStateSize)
            throw new ArgumentOutOfRangeException(nameof(stateSize), "state size must be between 1 byte and 1 TiB");
        Name = name;
        StateSize = stateSize;
        _memfd = Libc.MemfdCreate("vfio-mig-" + name, Libc.MFD_CLOEXEC);
        if (_memfd < 0) throw VfioException.FromLastError($"memfd_create for {name}");
        if (Libc.Ftruncate(_memfd, stateSize) < 0)
        {
            var e = VfioException.FromLastError($"ftruncate memfd of {name} to {stateSize} bytes");
            Libc.Close(_memfd);
            throw e;
        }
        var page = new byte[(int)Math.Min(4096, stateSize)];
        SimStream.FillData(SimStream.SeedOf(name), -2, 0, page);
        unsafe
        {
            fixed (byte* p = page)
                if (Libc.PWrite(_memfd, p, (nuint)page.Length, 0) != page.Length)
                {
                    var e = VfioException.FromLastError($"write memfd of {name}");
                    Libc.Close(_memfd);
                    throw e;
                }
        }
        _config = OwnConfig();
    }

    public string Name { get; }
    public long StateSize { get; }
    public MigrationFlags Flags => MigrationFlags.StopCopy | MigrationFlags.P2P;

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
        lock (_lock)
        {
            if (_state != MigrationState.Stop)
                throw new VfioException($"restore config state of {Name}", Libc.EINVAL, $"device is in {_state}, not STOP");
            _config = config.ToArray();
        }
    }

    public ulong? StateDigest() => null;

    public MigrationDataStream? SetState(MigrationState target)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (target == _state) return null;
            string op = $"VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE {_state}->{target}) on {Name}";
            if (_state == MigrationState.Error)
                throw new VfioException(op, Libc.EINVAL, "device is in ERROR; reset it");
            if (!MigrationStateMachine.TryGetPath(_state, target, Flags, out var path))
                throw new VfioException(op, Libc.EINVAL, "not a valid target for this device");
            MigrationDataStream? stream = null;
            foreach (var next in path)
            {
                var from = _state;
                _state = next;
                if (from == MigrationState.Stop && next is MigrationState.StopCopy or MigrationState.Resuming)
                {
                    // A new open file description: its own offset, so every session reads the state from the start.
                    int fd = next == MigrationState.StopCopy
                        ? Libc.Open($"/proc/self/fd/{_memfd}", Libc.O_RDONLY | Libc.O_CLOEXEC)
                        : Libc.Open("/dev/null", Libc.O_WRONLY | Libc.O_CLOEXEC);
                    if (fd < 0)
                    {
                        _state = MigrationState.Error;
                        throw VfioException.FromLastError(op);
                    }
                    // The engine owns (and closes) the stream it gets.
                    stream = new MigrationDataStream(new FileDescriptorHandle(fd), Name);
                }
            }
            return stream;
        }
    }

    public void Reset()
    {
        lock (_lock)
        {
            _state = MigrationState.Running;
            _config = OwnConfig();
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            Libc.Close(_memfd);
        }
    }

    public override string ToString() => Name;
}
