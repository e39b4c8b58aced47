namespace Vfio.Migration;

/// <summary>
/// A buffer queued for sending: its bytes (in a pooled array, or in place in a device's memory), where it belongs,
/// and the pooled array to return once it is sent (null for bytes sent in place).
/// </summary>
internal readonly record struct OutPacket(int Device, uint Buffer, PacketFlags Flags, ReadOnlyMemory<byte> Payload, byte[]? Pooled, uint Crc)
{
    public int Length => Payload.Length;
}

/// <summary>Decides which data channel sends which packet, and in what order.</summary>
internal interface IPacketScheduler
{
    void Enqueue(OutPacket packet);
    /// <summary>Blocks until a packet for this channel is ready; false once completed and drained, or cancelled.</summary>
    bool TryTake(int channel, CancellationToken token, out OutPacket packet);
    /// <summary>No more packets will be queued.</summary>
    void Complete();
    /// <summary>Wakes every waiting channel (the run was aborted; TryTake then sees its token cancelled).</summary>
    void Cancel();
}

/// <summary>
/// The default: one queue, taken by whichever channel is idle first (QEMU's "next idle channel"), lowest buffer index
/// first (in queueing order among equals): a device that is behind catches up, and when the devices stop every
/// device's first buffers go out before anyone's later ones, so that every destination device starts loading early.
/// </summary>
internal sealed class NextIdleScheduler : IPacketScheduler
{
    private readonly PriorityQueue<OutPacket, (uint Buffer, long Sequence)> _queue = new(256);
    private long _sequence;
    private bool _completed;

    public void Enqueue(OutPacket packet)
    {
        lock (_queue)
        {
            _queue.Enqueue(packet, (packet.Buffer, _sequence++));
            Monitor.Pulse(_queue);
        }
    }

    public bool TryTake(int channel, CancellationToken token, out OutPacket packet)
    {
        lock (_queue)
        {
            while (true)
            {
                if (token.IsCancellationRequested) { packet = default; return false; }
                if (_queue.TryDequeue(out packet, out _)) return true;
                if (_completed) { packet = default; return false; }
                Monitor.Wait(_queue);
            }
        }
    }

    public void Complete()
    {
        lock (_queue)
        {
            _completed = true;
            Monitor.PulseAll(_queue);
        }
    }

    public void Cancel()
    {
        lock (_queue) Monitor.PulseAll(_queue);
    }

    /// <summary>Packets left in the queue (on abort, so their buffers go back to the pool).</summary>
    public void Drain(BufferPool pool)
    {
        lock (_queue)
            while (_queue.TryDequeue(out var p, out _))
                if (p.Pooled is { } buffer) pool.Return(buffer);
    }
}
