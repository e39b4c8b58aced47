using Vfio.Interop;
using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// The simulated physical function: its VFs share one firmware command interface, so at most
/// <see cref="ConcurrentLoads"/> record loads run at once across them (ConnectX-7: 4 VFs migrating per PF).
/// <para>The PF keeps a virtual schedule: each of its <see cref="ConcurrentLoads"/> slots knows when its current load
/// ends. A device that completed a record reserves the slot that frees first for exactly the record's load time, no
/// earlier than the record's processing began; it then sleeps until that reservation ends. So every load occupies a
/// slot for exactly size/rate, loads on one slot never overlap, and sleeping late (timer slack) does not make the
/// PF slower than its parameters say: the device bound (<see cref="DeviceBound"/>) is exact for this model.</para>
/// </summary>
public sealed class SimulatedPf
{
    public const int DefaultConcurrentLoads = 4;
    private readonly object _lock = new();
    private readonly long[] _freeAtUs;
    private int _peak;

    public SimulatedPf(string name = "sim-pf0", int concurrentLoads = DefaultConcurrentLoads)
    {
        if (concurrentLoads < 1) throw new ArgumentOutOfRangeException(nameof(concurrentLoads), "PF concurrency must be at least 1");
        Name = name;
        ConcurrentLoads = concurrentLoads;
        _freeAtUs = new long[concurrentLoads];
    }

    public string Name { get; }
    public int ConcurrentLoads { get; }
    /// <summary>The most loads that ever ran at once on this PF.</summary>
    public int PeakConcurrentLoads => Volatile.Read(ref _peak);

    /// <summary>
    /// Reserves the slot that frees first for a load of <paramref name="loadUs"/> starting no earlier than
    /// <paramref name="earliestUs"/> (MigrationClock); returns when the load ends.
    /// </summary>
    internal long Reserve(long earliestUs, long loadUs)
    {
        lock (_lock)
        {
            int best = 0;
            for (int i = 1; i < _freeAtUs.Length; i++)
                if (_freeAtUs[i] < _freeAtUs[best]) best = i;
            long start = Math.Max(earliestUs, _freeAtUs[best]);
            _freeAtUs[best] = start + loadUs;
            int active = 0;
            foreach (long f in _freeAtUs) if (f > start) active++;
            if (active > _peak) Volatile.Write(ref _peak, active);
            return start + loadUs;
        }
    }
}

/// <summary>
/// Parameters of a simulated device. The defaults model one ConnectX-7 mlx5 VF as measured for QEMU's multifd loading
/// threads (about 200 ms to load alone).
/// </summary>
public sealed record SimulatedDeviceOptions
{
    public const long DefaultStateSize = 64L << 20;
    public const double DefaultLoadRate = 320.0 * (1 << 20);
    public const int DefaultRecordDataSize = 4 << 20;

    /// <summary>Bytes of the STOP_COPY stream (exactly). Default 64 MiB.</summary>
    public long StateSize { get; init; } = DefaultStateSize;
    /// <summary>Load rate in bytes/s: a record of B bytes keeps its write(2) busy B/rate seconds. Default 320 MiB/s; 0 = free.</summary>
    public double LoadBytesPerSecond { get; init; } = DefaultLoadRate;
    /// <summary>Save rate in bytes/s when producing the stream; 0 = as fast as it is read (default).</summary>
    public double SaveBytesPerSecond { get; init; }
    /// <summary>Data bytes per firmware record (the unit of a load). Default 4 MiB.</summary>
    public int RecordDataSize { get; init; } = DefaultRecordDataSize;

    /// <summary>The simulated time to load <paramref name="bytes"/>, in seconds.</summary>
    public double LoadSeconds(long bytes) => LoadBytesPerSecond <= 0 ? 0 : bytes / LoadBytesPerSecond;
}

/// <summary>
/// A device that behaves, as far as the engine can tell, like an mlx5 VF bound to mlx5_vfio_pci.
/// <para>Its data stream is served in-process (<see cref="IDeviceDataStream"/>) on the engine's thread: a read
/// generates the next bytes of the stream into the engine's buffer; a write parses and checks records, and the
/// write that completes a record "loads" it: the load lasts size/rate seconds from when the record's first bytes
/// came in (the device's own copying and checking included), holds a slot of the PF's shared command interface all
/// that time (<see cref="SimulatedPf"/>), and the write returns when it ends, as on mlx5.</para>
/// <para>A wrong stream (order, size, checksum, extra data) poisons the session: the write fails (EINVAL), later
/// writes too (EIO), and RESUMING->STOP fails (EIO) leaving the device in ERROR until reset. An incomplete stream
/// also fails RESUMING->STOP.</para>
/// </summary>
public sealed class SimulatedDevice : IMigrationDevice
{
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(ulong Seed, long Size, int Record), (ulong Hash, uint[] Crcs)>
        s_hashCache = new();
    private readonly object _lock = new();
    private readonly SimulatedDeviceOptions _options;
    private readonly SimulatedPf _pf;
    private readonly ulong _ownSeed;
    private MigrationState _state = MigrationState.Running;
    private Session? _session;
    // current content: the stream it would save and the config state
    private ulong _seed;
    private long _stateSize;
    private int _recordData;
    private byte[] _config;
    private ulong? _streamHash; // known hash of the current stream (computed lazily for own content)
    private bool _disposed;

    public SimulatedDevice(string name, SimulatedDeviceOptions? options = null, SimulatedPf? pf = null)
    {
        Name = name;
        _options = options ?? new SimulatedDeviceOptions();
        if (_options.RecordDataSize < 1) throw new ArgumentOutOfRangeException(nameof(options), "record size must be positive");
        SimStream.Layout(_options.StateSize, _options.RecordDataSize); // validates the size
        _pf = pf ?? new SimulatedPf();
        string contentName = name.StartsWith("sim:", StringComparison.Ordinal) ? name[4..] : name;
        _ownSeed = SimStream.SeedOf(contentName);
        ResetContent();
        _config = OwnConfig(contentName);
    }

    public string Name { get; }
    public SimulatedDeviceOptions Options => _options;
    public SimulatedPf Pf => _pf;
    public MigrationFlags Flags => MigrationFlags.StopCopy | MigrationFlags.P2P;
    /// <summary>Every simulated device, on any host: its stream format is the simulator's own.</summary>
    public static DeviceIdentity SimulatedIdentity { get; } = new("vfio-mig-sim", "simulated", "sim-stream-1");
    public DeviceIdentity Identity => SimulatedIdentity;
    public IEnumerable<Type> DataPathTypes =>
        [typeof(SimulatedDevice), typeof(Session), typeof(SimulatedPf), typeof(SimStream), typeof(SimStreamGenerator), typeof(SimStreamParser),
         typeof(SoftwareTransitions), typeof(PreciseSleep)];

    /// <summary>Total simulated load time the last resume spent (sum over records), for the report's device bound.</summary>
    public double LastLoadSeconds { get; private set; }

    private void ResetContent()
    {
        _seed = _ownSeed;
        _stateSize = _options.StateSize;
        _recordData = _options.RecordDataSize;
        _streamHash = null;
    }

    private static byte[] OwnConfig(string name)
    {
        // A PCI type-0 header of a ConnectX VF (15b3:101e) followed by bytes derived from the name.
        var c = new byte[256];
        SimStream.FillData(SimStream.SeedOf(name) ^ 0xC0F1, -1, 0, c);
        c[0] = 0xb3; c[1] = 0x15; c[2] = 0x1e; c[3] = 0x10;
        return c;
    }

    public MigrationState GetState()
    {
        lock (_lock) return _state;
    }

    public ulong? StopCopySizeEstimate()
    {
        lock (_lock) return (ulong)_stateSize;
    }

    public byte[] SaveConfig()
    {
        lock (_lock) return (byte[])_config.Clone();
    }

    public void RestoreConfig(ReadOnlySpan<byte> config)
    {
        lock (_lock) _config = SoftwareTransitions.RestoredConfig(Name, _state, config);
    }

    public ulong? StateDigest()
    {
        ulong seed; long size; int rec; ulong? hash; byte[] config;
        lock (_lock) { seed = _seed; size = _stateSize; rec = _recordData; hash = _streamHash; config = _config; }
        if (hash is null)
        {
            hash = s_hashCache.GetOrAdd((seed, size, rec), k => SimStreamParser.HashAndCrcsOf(new SimStreamGenerator(k.Seed, k.Size, k.Record))).Hash;
            lock (_lock) if (_seed == seed && _stateSize == size) _streamHash = hash;
        }
        return SimStream.Digest(hash.Value, config);
    }

    public IDeviceDataStream? SetState(MigrationState target)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (target == _state) return null;
            var path = SoftwareTransitions.Path(Name, _state, target, Flags, out string op);
            IDeviceDataStream? stream = null;
            foreach (var next in path)
                stream = Step(next, op);
            return stream;
        }
    }

    private Session? Step(MigrationState next, string op)
    {
        var from = _state;
        if (from == MigrationState.StopCopy)
        {
            _session?.Close();
            _session = null;
        }
        else if (from == MigrationState.Resuming)
        {
            var s = _session!;
            _session = null;
            string? error = s.FinishLoad();
            if (error is not null)
            {
                _state = MigrationState.Error;
                throw new VfioException(op, Libc.EIO, error);
            }
            var p = s.Parser!;
            _seed = p.Seed;
            _stateSize = p.TotalBytes;
            _recordData = p.RecordDataSize;
            _streamHash = p.StreamHash;
            LastLoadSeconds = s.LoadSeconds;
        }
        _state = next;
        if (from == MigrationState.Stop && next == MigrationState.StopCopy)
        {
            _session = Session.StartSave(this);
            return _session;
        }
        if (from == MigrationState.Stop && next == MigrationState.Resuming)
        {
            _session = Session.StartLoad(this);
            return _session;
        }
        return null;
    }

    public void Reset()
    {
        Session? s;
        lock (_lock)
        {
            s = _session;
            _session = null;
            _state = MigrationState.Running;
            ResetContent();
            _config = OwnConfig(Name.StartsWith("sim:", StringComparison.Ordinal) ? Name[4..] : Name);
        }
        s?.Close();
    }

    public void Dispose()
    {
        Session? s;
        lock (_lock) { _disposed = true; s = _session; _session = null; }
        s?.Close();
    }

    public override string ToString() => Name;

    /// <summary>
    /// One STOP_COPY or RESUMING session, served in-process on the engine's thread that reads or writes the stream:
    /// what an mlx5 VF's firmware and DMA do costs the host no CPU, so neither may the simulator beyond producing and
    /// checking the bytes.
    /// </summary>
    private sealed class Session : IDeviceDataStream
    {
        private readonly SimulatedDevice _device;
        private readonly SimStreamGenerator? _generator;
        private readonly CancellationTokenSource _cancel = new();
        private volatile bool _closed;
        private bool _disposed; // the engine's use of the stream ended (the session goes on, as a data fd's does)
        private volatile string? _error;
        private long _saveStartUs = -1;
        private long _saved;
        private long _firstUs = -1; // when the current record's first bytes came in
        private long _readyUs;      // when the device's previous load ended (its PF reservation)
        private long _lateUs;       // how much later than _readyUs the device woke (timer slack; not the engine's fault)

        private Session(SimulatedDevice device, SimStreamGenerator? generator, SimStreamParser? parser)
        {
            _device = device;
            _generator = generator;
            Parser = parser;
        }

        public SimStreamParser? Parser { get; }
        public double LoadSeconds { get; private set; }

        public static Session StartSave(SimulatedDevice d)
        {
            var o = d._options;
            // The digest pass (StateDigest, before the engine stops the device) knows every record's CRC: reuse them.
            var crcs = s_hashCache.TryGetValue((d._seed, d._stateSize, d._recordData), out var known) ? known.Crcs : null;
            return new Session(d, new SimStreamGenerator(d._seed, d._stateSize, d._recordData, crcs), null);
        }

        public static Session StartLoad(SimulatedDevice d) => new(d, null, new SimStreamParser());

        private string Op(string call) => $"{call}(migration data fd of {_device.Name})";

        public DataRead Read(Span<byte> buffer)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_generator is null) throw new VfioException(Op("read"), Libc.EINVAL, "the device is resuming");
            if (_closed) return new DataRead(0, DataReadStatus.EndOfStream); // the session ended: like the fd, reads end at once
            if (_saveStartUs < 0) _saveStartUs = MigrationClock.NowUs;
            int n = _generator.Fill(buffer);
            if (n == 0) return new DataRead(0, DataReadStatus.EndOfStream);
            _saved += n;
            // A device that saves at a finite rate has these bytes ready only once it has produced them.
            double rate = _device._options.SaveBytesPerSecond;
            if (rate > 0 && !SleepUntil(_saveStartUs + (long)(_saved / rate * 1e6)))
                return new DataRead(0, DataReadStatus.EndOfStream);
            return new DataRead(n, DataReadStatus.Data);
        }

        /// <summary>
        /// Parses and checks the bytes; a record that completes is loaded inside this call, as on mlx5: the load takes
        /// size/rate (the device's own copying and checking included) and holds one of the PF's slots all that time.
        /// It starts when the record's first bytes came in, but not before the device's previous load ended, nor so
        /// early that it would end before the record's last byte came in.
        /// </summary>
        public void WriteAll(ReadOnlySpan<byte> data)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var parser = Parser ?? throw new VfioException(Op("write"), Libc.EINVAL, "the device is saving");
            if (_error is not null) throw new VfioException(Op("write"), Libc.EIO, _error);
            if (_closed) throw new VfioException(Op("write"), Libc.EPIPE, "the session has ended");
            var o = _device._options;
            int done = 0;
            while (done < data.Length)
            {
                if (_firstUs < 0) _firstUs = MigrationClock.NowUs;
                int k = (int)Math.Min(data.Length - done, parser.UntilBoundary);
                long record;
                try { record = parser.Consume(data.Slice(done, k)); }
                catch (SimStreamException e)
                {
                    _error = $"device refused the stream: {e.Message}"; // poisons the session: RESUMING->STOP fails
                    throw new VfioException(Op("write"), Libc.EINVAL, _error);
                }
                done += k;
                if (record == 0) continue;
                if (o.LoadBytesPerSecond > 0)
                {
                    long us = (long)Math.Round(o.LoadSeconds(record) * 1e6);
                    LoadSeconds += us / 1e6;
                    long start = Math.Max(Math.Max(_readyUs, _firstUs - _lateUs), MigrationClock.NowUs - us);
                    long end = _device._pf.Reserve(start, us);
                    _readyUs = end;
                    bool slept = end > MigrationClock.NowUs;
                    if (!SleepUntil(end))
                        throw new VfioException(Op("write"), Libc.EIO, "the device was reset during a load");
                    // Oversleeping (timer slack) is forgiven, up to 2 ms; being descheduled for longer is not.
                    _lateUs = slept ? Math.Clamp(MigrationClock.NowUs - end, 0, 2000) : 0;
                }
                _firstUs = -1;
            }
        }

        public void Dispose() => _disposed = true;

        /// <summary>
        /// Sleeps until <paramref name="untilUs"/> (MigrationClock): whole milliseconds cancellably, the rest with nanosleep.
        /// False when cancelled.
        /// </summary>
        private bool SleepUntil(long untilUs)
        {
            long left = untilUs - MigrationClock.NowUs;
            if (left >= 1500 && _cancel.Token.WaitHandle.WaitOne(TimeSpan.FromMilliseconds((left - 500) / 1000)))
                return false;
            left = untilUs - MigrationClock.NowUs;
            if (left > 0) PreciseSleep.Microseconds(left);
            return !_cancel.IsCancellationRequested;
        }

        /// <summary>RESUMING->STOP: judge the stream that was written. Null = accepted.</summary>
        public string? FinishLoad()
        {
            string? error = _error;
            if (error is null && !Parser!.Complete)
                error = $"incomplete stream: {Parser.Progress}";
            Close();
            return error;
        }

        /// <summary>Ends the session; a load in progress on another thread is cut short and its write fails.</summary>
        public void Close()
        {
            _closed = true;
            _cancel.Cancel();
        }
    }
}
