namespace Vfio.Migration;

/// <summary>
/// A migratable device as the engine drives it: the real VFIO device (through the object model) or a simulated
/// one. Every call is blocking and may be made from any engine thread, but never two at once on one device,
/// except Reset, which the engine may call while a load is in progress on another thread.
/// </summary>
public interface IMigrationDevice : IDisposable
{
    /// <summary>As the user named it: a PCI address, an mdev UUID, or "sim:NAME".</summary>
    string Name { get; }

    /// <summary>VFIO_DEVICE_FEATURE_MIGRATION flags (STOP_COPY is required; P2P decides the quiesce path).</summary>
    MigrationFlags Flags { get; }

    /// <summary>
    /// The driver, kernel and firmware its stream format depends on, for the destination's check before any device stops
    /// (<see cref="StreamCompatibility"/>); a device that cannot tell reports <see cref="DeviceIdentity.Unknown"/>.
    /// </summary>
    DeviceIdentity Identity => DeviceIdentity.Unknown;

    MigrationState GetState();

    /// <summary>
    /// Moves the device to <paramref name="target"/> (the device walks combination transitions itself). Returns the
    /// data stream when the final step opens a session (STOP->STOP_COPY, STOP->RESUMING, RUNNING->PRE_COPY,
    /// RUNNING_P2P->PRE_COPY_P2P), else null: PRE_COPY(_P2P)->STOP_COPY keeps the stream PRE_COPY opened, which
    /// goes on with the stop-copy data and then ends. Throws
    /// VfioException on failure; the device may then be in any state (GetState tells).
    /// </summary>
    IDeviceDataStream? SetState(MigrationState target);

    /// <summary>
    /// Estimated bytes of the STOP_COPY stream (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE), or null when the device cannot tell;
    /// in PRE_COPY, what a switchover now would still have to move.
    /// </summary>
    ulong? StopCopySizeEstimate();

    /// <summary>The device's config state (sent last, after the data stream). Small: at most a few KiB.</summary>
    byte[] SaveConfig();

    /// <summary>Applies config state saved by the source's SaveConfig (called after RESUMING->STOP, before RUNNING).</summary>
    void RestoreConfig(ReadOnlySpan<byte> config);

    /// <summary>
    /// Returns the device to RUNNING with no migration session (VFIO_DEVICE_RESET). It does not abort a load in progress
    /// on another thread on mlx5 (nor on the vfio_mig_sim kernel module): the write doing it completes, and the reset
    /// takes effect when it returns (the reset call itself returns at once; the device's next call waits for the
    /// write); then the device is RUNNING and the stream gives ENODEV. The simulated device cuts the load short instead.
    /// </summary>
    void Reset();

    /// <summary>
    /// A digest of the device's whole state (stream and config) that source and destination can compare, or null if the
    /// device has none.
    /// </summary>
    ulong? StateDigest();

    /// <summary>
    /// Types whose code runs on the data path (the stream's reads and writes): the engine compiles them before the
    /// downtime, as it does its own.
    /// </summary>
    IEnumerable<Type> DataPathTypes => [GetType()];
}
