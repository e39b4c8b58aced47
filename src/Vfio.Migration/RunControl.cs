namespace Vfio.Migration;

/// <summary>
/// The shared fate of one side of a run: the first failure wins and is reported; it cancels every wait and aborts
/// every connection, so that no thread stays blocked.
/// Threads: any engine thread may fail the run; the failure and the connection list change under one lock, and the
/// abort (the BeforeAbort callback, the cancellation, the connections) runs once, on the thread that failed first.
/// The destination's commit (<see cref="TryCommit"/>) takes the same lock, so a run either commits or fails first.
/// </summary>
internal sealed class RunControl : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly List<Connection> _connections = new();
    private readonly object _lock = new();
    private readonly CancellationTokenRegistration _outer;
    private RunFailure? _failure;
    private Action<RunFailure>? _beforeAbort;

    public RunControl(CancellationToken outer)
    {
        // Cancellation from outside is a failure of the run like any other (never a silent stop).
        _outer = outer.Register(() => Fail(RunFailure.Cancelled));
    }

    public CancellationToken Token => _cts.Token;
    public RunFailure? Failure { get { lock (_lock) return _failure; } }
    public bool Failed => Failure is not null;
    /// <summary>Runs once on the first failure, before connections are aborted (to tell the peer why).</summary>
    public Action<RunFailure>? BeforeAbort
    {
        get { lock (_lock) return _beforeAbort; }
        set { lock (_lock) _beforeAbort = value; }
    }

    /// <summary>
    /// The destination's commit point: true unless the run failed first, and from then on a failure no longer tells the
    /// peer (BeforeAbort is dropped), since an Error would make the source resume devices that run here. False when the
    /// run failed first: it rolls back, and its Error tells the source so.
    /// </summary>
    public bool TryCommit()
    {
        lock (_lock)
        {
            if (_failure is not null) return false;
            _beforeAbort = null;
            return true;
        }
    }

    public void Register(Connection c)
    {
        bool abort;
        lock (_lock)
        {
            _connections.Add(c);
            abort = _failure is not null;
        }
        if (abort) c.Abort();
    }

    /// <summary>Records the failure if it is the first, and aborts everything. False if the run had already failed.</summary>
    public bool Fail(RunFailure failure)
    {
        Action<RunFailure>? before;
        lock (_lock)
        {
            if (_failure is not null) return false;
            _failure = failure;
            before = _beforeAbort;
        }
        try { before?.Invoke(failure); } catch (Exception) { /* telling the peer is best effort */ }
        _cts.Cancel();
        Connection[] all;
        lock (_lock) all = _connections.ToArray();
        foreach (var c in all) c.Abort();
        return true;
    }

    /// <summary>Turns an exception from an engine thread into the run's failure.</summary>
    public void Fail(Exception e, int? device = null)
    {
        if (e is OperationCanceledException && Failed) return;
        Fail(e switch
        {
            MigrationException me => new RunFailure(me.Origin, me.Message, me.Device ?? device),
            OperationCanceledException => RunFailure.Cancelled,
            VfioException => new RunFailure(FailureOrigin.Local, e.Message, device),
            _ => new RunFailure(FailureOrigin.Local, $"{e.GetType().Name}: {e.Message}", device),
        });
    }

    public void ThrowIfFailed()
    {
        if (Failure is { } f) throw new MigrationException(f.Message, f.Device, f.Origin);
    }

    /// <summary>Starts a dedicated (non-pool) thread whose exceptions fail the run, as about <paramref name="device"/> when given.</summary>
    public Thread Start(string name, Action body, int? device = null)
    {
        var t = new Thread(() =>
        {
            try { body(); }
            catch (Exception e) { Fail(e, device); }
        }) { IsBackground = true, Name = name };
        t.Start();
        return t;
    }

    /// <summary>
    /// Starts a data channel's thread. Its connection's loss fails the run only after a moment's grace: a peer that fails
    /// sends Error on the main channel and then aborts every connection, so the data channels usually see the loss first,
    /// while the peer's message names the cause (the first failure wins).
    /// </summary>
    public Thread StartDataChannel(string name, Action body) => Start(name, () =>
    {
        try { body(); }
        catch (TransportException e)
        {
            _cts.Token.WaitHandle.WaitOne(LostChannelGrace);
            Fail(e);
        }
    });

    private static readonly TimeSpan LostChannelGrace = TimeSpan.FromSeconds(1);

    /// <summary>Stops listening to the caller's token (the token of this run stays valid for threads still finishing).</summary>
    public void Dispose() => _outer.Dispose();
}
