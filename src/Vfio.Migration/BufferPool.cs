namespace Vfio.Migration;

/// <summary>
/// Fixed-size buffers, reused: after warm-up a run allocates no buffer per packet. The pool holds at most
/// <see cref="Capacity"/> buffers, a number each side computes from its own limits (docs/protocol.md section 4,
/// "Memory"): the credit windows keep the number in use within it, and a Rent beyond it fails the run instead of
/// allocating, so that no peer can make this side hold more.
/// Threads: any thread rents and returns (the free list under its lock, the count Interlocked).
/// </summary>
public sealed class BufferPool
{
    private readonly Stack<byte[]> _free = new();
    private int _allocated;

    public BufferPool(int bufferSize, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bufferSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        BufferSize = bufferSize;
        Capacity = capacity;
    }

    public int BufferSize { get; }
    /// <summary>The most buffers this pool ever allocates.</summary>
    public int Capacity { get; }
    /// <summary>How many buffers were ever allocated (the peak number alive).</summary>
    public int Allocated => Volatile.Read(ref _allocated);
    /// <summary>Bytes of every buffer ever allocated.</summary>
    public long AllocatedBytes => (long)Allocated * BufferSize;

    /// <summary>
    /// Allocates every buffer of the capacity, with every page touched: called before the downtime, so that the buffers
    /// a run uses cost neither an allocation (which may start a GC that stops every thread) nor page faults.
    /// </summary>
    public void Reserve()
    {
        while (Allocated < Capacity)
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
        if (Interlocked.Increment(ref _allocated) > Capacity)
        {
            Interlocked.Decrement(ref _allocated);
            throw new MigrationException($"all {Capacity} buffers of {BufferSize} bytes are in use (the memory bound of this side)");
        }
        return GC.AllocateUninitializedArray<byte>(BufferSize, pinned: true);
    }

    public void Return(byte[] buffer)
    {
        if (buffer.Length != BufferSize) return;
        lock (_free) _free.Push(buffer);
    }
}
