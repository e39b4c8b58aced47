using System.Globalization;
using System.Text.RegularExpressions;

namespace Vfio.Core;

public enum VfioDeviceKind
{
    /// <summary>A PCI function (physical or VF) bound to vfio-pci or a variant driver such as mlx5_vfio_pci.</summary>
    Pci,
    /// <summary>A mediated device (/sys/bus/mdev/devices/&lt;uuid&gt;).</summary>
    Mdev,
}

/// <summary>What sysfs says about one device: where it is, which driver has it, which IOMMU group it is in.</summary>
public sealed record VfioSysfsDevice(
    string Name,
    VfioDeviceKind Kind,
    string SysfsPath,
    string? Driver,
    int? IommuGroup,
    IReadOnlyList<string> CdevNames,
    string? Parent,
    string? MdevType,
    string? Pf = null,
    int? VfIndex = null,
    int? NumaNode = null)
{
    /// <summary>
    /// The device is driven by VFIO: an mdev, a device with a vfio-dev node, or one bound to vfio-pci or a
    /// variant (a driver name containing "vfio", e.g. mlx5_vfio_pci).
    /// </summary>
    public bool IsVfioBound => Kind == VfioDeviceKind.Mdev || CdevNames.Count > 0 || VfioSysfs.IsVfioDriverName(Driver);

    /// <summary>The first vfio-dev node (vfioN), if the kernel created one.</summary>
    public string? CdevName => CdevNames.Count > 0 ? CdevNames[0] : null;
}

/// <summary>Finds VFIO devices and their IOMMU groups in sysfs.</summary>
public static partial class VfioSysfs
{
    [GeneratedRegex(@"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")]
    private static partial Regex FullBdf();

    [GeneratedRegex(@"^[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")]
    private static partial Regex ShortBdf();

    [GeneratedRegex(@"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    private static partial Regex Uuid();

    /// <summary>A PCI address as the kernel spells it (0000:af:00.2), accepting the short form af:00.2.</summary>
    public static bool TryNormalizePciAddress(string text, out string address)
    {
        text = text.Trim();
        if (FullBdf().IsMatch(text)) { address = text.ToLowerInvariant(); return true; }
        if (ShortBdf().IsMatch(text)) { address = "0000:" + text.ToLowerInvariant(); return true; }
        address = "";
        return false;
    }

    public static bool IsMdevUuid(string text) => Uuid().IsMatch(text.Trim());

    /// <summary>vfio-pci itself or a variant driver (mlx5_vfio_pci, hisi_acc_vfio_pci, ...).</summary>
    public static bool IsVfioDriverName(string? driver) =>
        driver is not null && driver.Contains("vfio", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Looks a device up by PCI address or mdev UUID. Throws <see cref="VfioException"/> (errno ENOENT)
    /// when sysfs has no such device, or when the name is neither.
    /// </summary>
    public static VfioSysfsDevice Resolve(string name, VfioHostPaths paths)
    {
        if (TryNormalizePciAddress(name, out var bdf))
        {
            var dir = Path.Combine(paths.PciDevicesDir, bdf);
            if (!Directory.Exists(dir))
                throw new VfioException($"open {bdf}", Interop.Libc.ENOENT,
                    $"no PCI device {bdf} on this host ({dir} does not exist)");
            return ReadDevice(bdf, VfioDeviceKind.Pci, dir);
        }
        if (IsMdevUuid(name))
        {
            var uuid = name.Trim().ToLowerInvariant();
            var dir = Path.Combine(paths.MdevDevicesDir, uuid);
            if (!Directory.Exists(dir))
                throw new VfioException($"open {uuid}", Interop.Libc.ENOENT,
                    $"no mdev device {uuid} on this host ({dir} does not exist)");
            return ReadDevice(uuid, VfioDeviceKind.Mdev, dir);
        }
        throw new VfioException($"open {name}", Interop.Libc.EINVAL,
            "not a device name: give a PCI address such as 0000:af:00.2 or an mdev UUID");
    }

    /// <summary>
    /// Every VFIO device in sysfs: PCI functions bound to a VFIO driver (with <paramref name="allVfs"/>, every SR-IOV VF
    /// whatever its driver, as before it is bound), then mdev devices; sorted by name.
    /// </summary>
    public static IReadOnlyList<VfioSysfsDevice> EnumerateVfioDevices(VfioHostPaths paths, bool allVfs = false)
    {
        var result = new List<VfioSysfsDevice>();
        foreach (var dir in ListEntries(paths.PciDevicesDir))
        {
            var dev = ReadDevice(Path.GetFileName(dir), VfioDeviceKind.Pci, dir);
            if (dev.IsVfioBound || allVfs && dev.Pf is not null)
                result.Add(dev);
        }
        var mdevs = new List<VfioSysfsDevice>();
        foreach (var dir in ListEntries(paths.MdevDevicesDir))
            mdevs.Add(ReadDevice(Path.GetFileName(dir), VfioDeviceKind.Mdev, dir));
        result.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        mdevs.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        result.AddRange(mdevs);
        return result;
    }

    /// <summary>The devices sharing an IOMMU group, with their drivers (for "group not viable" messages).</summary>
    public static IReadOnlyList<(string Name, string? Driver)> GroupMembers(int group, VfioHostPaths paths)
    {
        var list = new List<(string, string?)>();
        foreach (var entry in ListEntries(paths.IommuGroupDevicesDir(group)))
            list.Add((Path.GetFileName(entry), LinkName(Path.Combine(entry, "driver"))));
        list.Sort((a, b) => string.CompareOrdinal(a.Item1, b.Item1));
        return list;
    }

    private static VfioSysfsDevice ReadDevice(string name, VfioDeviceKind kind, string dir)
    {
        var driver = LinkName(Path.Combine(dir, "driver"));
        var groupName = LinkName(Path.Combine(dir, "iommu_group"));
        int? group = int.TryParse(groupName, NumberStyles.None, CultureInfo.InvariantCulture, out var g) ? g : null;
        var cdevs = ListEntries(Path.Combine(dir, "vfio-dev")).Select(Path.GetFileName).OfType<string>()
            .Where(n => n.StartsWith("vfio", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToArray();
        string? parent = null, mdevType = null, pf = null;
        int? vfIndex = null, numa = null;
        if (kind == VfioDeviceKind.Pci)
        {
            pf = LinkName(Path.Combine(dir, "physfn"));
            if (pf is not null) vfIndex = VfIndexOf(name, Path.Combine(dir, "physfn"));
            numa = int.TryParse(ReadAttribute(Path.Combine(dir, "numa_node")), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture,
                out int n) && n >= 0 ? n : null;
        }
        if (kind == VfioDeviceKind.Mdev)
        {
            // /sys/bus/mdev/devices/<uuid> links to .../<parent device>/<uuid>.
            var target = new DirectoryInfo(dir).ResolveLinkTarget(returnFinalTarget: true);
            parent = target is null ? null : Path.GetFileName(Path.GetDirectoryName(target.FullName));
            mdevType = LinkName(Path.Combine(dir, "mdev_type"));
        }
        return new VfioSysfsDevice(name, kind, dir, driver, group, cdevs, parent, mdevType, pf, vfIndex, numa);
    }

    /// <summary>A VF's index: the N of the PF's virtfnN link that points at it.</summary>
    private static int? VfIndexOf(string vf, string pfDir)
    {
        foreach (var link in ListEntries(pfDir).Where(e => Path.GetFileName(e).StartsWith("virtfn", StringComparison.Ordinal)))
            if (LinkName(link) == vf
                && int.TryParse(Path.GetFileName(link).AsSpan(6), NumberStyles.None, CultureInfo.InvariantCulture, out int i))
                return i;
        return null;
    }

    /// <summary>The last path element of a symlink's target (driver, iommu_group links); null if absent.</summary>
    public static string? LinkName(string path)
    {
        try
        {
            var info = new FileInfo(path);
            return info.LinkTarget is { } target ? Path.GetFileName(target.TrimEnd('/')) : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    private static string[] ListEntries(string dir)
    {
        try
        {
            return Directory.Exists(dir) ? Directory.GetFileSystemEntries(dir) : [];
        }
        catch (IOException) { return []; }
        catch (UnauthorizedAccessException) { return []; }
    }

    /// <summary>Reads a small sysfs attribute (trimmed), or null when it is absent or unreadable.</summary>
    public static string? ReadAttribute(string path)
    {
        try
        {
            return File.Exists(path) ? File.ReadAllText(path).Trim() : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }
}
