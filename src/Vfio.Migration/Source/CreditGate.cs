namespace Vfio.Migration;

/// <summary>
/// Credits the destination granted for one device: its save thread takes one per packet it queues.
/// Threads: the save thread takes, the main receive thread adds, the abort wakes; all under the gate's lock.
/// </summary>
internal sealed class CreditGate(int initial)
{
    private readonly object _lock = new();
    private long _available = initial;
    private long _granted = initial;

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
