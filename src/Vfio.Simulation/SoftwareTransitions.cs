using Vfio.Interop;

namespace Vfio.Simulation;

/// <summary>What a kernel driver checks of a state request or a config restore, for the devices simulated in software.</summary>
internal static class SoftwareTransitions
{
    /// <summary>
    /// The single steps from <paramref name="from"/> to <paramref name="target"/> (a different state), as the object
    /// model's state machine gives the kernel's path for a combination transition; throws the VfioException the kernel's
    /// refusal would give. <paramref name="operation"/> names the request, for errors on the way.
    /// </summary>
    public static IReadOnlyList<MigrationState> Path(string device, MigrationState from, MigrationState target, MigrationFlags flags,
        out string operation)
    {
        operation = $"VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE {from}->{target}) on {device}";
        if (from == MigrationState.Error)
            throw new VfioException(operation, Libc.EINVAL, "device is in ERROR; reset it");
        if (!MigrationStateMachine.TryGetPath(from, target, flags, out var path))
            throw new VfioException(operation, Libc.EINVAL, "not a valid target for this device");
        return path;
    }

    /// <summary>The config state a software device takes on restore, checked as a driver would (in STOP, 1 byte to 4 KiB).</summary>
    public static byte[] RestoredConfig(string device, MigrationState state, ReadOnlySpan<byte> config)
    {
        if (state != MigrationState.Stop)
            throw new VfioException($"restore config state of {device}", Libc.EINVAL, $"device is in {state}, not STOP");
        if (config.Length == 0 || config.Length > 4096)
            throw new VfioException($"restore config state of {device}", Libc.EINVAL, $"config state of {config.Length} bytes");
        return config.ToArray();
    }
}
