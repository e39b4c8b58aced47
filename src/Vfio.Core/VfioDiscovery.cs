namespace Vfio.Core;

/// <summary>One VFIO device found in sysfs, with its migration flags when it could be opened.</summary>
public sealed record VfioDeviceSummary(
    VfioSysfsDevice Device,
    MigrationFlags? MigrationFlags,
    string MigrationStatus)
{
    public string Name => Device.Name;

    /// <summary>The device was opened and reports VFIO migration.</summary>
    public bool IsMigratable => MigrationFlags is not null;
}

/// <summary>Lists the host's VFIO devices (vfio-pci and variant drivers, and mdev devices) through sysfs.</summary>
public static class VfioDiscovery
{
    /// <summary>
    /// Every VFIO device, sorted (PCI by address, then mdev by UUID). With <paramref name="probeMigration"/> each
    /// device is opened to ask for its migration flags (note: vfio-pci resets a device on first open); a device
    /// that cannot be opened is still listed, with the reason in <see cref="VfioDeviceSummary.MigrationStatus"/>.
    /// </summary>
    public static IReadOnlyList<VfioDeviceSummary> Enumerate(VfioHostPaths? paths = null, bool probeMigration = true, bool allVfs = false)
    {
        paths ??= VfioHostPaths.Default;
        var result = new List<VfioDeviceSummary>();
        foreach (var device in VfioSysfs.EnumerateVfioDevices(paths, allVfs))
            result.Add(!device.IsVfioBound ? new VfioDeviceSummary(device, null, "not bound to a VFIO driver")
                : probeMigration ? Probe(device, paths) : new VfioDeviceSummary(device, null, "not probed"));
        return result;
    }

    /// <summary>Opens one device to read its migration flags; never throws for a device that cannot be opened.</summary>
    public static VfioDeviceSummary Probe(VfioSysfsDevice device, VfioHostPaths? paths = null)
    {
        paths ??= VfioHostPaths.Default;
        if (!paths.HasVfio)
            return new VfioDeviceSummary(device, null, $"unknown: no {paths.VfioDir}");
        try
        {
            using var open = VfioDevice.Open(device.Name, paths);
            var flags = open.GetMigrationFlags();
            return new VfioDeviceSummary(device, flags, flags is null ? "not supported" : MigrationStateMachine.Describe(flags.Value));
        }
        catch (VfioException e)
        {
            return new VfioDeviceSummary(device, null, $"unknown: {e.Message}");
        }
    }
}
