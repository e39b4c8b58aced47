using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Vfio.Migration;

/// <summary>
/// The receiving side. Threads: the caller (coordinator: accept, device list, prepare devices, accept data
/// channels, wait, bring devices to RUNNING, report), one receive thread per data channel (read, verify, queue;
/// never blocks on a device), one loader thread per device (decoupled mode), a main-channel receive thread and a
/// main-channel send thread (credits, heartbeats).
/// </summary>
public sealed class MigrationDestination
{
    private readonly IReadOnlyList<IMigrationDevice> _devices;
    private readonly MigrationOptions _options;
    private readonly ILogger _log;
    private readonly RunTimeline _timeline = new();
    private DeviceSink[] _sinks = Array.Empty<DeviceSink>();
    private BufferPool? _pool;
    private Connection? _main; // credits go out on it straight from the thread that freed them
    private readonly ManualResetEventSlim _switchover = new();
    private long _switchoverUs;
    private long _sourceFirstStopUs;
    private int _finished;
    private readonly ManualResetEventSlim _allFinished = new();
    private int _channelsEnded;

    public MigrationDestination(IReadOnlyList<IMigrationDevice> devices, MigrationOptions options, ILogger? logger = null)
    {
        options.Validate();
        if (devices.Count == 0 || devices.Count > Protocol.MaxDevices)
            throw new ArgumentException($"between 1 and {Protocol.MaxDevices} devices");
        _devices = devices;
        _options = options;
        _log = logger ?? NullLogger.Instance;
        Progress = new MigrationProgress(devices.Select(d => d.Name).ToArray(), new long[devices.Count]);
    }

    /// <summary>Bytes loaded into each device so far (Expected is filled from the device list).</summary>
    public MigrationProgress Progress { get; }
    public RunTimeline Timeline => _timeline;

    /// <summary>Serves one migration session on the listening socket (the caller binds and listens).</summary>
    public RunReport Run(Socket listener, CancellationToken cancel = default)
    {
        var ctl = new RunControl(cancel);
        var threads = new List<Thread>();
        Connection? main = null;
        ulong session = 0;
        int bufferSize = 0;
        var report = new RunReport
        {
            Role = "destination", Mode = _options.Loading, Channels = _options.Channels, BufferSize = _options.BufferSize,
            Window = _options.Window, Timeline = _timeline,
        };
        bool prepared = false;
        try
        {
            Warmup.Prepare(); // while no source is connected yet: compile the data path outside the downtime
            (main, session, int channels) = AcceptMain(listener, ctl);
            ctl.Register(main);
            _main = main;
            ctl.BeforeAbort = (msg, dev) => TrySendError(main, msg, dev);
            bufferSize = ReceiveDeviceList(main);
            report = new RunReport
            {
                Role = "destination", Mode = _options.Loading, Channels = channels, BufferSize = bufferSize,
                Window = _options.Window, Timeline = _timeline,
            };
            _pool = new BufferPool(bufferSize);
            _pool.Reserve(_devices.Count * _options.Window + channels); // a full window per device, and a buffer per receive thread
            prepared = true;
            PrepareDevices();
            // One registration wakes every waiting loader on abort (no registration per wait).
            ctl.Token.Register(() => { foreach (var s in _sinks) s.Wake(); _switchover.Set(); });
            SendAccept(main);
            // The main channel is watched from now on (a source that gives up while channels connect ends the run).
            threads.Add(ctl.Start("dst main receive", () => MainReceive(main, ctl)));
            threads.Add(ctl.Start("dst main send", () => MainSend(main, ctl)));
            var data = AcceptDataChannels(listener, session, channels, ctl);
            ChannelCount = channels;
            _log.LogInformation("session {Session:x16}: {Devices} devices, {Channels} data channels, {Mode} loading, window {Window} x {Buffer} bytes",
                session, _devices.Count, channels, _options.Loading == LoadingMode.Coupled ? "coupled" : "decoupled", _options.Window, bufferSize);

            for (int c = 0; c < data.Length; c++)
            {
                int ch = c;
                threads.Add(ctl.Start($"dst channel {ch + 1} receive", () => ReceiveLoop(data[ch], ch + 1, bufferSize, ctl)));
            }
            if (_options.Loading == LoadingMode.Decoupled)
                foreach (var sink in _sinks)
                {
                    var s = sink;
                    threads.Add(ctl.Start($"dst loader {s.Device.Name}", () => LoaderThread(s, ctl), s.Device.Name));
                }

            // (ManualResetEventSlim's own wait: WaitAny over kernel-style handles wakes measurably later.)
            try { _allFinished.Wait(ctl.Token); } catch (OperationCanceledException) { }
            ctl.ThrowIfFailed();
            if (!_allFinished.IsSet || _sinks.Any(s => !s.Report.Verified))
                throw new MigrationException("internal error: the run ended before every device was verified");

            // Every device loaded and verified: resume them all, P2P first (mirror of the source's quiesce).
            var track = _timeline.AddTrack("dst main", "main", "destination");
            report.LoadEndUs = _sinks.Max(s => s.Report.EndUs);
            foreach (var s in _sinks)
                if (s.Device.Flags.HasFlag(MigrationFlags.P2P)) Transition(s.Device, MigrationState.RunningP2P, track);
            foreach (var s in _sinks)
                Transition(s.Device, MigrationState.Running, track);
            long lastRunning = MigrationClock.NowUs;
            report.LastRunningUs = lastRunning;
            report.FirstStopUs = _sourceFirstStopUs;
            _timeline.Mark("destination_last_running", lastRunning);
            _timeline.Mark("source_first_stop", _sourceFirstStopUs);
            SendResults(main, true, lastRunning, report.LoadEndUs, "");
            // Let the source read the result and close first; then we are done.
            foreach (var t in threads) t.Join(_options.Timeout);
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
                // Never leave a device half-loaded: reset every destination device (this also unblocks a loader in write).
                if (prepared)
                    foreach (var d in _devices)
                    {
                        try { d.Reset(); }
                        catch (Exception e) { _log.LogError("{Device}: reset failed: {Error}", d.Name, e.Message); }
                    }
                foreach (var t in threads) t.Join(_options.Timeout);
                foreach (var s in _sinks)
                {
                    s.Drain();
                    s.Stream.Dispose();
                }
                // A loader or receive thread that was finishing its device when the run failed may have moved it on
                // (RESUMING->STOP) after the reset above: reset once more whatever is not back in RUNNING.
                if (prepared)
                    foreach (var d in _devices)
                    {
                        try { if (d.GetState() != MigrationState.Running) d.Reset(); }
                        catch (Exception e) { _log.LogError("{Device}: reset failed: {Error}", d.Name, e.Message); }
                    }
            }
            main?.Abort();
        }
        report.Ok = !ctl.Failed && _sinks.Length == _devices.Count && _sinks.All(s => s.Report.Verified);
        report.Error = ctl.Error ?? (report.Ok ? null : "not every device was verified");
        report.FailedDevice = ctl.Device;
        report.PoolBuffers = _pool?.Allocated ?? 0;
        report.DeviceBoundMs = DeviceBound.Compute(_devices);
        if (_sinks.Length > 0) report.Devices.AddRange(_sinks.Select(s => s.Report));
        else report.Devices.AddRange(_devices.Select(d => new DeviceReport { Name = d.Name, Error = ctl.Error }));
        foreach (var d in report.Devices) if (!report.Ok) d.Verified = false;
        return report;
    }

    private (Connection, ulong, int) AcceptMain(Socket listener, RunControl ctl)
    {
        var deadline = DateTime.UtcNow + _options.AcceptTimeout;
        while (true)
        {
            var socket = AcceptOne(listener, deadline, ctl, "a source to connect");
            var c = new Connection(socket, _options.Timeout, "main channel");
            try
            {
                var hs = ReadHandshake(c);
                if (hs.ChannelIndex != 0)
                {
                    Reply(c, HandshakeStatus.BadChannelIndex, hs.SessionId);
                    _log.LogWarning("refused a data channel connection before any session (channel {Channel})", hs.ChannelIndex);
                    c.Dispose();
                    continue;
                }
                if (hs.DataChannels < 1 || hs.DataChannels > Protocol.MaxChannels)
                    throw new ProtocolException($"handshake: {hs.DataChannels} data channels (1..{Protocol.MaxChannels})");
                Reply(c, HandshakeStatus.Ok, hs.SessionId);
                c.ReceiveTimeout = _options.Timeout;
                return (c, hs.SessionId, hs.DataChannels);
            }
            catch (ProtocolException e)
            {
                // A stray or foreign connection: refuse it and keep waiting for a real source.
                _log.LogWarning("refused a connection from {Peer}: {Error}", SafeRemote(socket), e.Message);
                try { Reply(c, HandshakeStatus.BadMagicOrVersion, 0); } catch (Exception) { }
                c.Dispose();
            }
            catch (MigrationException e)
            {
                _log.LogWarning("refused a connection from {Peer}: {Error}", SafeRemote(socket), e.Message);
                c.Dispose();
            }
        }
    }

    private static string SafeRemote(Socket s)
    {
        try { return s.RemoteEndPoint?.ToString() ?? "?"; } catch (Exception) { return "?"; }
    }

    private static Socket AcceptOne(Socket listener, DateTime deadline, RunControl ctl, string what)
    {
        // Polled and accepted synchronously: a socket accepted by .NET's async Accept stays non-blocking underneath,
        // and its blocking receives then go through .NET's epoll thread (measurably slower on the data path).
        while (!listener.Poll(TimeSpan.FromMilliseconds(100), SelectMode.SelectRead))
        {
            ctl.Token.ThrowIfCancellationRequested();
            if (DateTime.UtcNow >= deadline) throw new MigrationException($"timed out waiting for {what}");
        }
        return listener.Accept();
    }

    private Handshake ReadHandshake(Connection c)
    {
        c.ReceiveTimeout = _options.Timeout;
        Span<byte> b = stackalloc byte[Protocol.HandshakeSize];
        if (!c.ReadExact(b)) throw new ProtocolException("connection closed before its handshake");
        return Handshake.Read(b);
    }

    private static void Reply(Connection c, HandshakeStatus status, ulong session)
    {
        Span<byte> b = stackalloc byte[Protocol.HandshakeReplySize];
        Handshake.WriteReply(b, status, session);
        c.WriteAll(b);
    }

    private Connection[] AcceptDataChannels(Socket listener, ulong session, int channels, RunControl ctl)
    {
        var data = new Connection?[channels];
        int have = 0;
        var deadline = DateTime.UtcNow + _options.Timeout;
        while (have < channels)
        {
            var socket = AcceptOne(listener, deadline, ctl, $"data channels ({have} of {channels} connected)");
            var c = new Connection(socket, _options.Timeout, "data channel ?");
            try
            {
                var hs = ReadHandshake(c);
                HandshakeStatus status = hs.SessionId != session ? HandshakeStatus.UnknownSession
                    : hs.ChannelIndex < 1 || hs.ChannelIndex > channels ? HandshakeStatus.BadChannelIndex
                    : data[hs.ChannelIndex - 1] is not null ? HandshakeStatus.DuplicateChannel
                    : HandshakeStatus.Ok;
                Reply(c, status, hs.SessionId);
                if (status != HandshakeStatus.Ok)
                {
                    _log.LogWarning("refused a channel connection (session {Session:x16}, channel {Channel}): {Status}", hs.SessionId, hs.ChannelIndex, status);
                    c.Dispose();
                    continue;
                }
                var named = new Connection(c.Socket, _options.Timeout, $"data channel {hs.ChannelIndex}");
                named.ReceiveTimeout = TimeSpan.Zero; // liveness comes from the main channel's heartbeats
                ctl.Register(named);
                data[hs.ChannelIndex - 1] = named;
                have++;
            }
            catch (ProtocolException e)
            {
                _log.LogWarning("refused a connection: {Error}", e.Message);
                try { Reply(c, HandshakeStatus.BadMagicOrVersion, 0); } catch (Exception) { }
                c.Dispose();
            }
        }
        return data!;
    }

    private int ReceiveDeviceList(Connection main)
    {
        var m = main.ReceiveMessage(new byte[64 << 10]) ?? throw new MigrationException("source closed the main channel before sending its device list");
        if (m.Type != MessageType.DeviceList) throw new ProtocolException($"main channel: expected DeviceList, got {m.Type}");
        var r = new MessageReader(m.Body.AsSpan(0, m.Length), m.Type);
        int bufferSize = (int)r.U32();
        uint count = r.U32();
        r.U32(); // the source's loading mode (informational)
        if (bufferSize < Protocol.MinBufferSize || bufferSize > Protocol.MaxBufferSize)
            throw new ProtocolException($"device list: buffer size {bufferSize} out of range");
        if (count != _devices.Count)
            throw new MigrationException($"the source migrates {count} devices, this destination has {_devices.Count}");
        for (int i = 0; i < count; i++)
        {
            string name = r.Str();
            ulong expected = r.U64();
            var flags = (MigrationFlags)r.U64();
            Progress.Expected[i] = (long)expected;
            if (!flags.HasFlag(MigrationFlags.StopCopy))
                throw new MigrationException($"source device {name} does not support STOP_COPY", _devices[i].Name);
            _log.LogDebug("device {Index}: {Source} -> {Destination}, about {Bytes} bytes", i, name, _devices[i].Name, expected);
        }
        return bufferSize;
    }

    private void PrepareDevices()
    {
        var sinks = new List<DeviceSink>();
        for (int i = 0; i < _devices.Count; i++)
        {
            var d = _devices[i];
            var track = _timeline.AddTrack($"dst loader {d.Name}", "loader", "destination", i);
            try
            {
                if (!d.Flags.HasFlag(MigrationFlags.StopCopy))
                    throw new MigrationException($"{d.Name}: does not support migration (no STOP_COPY)", d.Name);
                long t0 = MigrationClock.NowUs;
                d.SetState(MigrationState.Stop)?.Dispose();
                var stream = d.SetState(MigrationState.Resuming)
                    ?? throw new MigrationException($"{d.Name}: STOP->RESUMING returned no data fd", d.Name);
                track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: "->RESUMING");
                sinks.Add(new DeviceSink(i, d, stream, _options.Window, _pool!, track));
            }
            catch (VfioException e)
            {
                throw new MigrationException($"{d.Name}: cannot enter RESUMING: {e.Message}", d.Name);
            }
        }
        _sinks = sinks.ToArray();
    }

    private void SendAccept(Connection main)
    {
        var body = new byte[8 + _devices.Count * (2 + 1600)];
        var w = new MessageWriter(body);
        w.U32((uint)_options.Window);
        w.U32((uint)_devices.Count);
        foreach (var d in _devices) w.Str(d.Name.Length > 512 ? d.Name[..512] : d.Name);
        main.SendMessage(MessageType.Accept, body.AsSpan(0, w.Length));
    }

    private void Transition(IMigrationDevice d, MigrationState target, TimelineTrack track)
    {
        long t0 = MigrationClock.NowUs;
        try { d.SetState(target)?.Dispose(); }
        catch (VfioException e) { throw new MigrationException($"{d.Name}: {e.Message}", d.Name); }
        track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: $"{d.Name} ->{target}");
    }

    private void ReceiveLoop(Connection conn, int channel, int bufferSize, RunControl ctl)
    {
        var track = _timeline.AddTrack($"dst channel {channel} receive", "receive", "destination");
        var header = new byte[Protocol.PacketHeaderSize];
        bool coupled = _options.Loading == LoadingMode.Coupled;
        while (!ctl.Token.IsCancellationRequested)
        {
            if (!conn.ReadExact(header))
                throw new ProtocolException($"data channel {channel}: closed by the source before its end marker");
            long t0 = MigrationClock.NowUs;
            var h = PacketHeader.Read(header, channel);
            if (h.Flags == PacketFlags.ChannelEnd)
            {
                ChannelEnded(ctl);
                return;
            }
            if (h.Device >= _sinks.Length)
                throw new ProtocolException($"data channel {channel}: packet for device {h.Device}, the session has {_sinks.Length}");
            var sink = _sinks[h.Device];
            if (h.Length > bufferSize || (h.Flags == PacketFlags.Data && h.Length == 0))
                throw new ProtocolException($"{sink.Device.Name}: buffer {h.Buffer} on channel {channel}: payload length {h.Length} (buffer size {bufferSize})", sink.Device.Name);
            var buf = _pool!.Rent();
            bool handedOver = false;
            try
            {
                if (!conn.ReadExact(buf.AsSpan(0, h.Length)) && h.Length > 0)
                    throw new ProtocolException($"data channel {channel}: closed in the middle of a packet");
                uint crc = Crc32C.Compute(buf.AsSpan(0, h.Length));
                if (crc != h.PayloadCrc)
                    throw new ProtocolException($"{sink.Device.Name}: buffer {h.Buffer} on channel {channel}: payload CRC32C mismatch (corrupt data)", sink.Device.Name);
                sink.Offer(h.Buffer, h.Flags, buf, h.Length, crc, channel);
                handedOver = true;
            }
            finally
            {
                if (!handedOver) _pool.Return(buf);
            }
            track.Add(TraceKind.Receive, t0, MigrationClock.NowUs, h.Length, (int)h.Buffer, device: h.Device);
            if (coupled)
            {
                try
                {
                    bool end = sink.DrainCoupled(() => ReturnCredits(sink));
                    if (end && sink.ConfigLoaded()) FinishDevice(sink);
                }
                catch (Exception e) when (e is not ProtocolException) { ctl.Fail(e, sink.Device.Name); return; }
            }
        }
    }

    private void ChannelEnded(RunControl ctl)
    {
        if (Interlocked.Increment(ref _channelsEnded) < ChannelCount) return;
        // Every channel delivered its end marker: a device still waiting for a buffer will never get it.
        foreach (var s in _sinks)
            if (s.MissingBuffers(out var what)) { ctl.Fail(what, s.Device.Name); return; }
    }

    private int ChannelCount { get; set; }

    private void LoaderThread(DeviceSink sink, RunControl ctl)
    {
        Native.FavourCurrentThread();
        _switchover.Wait();
        if (ctl.Token.IsCancellationRequested) return;
        sink.Report.StartUs = MigrationClock.NowUs;
        sink.LoaderLoop(ctl.Token, () => ReturnCredits(sink));
        if (ctl.Token.IsCancellationRequested) return;
        if (!sink.WaitDone(ctl.Token)) return;
        FinishDevice(sink);
    }

    private void FinishDevice(DeviceSink sink)
    {
        if (_options.Loading == LoadingMode.Coupled)
            sink.Report.StartUs = _switchoverUs;
        sink.Finish();
        if (_options.Loading == LoadingMode.Coupled)
            sink.Report.WaitUs = Math.Max(0, sink.Report.TotalUs - sink.Report.LoadUs - sink.Report.ConfigUs);
        _log.LogInformation("{Line}", sink.Report.SummaryLine());
        if (Interlocked.Increment(ref _finished) == _sinks.Length) _allFinished.Set();
    }

    private void MainReceive(Connection main, RunControl ctl)
    {
        var scratch = new byte[64 << 10];
        while (!ctl.Token.IsCancellationRequested)
        {
            var m = main.ReceiveMessage(scratch);
            if (m is null)
            {
                if (!_allFinished.IsSet) ctl.Fail("source closed the main channel before the migration completed");
                return;
            }
            var r = new MessageReader(m.Value.Body.AsSpan(0, m.Value.Length), m.Value.Type);
            switch (m.Value.Type)
            {
                case MessageType.Heartbeat:
                    break;
                case MessageType.Switchover:
                    if (_switchover.IsSet) throw new ProtocolException("main channel: second switchover");
                    _sourceFirstStopUs = r.I64();
                    _switchoverUs = MigrationClock.NowUs;
                    _timeline.Mark("destination_switchover", _switchoverUs);
                    _switchover.Set();
                    break;
                case MessageType.DeviceDone:
                {
                    uint dev = r.U32();
                    if (dev >= _sinks.Length) throw new ProtocolException($"main channel: completion for unknown device {dev}");
                    uint buffers = r.U32();
                    ulong bytes = r.U64();
                    ulong checksum = r.U64();
                    uint configLength = r.U32();
                    bool hasDigest = r.U32() == 1;
                    ulong digest = r.U64();
                    var sink = _sinks[dev];
                    if (sink.SetDone(new DeviceDoneInfo(buffers, bytes, checksum, configLength, hasDigest ? digest : null))
                        && _options.Loading == LoadingMode.Coupled)
                    {
                        try { FinishDevice(sink); }
                        catch (Exception e) { ctl.Fail(e, sink.Device.Name); return; }
                    }
                    break;
                }
                case MessageType.Error:
                {
                    uint dev = r.U32();
                    string msg = r.Str();
                    ctl.Fail($"source: {msg}", dev < _devices.Count ? _devices[(int)dev].Name : null);
                    return;
                }
                default:
                    throw new ProtocolException($"main channel: unexpected {m.Value.Type} from the source");
            }
        }
    }

    /// <summary>
    /// Publishes a device's progress and returns the credits of the buffers a loader (or, coupled, a receive thread)
    /// has just loaded, from that thread: handing them to another thread to send would cost a wakeup per buffer.
    /// </summary>
    private void ReturnCredits(DeviceSink sink)
    {
        Volatile.Write(ref Progress.Bytes[sink.Index], Volatile.Read(ref sink.LoadedBytes));
        long n = Interlocked.Exchange(ref sink.PendingCredits, 0);
        if (n == 0) return;
        Span<byte> body = stackalloc byte[8];
        var w = new MessageWriter(body);
        w.U32((uint)sink.Index);
        w.U32((uint)n);
        try { _main!.SendMessage(MessageType.Credit, body); }
        catch (MigrationException) when (_allFinished.IsSet) { /* the source has its result and closed: credits no longer matter */ }
    }

    /// <summary>A heartbeat every second, and the check for stalled devices.</summary>
    private void MainSend(Connection main, RunControl ctl)
    {
        try { MainSendLoop(main, ctl); }
        catch (MigrationException) when (_allFinished.IsSet)
        {
            // Every device is done: the source may already have read the result and closed the main channel while a
            // last credit or heartbeat was being sent. Nothing is lost (credits no longer matter).
        }
    }

    private void MainSendLoop(Connection main, RunControl ctl)
    {
        var handles = new WaitHandle[] { ctl.Token.WaitHandle, _allFinished.WaitHandle };
        long timeoutUs = (long)_options.Timeout.TotalMicroseconds;
        while (!ctl.Token.IsCancellationRequested && !_allFinished.IsSet)
        {
            if (WaitHandle.WaitAny(handles, TimeSpan.FromSeconds(1)) != WaitHandle.WaitTimeout) return;
            long now = MigrationClock.NowUs;
            foreach (var s in _sinks)
                if (s.Stalled(now, timeoutUs, out var what)) { ctl.Fail(what, s.Device.Name); return; }
            main.SendMessage(MessageType.Heartbeat, ReadOnlySpan<byte>.Empty);
        }
    }

    private void SendResults(Connection main, bool ok, long lastRunning, long loadEnd, string message)
    {
        var body = new byte[4096];
        foreach (var s in _sinks)
        {
            var d = s.Report;
            var w = new MessageWriter(body);
            w.U32((uint)s.Index);
            w.U32(d.Verified ? 1u : 0u);
            w.U64((ulong)d.Bytes);
            w.U32((uint)d.Buffers);
            w.I64(d.WaitUs); w.I64(d.LoadUs); w.I64(d.ConfigUs);
            w.I64(d.StartUs); w.I64(d.EndUs);
            w.I64(d.MaxQueuedBytes);
            w.Str(d.Error ?? "");
            main.SendMessage(MessageType.DeviceResult, body.AsSpan(0, w.Length));
        }
        var rw = new MessageWriter(body);
        rw.U32(ok ? 1u : 0u);
        rw.I64(lastRunning);
        rw.I64(loadEnd);
        rw.Str(message);
        main.SendMessage(MessageType.Result, body.AsSpan(0, rw.Length));
    }

    private void TrySendError(Connection main, string message, string? device)
    {
        try
        {
            int dev = device is null ? -1 : _devices.ToList().FindIndex(d => d.Name == device);
            var body = new byte[8 + Math.Min(message.Length, 2000) * 3];
            var w = new MessageWriter(body);
            w.U32(dev < 0 ? uint.MaxValue : (uint)dev);
            w.Str(message.Length > 2000 ? message[..2000] : message);
            main.Socket.SendTimeout = 1000;
            main.SendMessage(MessageType.Error, body.AsSpan(0, w.Length));
        }
        catch (Exception) { }
    }
}
