using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>
/// One run of the destination, in the order of docs/protocol.md section 2: accept a source, take its device list, put
/// the devices in RESUMING, grant the window, accept the data channels, load (loader threads, or the receive threads
/// in coupled mode), verify, report, and on the source's Commit bring every device to RUNNING. Before the Commit a
/// failure resets every device; after it a lost connection no longer matters (the source will never resume its own),
/// and a device that fails to run makes this side reset them all before it says so (docs/protocol.md section 6).
/// Threads and ownership: the coordinator (the caller of Execute) owns the sequence, the sinks array (made before any
/// other thread starts) and the report. Receive threads (<see cref="ChannelReceiver"/>) and loaders (decoupled,
/// <see cref="DeviceSink.LoaderLoop"/>) work on the sinks. The main receive thread writes the switchover time
/// (<see cref="_sourceFirstStopUs"/>, <see cref="_switchoverUs"/>) before setting <see cref="_switchover"/>, which the
/// loaders wait for, and hands DeviceDone to the sinks. The heartbeat thread runs the stall watchdog. The thread that
/// finishes the last device sets <see cref="_allFinished"/> (counted in <see cref="_finished"/>, Interlocked). The main
/// receive thread sets <see cref="_commit"/>; the coordinator sets <see cref="_running"/> when the devices run.
/// Credits go out on the main channel from whichever thread loaded the buffers (its send lock orders them).
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001",
    Justification = "a thread that outlived its join timeout may still wait on the events; they are left to the GC")]
internal sealed class DestinationRun
{
    private readonly IReadOnlyList<IMigrationDevice> _devices;
    private readonly MigrationOptions _options;
    private readonly ILogger _log;
    private readonly MigrationProgress _progress;
    private readonly ManualResetEventSlim _switchover = new();
    private readonly ManualResetEventSlim _allFinished = new();
    private readonly ManualResetEventSlim _resultSent = new();
    private readonly ManualResetEventSlim _commit = new();
    private readonly ManualResetEventSlim _running = new();
    private DeviceSink[] _sinks = [];
    private BufferPool? _pool;
    private MainChannel? _main;
    private long _switchoverUs;
    private long _sourceFirstStopUs;
    private int _finished;
    private int _channels;
    private int _channelsEnded;
    private bool _live;

    public DestinationRun(MigrationDestination side)
    {
        _devices = side.Devices;
        _options = side.Options;
        _log = side.Log;
        _progress = side.Progress;
    }

    public RunTimeline Timeline { get; } = new();
    public bool Coupled => _options.Loading == LoadingMode.Coupled;

    public RunReport Execute(Socket listener, CancellationToken cancel)
    {
        using var ctl = new RunControl(cancel);
        var threads = new List<Thread>();
        // Accepts for the whole run: a second source is told the destination is busy.
        using var acceptor = new SessionAcceptor(listener, _options, _log);
        int bufferSize = _options.BufferSize;
        bool prepared = false;
        long lastRunning = 0, loadEnd = 0;
        // Wakes every waiting loader on abort, until every thread is joined (no registration per wait); a failure of
        // the coordinator itself must wake them too, so it outlives the try block.
        CancellationTokenRegistration wake = default;
        bool running = false;
        try
        {
            Warmup.Prepare(_devices); // while no source is connected yet: compile the data path outside the downtime
            var source = acceptor.AcceptSource(ctl);
            (ulong session, _channels) = (source.Session, source.Channels);
            ctl.Register(source.Main.Connection);
            var main = _main = source.Main;
            ctl.BeforeAbort = main.TrySendError;
            CheckLimits(source.DeviceList);
            bufferSize = TakeDeviceList(source.DeviceList);
            // A full window per device, and a buffer per receive thread.
            _pool = new BufferPool(bufferSize, _devices.Count * _options.Window + _channels);
            _pool.Reserve();
            prepared = true;
            _sinks = PrepareDevices();
            wake = ctl.Token.Register(() => { foreach (var s in _sinks) s.Wake(); _switchover.Set(); });
            main.Send(new AcceptMessage(_options.Window, _devices.Select(d => d.Name).ToArray()));
            // The main channel is watched from now on (a source that gives up while channels connect ends the run).
            threads.Add(ctl.Start("dst main receive", () => main.ReceiveLoop(ctl, (in InboundMessage m) => OnMessage(m, ctl), () => _running.IsSet,
                "before committing the migration")));
            threads.Add(ctl.Start("dst main send", () => Heartbeats(main, ctl)));
            var data = acceptor.AcceptDataChannels(ctl);
            _log.LogInformation(
                "session {Session:x16}: {Devices} devices, {Channels} data channels, {Mode} loading, window {Window} x {Buffer} bytes",
                session, _devices.Count, _channels, Coupled ? "coupled" : "decoupled", _options.Window, bufferSize);

            for (int c = 0; c < data.Length; c++)
            {
                var receiver = new ChannelReceiver(c + 1, data[c], _sinks, _pool, bufferSize,
                    Timeline.AddTrack($"dst channel {c + 1} receive", "receive", "destination"), this);
                threads.Add(ctl.StartDataChannel($"dst channel {c + 1} receive", () => receiver.Run(ctl)));
            }
            if (!Coupled)
                foreach (var sink in _sinks)
                    threads.Add(ctl.Start($"dst loader {sink.Device.Name}", () => LoaderThread(sink, ctl), sink.Index));

            try { _allFinished.Wait(ctl.Token); } catch (OperationCanceledException) { }
            ctl.ThrowIfFailed();

            // Every device loaded and verified, in STOP: report, then wait for the source's Commit.
            loadEnd = _sinks.Max(s => s.Report.EndUs);
            foreach (var s in _sinks)
            {
                var d = s.Report;
                main.Send(new DeviceResultMessage(s.Index, d.Verified, d.Bytes, d.Buffers, d.WaitUs, d.LoadUs, d.ConfigUs, d.StartUs, d.EndUs,
                    d.MaxQueuedBytes, d.Error));
            }
            _resultSent.Set(); // before the Result leaves: the Commit may come back before Send returns
            main.Send(new ResultMessage(true, loadEnd, null));
            _log.LogInformation("result sent: {Devices} devices verified; waiting for the source to commit", _devices.Count);
            // A source that neither commits nor gives up would otherwise hold the devices here forever.
            try
            {
                if (!_commit.Wait(_options.Timeout, ctl.Token))
                    throw new MigrationException($"the source did not commit within {_options.Timeout.TotalSeconds:0.#} s of the result");
            }
            catch (OperationCanceledException) { }
            // A Commit that arrived counts even if the connection failed since: the source will not resume its devices.
            // From here on this side tells the source why it failed only after it has reset every device (TryCommit).
            if (!_commit.IsSet) ctl.ThrowIfFailed();
            _log.LogInformation("commit received: moving {Devices} devices to RUNNING", _devices.Count);
            lastRunning = RunAll(main);
            running = true;
            _progress.Finishing = FinishingStep.None;
            _running.Set();
            try { main.Send(new RunningMessage(lastRunning)); }
            catch (TransportException e) { _log.LogWarning("the devices run; the source was not told ({Error})", e.Message); }
            // Let the source read it and close first; then we are done.
            foreach (var t in threads) t.Join(_options.Timeout);
        }
        catch (Exception e)
        {
            ctl.Fail(e);
        }
        finally
        {
            if (ctl.Failed && !running) Rollback(prepared, threads);
            _main?.Connection.Abort();
            wake.Dispose();
        }
        return Report(running ? null : ctl.Failure, bufferSize, lastRunning, loadEnd);
    }

    /// <summary>
    /// After the Commit: every device to RUNNING, P2P first (the mirror of the source's quiesce). If one refuses, every
    /// device is reset before the source is told, so that it never resumes its own while one here runs.
    /// </summary>
    private long RunAll(MainChannel main)
    {
        var track = Timeline.AddTrack("dst main", "main", "destination");
        _progress.Finishing = FinishingStep.RunningDestinations;
        try
        {
            foreach (var s in _sinks)
                if (s.Device.Flags.HasFlag(MigrationFlags.P2P)) Transition(s, MigrationState.RunningP2P, track);
            foreach (var s in _sinks)
                Transition(s, MigrationState.Running, track);
        }
        catch (MigrationException e)
        {
            ResetDevices(onlyIfNotRunning: false);
            main.TrySendError(new RunFailure(FailureOrigin.Local, e.Message, e.Device));
            throw;
        }
        long lastRunning = MigrationClock.NowUs;
        Timeline.Mark("destination_last_running", lastRunning);
        Timeline.Mark("source_first_stop", _sourceFirstStopUs);
        return lastRunning;
    }

    /// <summary>
    /// What this side will reserve follows from its own limits: a source that asks for more data channels or larger buffers
    /// than its options allow is refused before anything is reserved (docs/protocol.md section 4, "Memory").
    /// </summary>
    private void CheckLimits(in DeviceListMessage list)
    {
        if (_channels > _options.Channels)
            throw new MigrationException(
                $"the source asks for {_channels} data channels, this destination accepts at most {_options.Channels} (--channels)");
        if (list.BufferSize > _options.BufferSize)
            throw new MigrationException($"the source asks for buffers of {list.BufferSize} bytes, this destination accepts at most "
                + $"{_options.BufferSize} (--buffer-size)");
    }

    private int TakeDeviceList(in DeviceListMessage list)
    {
        if (list.Devices.Length != _devices.Count)
            throw new MigrationException($"the source migrates {list.Devices.Length} devices, this destination has {_devices.Count}");
        _live = list.Precopy;
        for (int i = 0; i < list.Devices.Length; i++)
        {
            var offer = list.Devices[i];
            _progress.Expected[i] = (long)offer.ExpectedBytes;
            if (!offer.Flags.HasFlag(MigrationFlags.StopCopy))
                throw new MigrationException($"source device {offer.Name} does not support STOP_COPY", i);
            // Before any device stops: a stream this device cannot load would otherwise fail only inside the downtime.
            var (verdict, reason) = StreamCompatibility.Check(offer.Identity, _devices[i].Identity);
            if (verdict == StreamVerdict.Incompatible)
                throw new MigrationException($"cannot load the stream of source device {offer.Name}: {reason}", i);
            if (verdict == StreamVerdict.Differs)
                _log.LogWarning("{Device}: source device {Source}: {Reason}", _devices[i].Name, offer.Name, reason);
            _log.LogDebug("device {Index}: {Source} -> {Destination}, about {Bytes} bytes", i, offer.Name, _devices[i].Name, offer.ExpectedBytes);
        }
        return list.BufferSize;
    }

    private DeviceSink[] PrepareDevices()
    {
        var sinks = new DeviceSink[_devices.Count];
        for (int i = 0; i < _devices.Count; i++)
        {
            var d = _devices[i];
            var track = Timeline.AddTrack($"dst loader {d.Name}", "loader", "destination", i);
            try
            {
                if (!d.Flags.HasFlag(MigrationFlags.StopCopy))
                    throw new MigrationException("does not support migration (no STOP_COPY)", i);
                long t0 = MigrationClock.NowUs;
                d.SetState(MigrationState.Stop)?.Dispose();
                var stream = d.SetState(MigrationState.Resuming)
                    ?? throw new MigrationException("STOP->RESUMING returned no data stream", i);
                track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: "->RESUMING");
                sinks[i] = new DeviceSink(i, d, stream, _options.Window, _pool!, track)
                {
                    Live = _live, CheckDigest = _options.Verify == VerifyMode.Digest,
                };
            }
            catch (Exception e)
            {
                // The rollback disposes the streams of the sinks made so far: publish them.
                _sinks = sinks.Where(s => s is not null).ToArray();
                if (e is VfioException) throw new MigrationException($"cannot enter RESUMING: {e.Message}", i);
                throw;
            }
        }
        return sinks;
    }

    private static void Transition(DeviceSink s, MigrationState target, TimelineTrack track)
    {
        long t0 = MigrationClock.NowUs;
        try { s.Device.SetState(target)?.Dispose(); }
        catch (VfioException e) { throw new MigrationException(e.Message, s.Index); }
        track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: $"{s.Device.Name} ->{target}");
    }

    /// <summary>The main receive thread's dispatch: the switchover and each device's completion.</summary>
    private bool OnMessage(in InboundMessage m, RunControl ctl)
    {
        switch (m.Type)
        {
            case MessageType.Switchover:
                if (_switchover.IsSet) throw new ProtocolException("main channel: second switchover");
                _sourceFirstStopUs = m.As<SwitchoverMessage>().FirstStopUs;
                _switchoverUs = MigrationClock.NowUs;
                foreach (var s in _sinks) s.Watch(_switchoverUs);
                Timeline.Mark("destination_switchover", _switchoverUs);
                _switchover.Set();
                return true;
            case MessageType.Commit:
                if (!_resultSent.IsSet || _commit.IsSet) throw new ProtocolException("main channel: Commit before Result, or twice");
                if (ctl.TryCommit()) _commit.Set();
                return true;
            case MessageType.PrecopyMark:
                var mark = m.As<PrecopyMarkMessage>();
                if (!_live) throw new ProtocolException("main channel: precopy mark in a run that is not live");
                if (mark.Device >= _sinks.Length) throw new ProtocolException($"main channel: precopy mark for unknown device {mark.Device}");
                if (_sinks[mark.Device].SetInitialImage(mark.Buffers)) SendPrecopyAck(_sinks[mark.Device]);
                return true;
            case MessageType.DeviceDone:
                var done = m.As<DeviceDoneMessage>();
                if (done.Device >= _sinks.Length) throw new ProtocolException($"main channel: completion for unknown device {done.Device}");
                // The device's last data follows its stop, which the Switchover announces (docs/protocol.md section 2).
                if (!_switchover.IsSet) throw new ProtocolException("main channel: completion before the switchover", done.Device);
                var sink = _sinks[done.Device];
                if (sink.SetDone(done) && Coupled) FinishDevice(sink);
                return true;
            default:
                throw new ProtocolException($"main channel: unexpected {m.Type} from the source");
        }
    }

    private void LoaderThread(DeviceSink sink, RunControl ctl)
    {
        ThreadPriority.FavourCurrentThread();
        // Live, the loader writes precopy buffers as they come, before the switchover.
        if (!_live) _switchover.Wait();
        if (ctl.Token.IsCancellationRequested) return;
        sink.Report.StartUs = MigrationClock.NowUs;
        sink.LoaderLoop(() => ReturnCredits(sink), ctl.Token);
        if (ctl.Token.IsCancellationRequested) return;
        if (!sink.WaitDone(ctl.Token)) return;
        FinishDevice(sink);
    }

    public void FinishDevice(DeviceSink sink)
    {
        if (Coupled || _live) sink.Report.StartUs = _switchoverUs;
        try { sink.Finish(); }
        catch (VfioException e) { throw new MigrationException(e.Message, sink.Index); }
        if (Coupled) sink.Report.WaitUs = Math.Max(0, sink.Report.TotalUs - sink.Report.LoadUs - sink.Report.ConfigUs);
        _log.LogInformation("{Line}", sink.Report.SummaryLine());
        if (Interlocked.Increment(ref _finished) == _sinks.Length) _allFinished.Set();
    }

    /// <summary>Every channel delivered its end marker: a device still waiting for a buffer will never get it.</summary>
    public void ChannelEnded()
    {
        if (Interlocked.Increment(ref _channelsEnded) < _channels) return;
        foreach (var s in _sinks)
            if (s.MissingBuffers(out var what)) throw new ProtocolException(what, s.Index);
    }

    /// <summary>
    /// Publishes a device's progress and returns the credits of the buffers a loader (or, coupled, a receive thread)
    /// has just loaded, from that thread: handing them to another thread to send would cost a wakeup per buffer.
    /// </summary>
    public void ReturnCredits(DeviceSink sink)
    {
        if (sink.TakeInitialImageLoaded()) SendPrecopyAck(sink);
        Volatile.Write(ref _progress.Bytes[sink.Index], Volatile.Read(ref sink.LoadedBytes));
        long n = Interlocked.Exchange(ref sink.PendingCredits, 0);
        if (n == 0) return;
        try { _main!.Send(new CreditMessage(sink.Index, (uint)n)); }
        catch (MigrationException) when (_allFinished.IsSet) { /* the source has its result and closed: credits no longer matter */ }
    }

    /// <summary>The switchover-ack: the device has loaded its whole initial image.</summary>
    private void SendPrecopyAck(DeviceSink sink)
    {
        sink.Track.Add(TraceKind.Transition, MigrationClock.NowUs, MigrationClock.NowUs, detail: "initial image loaded (ack)");
        _main!.Send(new PrecopyAckMessage(sink.Index));
    }

    /// <summary>A heartbeat every second, after the check for devices that stalled.</summary>
    private void Heartbeats(MainChannel main, RunControl ctl)
    {
        long timeoutUs = (long)_options.Timeout.TotalMicroseconds, loadTimeoutUs = (long)_options.LoadTimeout.TotalMicroseconds;
        try
        {
            main.Heartbeats(ctl, _running, () =>
            {
                long now = MigrationClock.NowUs;
                bool loading = Coupled && _sinks.Any(s => s.Loading);
                foreach (var s in _sinks)
                    if (s.Stalled(now, timeoutUs, loadTimeoutUs, loading, out var what)) throw new MigrationException(what!, s.Index);
            });
        }
        catch (MigrationException e) when (e is TransportException && _running.IsSet)
        {
            // The devices run: the source may already have read that and closed the main channel while a last heartbeat
            // was being sent. Nothing is lost.
        }
    }

    /// <summary>Never leaves a device half-loaded: every destination device is reset, every thread joined, every buffer returned.</summary>
    private void Rollback(bool prepared, List<Thread> threads)
    {
        _progress.Finishing = FinishingStep.ResettingDestinations;
        // The reset also unblocks a loader in write(2) on devices that abort a load on reset.
        if (prepared) ResetDevices(onlyIfNotRunning: false);
        foreach (var t in threads) t.Join(_options.Timeout);
        foreach (var s in _sinks)
        {
            s.Drain();
            s.Stream.Dispose();
        }
        // A loader or receive thread that was finishing its device when the run failed may have moved it on
        // (RESUMING->STOP) after the reset above: reset once more whatever is not back in RUNNING.
        if (prepared) ResetDevices(onlyIfNotRunning: true);
        if (prepared) _log.LogInformation("{Devices} destination devices reset", _devices.Count);
        _progress.Finishing = FinishingStep.None;
    }

    private void ResetDevices(bool onlyIfNotRunning)
    {
        foreach (var d in _devices)
        {
            try { if (!onlyIfNotRunning || d.GetState() != MigrationState.Running) d.Reset(); }
            catch (Exception e) when (e is VfioException or ObjectDisposedException)
            {
                _log.LogError("{Device}: reset failed: {Error}", d.Name, e.Message);
            }
        }
    }

    private RunReport Report(RunFailure? failure, int bufferSize, long lastRunning, long loadEnd)
    {
        var report = new RunReport
        {
            Role = "destination", Mode = _options.Loading, Channels = _channels == 0 ? _options.Channels : _channels, BufferSize = bufferSize,
            Window = _options.Window, Verify = _options.Verify, Timeline = Timeline, PoolBuffers = _pool?.Allocated ?? 0,
            FirstStopUs = _sourceFirstStopUs, LastRunningUs = lastRunning, LoadEndUs = loadEnd, Live = _live,
        };
        if (_sinks.Length == _devices.Count) report.Devices.AddRange(_sinks.Select(s => s.Report));
        else report.Devices.AddRange(_devices.Select(d => new DeviceReport { Name = d.Name }));
        if (failure is null && !_sinks.All(s => s.Report.Verified))
            failure = new RunFailure(FailureOrigin.Local, "not every device was verified");
        report.SetOutcome(failure, "source", _devices.Select(d => d.Name).ToArray());
        return report;
    }
}
