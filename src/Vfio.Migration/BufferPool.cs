namespace Vfio.Migration;

/// <summary>
/// Fixed-size buffers, reused: after warm-up a run allocates no buffer per packet. The number alive is bounded
/// by the credit windows (at most devices x window buffers are in flight on either side), not by the pool.
/// </summary>
public sealed class BufferPool
{
    private readonly Stack<byte[]> _free = new();
    private int _allocated;

    public BufferPool(int bufferSize) => BufferSize = bufferSize;

    public int BufferSize { get; }
    /// <summary>How many buffers were ever allocated (the peak number alive).</summary>
    public int Allocated => Volatile.Read(ref _allocated);

    /// <summary>
    /// Allocates buffers until <paramref name="count"/> exist, with every page touched: called before the downtime, so
    /// that the first buffers a run uses cost neither an allocation (which may start a GC that stops every thread)
    /// nor page faults.
    /// </summary>
    public void Reserve(int count)
    {
        while (Allocated < count)
        {
            var buffer = Allocate();
            for (int i = 0; i < buffer.Length; i += Environment.SystemPageSize) buffer[i] = 0;
            Return(buffer);
        }
    }

    public byte[] Rent()
    {
        lock (_free)
            if (_free.Count > 0) return _free.Pop();
        return Allocate();
    }

    private byte[] Allocate()
    {
        Interlocked.Increment(ref _allocated);
        return GC.AllocateUninitializedArray<byte>(BufferSize, pinned: true);
    }

    public void Return(byte[] buffer)
    {
        if (buffer.Length != BufferSize) return;
        lock (_free) _free.Push(buffer);
    }
}
