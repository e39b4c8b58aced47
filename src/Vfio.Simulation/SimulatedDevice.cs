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
    public const double DefaultDirtyRate = 16.0 * (1 << 20);

    /// <summary>Bytes of the STOP_COPY stream (exactly). Default 64 MiB.</summary>
    public long StateSize { get; init; } = DefaultStateSize;
    /// <summary>Load rate in bytes/s: a record of B bytes keeps its write(2) busy B/rate seconds. Default 320 MiB/s; 0 = free.</summary>
    public double LoadBytesPerSecond { get; init; } = DefaultLoadRate;
    /// <summary>Save rate in bytes/s when producing the stream; 0 = as fast as it is read (default).</summary>
    public double SaveBytesPerSecond { get; init; }
    /// <summary>Data bytes per firmware record (the unit of a load). Default 4 MiB.</summary>
    public int RecordDataSize { get; init; } = DefaultRecordDataSize;
    /// <summary>
    /// Bytes of state the device dirties per second while it runs in PRE_COPY, a data region (one record's data) at a
    /// time. Default 16 MiB/s; 0 = none.
    /// </summary>
    public double DirtyBytesPerSecond { get; init; } = DefaultDirtyRate;

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
/// <para>PRE_COPY, as on mlx5: RUNNING->PRE_COPY opens a stream that first serves the initial image (every region)
/// while the device runs and dirties regions at <see cref="SimulatedDeviceOptions.DirtyBytesPerSecond"/>; regions
/// dirtied since the last VFIO_MIG_GET_PRECOPY_INFO become readable (as dirty records) only when that call is made, and
/// a read with nothing readable finds nothing for now (ENOMSG). The device runs, and dirties, only in PRE_COPY: in
/// RUNNING its state holds still, and a migration aborted during precopy leaves it with the regions it dirtied.
/// PRE_COPY(_P2P)->STOP_COPY keeps the stream: what is still dirty, then the end record.</para>
/// <para>A wrong stream (order, size, checksum, generation, extra data) poisons the session: the write fails (EINVAL),
/// later writes too (EIO), and RESUMING->STOP fails (EIO) leaving the device in ERROR until reset. An incomplete stream
/// also fails RESUMING->STOP.</para>
/// Threads: every field is under _lock, except the save session's generator of a device whose regions are all at
/// generation 0 (the STOP_COPY path as named), which belongs to the engine's thread that reads the stream.
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
    private ulong? _streamHash; // known state hash of the current content (computed lazily for own content)
    private Region[]? _regions;  // per data region: generation and CRC (null: every region at generation 0, as named)
    private long _dirtyEvents;   // regions this device ever dirtied (numbers its pseudo-random choices)
    private bool _disposed;

    /// <summary>A data region's generation and, once known, the CRC32C of its data at that generation.</summary>
    private struct Region
    {
        public uint Generation;
        public uint Crc;
        public bool CrcKnown;
    }

    public SimulatedDevice(string name, SimulatedDeviceOptions? options = null, SimulatedPf? pf = null)
    {
        Name = name;
        _options = options ?? new SimulatedDeviceOptions();
        if (_options.RecordDataSize < 1) throw new ArgumentOutOfRangeException(nameof(options), "record size must be positive");
        if (!(_options.DirtyBytesPerSecond >= 0)) throw new ArgumentOutOfRangeException(nameof(options), "dirty rate must not be negative");
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
    public MigrationFlags Flags => MigrationFlags.StopCopy | MigrationFlags.P2P | MigrationFlags.PreCopy;
    /// <summary>Every simulated device, on any host: its stream format is the simulator's own.</summary>
    public static DeviceIdentity SimulatedIdentity { get; } = new("vfio-mig-sim", "simulated", "sim-stream-2");
    public DeviceIdentity Identity => SimulatedIdentity;
    public IEnumerable<Type> DataPathTypes =>
        [typeof(SimulatedDevice), typeof(Session), typeof(SaveFeed), typeof(SimulatedPf), typeof(SimStream), typeof(SimStreamGenerator),
         typeof(SimStreamParser), typeof(SoftwareTransitions), typeof(PreciseSleep), typeof(DirtyClock)];

    /// <summary>Total simulated load time the last resume spent (sum over records), for the report's device bound.</summary>
    public double LastLoadSeconds { get; private set; }

    private void ResetContent()
    {
        _seed = _ownSeed;
        _stateSize = _options.StateSize;
        _recordData = _options.RecordDataSize;
        _streamHash = null;
        _regions = null;
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

    /// <summary>The STOP_COPY stream's size; during a PRE_COPY session, what a switchover now would still move.</summary>
    public ulong? StopCopySizeEstimate()
    {
        lock (_lock) return (ulong)(_session?.Feed is { Live: true } ? _session.Remaining() : _stateSize);
    }

    public byte[] SaveConfig()
    {
        lock (_lock) return (byte[])_config.Clone();
    }

    public void RestoreConfig(ReadOnlySpan<byte> config)
    {
        lock (_lock) _config = SoftwareTransitions.RestoredConfig(Name, _state, config);
    }

    /// <summary>
    /// The state's digest: <see cref="SimStream.StateHash"/> of its regions (for content as named, the hash of its whole
    /// STOP_COPY stream, computed once per content) combined with the config state.
    /// </summary>
    public ulong? StateDigest()
    {
        ulong seed; long size; int rec; ulong? hash; byte[] config;
        lock (_lock)
        {
            (seed, size, rec, hash, config) = (_seed, _stateSize, _recordData, _streamHash, _config);
            // The regions change while the device runs in PRE_COPY: hashed under the lock. Their CRCs are known once
            // sent (a live source after its switchover), so this is cheap where it counts.
            if (hash is null && _regions is not null) hash = _streamHash = RegionsHash();
        }
        if (hash is null)
        {
            hash = s_hashCache.GetOrAdd((seed, size, rec), k => SimStreamParser.HashAndCrcsOf(new SimStreamGenerator(k.Seed, k.Size, k.Record))).Hash;
            lock (_lock) if (_seed == seed && _stateSize == size && _regions is null) _streamHash = hash;
        }
        return SimStream.Digest(hash.Value, config);
    }

    /// <summary>The state hash of the regions, computing the CRCs not known yet (under _lock).</summary>
    private ulong RegionsHash()
    {
        var regions = _regions!;
        var named = NamedCrcs();
        var (records, last) = SimStream.Layout(_stateSize, _recordData);
        ulong seed = _seed;
        int rec = _recordData;
        return SimStream.StateHash(seed, _stateSize, rec, k =>
        {
            ref var r = ref regions[k];
            if (!r.CrcKnown)
            {
                r.Crc = r.Generation == 0 && named is not null ? named[k] : SimStream.DataCrc(seed, k, r.Generation, k == records - 1 ? last : rec);
                r.CrcKnown = true;
            }
            return (r.Generation, r.Crc);
        });
    }

    /// <summary>The CRCs of the content as named, if a digest pass computed them.</summary>
    private uint[]? NamedCrcs() => s_hashCache.TryGetValue((_seed, _stateSize, _recordData), out var known) ? known.Crcs : null;

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
        long now = MigrationClock.NowUs;
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
            _streamHash = p.StateHash;
            _regions = p.Dirtied ? RegionsOf(p) : null;
            LastLoadSeconds = s.LoadSeconds;
        }
        else if (from is MigrationState.PreCopy or MigrationState.PreCopyP2P && next is MigrationState.Running or MigrationState.RunningP2P)
        {
            // Leaving PRE_COPY without saving: the session ends; the device keeps the regions it dirtied (it ran).
            _session!.Feed!.Pause(now);
            _session.Close();
            _session = null;
        }
        _state = next;
        switch (from, next)
        {
            case (MigrationState.Stop, MigrationState.StopCopy):
                return _session = Session.StartSave(this);
            case (MigrationState.Stop, MigrationState.Resuming):
                return _session = Session.StartLoad(this);
            case (MigrationState.Running, MigrationState.PreCopy) or (MigrationState.RunningP2P, MigrationState.PreCopyP2P):
                return _session = Session.StartLive(this, next == MigrationState.PreCopy ? now : -1);
            case (MigrationState.PreCopy, MigrationState.PreCopyP2P):
                _session!.Feed!.Pause(now);
                break;
            case (MigrationState.PreCopyP2P, MigrationState.PreCopy):
                _session!.Feed!.Resume(now);
                break;
            case (MigrationState.PreCopy or MigrationState.PreCopyP2P, MigrationState.StopCopy):
                _session!.Feed!.EnterStopCopy(now);
                break;
        }
        return null;
    }

    private static Region[] RegionsOf(SimStreamParser p)
    {
        var regions = new Region[p.DataRecords];
        for (int k = 0; k < regions.Length; k++)
        {
            var (generation, crc) = p.Region(k);
            regions[k] = new Region { Generation = generation, Crc = crc, CrcKnown = true };
        }
        return regions;
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
    /// A save session's account of the regions (all under the device's _lock): their generations and CRCs and, for a
    /// PRE_COPY session, the device running and dirtying them. A region becomes owed (needs a dirty record) when it is
    /// dirtied after its last record began; owed regions dirtied since the last precopy info are pending, and the info
    /// call makes them readable, each once, at the generation it has when its record begins. The dirtying is counted by
    /// the clock whenever the device is asked (a record begins, the info, the estimate), so each event is judged against
    /// the records begun before it.
    /// </summary>
    private sealed class SaveFeed : ISimRegionSource
    {
        private readonly SimulatedDevice _d;
        private readonly Region[] _regions;
        private readonly uint[]? _named;  // the CRCs of the regions at generation 0, when known
        private readonly int _records;
        private readonly int _lastLength;
        private readonly bool[]? _started; // live only: the region's initial record has begun
        private readonly bool[]? _owed;
        private readonly List<int> _pending = [];
        private readonly Queue<int> _readable = new();
        private long _readableBytes;
        private readonly DirtyClock? _dirt; // live only: a region dirtied per RecordDataSize bytes of the dirty rate

        public SaveFeed(SimulatedDevice d, bool live, long runningSinceUs)
        {
            _d = d;
            _regions = d._regions!;
            _named = d.NamedCrcs();
            (_records, _lastLength) = SimStream.Layout(d._stateSize, d._recordData);
            if (!live) return;
            _started = new bool[_records];
            _owed = new bool[_records];
            _dirt = new DirtyClock(d._options.DirtyBytesPerSecond, d._recordData, runningSinceUs);
        }

        public bool Live => _owed is not null;
        public bool StopCopy { get; private set; }
        /// <summary>Bytes of the dirty records owed (pending or readable).</summary>
        public long OwedBytes { get; private set; }

        private long RecordBytes(int region) => SimStream.DataOverhead + (region == _records - 1 ? _lastLength : _d._recordData);

        /// <summary>Lets the device run until <paramref name="nowUs"/>: it dirties a region per RecordDataSize bytes of its rate.</summary>
        public void Run(long nowUs)
        {
            // Past a few rounds of every region, more dirtying changes nothing an engine could see: bounded work for a
            // device left alone for long.
            long events = _dirt?.Advance(nowUs, 4L * _records + 64) ?? 0;
            for (long e = 0; e < events; e++)
                Dirty((int)(SimStream.Word(_d._seed, -4, _d._dirtyEvents++) % (ulong)_records));
        }

        private void Dirty(int k)
        {
            ref var r = ref _regions[k];
            r.Generation++;
            r.CrcKnown = false;
            _d._streamHash = null;
            if (!_started![k] || _owed![k]) return; // its first record, or one owed already, will carry it
            _owed[k] = true;
            OwedBytes += RecordBytes(k);
            _pending.Add(k);
        }

        public void Pause(long nowUs)
        {
            Run(nowUs);
            _dirt?.Stop();
        }

        public void Resume(long nowUs) => _dirt?.Start(nowUs);

        public void EnterStopCopy(long nowUs)
        {
            Pause(nowUs);
            Publish();
            StopCopy = true;
        }

        /// <summary>VFIO_MIG_GET_PRECOPY_INFO: what the device dirtied since the last call becomes readable.</summary>
        public PrecopyInfo Info(long nowUs, long initialLeft)
        {
            Run(nowUs);
            Publish();
            return new PrecopyInfo((ulong)initialLeft, (ulong)_readableBytes);
        }

        private void Publish()
        {
            foreach (int k in _pending)
                if (_owed![k])
                {
                    _readable.Enqueue(k);
                    _readableBytes += RecordBytes(k);
                }
            _pending.Clear();
        }

        public (uint Generation, uint? Crc) Begin(int region)
        {
            if (_owed is not null)
            {
                // What the device dirtied until now happened before this record: it carries it, and is not owed it.
                Run(MigrationClock.NowUs);
                _started![region] = true;
                if (_owed[region])
                {
                    _owed[region] = false;
                    OwedBytes -= RecordBytes(region);
                }
            }
            ref var r = ref _regions[region];
            uint? crc = r.CrcKnown ? r.Crc : r.Generation == 0 && _named is not null ? _named[region] : null;
            return (r.Generation, crc);
        }

        public void Done(int region, uint generation, uint crc)
        {
            ref var r = ref _regions[region];
            if (r.Generation != generation) return; // dirtied while its record was produced
            r.Crc = crc;
            r.CrcKnown = true;
        }

        public int NextDirty()
        {
            if (_readable.TryDequeue(out int k))
            {
                _readableBytes -= RecordBytes(k);
                return k;
            }
            return StopCopy ? -2 : -1;
        }
    }

    /// <summary>
    /// One STOP_COPY, PRE_COPY or RESUMING session, served in-process on the engine's thread that reads or writes the
    /// stream: what an mlx5 VF's firmware and DMA do costs the host no CPU, so neither may the simulator beyond producing
    /// and checking the bytes.
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

        private Session(SimulatedDevice device, SimStreamGenerator? generator, SaveFeed? feed, SimStreamParser? parser)
        {
            _device = device;
            _generator = generator;
            Feed = feed;
            Parser = parser;
        }

        public SimStreamParser? Parser { get; }
        /// <summary>The regions' account of a save session of a device with dirtied regions or in PRE_COPY (under the device's lock).</summary>
        public SaveFeed? Feed { get; }
        public double LoadSeconds { get; private set; }

        public static Session StartSave(SimulatedDevice d)
        {
            if (d._regions is not null)
            {
                var feed = new SaveFeed(d, live: false, -1);
                return new Session(d, new SimStreamGenerator(d._seed, d._stateSize, d._recordData, null, feed, precopy: false), feed, null);
            }
            // The digest pass (StateDigest, before the engine stops the device) knows every record's CRC: reuse them.
            return new Session(d, new SimStreamGenerator(d._seed, d._stateSize, d._recordData, d.NamedCrcs()), null, null);
        }

        /// <summary>RUNNING->PRE_COPY (the device runs, and dirties, from <paramref name="runningSinceUs"/>; -1: P2P, not yet).</summary>
        public static Session StartLive(SimulatedDevice d, long runningSinceUs)
        {
            d._regions ??= new Region[SimStream.Layout(d._stateSize, d._recordData).Records];
            var feed = new SaveFeed(d, live: true, runningSinceUs);
            return new Session(d, new SimStreamGenerator(d._seed, d._stateSize, d._recordData, null, feed, precopy: true), feed, null);
        }

        public static Session StartLoad(SimulatedDevice d) => new(d, null, null, new SimStreamParser());

        private string Op(string call) => $"{call}(migration data fd of {_device.Name})";

        /// <summary>Bytes a switchover now would still move (under the device's lock).</summary>
        public long Remaining()
        {
            var g = _generator!;
            if (g.Ended) return 0;
            Feed!.Run(MigrationClock.NowUs);
            return g.InitialLeft + g.DirtyRecordLeft + Feed.OwedBytes + SimStream.EndRecordSize;
        }

        public DataRead Read(Span<byte> buffer)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_generator is null) throw new VfioException(Op("read"), Libc.EINVAL, "the device is resuming");
            if (_closed) return new DataRead(0, DataReadStatus.EndOfStream); // the session ended: like the fd, reads end at once
            if (_saveStartUs < 0) _saveStartUs = MigrationClock.NowUs;
            int n;
            if (Feed is null) n = _generator.Fill(buffer);
            else lock (_device._lock) n = _generator.Fill(buffer);
            if (n == 0)
                return new DataRead(0, Feed is { Live: true } && !_generator.Ended ? DataReadStatus.NoDataForNow : DataReadStatus.EndOfStream);
            _saved += n;
            // A device that saves at a finite rate has these bytes ready only once it has produced them.
            double rate = _device._options.SaveBytesPerSecond;
            if (rate > 0 && !SleepUntil(_saveStartUs + (long)(_saved / rate * 1e6)))
                return new DataRead(0, DataReadStatus.EndOfStream);
            return new DataRead(n, DataReadStatus.Data);
        }

        public PrecopyInfo GetPrecopyInfo()
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            lock (_device._lock)
            {
                if (Feed is not { Live: true } || _closed || _device._state is not (MigrationState.PreCopy or MigrationState.PreCopyP2P))
                    throw new VfioException($"VFIO_MIG_GET_PRECOPY_INFO on {_device.Name}", Libc.EINVAL, $"the device is in {_device._state}");
                return Feed.Info(MigrationClock.NowUs, _generator!.InitialLeft);
            }
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
