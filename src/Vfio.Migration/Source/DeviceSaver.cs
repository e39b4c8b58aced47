using System.IO.Hashing;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>
/// One source device's save thread: STOP->STOP_COPY, then per buffer take a credit, read the data stream into a pooled
/// buffer (or lend the bytes in place), CRC32C, queue; then the config state, STOP_COPY->STOP and DeviceDone.
/// Everything here belongs to the save thread, except <see cref="StartLine"/> (shared, Interlocked), the progress
/// counter, and the two "since" stamps the heartbeat thread's watchdog reads (Volatile).
/// </summary>
internal sealed class DeviceSaver(int index, IMigrationDevice device, ulong? digest, CreditGate credits, IPacketScheduler scheduler,
    BufferPool pool, MigrationProgress progress, DeviceSaver.StartLine started, TimelineTrack track, MainChannel main,
    ILogger log)
{
    /// <summary>Counts the devices whose first buffer was read.</summary>
    public sealed class StartLine(int devices)
    {
        private int _started;
        public void Started() => Interlocked.Increment(ref _started);
        public bool Everyone => Volatile.Read(ref _started) >= devices;
    }

    public int Index => index;

    private long _inDeviceSinceUs;     // a call into the device (a read, a transition, the config) in progress since (0: none)
    private long _creditWaitSinceUs;   // waiting for a credit since (0: not waiting)

    /// <summary>
    /// Watchdog: a call into the device that has not returned for <paramref name="deviceTimeoutUs"/> (a save that hangs),
    /// or no credit from the destination for <paramref name="creditTimeoutUs"/>.
    /// </summary>
    public bool Stalled(long nowUs, long deviceTimeoutUs, long creditTimeoutUs, out string? what)
    {
        long inDevice = Volatile.Read(ref _inDeviceSinceUs), waiting = Volatile.Read(ref _creditWaitSinceUs);
        what = inDevice != 0 && nowUs - inDevice > deviceTimeoutUs
            ? $"saving has not returned from the device for {(nowUs - inDevice) / 1_000_000} s (--load-timeout: a save that hangs)"
            : waiting != 0 && nowUs - waiting > creditTimeoutUs
            ? $"no credit from the destination for {(nowUs - waiting) / 1_000_000} s (it loads nothing more of this device)"
            : null;
        return what is not null;
    }

    /// <summary>Saves the whole device; returns the stream checksum it announced in DeviceDone.</summary>
    public ulong Run(CancellationToken token)
    {
        long t0 = MigrationClock.NowUs;
        Volatile.Write(ref _inDeviceSinceUs, t0);
        using var stream = device.SetState(MigrationState.StopCopy)
            ?? throw new MigrationException("STOP->STOP_COPY returned no data stream", index);
        Volatile.Write(ref _inDeviceSinceUs, 0);
        track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: "STOP->STOP_COPY");
        var inPlace = stream as IInPlaceDataStream;
        var hash = new XxHash3();
        uint buffer = 0;
        long bytes = 0;
        while (true)
        {
            long w0 = MigrationClock.NowUs;
            Volatile.Write(ref _creditWaitSinceUs, w0);
            if (!credits.Take(token)) return 0;
            long w1 = MigrationClock.NowUs;
            Volatile.Write(ref _creditWaitSinceUs, 0);
            Volatile.Write(ref _inDeviceSinceUs, w1);
            if (w1 - w0 > 20) track.Add(TraceKind.CreditWait, w0, w1, buffer: (int)buffer);
            // The first buffers are small so that the destination device starts loading sooner (the first buffer
            // crosses every stage of the pipeline alone); from the third on, full buffers.
            int size = pool.BufferSize;
            int want = buffer switch { 0 => Math.Min(size, 64 << 10), 1 => Math.Min(size, 256 << 10), _ => size };
            byte[]? rented = null;
            ReadOnlyMemory<byte> payload;
            if (inPlace is not null)
                payload = inPlace.ReadInPlace(want);
            else
            {
                rented = pool.Rent();
                payload = rented.AsMemory(0, Fill(stream, rented.AsSpan(0, want), token));
            }
            long r1 = MigrationClock.NowUs;
            Volatile.Write(ref _inDeviceSinceUs, 0);
            int n = payload.Length;
            if (buffer == 0) started.Started();
            if (n == 0)
            {
                if (rented is not null) pool.Return(rented);
                break; // the credit taken is used by the config packet
            }
            uint crc = Crc32C.Compute(payload.Span);
            StreamChecksum.Append(hash, buffer, n, crc);
            track.Add(TraceKind.Save, w1, r1, n, (int)buffer);
            scheduler.Enqueue(new OutPacket(index, buffer++, PacketFlags.Data, payload, rented, crc));
            // While some device has not read its first buffer, step aside after each buffer: on a host with fewer
            // cores than devices, the save threads that woke first would otherwise fill their whole windows before
            // the last ones run at all, and those devices start loading late.
            if (!started.Everyone) Thread.Yield();
            bytes += n;
            Volatile.Write(ref progress.Bytes[index], bytes);
        }
        // A stream cut short by an abort must not be finished (the device goes back to RUNNING instead).
        token.ThrowIfCancellationRequested();
        long c0 = MigrationClock.NowUs;
        Volatile.Write(ref _inDeviceSinceUs, c0);
        var config = device.SaveConfig();
        if (config.Length > pool.BufferSize)
            throw new MigrationException($"config state of {config.Length} bytes exceeds the buffer size", index);
        track.Add(TraceKind.Config, c0, MigrationClock.NowUs, config.Length, (int)buffer, "save config");
        long s0 = MigrationClock.NowUs;
        stream.Dispose();
        device.SetState(MigrationState.Stop)?.Dispose();
        Volatile.Write(ref _inDeviceSinceUs, 0);
        track.Add(TraceKind.Transition, s0, MigrationClock.NowUs, detail: "STOP_COPY->STOP");
        var configBuffer = pool.Rent();
        config.CopyTo(configBuffer, 0);
        scheduler.Enqueue(new OutPacket(index, buffer, PacketFlags.Config | PacketFlags.End, configBuffer.AsMemory(0, config.Length), configBuffer,
            Crc32C.Compute(config)));
        ulong checksum = hash.GetCurrentHashAsUInt64();
        main.Send(new DeviceDoneMessage(index, buffer, (ulong)bytes, checksum, (uint)config.Length, digest));
        log.LogDebug("{Device}: saved {Bytes} bytes in {Buffers} buffers", device.Name, bytes, buffer);
        return checksum;
    }

    /// <summary>Reads until the buffer is full or the stream ends; in PRE_COPY, waits for data that is not there yet.</summary>
    private static int Fill(IDeviceDataStream stream, Span<byte> buf, CancellationToken token)
    {
        int filled = 0;
        while (filled < buf.Length)
        {
            var r = stream.Read(buf[filled..]);
            if (r.Status == DataReadStatus.EndOfStream) break;
            if (r.Status == DataReadStatus.NoDataForNow)
            {
                if (filled > 0) break;
                token.WaitHandle.WaitOne(1);
                token.ThrowIfCancellationRequested();
                continue;
            }
            filled += r.Bytes;
        }
        return filled;
    }
}
