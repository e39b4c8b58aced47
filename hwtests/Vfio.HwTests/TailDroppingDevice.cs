using Vfio.Migration;

namespace Vfio.HwTests;

/// <summary>
/// A destination whose loader loses the end of the stream: every write holds back its last <c>drop</c> bytes and passes
/// them on at the start of the next, so the bytes after the last write never reach the device, while the engine was told
/// each write succeeded. It stands for a transport or loader that silently loses a stream's tail; with mlx5's
/// behaviour (strict_resume=0) the device accepts the truncated stream at RESUMING->STOP, so only the engine's own
/// checks can tell.
/// </summary>
public sealed class TailDroppingDevice(IMigrationDevice inner, int drop) : IMigrationDevice
{
    public string Name => inner.Name;
    public MigrationFlags Flags => inner.Flags;
    public DeviceIdentity Identity => inner.Identity;
    public MigrationState GetState() => inner.GetState();

    public IDeviceDataStream? SetState(MigrationState target)
    {
        var stream = inner.SetState(target);
        return stream is not null && target == MigrationState.Resuming ? new Stream(stream, drop) : stream;
    }

    public ulong? StopCopySizeEstimate() => inner.StopCopySizeEstimate();
    public byte[] SaveConfig() => inner.SaveConfig();
    public void RestoreConfig(ReadOnlySpan<byte> config) => inner.RestoreConfig(config);
    public void Reset() => inner.Reset();
    public ulong? StateDigest() => inner.StateDigest();
    public IEnumerable<Type> DataPathTypes => [GetType(), typeof(Stream), .. inner.DataPathTypes];
    public void Dispose() => inner.Dispose();

    /// <summary>Used by one loader thread at a time, as the engine uses a device's stream.</summary>
    private sealed class Stream(IDeviceDataStream inner, int drop) : IDeviceDataStream
    {
        private byte[] _held = [];

        public DataRead Read(Span<byte> buffer) => inner.Read(buffer);

        public void WriteAll(ReadOnlySpan<byte> data)
        {
            var all = new byte[_held.Length + data.Length];
            _held.CopyTo(all, 0);
            data.CopyTo(all.AsSpan(_held.Length));
            int pass = Math.Max(0, all.Length - drop);
            if (pass > 0) inner.WriteAll(all.AsSpan(0, pass));
            _held = all[pass..];
        }

        public void Dispose() => inner.Dispose();
    }
}
