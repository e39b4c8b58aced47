using System.Net;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>
/// One run of the source, in the order of docs/protocol.md section 2: connect and hand over the device list, take the
/// destination's window, connect the data channels, quiesce and stop the devices, let the save threads read them,
/// wait for the destination's result, commit, wait for the destination's devices to run. Until it sends Commit a
/// failure puts the devices back to RUNNING; after it, only the destination's word that it reset its devices does:
/// anything else leaves the outcome unknown and the devices stopped with their state (docs/protocol.md section 6).
/// Threads and ownership: the coordinator (the caller of Execute) owns the sequence and, after the run, the report.
/// Save threads (<see cref="DeviceSaver"/>, one per device) read their device and queue packets; sender threads
/// (<see cref="ChannelSender"/>, one per data channel) take them from the scheduler. The main receive thread writes
/// the destination's answers (<see cref="_results"/> entries, <see cref="_result"/>, <see cref="_lastRunningUs"/>)
/// and adds credits; the coordinator reads them only after <see cref="_resultArrived"/> or <see cref="_running"/> is
/// set. <see cref="_sent"/> is written by the sender threads as each packet starts to leave (Interlocked) and read by
/// the main receive thread, to refuse credits for packets never sent. The coordinator makes the window, the credits and
/// the pool from the Accept before any other thread starts.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001",
    Justification = "a thread that outlived its join timeout may still wait on the event; it is left to the GC")]
internal sealed class SourceRun
{
    private readonly IReadOnlyList<IMigrationDevice> _devices;
    private readonly MigrationOptions _options;
    private readonly ILogger _log;
    private readonly MigrationProgress _progress;
    private readonly RunTimeline _timeline = new();
    private BufferPool? _pool;
    private readonly DeviceReport[] _results;
    private readonly long[] _sent;
    private readonly ManualResetEventSlim _resultArrived = new();
    private readonly ManualResetEventSlim _running = new();
    private CreditGate[] _credits = [];
    private ResultMessage _result;
    private long _lastRunningUs;
    private DeviceSaver[] _savers = [];
    private long _switchoverUs;        // 0 until the devices stopped (written by the coordinator, read by the watchdog)
    private long _lastPeerProgressUs;  // the destination's last credit or result (written by the main receive thread)
    private int _window;
    private bool _live;
    private long _precopyStartUs;
    private bool? _converged;
    private string? _convergedReason;

    public SourceRun(MigrationSource side)
    {
        _devices = side.Devices;
        _options = side.Options;
        _log = side.Log;
        _progress = side.Progress;
        _sent = new long[_devices.Count];
        _results = _devices.Select(d => new DeviceReport { Name = d.Name, SourceName = d.Name }).ToArray();
    }

    public RunReport Execute(IPEndPoint destination, CancellationToken cancel)
    {
        using var ctl = new RunControl(cancel);
        var threads = new List<Thread>();
        var scheduler = _options.SchedulerFactory?.Invoke(_options.Channels) ?? new NextIdleScheduler();
        var mainTrack = _timeline.AddTrack("src main", "main", "source");
        bool stopped = false;
        long firstStop = 0;
        MainChannel? main = null;
        // Wakes every waiter on abort, until every thread is joined (no registration per wait: the data path allocates
        // nothing); a failure of the coordinator itself must wake them too, so it outlives the try block.
        CancellationTokenRegistration wake = default;
        bool committed = false, outcomeUnknown = false;
        try
        {
            _live = DecideLive();
            // The device list and the data path's code are ready before the main channel connects: a destination drops a
            // main channel whose device list is slow to follow its handshake (docs/protocol.md section 1), and asking
            // every device and compiling the code can take seconds on a slow or busy host.
            var offer = new DeviceListMessage(_options.BufferSize, _options.Loading,
                _devices.Select(d => new DeviceOffer(d.Name, d.StopCopySizeEstimate() ?? 0, d.Flags, d.Identity)).ToArray(), _live);
            Warmup.Prepare(_devices);
            ulong session = (ulong)Random.Shared.NextInt64() ^ (ulong)Environment.ProcessId << 48;
            main = new MainChannel(Connect(destination, 0, session, ctl), "destination");
            ctl.BeforeAbort = main.TrySendError;
            main.Send(offer);
            TakeAccept(main.Expect<AcceptMessage>("before accepting"));
            _log.LogInformation("connected to {Destination}: {Devices} devices, {Channels} data channels, window {Window} x {Buffer} bytes",
                destination, _devices.Count, _options.Channels, _window, _options.BufferSize);

            var data = new Connection[_options.Channels];
            for (int c = 0; c < data.Length; c++)
                data[c] = Connect(destination, (ushort)(c + 1), session, ctl);
            _credits = _devices.Select(_ => new CreditGate(_window)).ToArray();
            // Every buffer a window allows per device, and the one each sender may still hold once its credit is back.
            var pool = _pool = new BufferPool(_options.BufferSize, _devices.Count * _window + _options.Channels);
            wake = ctl.Token.Register(() =>
            {
                scheduler.Cancel();
                foreach (var g in _credits) g.Cancel();
            });

            var mainMessages = main;
            threads.Add(ctl.Start("src main receive", () => mainMessages.ReceiveLoop(ctl, OnMessage, () => _running.IsSet,
                "before its devices ran")));
            threads.Add(ctl.Start("src heartbeat", () => mainMessages.Heartbeats(ctl, _running, Watchdog)));
            var senders = new List<Thread>();
            for (int c = 0; c < data.Length; c++)
            {
                var sender = new ChannelSender(c + 1, _options.DataChannelWriter?.Invoke(c + 1, data[c]) ?? data[c], scheduler, pool, _sent,
                    _timeline.AddTrack($"src channel {c + 1} send", "send", "source"));
                senders.Add(ctl.StartDataChannel($"src channel {c + 1} send", () => sender.Run(ctl.Token)));
            }
            threads.AddRange(senders);

            // Source digests are taken while the devices still run (they are outside the downtime); a device that runs
            // during precopy changes its state, so its saver takes the digest once it is stopped.
            bool digests = _options.Verify == VerifyMode.Digest;
            var stopCopyDigests = _devices.Select(d => digests && !_live ? d.StateDigest() : null).ToArray();

            // The save threads exist before the downtime starts (starting a thread can take milliseconds on a busy
            // machine); they wait for the devices to be stopped.
            pool.Reserve();
            var go = new ManualResetEventSlim();
            var switchedOver = new ManualResetEventSlim();
            var precopyStreams = new IDeviceDataStream?[_devices.Count];
            if (_live)
            {
                stopped = true; // from here a failure puts the devices back to RUNNING
                _precopyStartUs = MigrationClock.NowUs;
                _timeline.Mark("source_precopy_start", _precopyStartUs);
                for (int i = 0; i < _devices.Count; i++)
                    precopyStreams[i] = EnterPrecopy(i, mainTrack);
                go.Set();
            }
            var started = new DeviceSaver.StartLine(_devices.Count);
            var savers = new List<Thread>();
            _savers = new DeviceSaver[_devices.Count];
            for (int i = 0; i < _devices.Count; i++)
            {
                var saver = _savers[i] = new DeviceSaver(i, _devices[i], digests, stopCopyDigests[i], _credits[i], scheduler, pool, _progress,
                    started, _timeline.AddTrack($"src save {_devices[i].Name}", "save", "source", i), mainMessages, _log);
                savers.Add(ctl.Start($"src save {_devices[i].Name}", () =>
                {
                    go.Wait(ctl.Token);
                    _results[saver.Index].Checksum = saver.Run(precopyStreams[saver.Index], switchedOver, ctl.Token);
                }, i));
            }
            threads.AddRange(savers);

            if (_live) Converge(ctl);
            stopped = true;
            firstStop = SwitchOver(mainTrack, switchedOver, main);
            Volatile.Write(ref _lastPeerProgressUs, MigrationClock.NowUs);
            Volatile.Write(ref _switchoverUs, MigrationClock.NowUs);
            go.Set();
            _log.LogInformation("switchover: {Devices} devices stopped", _devices.Count);
            JoinAll(savers, ctl.Token);
            scheduler.Complete();
            JoinAll(senders, ctl.Token);
            try { _resultArrived.Wait(ctl.Token); } catch (OperationCanceledException) { }
            ctl.ThrowIfFailed();
            // Commit only with the destination's word that every device was loaded and verified.
            if (_results.Select((d, i) => (d, i)).FirstOrDefault(x => !x.d.Verified) is { d: not null } unverified)
                throw new MigrationException("reported success without verifying the device", unverified.i, FailureOrigin.Peer);
            _log.LogInformation("the destination verified {Devices} devices: committing", _devices.Count);
            // The commit point: once these bytes may have left, the destination may run the devices, so this side never
            // resumes them by itself again.
            committed = true;
            main.Send(new CommitMessage());
            try { _running.Wait(ctl.Token); } catch (OperationCanceledException) { }
            // The destination's word that its devices run settles the run, whatever failed after it.
            if (!_running.IsSet) ctl.ThrowIfFailed();
        }
        catch (Exception e)
        {
            ctl.Fail(e);
        }
        finally
        {
            if (ctl.Failed && !_running.IsSet)
            {
                // After the commit only the destination's own Error says it did not take over (it reset its devices).
                bool restore = stopped && (!committed || ctl.Failure!.Origin == FailureOrigin.Peer);
                outcomeUnknown = committed && !restore;
                _progress.Finishing = restore ? FinishingStep.RestoringSources : FinishingStep.KeepingSourcesStopped;
                // A save thread stuck in the device is woken by the device leaving STOP_COPY (on mlx5 its read then
                // fails with ENODEV): give the threads a moment, restore, wait for them, and restore again whatever a
                // thread that was finishing its device moved on meanwhile.
                foreach (var t in threads) t.Join(TimeSpan.FromMilliseconds(200));
                if (restore) RestoreRunning();
                foreach (var t in threads) t.Join(_options.Timeout);
                if (restore)
                {
                    RestoreRunning();
                    _log.LogInformation("{Devices} source devices back to RUNNING", _devices.Count);
                }
                if (scheduler is NextIdleScheduler q && _pool is not null) q.Drain(_pool);
                _progress.Finishing = FinishingStep.None;
            }
            else
            {
                main?.Connection.Abort();
                foreach (var t in threads) t.Join(_options.Timeout);
            }
            wake.Dispose();
        }
        return Report(_running.IsSet ? null : ctl.Failure, firstStop, outcomeUnknown);
    }

    /// <summary>Waits for the threads to end, or for the run to fail (a thread stuck in a device must not hold the coordinator).</summary>
    private static void JoinAll(List<Thread> threads, CancellationToken token)
    {
        foreach (var t in threads)
            while (!t.Join(50)) token.ThrowIfCancellationRequested();
    }

    private Connection Connect(IPEndPoint ep, ushort channel, ulong session, RunControl ctl)
    {
        var c = Connection.Connect(ep, _options.Timeout, channel == 0 ? "main channel" : $"data channel {channel}");
        ctl.Register(c);
        c.ReceiveTimeout = _options.Timeout;
        if (_options.Tls is { } tls) c.SecureAsClient(tls);
        Span<byte> hs = stackalloc byte[Protocol.HandshakeSize];
        new Handshake(channel, session, (ushort)_options.Channels).Write(hs);
        c.WriteAll(hs);
        Span<byte> reply = stackalloc byte[Protocol.HandshakeReplySize];
        bool replied;
        // TLS 1.3: the destination checks this side's certificate after the client's handshake is done, so its refusal
        // arrives here, at the first read.
        try { replied = c.ReadExact(reply); }
        catch (MigrationException e)
        {
            throw new TransportException(c.Secure
                ? $"{c.Name}: TLS: the destination refused this side's certificate or closed the connection ({e.Message})"
                : $"{e.Message} (does the destination require TLS?)");
        }
        if (!replied)
            throw new TransportException(c.Secure
                ? $"{c.Name}: TLS: the destination closed the connection after the TLS handshake (did it refuse this side's certificate?)"
                : $"{c.Name}: destination closed the connection during the handshake (does the destination require TLS?)");
        var status = HandshakeReply.Read(reply).Status;
        if (status == HandshakeStatus.Busy)
            throw new MigrationException($"{c.Name}: destination busy: it is serving another source's migration", null, FailureOrigin.Peer);
        if (status != HandshakeStatus.Ok)
            throw new MigrationException($"{c.Name}: destination refused the handshake ({status})", null, FailureOrigin.Peer);
        if (channel != 0) c.ReceiveTimeout = TimeSpan.Zero;
        return c;
    }

    private void TakeAccept(in AcceptMessage accept)
    {
        if (accept.DeviceNames.Length != _devices.Count)
            throw new ProtocolException($"main channel: destination has {accept.DeviceNames.Length} devices, source {_devices.Count}");
        // The window is this side's memory: a destination may grant less than --window, never make it hold more.
        _window = Math.Min(accept.Window, _options.Window);
        if (accept.Window > _options.Window)
            _log.LogInformation("the destination grants a window of {Granted} buffers; this source keeps at most {Window} in flight (--window)",
                accept.Window, _options.Window);
        for (int i = 0; i < _devices.Count; i++)
            _results[i] = new DeviceReport { Name = accept.DeviceNames[i], SourceName = _devices[i].Name };
    }

    /// <summary>Live when every device offers PRE_COPY (auto) or when asked (on: then every device must offer it).</summary>
    private bool DecideLive()
    {
        var lacking = _devices.Select((d, i) => (d, i)).FirstOrDefault(x => !x.d.Flags.HasFlag(MigrationFlags.PreCopy));
        return _options.Precopy switch
        {
            PrecopyMode.Off => false,
            PrecopyMode.On when lacking.d is not null =>
                throw new MigrationException("--precopy on: the device does not offer PRE_COPY", lacking.i),
            _ => lacking.d is null && _devices.Count > 0,
        };
    }

    private IDeviceDataStream EnterPrecopy(int device, TimelineTrack track)
    {
        var d = _devices[device];
        long t0 = MigrationClock.NowUs;
        IDeviceDataStream? stream;
        try { stream = d.SetState(MigrationState.PreCopy); }
        catch (VfioException e) { throw new MigrationException(e.Message, device); }
        track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: $"{d.Name} RUNNING->PRE_COPY");
        return stream ?? throw new MigrationException("RUNNING->PRE_COPY returned no data stream", device);
    }

    /// <summary>
    /// The live phase, on the coordinator: wait until every device's initial image is acknowledged and the remainder is
    /// estimated to move and load within --downtime-limit, or until --precopy-timeout (then switch over anyway, or abort).
    /// The estimate takes each device's rate from its initial image (read, sent and loaded at full speed in this run):
    /// the slowest device's remainder over its rate, or all remainders over the combined rate, whichever is longer. A
    /// device's remainder is what it still holds plus what it sent that the destination has not loaded yet.
    /// </summary>
    private void Converge(RunControl ctl)
    {
        try
        {
            WaitForConvergence(ctl);
        }
        finally
        {
            _progress.Precopy = null;
        }
    }

    private void WaitForConvergence(RunControl ctl)
    {
        long deadline = _precopyStartUs + (long)_options.PrecopyTimeout.TotalMicroseconds;
        double limitMs = _options.DowntimeLimit.TotalMilliseconds;
        long nextStatusUs = 0, nextLogUs = _precopyStartUs + StatusLogIntervalUs;
        while (true)
        {
            if (ctl.Token.WaitHandle.WaitOne(10)) ctl.ThrowIfFailed();
            ctl.Token.ThrowIfCancellationRequested();
            long now = MigrationClock.NowUs;
            double? estimate = EstimateDowntimeMs();
            if (now >= nextStatusUs)
            {
                var status = _progress.Precopy = Status(now, estimate, limitMs);
                nextStatusUs = now + 200_000;
                if (now >= nextLogUs)
                {
                    _log.LogInformation("{Status}", status.Describe());
                    nextLogUs = now + StatusLogIntervalUs;
                }
            }
            if (estimate is double e && e <= limitMs)
            {
                _converged = true;
                _convergedReason = string.Create(System.Globalization.CultureInfo.InvariantCulture,
                    $"initial images acknowledged; remainder estimated at {e:0} ms (--downtime-limit {limitMs:0} ms)");
                return;
            }
            if (now < deadline) continue;
            string why = estimate is double late
                ? string.Create(System.Globalization.CultureInfo.InvariantCulture,
                    $"the remainder is estimated at {late:0} ms, above --downtime-limit {limitMs:0} ms")
                : $"{_savers.Count(s => Volatile.Read(ref s.AckedUs) == 0)} devices' initial images are not acknowledged";
            string what = $"precopy did not converge within {_options.PrecopyTimeout.TotalSeconds:0.#} s: {why}";
            if (_options.PrecopyTimeoutAction == PrecopyTimeoutAction.Abort)
                throw new MigrationException($"{what} (--precopy-timeout-action abort)");
            _log.LogWarning("{What}: switching over anyway", what);
            _converged = false;
            _convergedReason = what;
            return;
        }
    }

    /// <summary>How often the live phase's status is logged (a terminal's progress display redraws it more often).</summary>
    private const long StatusLogIntervalUs = 2_000_000;

    /// <summary>
    /// The live phase now. A device's initial image still to go is its expected size less what was read, until it is
    /// marked; its dirty rate is the precopy data it handed out after its initial image, per second since the mark.
    /// </summary>
    private PrecopyStatus Status(long nowUs, double? estimateMs, double limitMs)
    {
        long sent = 0, initialLeft = 0;
        int acked = 0;
        double dirtyRate = 0;
        foreach (var s in _savers)
        {
            long precopy = s.PrecopyBytes, initial = Volatile.Read(ref s.InitialImageBytes), marked = Volatile.Read(ref s.MarkedUs);
            sent += precopy;
            if (Volatile.Read(ref s.AckedUs) != 0) acked++;
            if (initial < 0) initialLeft += Math.Max(0, _progress.Expected[s.Index] - precopy);
            else if (nowUs > marked) dirtyRate += (precopy - initial) / ((nowUs - marked) / 1e6);
        }
        return new PrecopyStatus((nowUs - _precopyStartUs) / 1000.0, sent, acked, _savers.Length, initialLeft, dirtyRate, estimateMs, limitMs);
    }

    /// <summary>The estimated downtime if the devices switched over now, or null while some initial image is not acknowledged.</summary>
    private double? EstimateDowntimeMs()
    {
        double slowest = 0, remainders = 0, initial = 0;
        long firstRead = long.MaxValue, lastAck = 0;
        foreach (var s in _savers)
        {
            long acked = Volatile.Read(ref s.AckedUs), remainder = Volatile.Read(ref s.RemainderBytes);
            if (acked == 0 || remainder < 0) return null;
            // What was sent but not loaded yet loads inside the downtime too (credits count the loaded buffers).
            remainder += s.Unloaded.Bytes(_credits[s.Index].Granted - _window);
            long bytes = Volatile.Read(ref s.InitialImageBytes), read = Volatile.Read(ref s.FirstReadUs);
            remainders += remainder;
            if (bytes <= 0 || read == 0) continue; // an empty initial image measures nothing
            initial += bytes;
            firstRead = Math.Min(firstRead, read);
            lastAck = Math.Max(lastAck, acked);
            if (acked > read) slowest = Math.Max(slowest, remainder / (bytes / ((acked - read) / 1e6)) * 1000);
        }
        double combined = initial > 0 && lastAck > firstRead ? remainders / (initial / ((lastAck - firstRead) / 1e6)) * 1000 : 0;
        return Math.Max(slowest, combined);
    }

    /// <summary>
    /// The switchover: the downtime starts. Live, every save thread is held out of its device (it reads the precopy
    /// stream under the device's lock) while the devices leave PRE_COPY and the Switchover message goes out; the savers
    /// then go on with the stop-copy data. So no DeviceDone precedes the Switchover, as a small device's would if its
    /// saver read and announced its last data before this thread had sent the message.
    /// </summary>
    private long SwitchOver(TimelineTrack track, ManualResetEventSlim switchedOver, MainChannel main)
    {
        int held = 0;
        try
        {
            if (_live)
                for (; held < _savers.Length; held++)
                    if (!Monitor.TryEnter(_savers[held].DeviceLock, _options.LoadTimeout))
                        throw new MigrationException($"a precopy read has not returned for {_options.LoadTimeout.TotalSeconds:0.#} s "
                            + "(--load-timeout)", held);
            long firstStop = MigrationClock.NowUs;
            _timeline.Mark("source_first_stop", firstStop);
            foreach (var s in _savers) s.SwitchedOver = true;
            switchedOver.Set();
            Quiesce(track);
            main.Send(new SwitchoverMessage(firstStop));
            return firstStop;
        }
        finally
        {
            for (int i = 0; i < held; i++) Monitor.Exit(_savers[i].DeviceLock);
        }
    }

    /// <summary>
    /// Every P2P-capable device to RUNNING_P2P (live: PRE_COPY_P2P) before any goes to STOP (live: STOP_COPY), so that
    /// none DMAs into a stopped peer.
    /// </summary>
    private void Quiesce(TimelineTrack track)
    {
        for (int i = 0; i < _devices.Count; i++)
            if (_devices[i].Flags.HasFlag(MigrationFlags.P2P)) Transition(i, _live ? MigrationState.PreCopyP2P : MigrationState.RunningP2P, track);
        for (int i = 0; i < _devices.Count; i++)
            Transition(i, _live ? MigrationState.StopCopy : MigrationState.Stop, track);
    }

    private void Transition(int device, MigrationState target, TimelineTrack track)
    {
        var d = _devices[device];
        long t0 = MigrationClock.NowUs;
        var from = d.GetState();
        try { d.SetState(target)?.Dispose(); }
        catch (VfioException e) { throw new MigrationException(e.Message, device); }
        track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: $"{d.Name} {from}->{target}");
    }

    /// <summary>
    /// The heartbeat thread's check, every second after the switchover: a device whose save hangs, a device that waits
    /// for credits, or a destination that reports nothing, past their deadlines. The destination watches its own devices
    /// with --timeout and --load-timeout, so waiting on it here allows both: this is the backstop for a destination that
    /// stays connected and does nothing.
    /// </summary>
    private void Watchdog()
    {
        if (Volatile.Read(ref _switchoverUs) == 0) return;
        long now = MigrationClock.NowUs;
        long loadTimeoutUs = (long)_options.LoadTimeout.TotalMicroseconds;
        long patienceUs = (long)_options.Timeout.TotalMicroseconds + loadTimeoutUs;
        foreach (var s in _savers)
            if (s.Stalled(now, loadTimeoutUs, patienceUs, out var what)) throw new MigrationException(what!, s.Index);
        if (!_resultArrived.IsSet && now - Volatile.Read(ref _lastPeerProgressUs) > patienceUs)
            throw new MigrationException($"the destination reported no progress for {patienceUs / 1_000_000} s");
    }

    /// <summary>The main receive thread's dispatch: credits, per-device results, the result.</summary>
    private bool OnMessage(in InboundMessage m)
    {
        if (m.Type is MessageType.Credit or MessageType.DeviceResult or MessageType.Result or MessageType.PrecopyAck)
            Volatile.Write(ref _lastPeerProgressUs, MigrationClock.NowUs);
        switch (m.Type)
        {
            case MessageType.Credit:
                var credit = m.As<CreditMessage>();
                int dev = CheckDevice(credit.Device, "credit");
                if (_credits[dev].Granted + credit.Credits > Interlocked.Read(ref _sent[dev]) + _window)
                    throw new ProtocolException($"main channel: destination returned more credits than buffers were sent", dev);
                _credits[dev].Add(credit.Credits);
                return true;
            case MessageType.PrecopyAck:
                int acked = CheckDevice(m.As<PrecopyAckMessage>().Device, "precopy ack");
                // The savers exist once the devices entered PRE_COPY: an ack before that acknowledges nothing.
                var saver = acked < Volatile.Read(ref _savers).Length ? Volatile.Read(ref _savers[acked]) : null;
                if (saver is null || !_live || Volatile.Read(ref saver.InitialImageBytes) < 0 || Volatile.Read(ref saver.AckedUs) != 0)
                    throw new ProtocolException("main channel: precopy ack for an initial image not marked, or twice", acked);
                Volatile.Write(ref saver.AckedUs, MigrationClock.NowUs);
                return true;
            case MessageType.DeviceResult:
                var r = m.As<DeviceResultMessage>();
                var d = _results[CheckDevice(r.Device, "result")];
                d.Verified = r.Verified;
                d.Bytes = r.Bytes;
                d.Buffers = r.Buffers;
                d.WaitUs = r.WaitUs; d.LoadUs = r.LoadUs; d.ConfigUs = r.ConfigUs;
                d.StartUs = r.StartUs; d.EndUs = r.EndUs;
                d.MaxQueuedBytes = r.MaxQueuedBytes;
                d.Error = r.Error;
                return true;
            case MessageType.Result:
                _result = m.As<ResultMessage>();
                // A failed result fails the run before anyone is woken to read it (the failure cancels the wait).
                if (!_result.Ok)
                    throw new MigrationException(_result.Message ?? "reported failure", null, FailureOrigin.Peer);
                _resultArrived.Set();
                return true;
            case MessageType.Running:
                if (!_resultArrived.IsSet) throw new ProtocolException("main channel: Running before Result");
                _lastRunningUs = m.As<RunningMessage>().LastRunningUs;
                _running.Set();
                return false;
            default:
                throw new ProtocolException($"main channel: unexpected {m.Type} from the destination");
        }
    }

    private int CheckDevice(int device, string what) =>
        device < _devices.Count ? device : throw new ProtocolException($"main channel: {what} for unknown device {device}");

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

    private RunReport Report(RunFailure? failure, long firstStop, bool outcomeUnknown)
    {
        var report = new RunReport
        {
            Role = "source", Mode = _options.Loading, Channels = _options.Channels, BufferSize = _options.BufferSize,
            Timeline = _timeline, Window = _window, Verify = _options.Verify, FirstStopUs = firstStop,
            PoolBuffers = _pool?.Allocated ?? 0, Live = _live,
        };
        report.Devices.AddRange(_results);
        report.PrecopyStartUs = _precopyStartUs;
        report.Converged = _live ? _converged : null;
        report.ConvergedReason = _convergedReason;
        foreach (var s in _savers)
        {
            var d = _results[s.Index];
            (d.PrecopyBytes, d.PrecopyBuffers, d.DirtyRounds, d.InitialAckedUs) = (s.PrecopyBytes, (int)s.PrecopyBuffers, s.DirtyRounds, s.AckedUs);
        }
        report.SetOutcome(failure, "destination", _devices.Select(d => d.Name).ToArray(), outcomeUnknown);
        if (report.Ok)
        {
            report.LastRunningUs = _lastRunningUs;
            report.LoadEndUs = _result.LoadEndUs;
            _timeline.Mark("destination_last_running", _lastRunningUs);
        }
        return report;
    }
}
