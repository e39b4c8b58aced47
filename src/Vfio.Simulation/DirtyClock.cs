namespace Vfio.Simulation;

/// <summary>
/// What a simulated device dirties while it runs, counted by the clock whenever the device is asked (it has no thread
/// of its own): whole units of <paramref name="unitBytes"/> at <paramref name="bytesPerSecond"/> since it was last asked,
/// the fraction of a unit carried to the next time. Stopped, it counts nothing. Its owner's lock guards it.
/// </summary>
internal sealed class DirtyClock(double bytesPerSecond, long unitBytes, long runningSinceUs)
{
    private long _clockUs = runningSinceUs; // dirtying accounted up to here (-1: the device does not run)
    private double _carry;

    /// <summary>
    /// Whole units dirtied since the last call, at most <paramref name="maxUnits"/>: past that, more dirtying changes
    /// nothing a reader could see, and it is dropped rather than owed.
    /// </summary>
    public long Advance(long nowUs, long maxUnits)
    {
        if (_clockUs < 0) return 0;
        double bytes = _carry + Math.Max(0, nowUs - _clockUs) / 1e6 * bytesPerSecond;
        _clockUs = nowUs;
        long units = (long)(bytes / unitBytes);
        _carry = bytes - units * (double)unitBytes;
        return Math.Min(units, maxUnits);
    }

    /// <summary>The device stops running (its dirtying up to now must have been taken with Advance).</summary>
    public void Stop() => _clockUs = -1;

    /// <summary>The device runs again from <paramref name="nowUs"/> (no effect while it runs).</summary>
    public void Start(long nowUs)
    {
        if (_clockUs < 0) _clockUs = nowUs;
    }
}
