using System.CommandLine;
using System.Runtime.InteropServices;
using Vfio.Host;
using Vfio.Interop;

namespace Vfio.HwTests;

/// <summary>
/// Real SR-IOV and real vfio-pci: `vfio-mig vf` against an SR-IOV PF (QEMU's igb, an 82576 with up to 7 VFs, behind
/// an emulated Intel IOMMU: `run-in-guest.sh --igb` sets VFIO_MIG_IGB_PF), and the object model on its VFs bound to
/// vfio-pci: container and group with the type1 IOMMU, DMA map and unmap, device and region info, config space, reset,
/// interrupts, a group of several devices (two NICs behind a PCIe-to-PCI bridge) viable only once all are on vfio-pci,
/// and a migration request refused before anything is touched (igb VFs cannot migrate).
/// </summary>
public sealed class SriovTests : IDisposable
{
    private readonly string _state = Path.Combine(Path.GetTempPath(), $"vfio-mig-host-{Guid.NewGuid():N}.json");
    private readonly VfioHostPaths _paths = VfioHostPaths.Default;
    private string _pf = "";

    /// <summary>The PF, or a skip that says how to get one.</summary>
    private string RequirePf()
    {
        _pf = Environment.GetEnvironmentVariable("VFIO_MIG_IGB_PF") ?? "";
        if (_pf.Length == 0)
            Assert.Skip("no SR-IOV PF: VFIO_MIG_IGB_PF is not set (hwtests/guest/run-in-guest.sh --igb sets it in its QEMU guest)");
        HwEnv.RequireVfio();
        return _pf;
    }

    public void Dispose()
    {
        // Whatever a test left behind, the host goes back as it was (a no-op when the test restored it).
        if (_pf.Length > 0) Vf("restore");
        File.Delete(_state);
    }

    private (int Code, string Out, string Err) Vf(string args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Vfio.Cli.Program.Run(new RootCommand { Vfio.Cli.VfCommand.Create(new LinuxHostKernel(_paths)) },
            ["vf", .. args.Split(' ', StringSplitOptions.RemoveEmptyEntries), "--state", _state],
            new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    private string Snapshot()
    {
        var pf = PciFunction.Read(_pf, _paths);
        return $"{pf.Address} driver={pf.Driver} override={pf.DriverOverride} numvfs={pf.NumVfs} vfs={PciFunction.VfsOf(_pf, _paths).Count}";
    }

    [Fact]
    public void Setup_binds_each_vf_to_vfio_pci_in_a_group_of_its_own_and_restore_puts_the_host_back()
    {
        RequirePf();
        string before = Snapshot();
        var (code, stdout, stderr) = Vf($"setup {_pf} --count 2 --driver vfio-pci");
        Assert.True(code == 0, stderr + stdout);
        var vfs = PciFunction.VfsOf(_pf, _paths);
        Assert.Equal(2, vfs.Count);
        var groups = new HashSet<int>();
        foreach (var vf in vfs)
        {
            var f = PciFunction.Read(vf, _paths);
            Assert.Equal((HostSetup.VfioPci, _pf), (f.Driver, f.Pf));
            Assert.True(f.IommuGroup is int g && groups.Add(g), $"{vf}: IOMMU group {f.IommuGroup} is not a group of its own");
            Assert.True(File.Exists(_paths.GroupNode(f.IommuGroup!.Value)), $"no {_paths.GroupNode(f.IommuGroup.Value)}");
        }
        // list shows them with the columns an operator needs: PF, VF index, group; opened, they report no migration.
        var list = VfioDiscovery.Enumerate(_paths, probeMigration: true).Where(d => vfs.Contains(d.Name)).ToList();
        Assert.Equal(2, list.Count);
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal((_pf, (int?)i), (list[i].Device.Pf, list[i].Device.VfIndex));
            Assert.Equal("not supported", list[i].MigrationStatus);
        }

        (code, _, stderr) = Vf("restore");
        Assert.True(code == 0, stderr);
        Assert.Equal(before, Snapshot());
        (code, _, stderr) = Vf("restore");
        Assert.Equal(0, code);
        Assert.Contains("nothing to restore", stderr);
    }

    [Fact]
    public void Dry_run_changes_nothing()
    {
        RequirePf();
        string before = Snapshot();
        var (code, stdout, stderr) = Vf($"setup {_pf} --count 3 --driver vfio-pci --dry-run");
        Assert.True(code == 0, stderr);
        Assert.Contains($"write '3' to {_paths.PciDevicesDir}/{_pf}/sriov_numvfs", stdout);
        Assert.Contains("drivers_probe", stdout);
        Assert.Equal(before, Snapshot());
        Assert.False(File.Exists(_state));
    }

    [Fact]
    public void A_set_up_that_fails_half_way_is_restored()
    {
        RequirePf();
        string before = Snapshot();
        // The VFs are created, then binding fails: this kernel has no mlx5_vfio_pci to load.
        var (code, _, stderr) = Vf($"setup {_pf} --count 2 --driver mlx5_vfio_pci");
        Assert.Equal(1, code);
        Assert.Contains("mlx5_vfio_pci", stderr);
        Assert.Equal(2, PciFunction.Read(_pf, _paths).NumVfs);
        (code, _, stderr) = Vf("restore");
        Assert.True(code == 0, stderr);
        Assert.Equal(before, Snapshot());
    }

    [Fact]
    public void The_object_model_on_a_real_vfio_pci_vf()
    {
        RequirePf();
        var (code, _, stderr) = Vf($"setup {_pf} --count 2 --driver vfio-pci");
        Assert.True(code == 0, stderr);
        string vf = PciFunction.VfsOf(_pf, _paths)[0];
        int groupId = PciFunction.Read(vf, _paths).IommuGroup!.Value;

        using var container = VfioContainer.Open(_paths);
        Assert.True(container.CheckExtension(VfioUapi.VFIO_TYPE1v2_IOMMU));
        using var group = VfioGroup.Open(groupId, _paths);
        Assert.True(group.IsViable, $"group {groupId} is not viable");
        group.SetContainer(container);
        container.SetIommu();
        using (var device = VfioDevice.OpenInGroup(group, vf))
        {
            Assert.True(device.Info.IsPci && device.Info.SupportsReset, $"flags 0x{device.Info.Flags:x}");
            Assert.Equal(VfioUapi.VFIO_PCI_NUM_REGIONS, device.Info.NumRegions);
            // An 82576 VF: Intel's vendor id, memory BARs (BAR0 and BAR3, 16 KiB each) the process may mmap.
            Assert.Equal(0x8086, device.ReadConfigUInt16(0));
            var regions = device.GetRegions();
            var bar0 = regions.Single(r => r.Index == VfioUapi.VFIO_PCI_BAR0_REGION_INDEX);
            Assert.True(bar0.Size >= 16384 && bar0.CanRead && bar0.CanWrite && bar0.CanMmap, bar0.ToString());
            Assert.Contains(regions, r => r.Index == VfioUapi.VFIO_PCI_CONFIG_REGION_INDEX && r.CanRead && r.CanWrite);
            // Config space is writable through vfio-pci's virtualization: bus mastering on, read back, off again.
            ushort command = device.ReadConfigUInt16(4);
            device.WriteConfigUInt16(4, (ushort)(command | 0x4));
            Assert.Equal(0x4, device.ReadConfigUInt16(4) & 0x4);
            device.WriteConfigUInt16(4, command);
            // VFs signal with MSI-X only (no INTx).
            var irqs = device.GetIrqs();
            Assert.Equal(VfioUapi.VFIO_PCI_NUM_IRQS, (uint)irqs.Count);
            var msix = irqs.Single(i => i.Index == VfioUapi.VFIO_PCI_MSIX_IRQ_INDEX);
            Assert.True(msix.Count > 0 && msix.UsesEventfd, msix.ToString());
            Assert.Equal(0u, irqs.Single(i => i.Index == VfioUapi.VFIO_PCI_INTX_IRQ_INDEX).Count);
            device.Reset();
            Assert.Equal(0x8086, device.ReadConfigUInt16(0));
            // Not migratable: the request is refused with the reason, before any state is asked for.
            Assert.Null(device.GetMigrationFlags());
            var e = Assert.Throws<VfioException>(() => device.RequireMigrationFlags());
            Assert.Contains("migration", e.Message, StringComparison.OrdinalIgnoreCase);
        }

        // DMA: a page-aligned buffer mapped at an IOVA and unmapped again; a second map of the same IOVA is refused.
        const ulong size = 4 * 4096, iova = 0x10_0000;
        nint buffer;
        unsafe { buffer = (nint)NativeMemory.AlignedAlloc((nuint)size, 4096); }
        try
        {
            container.MapDma(buffer, iova, size);
            Assert.Equal(Libc.EEXIST, Assert.Throws<VfioException>(() => container.MapDma(buffer, iova, size)).Errno);
            Assert.Equal(size, container.UnmapDma(iova, size));
            Assert.Equal(0ul, container.UnmapDma(iova, size)); // nothing left there
        }
        finally
        {
            unsafe { NativeMemory.AlignedFree((void*)buffer); }
        }
    }

    [Fact]
    public void A_group_of_several_devices_is_viable_only_once_every_one_is_on_vfio()
    {
        RequirePf();
        // The harness puts two e1000 NICs behind a PCIe-to-PCI bridge: one IOMMU group for both.
        var nics = Directory.GetFileSystemEntries(_paths.PciDevicesDir).Select(d => PciFunction.Read(Path.GetFileName(d), _paths))
            .Where(f => f.Driver == "e1000").ToList();
        var shared = nics.GroupBy(f => f.IommuGroup).FirstOrDefault(g => g.Key is not null && g.Count() >= 2)?.ToList();
        if (shared is null) Assert.Skip($"no IOMMU group with two e1000 functions (found {nics.Count} e1000 functions)");
        int id = shared[0].IommuGroup!.Value;
        var (first, second) = (shared[0].Address, shared[1].Address);

        var (code, _, stderr) = Vf($"bind {first} --driver vfio-pci");
        Assert.True(code == 0, stderr);
        using (var container = VfioContainer.Open(_paths))
        using (var group = VfioGroup.Open(id, _paths))
        {
            Assert.False(group.IsViable, $"group {id} is viable with {second} still on e1000");
            var e = Assert.Throws<VfioException>(() => group.SetContainer(container));
            Assert.Contains($"{second} (driver e1000)", e.Message);

            (code, _, stderr) = Vf($"bind {second} --driver vfio-pci");
            Assert.True(code == 0, stderr);
            Assert.True(group.IsViable, $"group {id} is not viable with both devices on vfio-pci");
            group.SetContainer(container);
            container.SetIommu();
            foreach (var nic in new[] { first, second })
            {
                using var device = VfioDevice.OpenInGroup(group, nic);
                Assert.Equal(0x8086, device.ReadConfigUInt16(0));
            }
        }
        (code, _, stderr) = Vf("restore");
        Assert.True(code == 0, stderr);
        Assert.All(new[] { first, second }, nic => Assert.Equal("e1000", PciFunction.Read(nic, _paths).Driver));
    }

    [Fact]
    public void Migrating_a_device_without_migration_support_fails_before_anything_is_touched()
    {
        RequirePf();
        var (code, _, stderr) = Vf($"setup {_pf} --count 2 --driver vfio-pci");
        Assert.True(code == 0, stderr);
        var vfs = PciFunction.VfsOf(_pf, _paths);
        var output = new StringWriter();
        var error = new StringWriter();
        code = Vfio.Cli.Program.Run(["loopback", "--device", $"{vfs[0]}={vfs[1]}", "--timeout", "20"],
            new InvocationConfiguration { Output = output, Error = error });
        Assert.NotEqual(0, code);
        string line = error.ToString().Trim();
        Assert.DoesNotContain("\n", line);
        Assert.Contains(vfs[0], line);
        Assert.Contains("migration", line, StringComparison.OrdinalIgnoreCase);
    }
}
