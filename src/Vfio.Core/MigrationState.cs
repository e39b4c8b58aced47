using Vfio.Interop;

namespace Vfio.Core;

/// <summary>enum vfio_device_mig_state.</summary>
public enum MigrationState : uint
{
    Error = VfioUapi.VFIO_DEVICE_STATE_ERROR,
    Stop = VfioUapi.VFIO_DEVICE_STATE_STOP,
    Running = VfioUapi.VFIO_DEVICE_STATE_RUNNING,
    StopCopy = VfioUapi.VFIO_DEVICE_STATE_STOP_COPY,
    Resuming = VfioUapi.VFIO_DEVICE_STATE_RESUMING,
    RunningP2P = VfioUapi.VFIO_DEVICE_STATE_RUNNING_P2P,
    PreCopy = VfioUapi.VFIO_DEVICE_STATE_PRE_COPY,
    PreCopyP2P = VfioUapi.VFIO_DEVICE_STATE_PRE_COPY_P2P,
}

/// <summary>vfio_device_feature_migration.flags: which optional parts of the state machine a device has.</summary>
[Flags]
public enum MigrationFlags : ulong
{
    None = 0,
    StopCopy = VfioUapi.VFIO_MIGRATION_STOP_COPY,
    P2P = VfioUapi.VFIO_MIGRATION_P2P,
    PreCopy = VfioUapi.VFIO_MIGRATION_PRE_COPY,
}
