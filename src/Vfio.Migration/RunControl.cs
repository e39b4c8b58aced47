namespace Vfio.Migration;

/// <summary>
/// The shared fate of one side of a run: the first failure wins and is reported; it cancels every wait and
/// aborts every connection so no thread stays blocked.
/// </summary>
internal sealed class RunControl
{
    private readonly CancellationTokenSource _cts;
    private readonly List<Connection> _connections = new();
    private readonly object _lock = new();

    public RunControl(CancellationToken outer)
    {
        _cts = new CancellationTokenSource();
        // Cancellation from outside is a failure of the run like any other (never a silent stop).
        _outer = outer.Register(() => Fail("cancelled"));
    }

    private readonly CancellationTokenRegistration _outer;

    public CancellationToken Token => _cts.Token;
    public string? Error { get; private set; }
    public string? Device { get; private set; }
    public bool Failed => Error is not null;
    /// <summary>Runs once on the first failure, before connections are aborted (e.g. tell the peer why).</summary>
    public Action<string, string?>? BeforeAbort { get; set; }

    public void Register(Connection c)
    {
        lock (_lock)
        {
            _connections.Add(c);
            if (Error is not null) c.Abort();
        }
    }

    /// <summary>Records the failure (if it is the first) and aborts everything. Returns false if the run had already failed.</summary>
    public bool Fail(string message, string? device = null)
    {
        lock (_lock)
        {
            if (Error is not null) return false;
            Error = message;
            Device = device;
        }
        try { BeforeAbort?.Invoke(message, device); } catch (Exception) { }
        _cts.Cancel();
        Connection[] all;
        lock (_lock) all = _connections.ToArray();
        foreach (var c in all) c.Abort();
        return true;
    }

    /// <summary>Turns any exception from an engine thread into the run's failure.</summary>
    public void Fail(Exception e, string? device = null)
    {
        if (e is OperationCanceledException && Failed) return;
        string message = e switch
        {
            MigrationException or ProtocolException or VfioException => e.Message,
            OperationCanceledException => "cancelled",
            _ => $"{e.GetType().Name}: {e.Message}",
        };
        if (e is MigrationException { Device: not null } me) device ??= me.Device;
        if (e is ProtocolException { Device: not null } pe) device ??= pe.Device;
        Fail(device is null || message.Contains(device, StringComparison.Ordinal) ? message : $"{device}: {message}", device);
    }

    public void ThrowIfFailed()
    {
        if (Error is not null) throw new MigrationException(Error, Device);
    }

    /// <summary>Starts a dedicated (non-pool) thread whose exceptions fail the run.</summary>
    public Thread Start(string name, Action body, string? device = null)
    {
        var t = new Thread(() =>
        {
            try { body(); }
            catch (Exception e) { Fail(e, device); }
        }) { IsBackground = true, Name = name };
        t.Start();
        return t;
    }
}

/// <summary>Credits the destination granted for one device: a save thread takes one per buffer it sends.</summary>
internal sealed class CreditGate
{
    private readonly object _lock = new();
    private long _available;
    private long _granted;

    public CreditGate(int initial) { _available = initial; _granted = initial; }

    public long Granted { get { lock (_lock) return _granted; } }

    /// <summary>Blocks until a credit is available; false if cancelled.</summary>
    public bool Take(CancellationToken token)
    {
        lock (_lock)
        {
            while (_available == 0)
            {
                if (token.IsCancellationRequested) return false;
                Monitor.Wait(_lock);
            }
            _available--;
            return true;
        }
    }

    /// <summary>Wakes a waiting Take (which then sees its token cancelled).</summary>
    public void Cancel()
    {
        lock (_lock) Monitor.PulseAll(_lock);
    }

    public void Add(long n)
    {
        lock (_lock)
        {
            _available += n;
            _granted += n;
            Monitor.PulseAll(_lock);
        }
    }
}
