using Vfio.Migration;

namespace Vfio.Tests.Migration;

internal enum WireFaultKind
{
    /// <summary>Flip a payload byte after the CRC was computed.</summary>
    CorruptPayload,
    /// <summary>Send the packet twice.</summary>
    Duplicate,
    /// <summary>Never send the packet.</summary>
    Drop,
    /// <summary>Send half of the payload, close the channel, and send nothing more on it.</summary>
    Truncate,
}

/// <summary>A fault the source's data channels inject on the packet of one device and buffer.</summary>
internal sealed record WireFault(WireFaultKind Kind, int Device = 0, int Buffer = 0)
{
    public MigrationOptions Apply(MigrationOptions options) =>
        options with { DataChannelWriter = (channel, inner) => new FaultyChannelWriter(this, channel, inner) };
}

/// <summary>Wraps a data channel's writer and applies the fault to the packet it names; everything else passes.</summary>
internal sealed class FaultyChannelWriter(WireFault fault, int channel, IDataChannelWriter inner) : IDataChannelWriter
{
    private bool _cut;

    public void WritePacket(ReadOnlySpan<byte> header, ReadOnlySpan<byte> payload)
    {
        if (_cut) return;
        var h = PacketHeader.Read(header, channel);
        if (h.Flags == PacketFlags.ChannelEnd || h.Device != fault.Device || h.Buffer != fault.Buffer)
        {
            inner.WritePacket(header, payload);
            return;
        }
        switch (fault.Kind)
        {
            case WireFaultKind.Drop:
                return;
            case WireFaultKind.CorruptPayload:
                var corrupt = payload.ToArray(); // a copy: the bytes may be a device's own memory
                corrupt[payload.Length / 2] ^= 0x01;
                inner.WritePacket(header, corrupt);
                return;
            case WireFaultKind.Duplicate:
                inner.WritePacket(header, payload);
                inner.WritePacket(header, payload);
                return;
            case WireFaultKind.Truncate:
                inner.WritePacket(header, payload[..(payload.Length / 2)]);
                ((Connection)inner).Abort();
                _cut = true;
                return;
        }
    }
}

/// <summary>
/// A device with a fault. Saving: its stream ends <paramref name="truncateBy"/> bytes early, or the byte at
/// <paramref name="corruptOffset"/> is flipped after the device produced it (transport checks pass; the destination
/// device must refuse it), or a read past <paramref name="hangReadAt"/> bytes blocks (a save that hangs); or it refuses
/// to stop (<paramref name="refuseStop"/>, as a device whose firmware fails). Loading: the write that reaches
/// <paramref name="slowWriteAt"/> bytes takes <paramref name="slowWrite"/> longer, or blocks (<paramref name="hangWrite"/>).
/// A blocked call returns, failing, once the device leaves its migration state or is reset, as on mlx5.
/// <paramref name="identity"/> stands in for the device's own (a real device's driver, kernel and firmware).
/// </summary>
internal sealed class FaultyDevice(IMigrationDevice inner, long truncateBy = 0, long corruptOffset = -1, bool refuseStop = false,
    long hangReadAt = -1, long slowWriteAt = -1, TimeSpan slowWrite = default, bool hangWrite = false, DeviceIdentity? identity = null)
    : IMigrationDevice
{
    private readonly ManualResetEventSlim _release = new();
    private long CorruptOffset { get; } = corruptOffset;
    private long HangReadAt { get; } = hangReadAt;
    private long SlowWriteAt { get; } = slowWriteAt;
    private TimeSpan SlowWrite { get; } = slowWrite;
    private bool HangWrite { get; } = hangWrite;

    public string Name => inner.Name;
    public MigrationFlags Flags => inner.Flags;
    public DeviceIdentity Identity => identity ?? inner.Identity;
    public MigrationState GetState() => inner.GetState();
    public ulong? StopCopySizeEstimate() => inner.StopCopySizeEstimate();
    public byte[] SaveConfig() => inner.SaveConfig();
    public void RestoreConfig(ReadOnlySpan<byte> config) => inner.RestoreConfig(config);
    public ulong? StateDigest() => inner.StateDigest();
    public void Dispose() { _release.Set(); inner.Dispose(); }

    public void Reset()
    {
        _release.Set();
        inner.Reset();
    }

    public IDeviceDataStream? SetState(MigrationState target)
    {
        if (refuseStop && target == MigrationState.Stop && inner.GetState() != MigrationState.Stop)
            throw new VfioException($"VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE {inner.GetState()}->STOP) on {Name}", Vfio.Interop.Libc.EIO);
        if (target is not (MigrationState.StopCopy or MigrationState.Resuming)) _release.Set();
        var stream = inner.SetState(target);
        if (stream is null) return null;
        _release.Reset(); // a new session: a call may block in it again
        return target == MigrationState.StopCopy
            ? new SaveStream(this, stream, (long)inner.StopCopySizeEstimate()! - truncateBy)
            : new LoadStream(this, stream);
    }

    /// <summary>Blocks until the device leaves its migration state or is reset, then fails as the kernel would.</summary>
    private void Hang(string call)
    {
        _release.Wait();
        throw new VfioException($"{call}(migration data fd of {Name})", Vfio.Interop.Libc.ENODEV);
    }

    private sealed class SaveStream(FaultyDevice device, IDeviceDataStream inner, long limit) : IDeviceDataStream
    {
        private long _offset;

        public DataRead Read(Span<byte> buffer)
        {
            if (device.HangReadAt >= 0 && _offset >= device.HangReadAt) device.Hang("read");
            if (_offset >= limit) return new DataRead(0, DataReadStatus.EndOfStream);
            var r = inner.Read(buffer[..(int)Math.Min(buffer.Length, limit - _offset)]);
            long corrupt = device.CorruptOffset;
            if (corrupt >= _offset && corrupt < _offset + r.Bytes) buffer[(int)(corrupt - _offset)] ^= 0x5A;
            _offset += r.Bytes;
            return r;
        }

        public void WriteAll(ReadOnlySpan<byte> data) => inner.WriteAll(data);
        public void Dispose() => inner.Dispose();
    }

    private sealed class LoadStream(FaultyDevice device, IDeviceDataStream inner) : IDeviceDataStream
    {
        private long _offset;
        private bool _struck;

        public DataRead Read(Span<byte> buffer) => inner.Read(buffer);

        public void WriteAll(ReadOnlySpan<byte> data)
        {
            _offset += data.Length;
            if (!_struck && device.SlowWriteAt >= 0 && _offset > device.SlowWriteAt)
            {
                _struck = true;
                if (device.HangWrite) device.Hang("write");
                Thread.Sleep(device.SlowWrite);
            }
            inner.WriteAll(data);
        }

        public void Dispose() => inner.Dispose();
    }
}
