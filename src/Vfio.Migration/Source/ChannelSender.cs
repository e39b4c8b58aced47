namespace Vfio.Migration;

/// <summary>
/// Writes packets onto one data channel: header and payload, in that order, as one unit. The product writes straight
/// to the connection; tests put a decorator in between to lose, alter or cut packets.
/// </summary>
internal interface IDataChannelWriter
{
    void WritePacket(ReadOnlySpan<byte> header, ReadOnlySpan<byte> payload);
}

/// <summary>
/// One data channel's sender thread: takes the next packet the scheduler gives this channel, counts it as sent, writes
/// it, returns its buffer to the pool; CHANNEL_END once the scheduler has nothing more. Everything here belongs to that
/// thread, except the sent counters (one per device, Interlocked; the main receive thread reads them to refuse credits
/// for packets that have not left: a packet still queued holds its buffer until a sender takes it).
/// </summary>
internal sealed class ChannelSender(int channel, IDataChannelWriter writer, IPacketScheduler scheduler, BufferPool pool, long[] sent,
    TimelineTrack track)
{
    public void Run(CancellationToken token)
    {
        var header = new byte[Protocol.PacketHeaderSize];
        while (scheduler.TryTake(channel - 1, token, out var p))
        {
            long t0 = MigrationClock.NowUs;
            new PacketHeader((ushort)p.Device, p.Flags, p.Buffer, p.Length, p.Crc).Write(header);
            // Before the write: the destination may load the packet and return its credit before the write returns.
            Interlocked.Increment(ref sent[p.Device]);
            writer.WritePacket(header, p.Payload.Span);
            track.Add(TraceKind.Send, t0, MigrationClock.NowUs, p.Length, (int)p.Buffer, device: p.Device);
            if (p.Pooled is not null) pool.Return(p.Pooled);
        }
        if (token.IsCancellationRequested) return;
        new PacketHeader(Protocol.ChannelEndDevice, PacketFlags.ChannelEnd, 0, 0, 0).Write(header);
        writer.WritePacket(header, []);
    }
}
