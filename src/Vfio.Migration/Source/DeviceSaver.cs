using System.IO.Hashing;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>
/// One source device's save thread: STOP->STOP_COPY (or, live, the stream RUNNING->PRE_COPY opened), then per buffer
/// take a credit, read the data stream into a pooled buffer (or lend the bytes in place), CRC32C, queue; then the config
/// state, STOP_COPY->STOP and DeviceDone. In PRE_COPY, "no data for now" makes it ask the device for its precopy info
/// (which, on mlx5, is what makes the next dirty data readable), mark the end of the initial image once the device says
/// it is read, and back off before reading again.
/// Everything here belongs to the save thread, except <see cref="StartLine"/> (shared, Interlocked), the progress
/// counter, the two "since" stamps the heartbeat thread's watchdog reads (Volatile), the precopy figures the
/// coordinator reads for its convergence estimate (Volatile), <see cref="AckedUs"/> (written by the main receive
/// thread), and <see cref="DeviceLock"/>: the save thread holds it around every call into the device while the device
/// may be in PRE_COPY, and the coordinator holds it to move the device at the switchover.
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

    /// <summary>Held around each call into the device before the switchover (see the class note).</summary>
    public object DeviceLock { get; } = new();
    /// <summary>Set by the coordinator, under every saver's DeviceLock, once it moves the devices out of PRE_COPY.</summary>
    public volatile bool SwitchedOver;
    /// <summary>Bytes a switchover would still move (the device's estimate at its last precopy info), or -1 before one.</summary>
    public long RemainderBytes = -1;
    /// <summary>Bytes of the initial image (read before the device said it had none left), once marked; -1 before.</summary>
    public long InitialImageBytes = -1;
    /// <summary>When the first precopy buffer was read (0: none yet).</summary>
    public long FirstReadUs;
    /// <summary>When the destination acknowledged the initial image (0: not yet).</summary>
    public long AckedUs;
    public int DirtyRounds { get; private set; }
    public uint PrecopyBuffers { get; private set; }
    public long PrecopyBytes { get; private set; }

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

    /// <summary>
    /// Saves the whole device; returns the stream checksum it announced in DeviceDone. <paramref name="precopy"/>: the
    /// stream RUNNING->PRE_COPY opened (the device runs until the coordinator switches over, then the same stream goes on
    /// with the stop-copy data); <paramref name="wake"/> is set at the switchover, to end a back-off early.
    /// </summary>
    public ulong Run(IDeviceDataStream? precopy, ManualResetEventSlim wake, CancellationToken token)
    {
        long t0 = MigrationClock.NowUs;
        IDeviceDataStream stream;
        if (precopy is not null) stream = precopy;
        else
        {
            SwitchedOver = true;
            Volatile.Write(ref _inDeviceSinceUs, t0);
            stream = device.SetState(MigrationState.StopCopy) ?? throw new MigrationException("STOP->STOP_COPY returned no data stream", index);
            Volatile.Write(ref _inDeviceSinceUs, 0);
            track.Add(TraceKind.Transition, t0, MigrationClock.NowUs, detail: "STOP->STOP_COPY");
        }
        using var owned = stream;
        var inPlace = stream as IInPlaceDataStream;
        var hash = new XxHash3();
        uint buffer = 0;
        long bytes = 0;
        int backoffMs = 0;
        bool haveCredit = false;
        while (true)
        {
            long w0 = MigrationClock.NowUs;
            if (!haveCredit)
            {
                Volatile.Write(ref _creditWaitSinceUs, w0);
                if (!credits.Take(token)) return 0;
                Volatile.Write(ref _creditWaitSinceUs, 0);
                haveCredit = true;
            }
            long w1 = MigrationClock.NowUs;
            if (w1 - w0 > 20) track.Add(TraceKind.CreditWait, w0, w1, buffer: (int)buffer);
            // The first buffers are small so that the destination device starts loading sooner (the first buffer
            // crosses every stage of the pipeline alone); from the third on, full buffers.
            int size = pool.BufferSize;
            int want = buffer switch { 0 => Math.Min(size, 64 << 10), 1 => Math.Min(size, 256 << 10), _ => size };
            byte[]? rented = inPlace is null ? pool.Rent() : null;
            ReadOnlyMemory<byte> payload;
            bool live;
            PrecopyInfo info = default;
            lock (DeviceLock)
            {
                live = !SwitchedOver;
                Volatile.Write(ref _inDeviceSinceUs, w1);
                payload = inPlace is not null ? inPlace.ReadInPlace(want) : rented.AsMemory(0, Fill(stream, rented.AsSpan(0, want), live, token));
                if (live && payload.IsEmpty)
                {
                    info = stream.GetPrecopyInfo();
                    Volatile.Write(ref RemainderBytes, (long)(device.StopCopySizeEstimate() ?? info.DirtyBytes));
                }
                Volatile.Write(ref _inDeviceSinceUs, 0);
            }
            long r1 = MigrationClock.NowUs;
            int n = payload.Length;
            if (n == 0 && rented is not null) pool.Return(rented);
            if (n == 0 && live)
            {
                // Nothing now: the info call just made the data dirtied meanwhile readable (the next round), if any.
                if (info.DirtyBytes > 0) DirtyRounds++;
                if (InitialImageBytes < 0 && info.InitialBytes == 0) MarkInitialImage(buffer, bytes);
                if (info.DirtyBytes == 0)
                {
                    backoffMs = Math.Clamp(backoffMs * 2, 1, 32);
                    wake.Wait(backoffMs, token);
                }
                continue;
            }
            backoffMs = 0;
            if (buffer == 0) started.Started();
            if (n == 0) break; // the credit taken is used by the config packet
            haveCredit = false;
            uint crc = Crc32C.Compute(payload.Span);
            StreamChecksum.Append(hash, buffer, n, crc);
            track.Add(TraceKind.Save, w1, r1, n, (int)buffer, live ? "precopy" : null);
            if (live)
            {
                if (PrecopyBuffers == 0) Volatile.Write(ref FirstReadUs, w1);
                PrecopyBuffers++;
                PrecopyBytes += n;
            }
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
        // A device that ran during precopy changed its state: its digest is the one it has now, stopped.
        var finalDigest = precopy is null ? digest : device.StateDigest();
        Volatile.Write(ref _inDeviceSinceUs, 0);
        track.Add(TraceKind.Transition, s0, MigrationClock.NowUs, detail: "STOP_COPY->STOP");
        var configBuffer = pool.Rent();
        config.CopyTo(configBuffer, 0);
        scheduler.Enqueue(new OutPacket(index, buffer, PacketFlags.Config | PacketFlags.End, configBuffer.AsMemory(0, config.Length), configBuffer,
            Crc32C.Compute(config)));
        ulong checksum = hash.GetCurrentHashAsUInt64();
        main.Send(new DeviceDoneMessage(index, buffer, (ulong)bytes, checksum, (uint)config.Length, finalDigest, PrecopyBuffers,
            (ulong)PrecopyBytes));
        log.LogDebug("{Device}: saved {Bytes} bytes in {Buffers} buffers ({Precopy} while running)", device.Name, bytes, buffer, PrecopyBytes);
        return checksum;
    }

    /// <summary>The initial image is the first <paramref name="buffers"/> buffers: the destination acknowledges it once loaded.</summary>
    private void MarkInitialImage(uint buffers, long bytes)
    {
        Volatile.Write(ref InitialImageBytes, bytes);
        main.Send(new PrecopyMarkMessage(index, buffers));
        track.Add(TraceKind.Transition, MigrationClock.NowUs, MigrationClock.NowUs, detail: $"initial image: {buffers} buffers");
    }

    /// <summary>
    /// Reads until the buffer is full or the stream ends. Live (PRE_COPY), it returns what it has when the device has
    /// nothing more for now; otherwise it waits for data that is not there yet.
    /// </summary>
    private static int Fill(IDeviceDataStream stream, Span<byte> buf, bool live, CancellationToken token)
    {
        int filled = 0;
        while (filled < buf.Length)
        {
            var r = stream.Read(buf[filled..]);
            if (r.Status == DataReadStatus.EndOfStream) break;
            if (r.Status == DataReadStatus.NoDataForNow)
            {
                if (filled > 0 || live) break;
                token.WaitHandle.WaitOne(1);
                token.ThrowIfCancellationRequested();
                continue;
            }
            filled += r.Bytes;
        }
        return filled;
    }
}
