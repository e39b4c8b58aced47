namespace Vfio.Tests.Core;

/// <summary>
/// A fake host tree in a temp folder, laid out as the kernel does: /sys/bus/pci/devices/&lt;bdf&gt; links into
/// /sys/devices, with driver and iommu_group links, vfio-dev nodes, mdev devices and iommu_groups.
/// </summary>
public sealed class FakeSysfs : IDisposable
{
    public const string MlxVf = "0000:af:00.2";       // mlx5_vfio_pci, group 77, vfio-dev/vfio3
    public const string MlxVfCore = "0000:af:00.3";   // mlx5_core, group 78
    public const string VfioPciNoCdev = "0000:3b:00.0"; // vfio-pci, group 40, no vfio-dev node (older kernel)
    public const string Unbound = "0000:00:1f.0";     // no driver, group 5
    public const string NetDev = "0000:00:03.0";      // virtio-pci, group 77 (shares the VF's group)
    public const string Mdev = "5f1c9c2e-0d6a-4e8b-9f43-6c8e0e8a1b01"; // mdev on parent mvsim0, group 12

    public FakeSysfs()
    {
        Root = Path.Combine(Path.GetTempPath(), "vfio-fake-" + Guid.NewGuid().ToString("N"));
        Paths = VfioHostPaths.UnderRoot(Root);
        Directory.CreateDirectory(Paths.PciDevicesDir);
        Directory.CreateDirectory(Paths.MdevDevicesDir);
        AddPci(MlxVf, "mlx5_vfio_pci", 77, "vfio3");
        AddPci(MlxVfCore, "mlx5_core", 78, null);
        AddPci(VfioPciNoCdev, "vfio-pci", 40, null);
        AddPci(Unbound, null, 5, null);
        AddPci(NetDev, "virtio-pci", 77, null);
        AddMdev(Mdev, "mvsim0", "mvsim-1", 12, "vfio9");
        File.WriteAllText(Path.Combine(Paths.MdevDevicesDir, Mdev, "digest"), "0123abcd\n");
    }

    public string Root { get; }

    public VfioHostPaths Paths { get; }

    /// <summary>Creates &lt;root&gt;/dev/vfio (empty: no group nodes), as on a host with the module loaded.</summary>
    public void CreateDevVfio() => Directory.CreateDirectory(Paths.VfioDir);

    public void AddPci(string bdf, string? driver, int group, string? cdev)
    {
        var real = Path.Combine(Paths.SysfsRoot, "devices", "pci0000:00", bdf);
        Directory.CreateDirectory(real);
        File.CreateSymbolicLink(Path.Combine(Paths.PciDevicesDir, bdf), $"../../../devices/pci0000:00/{bdf}");
        if (driver is not null)
            File.CreateSymbolicLink(Path.Combine(real, "driver"), $"../../../bus/pci/drivers/{driver}");
        File.CreateSymbolicLink(Path.Combine(real, "iommu_group"), $"../../../kernel/iommu_groups/{group}");
        AddGroupMember(group, bdf, $"../../../../devices/pci0000:00/{bdf}");
        if (cdev is not null)
            Directory.CreateDirectory(Path.Combine(real, "vfio-dev", cdev));
    }

    /// <summary>Makes <paramref name="vf"/> VF number <paramref name="index"/> of <paramref name="pf"/> (physfn, virtfnN), on a NUMA node.</summary>
    public void MakeVf(string pf, string vf, int index, int numaNode)
    {
        var pfDir = Path.Combine(Paths.SysfsRoot, "devices", "pci0000:00", pf);
        var vfDir = Path.Combine(Paths.SysfsRoot, "devices", "pci0000:00", vf);
        Directory.CreateDirectory(pfDir);
        if (!Path.Exists(Path.Combine(Paths.PciDevicesDir, pf)))
            File.CreateSymbolicLink(Path.Combine(Paths.PciDevicesDir, pf), $"../../../devices/pci0000:00/{pf}");
        File.CreateSymbolicLink(Path.Combine(vfDir, "physfn"), $"../{pf}");
        File.CreateSymbolicLink(Path.Combine(pfDir, $"virtfn{index}"), $"../{vf}");
        File.WriteAllText(Path.Combine(vfDir, "numa_node"), $"{numaNode}\n");
    }

    public void AddMdev(string uuid, string parent, string type, int group, string? cdev)
    {
        var real = Path.Combine(Paths.SysfsRoot, "devices", "virtual", "mvsim", parent, uuid);
        Directory.CreateDirectory(real);
        File.CreateSymbolicLink(Path.Combine(Paths.MdevDevicesDir, uuid), $"../../../devices/virtual/mvsim/{parent}/{uuid}");
        File.CreateSymbolicLink(Path.Combine(real, "driver"), "../../../../../bus/mdev/drivers/vfio_mdev");
        File.CreateSymbolicLink(Path.Combine(real, "iommu_group"), $"../../../../../kernel/iommu_groups/{group}");
        File.CreateSymbolicLink(Path.Combine(real, "mdev_type"), $"../mdev_supported_types/{type}");
        AddGroupMember(group, uuid, $"../../../../devices/virtual/mvsim/{parent}/{uuid}");
        if (cdev is not null)
            Directory.CreateDirectory(Path.Combine(real, "vfio-dev", cdev));
    }

    private void AddGroupMember(int group, string name, string target)
    {
        var dir = Paths.IommuGroupDevicesDir(group);
        Directory.CreateDirectory(dir);
        File.CreateSymbolicLink(Path.Combine(dir, name), target);
    }

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { }
    }
}
