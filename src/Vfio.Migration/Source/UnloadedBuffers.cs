namespace Vfio.Migration;

/// <summary>
/// A device's buffers sent while it runs that the destination has not yet loaded: a switchover now would have to load
/// them inside the downtime, besides what the device still holds. The destination returns one credit per buffer it
/// loads, in buffer order, so the first N credited buffers are the loaded ones.
/// Threads: the save thread adds, the coordinator asks; both under the queue's lock.
/// </summary>
internal sealed class UnloadedBuffers
{
    private readonly Queue<int> _sizes = new();
    private long _bytes;
    private long _dropped;

    /// <summary>The next buffer (in index order) was sent with <paramref name="bytes"/> bytes.</summary>
    public void Sent(int bytes)
    {
        lock (_sizes)
        {
            _sizes.Enqueue(bytes);
            _bytes += bytes;
        }
    }

    /// <summary>Bytes sent and not yet loaded, once the destination has loaded the first <paramref name="loadedBuffers"/>.</summary>
    public long Bytes(long loadedBuffers)
    {
        lock (_sizes)
        {
            while (_dropped < loadedBuffers && _sizes.Count > 0)
            {
                _bytes -= _sizes.Dequeue();
                _dropped++;
            }
            return _bytes;
        }
    }
}
