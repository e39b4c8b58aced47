namespace Vfio.Migration;

/// <summary>
/// One data channel's receive thread: header, validation, payload into a pooled buffer, CRC32C, into the device's
/// reorder queue. It never blocks on a device, except in coupled mode, where it loads what it completed itself.
/// Everything here belongs to that thread; the sinks are shared (each guards its own state).
/// </summary>
internal sealed class ChannelReceiver(int channel, Connection connection, DeviceSink[] sinks, BufferPool pool, int bufferSize,
    TimelineTrack track, DestinationRun run)
{
    public void Run(RunControl ctl)
    {
        var header = new byte[Protocol.PacketHeaderSize];
        bool coupled = run.Coupled;
        while (!ctl.Token.IsCancellationRequested)
        {
            if (!connection.ReadExact(header))
                throw new TransportException($"data channel {channel}: closed by the source before its end marker");
            long t0 = MigrationClock.NowUs;
            var h = PacketHeader.Read(header, channel);
            if (h.Flags == PacketFlags.ChannelEnd)
            {
                run.ChannelEnded();
                return;
            }
            if (h.Device >= sinks.Length)
                throw new ProtocolException($"data channel {channel}: packet for device {h.Device}, the session has {sinks.Length}");
            var sink = sinks[h.Device];
            if (h.Length > bufferSize || (h.Flags == PacketFlags.Data && h.Length == 0))
                throw new ProtocolException(
                    $"buffer {h.Buffer} on channel {channel}: payload length {h.Length} (buffer size {bufferSize})", h.Device);
            var buf = pool.Rent();
            bool handedOver = false;
            try
            {
                if (!connection.ReadExact(buf.AsSpan(0, h.Length)) && h.Length > 0)
                    throw new ProtocolException($"data channel {channel}: closed in the middle of a packet");
                uint crc = Crc32C.Compute(buf.AsSpan(0, h.Length));
                if (crc != h.PayloadCrc)
                    throw new ProtocolException($"buffer {h.Buffer} on channel {channel}: payload CRC32C mismatch (corrupt data)", h.Device);
                sink.Offer(h.Buffer, h.Flags, buf, h.Length, crc, channel);
                handedOver = true;
            }
            finally
            {
                if (!handedOver) pool.Return(buf);
            }
            track.Add(TraceKind.Receive, t0, MigrationClock.NowUs, h.Length, (int)h.Buffer, device: h.Device);
            if (coupled)
            {
                try
                {
                    bool end = sink.DrainCoupled(() => run.ReturnCredits(sink));
                    if (end && sink.ConfigLoaded()) run.FinishDevice(sink);
                }
                catch (Exception e) when (e is not ProtocolException) { ctl.Fail(e, sink.Index); return; }
            }
        }
    }
}
