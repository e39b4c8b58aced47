using System.Globalization;
using Vfio.Core;

namespace Vfio.Host;

/// <summary>What sysfs says about one PCI function for host set-up: its driver, SR-IOV role, NUMA node, IOMMU group.</summary>
public sealed record PciFunction(
    string Address,
    string? Driver,
    string? DriverOverride,
    string? Pf,
    int? VfIndex,
    int? TotalVfs,
    int? NumVfs,
    int? NumaNode,
    int? IommuGroup,
    string? Vendor)
{
    public const string MellanoxVendor = "0x15b3";

    /// <summary>Reads a function; a VfioException (ENOENT) when sysfs has no such PCI device.</summary>
    public static PciFunction Read(string address, VfioHostPaths paths)
    {
        if (!VfioSysfs.TryNormalizePciAddress(address, out var bdf))
            throw new VfioException($"open {address}", Interop.Libc.EINVAL, "not a PCI address (e.g. 0000:af:00.0)");
        string dir = DeviceDir(bdf, paths);
        if (!Directory.Exists(dir))
            throw new VfioException($"open {bdf}", Interop.Libc.ENOENT, $"no PCI device {bdf} on this host ({dir} does not exist)");
        string? pf = VfioSysfs.LinkName(Path.Combine(dir, "physfn"));
        int? index = pf is null ? null : VfIndexOf(bdf, pf, paths);
        string? over = VfioSysfs.ReadAttribute(Path.Combine(dir, "driver_override"));
        int? numa = Int(dir, "numa_node");
        return new PciFunction(bdf, VfioSysfs.LinkName(Path.Combine(dir, "driver")), over is null or "(null)" or "" ? null : over,
            pf, index, Int(dir, "sriov_totalvfs"), Int(dir, "sriov_numvfs"), numa < 0 ? null : numa,
            Int(VfioSysfs.LinkName(Path.Combine(dir, "iommu_group"))), VfioSysfs.ReadAttribute(Path.Combine(dir, "vendor")));
    }

    public bool IsPf => TotalVfs is > 0;

    /// <summary>The VFs a PF has now, in VF index order (its virtfnN links).</summary>
    public static IReadOnlyList<string> VfsOf(string pf, VfioHostPaths paths)
    {
        string dir = DeviceDir(pf, paths);
        var vfs = new SortedDictionary<int, string>();
        if (!Directory.Exists(dir)) return [];
        foreach (var entry in Directory.GetFileSystemEntries(dir, "virtfn*"))
            if (int.TryParse(Path.GetFileName(entry).AsSpan("virtfn".Length), NumberStyles.None, CultureInfo.InvariantCulture, out int n)
                && VfioSysfs.LinkName(entry) is { } vf)
                vfs[n] = vf;
        return [.. vfs.Values];
    }

    public static string DeviceDir(string bdf, VfioHostPaths paths) => Path.Combine(paths.PciDevicesDir, bdf);

    public static string DriverDir(string driver, VfioHostPaths paths) => Path.Combine(paths.SysfsRoot, "bus", "pci", "drivers", driver);

    public static string DriversProbe(VfioHostPaths paths) => Path.Combine(paths.SysfsRoot, "bus", "pci", "drivers_probe");

    private static int? VfIndexOf(string vf, string pf, VfioHostPaths paths)
    {
        var vfs = VfsOf(pf, paths);
        for (int i = 0; i < vfs.Count; i++)
            if (vfs[i] == vf) return i;
        return null;
    }

    private static int? Int(string dir, string attribute) => Int(VfioSysfs.ReadAttribute(Path.Combine(dir, attribute)));

    private static int? Int(string? text) =>
        int.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int v) ? v : null;
}
