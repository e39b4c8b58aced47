using System.IO.Hashing;

namespace Vfio.Migration;

/// <summary>What the source said about a device once it had queued all of it.</summary>
/// <summary>
/// One destination device: its reorder queue (a ring of Window slots indexed by buffer index modulo Window,
/// valid because the source never has more than Window buffers of a device in flight), its resuming data fd and
/// its load accounting. Receive threads Offer buffers (never blocking); the loader (its own thread, or in coupled
/// mode whichever receive thread completes the next buffer) writes them strictly in index order.
/// Threads and ownership: the ring, _next, _endIndex, _queuedBytes, _offered, _coupledActive, _configLoaded,
/// _finishing, _done and _lastProgressUs are read and written under _lock, by receive threads (Offer), the loader,
/// the main receive thread (SetDone) and the heartbeat thread (Stalled). The hash, _config, Report's load figures and
/// the track belong to the thread that loads (the loader; coupled: the receive thread that holds _coupledActive), and
/// then to the thread that finishes the device, which also sets _loadingSinceUs around each call into the device
/// (Volatile: the watchdog reads it). PendingCredits and LoadedBytes are shared counters (Interlocked, Volatile).
/// Lock order: _lock is a leaf; no other lock is taken while holding it.
/// </summary>
internal sealed class DeviceSink
{
    private readonly object _lock = new();
    private readonly Slot[] _ring;
    private readonly int _window;
    private readonly BufferPool _pool;
    private readonly XxHash3 _hash = new();
    private long _next;         // index of the next buffer to load
    private long _endIndex = -1; // index of the config/end packet, once seen
    private long _queuedBytes;
    private long _offered;
    private bool _coupledActive;
    private bool _configLoaded;
    private bool _finishing;
    private DeviceDoneMessage? _done;
    private byte[]? _config;
    private long _lastProgressUs; // the last buffer received or loaded, or the completion message (0: not watched yet)
    private long _loadingSinceUs; // a call into the device (a load, or RESUMING->STOP) in progress since (0: none)
    private long _initialImage = -1; // live: the initial image is the first this many buffers (-1: not marked yet)
    private bool _initialAcked;
    private long _watchedFromUs;     // the switchover (main receive thread writes once; the loading thread reads: Volatile)

    private struct Slot
    {
        public bool Used;
        public long Index;
        public PacketFlags Flags;
        public byte[] Data;
        public int Length;
        public uint Crc;
    }

    public DeviceSink(int index, IMigrationDevice device, IDeviceDataStream stream, int window, BufferPool pool, TimelineTrack track)
    {
        Index = index;
        Device = device;
        Stream = stream;
        _window = window;
        _pool = pool;
        _ring = new Slot[window];
        Track = track;
        Report = new DeviceReport { Name = device.Name };
    }

    public int Index { get; }
    public IMigrationDevice Device { get; }
    public IDeviceDataStream Stream { get; }
    public TimelineTrack Track { get; }
    public DeviceReport Report { get; }
    public long LoadedBytes;
    /// <summary>Credits to return to the source (buffers loaded since the last Credit message).</summary>
    public long PendingCredits;
    public bool Finished { get; private set; }

    /// <summary>Called by a receive thread with a verified packet; takes ownership of data. Violations throw ProtocolException.</summary>
    public void Offer(uint index, PacketFlags flags, byte[] data, int length, uint crc, int channel)
    {
        lock (_lock)
        {
            // (the message is made only for a violation: the data path allocates nothing per buffer)
            if (index < _next || (Finished && index >= _next))
                throw new ProtocolException($"{Where(index, channel)}: duplicate (already loaded)", Index);
            if (index >= _next + _window)
                throw new ProtocolException(
                    $"{Where(index, channel)}: outside the window [{_next}, {_next + _window}) the destination granted", Index);
            if (_endIndex >= 0 && index > _endIndex)
                throw new ProtocolException($"{Where(index, channel)}: after the device's end (config) buffer {_endIndex}", Index);
            ref var slot = ref _ring[index % _window];
            if (slot.Used)
                throw new ProtocolException($"{Where(index, channel)}: duplicate (already queued)", Index);
            if (flags.HasFlag(PacketFlags.Config))
            {
                if (_endIndex >= 0) throw new ProtocolException($"{Where(index, channel)}: second end (config) buffer", Index);
                foreach (var s in _ring)
                    if (s.Used && s.Index > index)
                        throw new ProtocolException($"{Where(index, channel)}: end (config) buffer before data buffer {s.Index}", Index);
                _endIndex = index;
            }
            slot = new Slot { Used = true, Index = index, Flags = flags, Data = data, Length = length, Crc = crc };
            _offered++;
            _queuedBytes += length;
            _lastProgressUs = MigrationClock.NowUs;
            if (_queuedBytes > Report.MaxQueuedBytes) Report.MaxQueuedBytes = _queuedBytes;
            Monitor.PulseAll(_lock);
        }
    }

    private static string Where(uint index, int channel) => $"buffer {index} on channel {channel}";

    /// <summary>
    /// The main receive thread: the source marked the initial image as the first <paramref name="buffers"/> buffers. True if
    /// they are loaded already (the caller acknowledges); else the thread that loads the last of them does.
    /// </summary>
    public bool SetInitialImage(uint buffers)
    {
        lock (_lock)
        {
            if (_initialImage >= 0) throw new ProtocolException("second precopy mark", Index);
            _initialImage = buffers;
            return ClaimInitialAck();
        }
    }

    /// <summary>After loading: true once, for the caller that should acknowledge the initial image.</summary>
    public bool TakeInitialImageLoaded()
    {
        lock (_lock) return ClaimInitialAck();
    }

    private bool ClaimInitialAck()
    {
        if (_initialAcked || _initialImage < 0 || _next < _initialImage) return false;
        _initialAcked = true;
        return true;
    }

    /// <summary>Decoupled loader: blocks until the next buffer in order is queued. False when cancelled.</summary>
    private bool TakeNext(CancellationToken token, out Slot slot)
    {
        lock (_lock)
        {
            while (true)
            {
                if (token.IsCancellationRequested) { slot = default; return false; }
                ref var s = ref NextSlot(out bool queued);
                if (queued)
                {
                    slot = s;
                    s = default;
                    return true;
                }
                Monitor.Wait(_lock);
            }
        }
    }

    /// <summary>Wakes a waiting loader (on abort; it then sees its token cancelled).</summary>
    public void Wake()
    {
        lock (_lock) Monitor.PulseAll(_lock);
    }

    /// <summary>Writes one buffer into the device (the load) and returns its memory and credit. True if it was the config/end buffer.</summary>
    private bool Load(in Slot s)
    {
        if (s.Flags.HasFlag(PacketFlags.Config))
        {
            _config = s.Data.AsSpan(0, s.Length).ToArray();
            _pool.Return(s.Data);
            lock (_lock) { _queuedBytes -= s.Length; _next++; _configLoaded = true; }
            Interlocked.Increment(ref PendingCredits);
            return true;
        }
        long t0 = MigrationClock.NowUs;
        Volatile.Write(ref _loadingSinceUs, t0);
        try
        {
            Stream.WriteAll(s.Data.AsSpan(0, s.Length));
        }
        catch (VfioException e)
        {
            _pool.Return(s.Data);
            throw new MigrationException($"loading buffer {s.Index} failed: {e.Message}", Index);
        }
        long t1 = MigrationClock.NowUs;
        Volatile.Write(ref _loadingSinceUs, 0);
        StreamChecksum.Append(_hash, (uint)s.Index, s.Length, s.Crc);
        Track.Add(TraceKind.Load, t0, t1, s.Length, (int)s.Index);
        // Loads done while the source devices still ran are outside the downtime: the live phase's, not the device's
        // load figure.
        long from = BookedFromUs;
        if (t1 > from)
        {
            if (Report.FirstLoadUs == 0) Report.FirstLoadUs = Math.Max(t0, from);
            Report.LoadUs += t1 - Math.Max(t0, from);
        }
        Report.Buffers++;
        Report.Bytes += s.Length;
        Volatile.Write(ref LoadedBytes, Report.Bytes);
        _pool.Return(s.Data);
        lock (_lock) { _queuedBytes -= s.Length; _next++; _lastProgressUs = t1; }
        Interlocked.Increment(ref PendingCredits);
        return false;
    }

    /// <summary>The decoupled loader thread's body: wait for the next buffer, load it, until the end buffer.</summary>
    public void LoaderLoop(Action creditReady, CancellationToken token)
    {
        while (true)
        {
            long w0 = MigrationClock.NowUs;
            if (!TakeNext(token, out var s)) return;
            long w1 = MigrationClock.NowUs;
            long from = BookedFromUs;
            if (w1 > w0) Track.Add(TraceKind.Wait, w0, w1, buffer: (int)s.Index);
            if (w1 > from) Report.WaitUs += w1 - Math.Max(w0, from);
            bool end = Load(s);
            // Credits go back in pairs while the next buffer is already here (half the messages and wakeups on
            // both sides), at once when the loader is about to wait.
            if (end || Volatile.Read(ref PendingCredits) >= 2 || !NextQueued()) creditReady();
            if (end) return;
        }
    }

    private bool NextQueued()
    {
        lock (_lock)
        {
            NextSlot(out bool queued);
            return queued;
        }
    }

    /// <summary>The ring slot of the next buffer to load, and whether that buffer is in it (call under _lock).</summary>
    private ref Slot NextSlot(out bool queued)
    {
        ref var s = ref _ring[_next % _window];
        queued = s.Used && s.Index == _next;
        return ref s;
    }

    /// <summary>Coupled mode: the calling receive thread loads every buffer that is ready in order. True if it loaded the end buffer.</summary>
    public bool DrainCoupled(Action creditReady)
    {
        lock (_lock)
        {
            if (_coupledActive) return false;
            _coupledActive = true;
        }
        bool sawEnd = false;
        try
        {
            while (true)
            {
                Slot s;
                lock (_lock)
                {
                    ref var r = ref NextSlot(out bool queued);
                    if (!queued) { _coupledActive = false; return sawEnd; }
                    s = r;
                    r = default;
                }
                sawEnd |= Load(s);
                creditReady();
            }
        }
        catch
        {
            lock (_lock) _coupledActive = false;
            throw;
        }
    }

    /// <summary>Records the source's completion message; true if the device can now be finished.</summary>
    public bool SetDone(in DeviceDoneMessage info)
    {
        lock (_lock)
        {
            if (_done is not null) throw new ProtocolException("second completion message", Index);
            _done = info;
            Report.PrecopyBuffers = (int)info.PrecopyBuffers;
            Report.PrecopyBytes = (long)info.PrecopyBytes;
            _lastProgressUs = MigrationClock.NowUs;
            Monitor.PulseAll(_lock);
            return ClaimFinish();
        }
    }

    /// <summary>After the end buffer was loaded: true if this caller should finish the device now.</summary>
    public bool ConfigLoaded()
    {
        lock (_lock) return ClaimFinish();
    }

    private bool ClaimFinish()
    {
        if (_configLoaded && _done is not null && !_finishing) { _finishing = true; return true; }
        return false;
    }

    /// <summary>Decoupled loader: waits for the source's completion message (counted as waiting).</summary>
    public bool WaitDone(CancellationToken token)
    {
        long w0 = MigrationClock.NowUs;
        lock (_lock)
        {
            while (_done is null)
            {
                if (token.IsCancellationRequested) return false;
                Monitor.Wait(_lock);
            }
            _finishing = true;
        }
        long w1 = MigrationClock.NowUs;
        if (w1 > w0 + 20) { Track.Add(TraceKind.Wait, w0, w1, detail: "completion message"); Report.WaitUs += w1 - w0; }
        return true;
    }

    /// <summary>Verifies counts and checksum, leaves RESUMING, restores config, compares digests.</summary>
    public void Finish()
    {
        var done = _done!.Value;
        if (Report.Buffers != done.DataBuffers || (ulong)Report.Bytes != done.Bytes)
            throw new MigrationException(
                $"loaded {Report.Bytes} bytes in {Report.Buffers} buffers, the source sent {done.Bytes} bytes in {done.DataBuffers}", Index);
        ulong checksum = _hash.GetCurrentHashAsUInt64();
        Report.Checksum = checksum;
        if (checksum != done.Checksum)
            throw new MigrationException($"stream checksum {checksum:x16} differs from the source's {done.Checksum:x16}", Index);
        if (_config is null || _config.Length != done.ConfigLength)
            throw new MigrationException("config state length differs from the source's", Index);
        long t0 = MigrationClock.NowUs;
        // A device may complete its last load in RESUMING->STOP: the load deadline covers it.
        Volatile.Write(ref _loadingSinceUs, t0);
        try
        {
            Device.SetState(MigrationState.Stop)?.Dispose();
        }
        catch (VfioException e)
        {
            throw new MigrationException($"the device refused the stream: {e.Message}", Index);
        }
        finally
        {
            Volatile.Write(ref _loadingSinceUs, 0);
        }
        Stream.Dispose();
        long t1 = MigrationClock.NowUs;
        Track.Add(TraceKind.Transition, t0, t1, detail: "RESUMING->STOP");
        Report.LoadUs += t1 - t0;
        Device.RestoreConfig(_config);
        long t2 = MigrationClock.NowUs;
        Track.Add(TraceKind.Config, t1, t2, _config.Length, detail: "restore config");
        Report.ConfigUs += t2 - t1;
        if (done.Digest is ulong expected && CheckDigest)
        {
            var digest = Device.StateDigest();
            Report.Digest = digest;
            if (digest is ulong got && got != expected)
                throw new MigrationException($"state digest {got:x16} differs from the source device's {expected:x16}", Index);
            long t3 = MigrationClock.NowUs;
            Track.Add(TraceKind.Verify, t2, t3, detail: "digest");
            Report.VerifyUs = t3 - t2;
        }
        Report.EndUs = MigrationClock.NowUs;
        Report.Verified = true;
        lock (_lock) Finished = true;
    }

    /// <summary>Whether a call into the device (a load) is in progress.</summary>
    public bool Loading => Volatile.Read(ref _loadingSinceUs) != 0;

    /// <summary>Starts the watch (at the switchover): from now on the device is expected to make progress.</summary>
    public void Watch(long nowUs)
    {
        Volatile.Write(ref _watchedFromUs, nowUs);
        lock (_lock) if (_lastProgressUs == 0) _lastProgressUs = nowUs;
    }

    /// <summary>Whether Finish compares the device's digest with the source's (--verify digest), when the source sent one.</summary>
    public bool CheckDigest { get; init; } = true;

    /// <summary>Live run: buffers precopy carries before the switchover are loaded while the source devices still run.</summary>
    public bool Live { get; init; }

    /// <summary>From when waits and loads count as the device's (the downtime): always, or live from the switchover on.</summary>
    private long BookedFromUs => !Live ? 0 : Volatile.Read(ref _watchedFromUs) is > 0 and var w ? w : long.MaxValue;

    /// <summary>
    /// Watchdog (called about once a second after the switchover): whether the device stalled, and how. A call into the
    /// device (a load) has <paramref name="loadTimeoutUs"/>; otherwise, after <paramref name="timeoutUs"/> with nothing
    /// received, loaded or completed, the device waits for something that is not coming (a lost buffer, a stalled
    /// channel, a silent source), in either loading mode. <paramref name="othersLoading"/>: in coupled mode, while any
    /// device loads, the receive thread doing it holds back its channel's other buffers, so waiting is no stall yet.
    /// </summary>
    public bool Stalled(long nowUs, long timeoutUs, long loadTimeoutUs, bool othersLoading, out string? what)
    {
        what = null;
        long loading = Volatile.Read(ref _loadingSinceUs);
        lock (_lock)
        {
            if (Finished || _lastProgressUs == 0) return false;
            if (loading != 0)
            {
                if (nowUs - loading > loadTimeoutUs)
                    what = _configLoaded
                        ? $"leaving RESUMING has not returned after {Seconds(nowUs - loading)} s (--load-timeout)"
                        : $"loading buffer {_next} has not returned after {Seconds(nowUs - loading)} s (--load-timeout)";
                return what is not null;
            }
            NextSlot(out bool nextQueued);
            if (nextQueued || othersLoading || nowUs - _lastProgressUs <= timeoutUs) return false;
            bool later = false;
            foreach (var s in _ring) later |= s.Used && s.Index > _next;
            what = _configLoaded ? $"the source's completion message did not come within {Seconds(timeoutUs)} s"
                : later ? $"buffer {_next} did not arrive within {Seconds(timeoutUs)} s although later buffers did"
                : $"nothing arrived for {Seconds(timeoutUs)} s: buffer {_next} is missing (a channel or the source stalled)";
            return true;
        }
    }

    private static string Seconds(long us) => (us / 1_000_000.0).ToString("0.#", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>On abort: give queued buffers back to the pool.</summary>
    public void Drain()
    {
        lock (_lock)
            for (int i = 0; i < _ring.Length; i++)
                if (_ring[i].Used) { _pool.Return(_ring[i].Data); _ring[i] = default; }
    }

    public bool MissingBuffers(out string what)
    {
        lock (_lock)
        {
            what = _endIndex < 0
                ? "the end (config) buffer never arrived (all channels ended)"
                : $"{_endIndex + 1 - _offered} of its {_endIndex + 1} buffers never arrived (all channels ended)";
            return _endIndex < 0 || _offered != _endIndex + 1;
        }
    }
}
