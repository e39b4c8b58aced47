using Vfio.Interop;

namespace Vfio.Migration;

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

/// <summary>Parameters of a simulated device. The defaults model one mlx5 VF in the seed thread (about 200 ms to load alone).</summary>
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
    /// <summary>Fault injection (tests): the source stream ends this many bytes early.</summary>
    public long TruncateStreamBy { get; init; }
    /// <summary>Fault injection (tests): one byte of this data record's data is flipped after its CRC was taken.</summary>
    public int CorruptRecord { get; init; } = -1;

    /// <summary>The simulated time to load <paramref name="bytes"/>, in seconds.</summary>
    public double LoadSeconds(long bytes) => LoadBytesPerSecond <= 0 ? 0 : bytes / LoadBytesPerSecond;
}

/// <summary>
/// A device that behaves, as far as the engine can tell, like an mlx5 VF bound to mlx5_vfio_pci.
/// <para>Its data fd is one end of an AF_UNIX socketpair served by a device thread, so the engine makes real
/// read(2)/write(2) calls. Saving, the thread writes the generated stream into the socket. Resuming, the thread
/// parses records and, when a record is complete, "loads" it: the load lasts size/rate seconds from when the
/// record's first bytes came in (the device's own copying and checking included), holds a slot of the PF's shared
/// command interface all that time (<see cref="SimulatedPf"/>), and the device reads nothing more until it ends. The engine's end has a small SO_SNDBUF (<see cref="LoadSocketBuffer"/>, 64 KiB,
/// doubled by the kernel), so a write(2) that goes past the end of a record blocks until that record's load is
/// over: the load happens inside the write that completes the record, as on mlx5, except when a record ends in
/// the last ~128 KiB of a write (then the next write, or RESUMING->STOP for the last record, waits for it).
/// A minimal SO_SNDBUF would be more exact but makes the kernel move the data in 2 KiB pieces with a wakeup
/// every 4 KiB, which costs more CPU than the whole transfer.</para>
/// <para>A wrong stream (order, size, checksum, extra data) poisons the session: the device closes its end, so
/// the writer's write(2) fails (EPIPE), and RESUMING->STOP fails (EIO) leaving the device in ERROR until reset.
/// An incomplete stream also fails RESUMING->STOP.</para>
/// </summary>
public sealed class SimulatedDevice : IMigrationDevice
{
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(ulong Seed, long Size, int Record), (ulong Hash, uint[] Crcs)> s_hashCache = new();
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
        StartWorker();
    }

    /// <summary>SO_SNDBUF of the engine's end of a resuming socketpair (the kernel doubles it): small enough that a write
    /// blocks during a load, large enough that the kernel moves data in big skbs rather than a wakeup every few KiB.</summary>
    public static int LoadSocketBuffer { get; set; } = 64 << 10;

    public string Name { get; }
    public SimulatedDeviceOptions Options => _options;
    public SimulatedPf Pf => _pf;
    public MigrationFlags Flags => MigrationFlags.StopCopy | MigrationFlags.P2P;

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
        lock (_lock)
        {
            if (_state != MigrationState.Stop)
                throw new VfioException($"restore config state of {Name}", Libc.EINVAL, $"device is in {_state}, not STOP");
            if (config.Length == 0 || config.Length > 4096)
                throw new VfioException($"restore config state of {Name}", Libc.EINVAL, $"config state of {config.Length} bytes");
            _config = config.ToArray();
        }
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

    public MigrationDataStream? SetState(MigrationState target)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (target == _state) return null;
            string op = $"VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE {_state}->{target}) on {Name}";
            if (_state == MigrationState.Error)
                throw new VfioException(op, Libc.EINVAL, "device is in ERROR; reset it");
            // The kernel's path for a combination transition, as the object model's state machine gives it.
            if (!MigrationStateMachine.TryGetPath(_state, target, Flags, out var path))
                throw new VfioException(op, Libc.EINVAL, "not a valid target for this device");
            MigrationDataStream? stream = null;
            foreach (var next in path)
                stream = Step(next, op);
            return stream;
        }
    }

    private MigrationDataStream? Step(MigrationState next, string op)
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
            return _session.Stream;
        }
        if (from == MigrationState.Stop && next == MigrationState.Resuming)
        {
            _session = Session.StartLoad(this);
            return _session.Stream;
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
        lock (_workerLock)
        {
            _job = null;
            if (_worker is not null) _jobReady.Release(); // a null job ends the worker
            _worker = null;
        }
    }

    // The device's own thread, which serves its sessions (it outlives them, so that entering STOP_COPY or RESUMING
    // does not start a thread inside the downtime; it ends after a minute idle and is made again when needed).
    private readonly object _workerLock = new();
    private readonly SemaphoreSlim _jobReady = new(0);
    private Thread? _worker;
    private Action? _job;

    private Thread RunOnWorker(Action job)
    {
        lock (_workerLock)
        {
            _job = job;
            if (_worker is null)
            {
                _worker = new Thread(WorkerLoop) { IsBackground = true, Name = $"sim {Name}" };
                _worker.Start();
            }
            _jobReady.Release();
            return _worker;
        }
    }

    private void StartWorker()
    {
        lock (_workerLock)
        {
            if (_worker is not null || _disposed) return;
            _worker = new Thread(WorkerLoop) { IsBackground = true, Name = $"sim {Name}" };
            _worker.Start();
        }
    }

    private void WorkerLoop()
    {
        while (true)
        {
            if (!_jobReady.Wait(TimeSpan.FromMinutes(1)))
            {
                lock (_workerLock)
                    if (_jobReady.CurrentCount == 0 && _job is null)
                    {
                        if (_worker == Thread.CurrentThread) _worker = null;
                        return;
                    }
                continue;
            }
            Action? job;
            lock (_workerLock) { job = _job; _job = null; }
            if (job is null) return;
            job();
        }
    }

    public override string ToString() => Name;

    /// <summary>One STOP_COPY or RESUMING session: the socketpair and the device thread serving it.</summary>
    private sealed unsafe class Session
    {
        private readonly SimulatedDevice _device;
        private readonly int _deviceFd;
        private readonly FileDescriptorHandle _engineHandle;
        private readonly CancellationTokenSource _cancel = new();
        private Thread? _thread;
        private readonly ManualResetEventSlim _finished = new();
        private int _closed;
        private volatile string? _error;
        private bool _engineRef;

        private Session(SimulatedDevice device, int deviceFd, FileDescriptorHandle engine)
        {
            _device = device;
            _deviceFd = deviceFd;
            _engineHandle = engine;
            Stream = new MigrationDataStream(engine, device.Name);
            _engineHandle.DangerousAddRef(ref _engineRef);
        }

        public MigrationDataStream Stream { get; }
        public SimStreamParser? Parser { get; private set; }
        public double LoadSeconds { get; private set; }

        private static (int Device, FileDescriptorHandle Engine) Pair(string name)
        {
            int* fds = stackalloc int[2];
            if (Libc.SocketPair(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0, fds) < 0)
                throw VfioException.FromLastError($"socketpair for {name}");
            return (fds[1], new FileDescriptorHandle(fds[0]));
        }

        public static Session StartSave(SimulatedDevice d)
        {
            var (dev, eng) = Pair(d.Name);
            try { Native.SetSockOpt(dev, Libc.SO_SNDBUF, 1 << 20); } catch (VfioException) { }
            var s = new Session(d, dev, eng);
            s._thread = d.RunOnWorker(() => { try { s.SaveLoop(); } finally { s._finished.Set(); } });
            return s;
        }

        public static Session StartLoad(SimulatedDevice d)
        {
            var (dev, eng) = Pair(d.Name);
            Native.SetSockOpt(eng.Fd, Libc.SO_SNDBUF, SimulatedDevice.LoadSocketBuffer);
            Native.SetSockOpt(dev, Libc.SO_RCVBUF, 1);
            var s = new Session(d, dev, eng) { Parser = new SimStreamParser() };
            s._thread = d.RunOnWorker(() => { try { s.LoadLoop(); } finally { s._finished.Set(); } });
            return s;
        }

        private void SaveLoop()
        {
            var o = _device._options;
            // The digest pass (StateDigest, before the engine stops the device) knows every record's CRC: reuse them.
            var crcs = s_hashCache.TryGetValue((_device._seed, _device._stateSize, _device._recordData), out var known) ? known.Crcs : null;
            var gen = new SimStreamGenerator(_device._seed, _device._stateSize, _device._recordData, o.TruncateStreamBy, o.CorruptRecord, crcs);
            var buf = new byte[1 << 20];
            double debt = 0;
            var start = MigrationClock.NowUs;
            long written = 0;
            try
            {
                int n;
                while ((n = gen.Fill(buf)) > 0 && !_cancel.IsCancellationRequested)
                {
                    fixed (byte* p = buf)
                    {
                        int off = 0;
                        while (off < n)
                        {
                            nint w = Libc.Write(_deviceFd, p + off, (nuint)(n - off));
                            if (w < 0)
                            {
                                if (System.Runtime.InteropServices.Marshal.GetLastPInvokeError() == Libc.EINTR) continue;
                                return; // the engine closed its end or the session was closed
                            }
                            off += (int)w;
                        }
                    }
                    written += n;
                    if (o.SaveBytesPerSecond > 0)
                    {
                        double due = written / o.SaveBytesPerSecond * 1e6 - (MigrationClock.NowUs - start) + debt;
                        if (due > 1000) _cancel.Token.WaitHandle.WaitOne(TimeSpan.FromMilliseconds(Math.Floor(due / 1000)));
                    }
                }
            }
            finally
            {
                // end of stream: the engine's read returns 0
                Libc.Shutdown(_deviceFd, Libc.SHUT_WR);
            }
        }

        private void LoadLoop()
        {
            var parser = Parser!;
            var buf = new byte[256 << 10];
            var o = _device._options;
            long firstUs = -1; // when the current record's first bytes were read
            long readyUs = 0;  // when the device's previous load ended (its PF reservation)
            long lateUs = 0;   // how much later than readyUs the device woke (timer slack; not the engine's fault)
            try
            {
                while (!_cancel.IsCancellationRequested)
                {
                    int want = (int)Math.Min(buf.Length, parser.UntilBoundary);
                    nint n;
                    fixed (byte* p = buf) n = Libc.Read(_deviceFd, p, (nuint)want);
                    if (n < 0)
                    {
                        if (System.Runtime.InteropServices.Marshal.GetLastPInvokeError() == Libc.EINTR) continue;
                        return;
                    }
                    if (n == 0) return; // the engine's end was shut down (RESUMING->STOP) or closed
                    long r0 = MigrationClock.NowUs;
                    if (firstUs < 0) firstUs = r0;
                    long record = parser.Consume(buf.AsSpan(0, (int)n));
                    if (record == 0) continue;
                    long lastUs = MigrationClock.NowUs;
                    if (o.LoadBytesPerSecond > 0)
                    {
                        // The record's load takes size/rate (the device's own copying and checking of its bytes included)
                        // and holds one of the PF's slots all that time. It starts when the record's first bytes came in,
                        // but not before the device's previous load ended, nor so early that it would end before the
                        // record's last byte came in; then the device reads nothing more until it ends (the engine's
                        // write blocks: the load happens inside the write(2) that completes the record, as on mlx5).
                        long us = (long)Math.Round(o.LoadSeconds(record) * 1e6);
                        LoadSeconds += us / 1e6;
                        long start = Math.Max(Math.Max(readyUs, firstUs - lateUs), lastUs - us);
                        long end = _device._pf.Reserve(start, us);
                        readyUs = end;
                        bool slept = end > MigrationClock.NowUs;
                        if (!SleepUntil(end)) return;
                        // Oversleeping (timer slack) is forgiven, up to 2 ms; being descheduled for longer is not.
                        lateUs = slept ? Math.Clamp(MigrationClock.NowUs - end, 0, 2000) : 0;
                    }
                    firstUs = -1;
                }
            }
            catch (SimStreamException e)
            {
                _error = $"device refused the stream: {e.Message}";
                // poison: the writer's write fails, later writes too
                Libc.Shutdown(_deviceFd, Libc.SHUT_RDWR);
            }
        }

        /// <summary>Sleeps until <paramref name="untilUs"/> (MigrationClock): whole milliseconds cancellably, the rest with nanosleep. False when cancelled.</summary>
        private bool SleepUntil(long untilUs)
        {
            long left = untilUs - MigrationClock.NowUs;
            if (left >= 1500 && _cancel.Token.WaitHandle.WaitOne(TimeSpan.FromMilliseconds((left - 500) / 1000)))
                return false;
            left = untilUs - MigrationClock.NowUs;
            if (left > 0) Native.SleepMicroseconds(left);
            return !_cancel.IsCancellationRequested;
        }

        /// <summary>RESUMING->STOP: let the device finish what was written, then judge the stream. Null = accepted.</summary>
        public string? FinishLoad()
        {
            if (_engineRef) Libc.Shutdown(_engineHandle.Fd, Libc.SHUT_WR); // the device sees EOF after the last byte
            _finished.Wait();
            string? error = _error;
            if (error is null && !Parser!.Complete)
                error = $"incomplete stream: {Parser.Progress}";
            Close();
            return error;
        }

        public void Close()
        {
            if (Interlocked.Exchange(ref _closed, 1) != 0) return;
            _cancel.Cancel();
            Libc.Shutdown(_deviceFd, Libc.SHUT_RDWR);
            if (_thread is not null && Thread.CurrentThread != _thread) _finished.Wait();
            Libc.Close(_deviceFd);
            if (_engineRef)
            {
                // the engine's fd is disabled from now on, like a VFIO data fd after its session ends:
                // shut down both ways and discard what the device had queued, so reads end at once
                Libc.Shutdown(_engineHandle.Fd, Libc.SHUT_RDWR);
                byte* scratch = stackalloc byte[4096];
                while (Libc.Read(_engineHandle.Fd, scratch, 4096) > 0) { }
                _engineHandle.DangerousRelease();
                _engineRef = false;
            }
        }
    }
}
