using System.IO.Hashing;
using System.Net;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Vfio.Migration;

/// <summary>
/// The sending side. Threads: the caller (coordinator: connect, device list, quiesce, switchover, wait for the
/// result), one save thread per device (STOP_COPY reads into pooled buffers, CRC, queue), one sender thread per
/// data channel, one main-channel receive thread (credits, results, errors) and a heartbeat thread.
/// </summary>
public sealed class MigrationSource
{
    private readonly IReadOnlyList<IMigrationDevice> _devices;
    private readonly MigrationOptions _options;
    private readonly ILogger _log;
    private readonly RunTimeline _timeline = new();
    private readonly BufferPool _pool;
    private readonly CreditGate[] _credits;
    private readonly long[] _sent;
    private readonly DeviceReport[] _results;
    private readonly ManualResetEventSlim _resultArrived = new();
    private bool _resultOk;
    private string? _resultError;
    private long _lastRunningUs, _loadEndUs;
    private int _window;
    private int _devicesStarted; // devices whose first buffer was read

    public MigrationSource(IReadOnlyList<IMigrationDevice> devices, MigrationOptions options, ILogger? logger = null)
    {
        options.Validate();
        if (devices.Count == 0 || devices.Count > Protocol.MaxDevices)
            throw new ArgumentException($"between 1 and {Protocol.MaxDevices} devices");
        _devices = devices;
        _options = options;
        _log = logger ?? NullLogger.Instance;
        _pool = new BufferPool(options.BufferSize);
        _credits = new CreditGate[devices.Count];
        _sent = new long[devices.Count];
        _results = devices.Select(d => new DeviceReport { Name = d.Name, SourceName = d.Name }).ToArray();
        Progress = new MigrationProgress(devices.Select(d => d.Name).ToArray(),
            devices.Select(d => (long)(d.StopCopySizeEstimate() ?? 0)).ToArray());
    }

    /// <summary>Bytes read from each device so far.</summary>
    public MigrationProgress Progress { get; }
    public RunTimeline Timeline => _timeline;

    public RunReport Run(IPEndPoint destination, CancellationToken cancel = default)
    {
        var ctl = new RunControl(cancel);
        var report = new RunReport
        {
            Role = "source", Mode = _options.Loading, Channels = _options.Channels, BufferSize = _options.BufferSize,
            Timeline = _timeline,
        };
        var threads = new List<Thread>();
        var scheduler = _options.SchedulerFactory?.Invoke(_options.Channels) ?? new NextIdleScheduler();
        bool stopped = false;
        Connection? main = null;
        CancellationTokenRegistration cancelRegistration = default;
        var mainTrack = _timeline.AddTrack("src main", "main", "source");
        try
        {
            ulong session = (ulong)Random.Shared.NextInt64() ^ (ulong)Environment.ProcessId << 48;
            main = Connect(destination, 0, session, ctl);
            main.ReceiveTimeout = _options.Timeout;
            ctl.BeforeAbort = (msg, dev) => TrySendError(main, msg, dev);
            SendDeviceList(main);
            ReceiveAccept(main);
            _log.LogInformation("connected to {Destination}: {Devices} devices, {Channels} data channels, window {Window} x {Buffer} bytes",
                destination, _devices.Count, _options.Channels, _window, _options.BufferSize);

            var data = new Connection[_options.Channels];
            for (int c = 0; c < data.Length; c++)
            {
                ulong s = _options.Fault?.Kind == WireFaultKind.WrongSession && c == 0 ? session + 1 : session;
                data[c] = Connect(destination, (ushort)(c + 1), s, ctl);
            }
            for (int i = 0; i < _credits.Length; i++) _credits[i] = new CreditGate(_window);
            // One registration wakes every waiter on abort (no registration per wait: the data path allocates nothing).
            cancelRegistration = ctl.Token.Register(() =>
            {
                scheduler.Cancel();
                foreach (var g in _credits) g?.Cancel();
            });

            threads.Add(ctl.Start("src main receive", () => MainReceive(main, ctl)));
            threads.Add(ctl.Start("src heartbeat", () => Heartbeat(main, ctl)));
            var senders = new List<Thread>();
            for (int c = 0; c < data.Length; c++)
            {
                int ch = c;
                senders.Add(ctl.Start($"src channel {ch + 1} send", () => SendLoop(data[ch], ch, scheduler, ctl)));
            }

            // Source digests are taken while the devices still run (they are outside the downtime).
            var digests = _devices.Select(d => d.StateDigest()).ToArray();

            // The save threads exist before the downtime starts (starting a thread can take milliseconds on a busy
            // machine); they wait for the devices to be stopped. The data path's code is compiled now, too.
            Warmup.Prepare();
            _pool.Reserve(_devices.Count * (_window + 1)); // every buffer in flight, and each device's config
            var go = new ManualResetEventSlim();
            var savers = new List<Thread>();
            for (int i = 0; i < _devices.Count; i++)
            {
                int dev = i;
                savers.Add(ctl.Start($"src save {_devices[dev].Name}", () =>
                {
                    go.Wait(ctl.Token);
                    SaveLoop(dev, digests[dev], main, scheduler, ctl);
                }, _devices[dev].Name));
            }
            threads.AddRange(savers);

            // Quiesce: every P2P-capable device to RUNNING_P2P before any goes to STOP.
            long firstStop = MigrationClock.NowUs;
            stopped = true;
            _timeline.Mark("source_first_stop", firstStop);
            foreach (var d in _devices)
                if (d.Flags.HasFlag(MigrationFlags.P2P)) Transition(d, MigrationState.RunningP2P, mainTrack);
            foreach (var d in _devices)
                Transition(d, MigrationState.Stop, mainTrack);
            report.FirstStopUs = firstStop;
            SendSwitchover(main, firstStop);
            go.Set();
            _log.LogInformation("switchover: {Devices} devices stopped", _devices.Count);
            foreach (var t in savers) t.Join();
            scheduler.Complete();
            foreach (var t in senders) t.Join();
            threads.AddRange(senders);
            WaitHandle.WaitAny(new[] { _resultArrived.WaitHandle, ctl.Token.WaitHandle });
            ctl.ThrowIfFailed();
            // Ok only with the destination's word that every device was loaded and verified.
            if (!_resultOk)
                ctl.Fail(_resultError ?? "destination reported failure");
            else if (_results.FirstOrDefault(d => !d.Verified) is { } unverified)
                ctl.Fail($"{unverified.Name}: the destination reported success without verifying it", unverified.Name);
        }
        catch (Exception e)
        {
            ctl.Fail(e);
        }
        finally
        {
            if (ctl.Failed)
            {
                ctl.Fail("aborted");
                foreach (var t in threads) t.Join(_options.Timeout);
                if (scheduler is NextIdleScheduler q) q.Drain(_pool);
                if (stopped) RestoreRunning();
            }
            else
            {
                main?.Abort();
                foreach (var t in threads) t.Join(_options.Timeout);
            }
        }
        cancelRegistration.Dispose();
        report.Ok = !ctl.Failed;
        report.Error = ctl.Error;
        report.FailedDevice = ctl.Device;
        report.Window = _window;
        report.LastRunningUs = _lastRunningUs;
        report.LoadEndUs = _loadEndUs;
        report.PoolBuffers = _pool.Allocated;
        report.DeviceBoundMs = DeviceBound.Compute(_devices);
        report.Devices.AddRange(_results);
        if (!report.Ok) foreach (var d in report.Devices) d.Verified = false;
        if (report.Ok) _timeline.Mark("destination_last_running", _lastRunningUs);
        return report;
    }

    private Connection Connect(IPEndPoint ep, ushort channel, ulong session, RunControl ctl)
    {
        var c = Connection.Connect(ep, _options.Timeout, channel == 0 ? "main channel" : $"data channel {channel}");
        ctl.Register(c);
        c.ReceiveTimeout = _options.Timeout;
        Span<byte> hs = stackalloc byte[Protocol.HandshakeSize];
        new Handshake(channel, session, (ushort)_options.Channels).Write(hs);
        c.WriteAll(hs);
        Span<byte> reply = stackalloc byte[Protocol.HandshakeReplySize];
        if (!c.ReadExact(reply))
            throw new MigrationException($"{c.Name}: destination closed the connection during the handshake");
        var (status, _) = Handshake.ReadReply(reply);
        if (status != HandshakeStatus.Ok)
            throw new MigrationException($"{c.Name}: destination refused the handshake ({status})");
        if (channel != 0) c.ReceiveTimeout = TimeSpan.Zero;
        return c;
    }

    private void SendDeviceList(Connection main)
    {
        var body = new byte[16 + _devices.Count * (2 + 1024 + 16)];
        var w = new MessageWriter(body);
        w.U32((uint)_options.BufferSize);
        w.U32((uint)_devices.Count);
        w.U32((uint)_options.Loading);
        foreach (var d in _devices)
        {
            w.Str(d.Name.Length > 512 ? d.Name[..512] : d.Name);
            w.U64(d.StopCopySizeEstimate() ?? 0);
            w.U64((ulong)d.Flags);
        }
        main.SendMessage(MessageType.DeviceList, body.AsSpan(0, w.Length));
    }

    private void ReceiveAccept(Connection main)
    {
        var scratch = new byte[4096];
        var m = main.ReceiveMessage(scratch) ?? throw new MigrationException("destination closed the main channel before accepting");
        if (m.Type == MessageType.Error)
        {
            var er = new MessageReader(m.Body.AsSpan(0, m.Length), m.Type);
            uint dev = er.U32();
            string msg = er.Str();
            throw new MigrationException($"destination refused: {msg}", dev < _devices.Count ? _devices[(int)dev].Name : null);
        }
        if (m.Type != MessageType.Accept)
            throw new ProtocolException($"main channel: expected Accept, got {m.Type}");
        var r = new MessageReader(m.Body.AsSpan(0, m.Length), m.Type);
        _window = (int)r.U32();
        uint count = r.U32();
        if (_window < 1 || _window > 4096) throw new ProtocolException($"main channel: window {_window} out of range");
        if (count != _devices.Count) throw new ProtocolException($"main channel: destination has {count} devices, source {_devices.Count}");
        for (int i = 0; i < count; i++)
            _results[i] = new DeviceReport { Name = r.Str(), SourceName = _devices[i].Name };
    }

    private void SendSwitchover(Connection main, long firstStop)
    {
        Span<byte> b = stackalloc byte[8];
        var w = new MessageWriter(b);
        w.I64(firstStop);
        main.SendMessage(MessageType.Switchover, b);
    }

    private void Transition(IMigrationDevice d, MigrationState target, TimelineTrack track)
    {
        long t0 = MigrationClock.NowUs;
        var from = d.GetState();
        using var stream = d.SetState(target);
        track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: $"{d.Name} {from}->{target}");
    }

    private void SaveLoop(int dev, ulong? digest, Connection main, IPacketScheduler scheduler, RunControl ctl)
    {
        var d = _devices[dev];
        var track = _timeline.AddTrack($"src save {d.Name}", "save", "source", dev);
        var token = ctl.Token;
        long t0 = MigrationClock.NowUs;
        using var stream = d.SetState(MigrationState.StopCopy)
            ?? throw new MigrationException($"{d.Name}: STOP->STOP_COPY returned no data fd", d.Name);
        track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: "STOP->STOP_COPY");
        var hash = new XxHash3();
        uint index = 0;
        long bytes = 0;
        while (true)
        {
            long w0 = MigrationClock.NowUs;
            if (!_credits[dev].Take(token)) return;
            long w1 = MigrationClock.NowUs;
            if (w1 - w0 > 20) track.Add(TraceKind.CreditWait, w0, w1, buffer: (int)index);
            // The first buffers are small so that the destination device starts loading sooner (the first buffer
            // crosses every stage of the pipeline alone); from the third on, full buffers.
            int size = _pool.BufferSize;
            int want = index switch { 0 => Math.Min(size, 64 << 10), 1 => Math.Min(size, 256 << 10), _ => size };
            byte[]? buf = null;
            ReadOnlyMemory<byte> payload;
            if (stream.CanReadInPlace)
                payload = stream.ReadInPlace(want);
            else
            {
                buf = _pool.Rent();
                payload = buf.AsMemory(0, Fill(stream, buf.AsSpan(0, want), token));
            }
            long r1 = MigrationClock.NowUs;
            int n = payload.Length;
            if (index == 0) Interlocked.Increment(ref _devicesStarted);
            if (n == 0)
            {
                if (buf is not null) _pool.Return(buf);
                break; // the credit taken is used by the config packet
            }
            uint crc = Crc32C.Compute(payload.Span);
            StreamChecksum.Append(hash, index, n, crc);
            track.Add(TraceKind.Save, w1, r1, n, (int)index);
            Interlocked.Increment(ref _sent[dev]);
            scheduler.Enqueue(new OutPacket(dev, index++, PacketFlags.Data, payload, buf, crc));
            // While some device has not sent its first buffer, step aside after each buffer: on a host with fewer
            // cores than devices, the save threads that woke first would otherwise fill their whole windows before
            // the last ones run at all, and those devices start loading late.
            if (Volatile.Read(ref _devicesStarted) < _devices.Count) Thread.Yield();
            bytes += n;
            Volatile.Write(ref Progress.Bytes[dev], bytes);
        }
        // A stream cut short by an abort must not be finished (the device goes back to RUNNING instead).
        token.ThrowIfCancellationRequested();
        long c0 = MigrationClock.NowUs;
        var config = d.SaveConfig();
        if (config.Length > _options.BufferSize)
            throw new MigrationException($"{d.Name}: config state of {config.Length} bytes exceeds the buffer size", d.Name);
        track.Add(TraceKind.Config, c0, MigrationClock.NowUs, config.Length, (int)index, "save config");
        long s0 = MigrationClock.NowUs;
        stream.Dispose();
        d.SetState(MigrationState.Stop)?.Dispose();
        track.Add(TraceKind.Transition, s0, MigrationClock.NowUs, detail: "STOP_COPY->STOP");
        var cbuf = _pool.Rent();
        config.CopyTo(cbuf, 0);
        Interlocked.Increment(ref _sent[dev]);
        scheduler.Enqueue(new OutPacket(dev, index, PacketFlags.Config | PacketFlags.End, cbuf.AsMemory(0, config.Length), cbuf, Crc32C.Compute(config)));

        Span<byte> body = stackalloc byte[48];
        var w = new MessageWriter(body);
        w.U32((uint)dev);
        w.U32(index);
        w.U64((ulong)bytes);
        w.U64(hash.GetCurrentHashAsUInt64());
        w.U32((uint)config.Length);
        w.U32(digest.HasValue ? 1u : 0u);
        w.U64(digest ?? 0);
        main.SendMessage(MessageType.DeviceDone, body[..w.Length]);
        _results[dev].Checksum = hash.GetCurrentHashAsUInt64();
        _log.LogDebug("{Device}: saved {Bytes} bytes in {Buffers} buffers", d.Name, bytes, index);
    }

    private static int Fill(MigrationDataStream stream, Span<byte> buf, CancellationToken token)
    {
        int filled = 0;
        while (filled < buf.Length)
        {
            var r = stream.Read(buf[filled..]);
            if (r.Status == DataReadStatus.EndOfStream) break;
            if (r.Status == DataReadStatus.NoDataForNow)
            {
                if (filled > 0) break;
                token.WaitHandle.WaitOne(1);
                token.ThrowIfCancellationRequested();
                continue;
            }
            filled += r.Bytes;
        }
        return filled;
    }

    private void SendLoop(Connection conn, int channel, IPacketScheduler scheduler, RunControl ctl)
    {
        var track = _timeline.AddTrack($"src channel {channel + 1} send", "send", "source");
        var header = new byte[Protocol.PacketHeaderSize];
        var fault = _options.Fault;
        while (scheduler.TryTake(channel, ctl.Token, out var p))
        {
            long t0 = MigrationClock.NowUs;
            bool hit = fault is not null && fault.Device == p.Device && fault.Buffer == p.Buffer;
            new PacketHeader((ushort)p.Device, p.Flags, p.Buffer, p.Length, p.Crc).Write(header);
            if (hit && fault!.Kind == WireFaultKind.Drop) { Release(p); continue; }
            var payload = p.Payload.Span;
            if (hit && fault!.Kind == WireFaultKind.CorruptPayload)
            {
                var corrupt = payload.ToArray(); // (a copy: the bytes may be a device's own memory)
                corrupt[p.Length / 2] ^= 0x01;
                payload = corrupt;
            }
            if (hit && fault!.Kind == WireFaultKind.Truncate)
            {
                conn.WritePacket(header, payload[..(p.Length / 2)]);
                conn.Abort();
                Release(p);
                return;
            }
            conn.WritePacket(header, payload);
            if (hit && fault!.Kind == WireFaultKind.Duplicate)
            {
                conn.WritePacket(header, payload);
            }
            track.Add(TraceKind.Send, t0, MigrationClock.NowUs, p.Length, (int)p.Buffer, device: p.Device);
            Release(p);
        }
        if (ctl.Token.IsCancellationRequested) return;
        new PacketHeader(Protocol.ChannelEndDevice, PacketFlags.ChannelEnd, 0, 0, 0).Write(header);
        conn.WriteAll(header);
    }

    private void Release(in OutPacket p)
    {
        if (p.Pooled is not null) _pool.Return(p.Pooled);
    }

    private void MainReceive(Connection main, RunControl ctl)
    {
        var scratch = new byte[64 << 10];
        while (!ctl.Token.IsCancellationRequested)
        {
            var m = main.ReceiveMessage(scratch);
            if (m is null)
            {
                if (!_resultArrived.IsSet) ctl.Fail("destination closed the main channel before reporting a result");
                return;
            }
            var r = new MessageReader(m.Value.Body.AsSpan(0, m.Value.Length), m.Value.Type);
            switch (m.Value.Type)
            {
                case MessageType.Heartbeat:
                    break;
                case MessageType.Credit:
                {
                    uint dev = r.U32();
                    uint n = r.U32();
                    if (dev >= _devices.Count) throw new ProtocolException($"main channel: credit for unknown device {dev}");
                    if (_credits[dev].Granted + n > Interlocked.Read(ref _sent[dev]) + _window)
                        throw new ProtocolException($"main channel: destination returned more credits for device {dev} than buffers were sent");
                    _credits[dev].Add(n);
                    break;
                }
                case MessageType.DeviceResult:
                {
                    uint dev = r.U32();
                    if (dev >= _devices.Count) throw new ProtocolException($"main channel: result for unknown device {dev}");
                    var d = _results[dev];
                    d.Verified = r.U32() == 1;
                    d.Bytes = (long)r.U64();
                    d.Buffers = (int)r.U32();
                    d.WaitUs = r.I64(); d.LoadUs = r.I64(); d.ConfigUs = r.I64();
                    d.StartUs = r.I64(); d.EndUs = r.I64();
                    d.MaxQueuedBytes = r.I64();
                    string err = r.Str();
                    d.Error = err.Length == 0 ? null : err;
                    break;
                }
                case MessageType.Result:
                    _resultOk = r.U32() == 1;
                    _lastRunningUs = r.I64();
                    _loadEndUs = r.I64();
                    string msg = r.Str();
                    _resultError = msg.Length == 0 ? null : msg;
                    _resultArrived.Set();
                    if (!_resultOk) ctl.Fail($"destination: {_resultError}");
                    return;
                case MessageType.Error:
                {
                    uint dev = r.U32();
                    string emsg = r.Str();
                    string? name = dev < _results.Length ? _results[dev].Name : null;
                    ctl.Fail($"destination: {emsg}", name);
                    return;
                }
                default:
                    throw new ProtocolException($"main channel: unexpected {m.Value.Type} from the destination");
            }
        }
    }

    private void Heartbeat(Connection main, RunControl ctl)
    {
        var handles = new[] { ctl.Token.WaitHandle, _resultArrived.WaitHandle };
        while (WaitHandle.WaitAny(handles, TimeSpan.FromSeconds(1)) == WaitHandle.WaitTimeout)
            main.SendMessage(MessageType.Heartbeat, ReadOnlySpan<byte>.Empty);
    }

    private static void TrySendError(Connection main, string message, string? device)
    {
        try
        {
            var body = new byte[8 + Math.Min(message.Length, 2000) * 3];
            var w = new MessageWriter(body);
            w.U32(uint.MaxValue);
            w.Str(message.Length > 2000 ? message[..2000] : message);
            main.Socket.SendTimeout = 1000;
            main.SendMessage(MessageType.Error, body.AsSpan(0, w.Length));
        }
        catch (Exception) { }
    }

    /// <summary>After a failure, every source device goes back to RUNNING (reset if a transition fails).</summary>
    private void RestoreRunning()
    {
        foreach (var d in _devices)
        {
            try { d.SetState(MigrationState.Running)?.Dispose(); }
            catch (Exception e)
            {
                _log.LogWarning("{Device}: back to RUNNING failed ({Error}); resetting", d.Name, e.Message);
                try { d.Reset(); } catch (Exception e2) { _log.LogError("{Device}: reset failed: {Error}", d.Name, e2.Message); }
            }
        }
    }
}
