namespace Vfio.Core;

/// <summary>
/// Where this host's sysfs and /dev live. Every sysfs and device-node access of the object model goes
/// through one of these, so tests can point it at a fake tree in a temporary folder.
/// </summary>
public sealed record VfioHostPaths(string SysfsRoot, string DevRoot)
{
    /// <summary>The real host: /sys and /dev.</summary>
    public static VfioHostPaths Default { get; } = new("/sys", "/dev");

    /// <summary>A fake tree: &lt;root&gt;/sys and &lt;root&gt;/dev.</summary>
    public static VfioHostPaths UnderRoot(string root) => new(Path.Combine(root, "sys"), Path.Combine(root, "dev"));

    /// <summary>/dev/vfio: present when the vfio module is loaded.</summary>
    public string VfioDir => Path.Combine(DevRoot, "vfio");

    /// <summary>/dev/vfio/vfio: the legacy container.</summary>
    public string ContainerNode => Path.Combine(VfioDir, "vfio");

    /// <summary>/dev/vfio/&lt;group&gt;.</summary>
    public string GroupNode(int group) => Path.Combine(VfioDir, group.ToString(System.Globalization.CultureInfo.InvariantCulture));

    /// <summary>/dev/vfio/devices/vfioN: the device cdev (kernels with CONFIG_VFIO_DEVICE_CDEV).</summary>
    public string CdevNode(string cdevName) => Path.Combine(VfioDir, "devices", cdevName);

    /// <summary>/dev/iommu: the iommufd node (kernels with CONFIG_IOMMUFD).</summary>
    public string IommufdNode => Path.Combine(DevRoot, "iommu");

    public string PciDevicesDir => Path.Combine(SysfsRoot, "bus", "pci", "devices");

    public string MdevDevicesDir => Path.Combine(SysfsRoot, "bus", "mdev", "devices");

    public string IommuGroupDevicesDir(int group) =>
        Path.Combine(SysfsRoot, "kernel", "iommu_groups", group.ToString(System.Globalization.CultureInfo.InvariantCulture), "devices");

    /// <summary>Whether /dev/vfio exists.</summary>
    public bool HasVfio => Directory.Exists(VfioDir);
}
