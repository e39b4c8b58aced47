using System.CommandLine;
using System.Text.Json;
using Vfio.Interop;

namespace Vfio.HwTests;

/// <summary>Opening devices and reading what they are, against a real /dev/vfio.</summary>
public class DeviceTests
{
    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void Open_ThroughContainerAndGroup(string device)
    {
        HwEnv.Require(device);
        var sysfs = VfioSysfs.Resolve(device, VfioHostPaths.Default);
        Assert.True(sysfs.IsVfioBound, $"{device} is bound to {sysfs.Driver}");
        Assert.NotNull(sysfs.IommuGroup);
        using var dev = VfioDevice.Open(device, mode: VfioOpenMode.Group);
        Assert.Equal(VfioOpenMode.Group, dev.OpenedVia);
        Assert.Equal(sysfs.IommuGroup, dev.Group?.Id);
        Assert.Equal(VfioUapi.VFIO_TYPE1v2_IOMMU, dev.Container?.IommuType);
        Assert.True(dev.Group!.IsViable);
        Assert.True((dev.Group.GetStatusFlags() & VfioUapi.VFIO_GROUP_FLAGS_CONTAINER_SET) != 0);
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void OpenInGroup_UsesTheCallersGroup_AndLeavesItOpen(string device)
    {
        HwEnv.Require(device);
        var sysfs = VfioSysfs.Resolve(device, VfioHostPaths.Default);
        using var container = VfioContainer.Open();
        using var group = VfioGroup.Open(sysfs.IommuGroup!.Value);
        group.SetContainer(container);
        using (var dev = VfioDevice.OpenInGroup(group, device))
        {
            Assert.Equal(device, dev.Name);
            Assert.Equal(VfioOpenMode.Group, dev.OpenedVia);
            Assert.Null(dev.Group);
            Assert.Null(dev.Container);
            Assert.True(dev.Info.IsPci);
            Assert.NotNull(dev.GetMigrationFlags());
        }
        // Disposing the device closed only the device fd: the caller's group still answers and opens it again.
        Assert.False(group.Handle.IsClosed);
        Assert.True((group.GetStatusFlags() & VfioUapi.VFIO_GROUP_FLAGS_CONTAINER_SET) != 0);
        using var again = VfioDevice.OpenInGroup(group, device);
        Assert.Equal(MigrationState.Running, again.GetMigrationState());
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void Open_Twice_IsRefusedAsBusy(string device)
    {
        HwEnv.Require(device);
        using var first = VfioDevice.Open(device);
        var e = Assert.Throws<VfioException>(() => VfioDevice.Open(device).Dispose());
        Assert.Equal(Libc.EBUSY, e.Errno);
        Assert.Contains("busy", e.Message);
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void Open_ThroughCdevAndIommufd_WhereTheKernelHasThem(string device)
    {
        HwEnv.Require(device);
        var sysfs = VfioSysfs.Resolve(device, VfioHostPaths.Default);
        if (sysfs.CdevName is null || !File.Exists(VfioHostPaths.Default.CdevNode(sysfs.CdevName)))
            Assert.Skip($"{device} has no /dev/vfio/devices node: this kernel has no VFIO device cdev (CONFIG_VFIO_DEVICE_CDEV)");
        if (!Iommufd.IsAvailable())
            Assert.Skip("no /dev/iommu: this kernel has no iommufd (CONFIG_IOMMUFD)");
        using var dev = VfioDevice.Open(device, mode: VfioOpenMode.Cdev);
        Assert.Equal(VfioOpenMode.Cdev, dev.OpenedVia);
        Assert.NotNull(dev.IommufdDeviceId);
        Assert.NotNull(dev.GetMigrationFlags());
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void Info_Regions_AndConfigSpace(string device)
    {
        HwEnv.Require(device);
        using var dev = VfioDevice.Open(device);
        var info = dev.Info;
        Assert.True(info.IsPci);
        Assert.True(info.NumRegions >= VfioUapi.VFIO_PCI_NUM_REGIONS);
        var regions = dev.GetRegions();
        var config = Assert.Single(regions, r => r.Index == VfioUapi.VFIO_PCI_CONFIG_REGION_INDEX);
        Assert.True(config.CanRead);
        Assert.True(config.Size >= 256);
        ushort vendor = dev.ReadConfigUInt16(0);
        Assert.NotEqual(0xffff, vendor);
        Assert.NotEqual(0, vendor);
        var header = new byte[64];
        dev.ReadConfig(0, header);
        Assert.Equal(vendor, BitConverter.ToUInt16(header, 0));
        Assert.Equal(BitConverter.ToUInt32(header, 0), dev.ReadConfigUInt32(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => dev.ReadConfig((int)config.Size - 2, new byte[4]));

        if (HwEnv.IsSim(device))
        {
            Assert.Equal(0x1b36, vendor);
            Assert.Equal(0x7a6d, dev.ReadConfigUInt16(2));
            Assert.Equal(0x7a6d_1b36u, dev.ReadConfigUInt32(0));
            Assert.True(info.SupportsReset);
            // BAR0 of the simulated function is plain memory: what is written reads back.
            var bar0 = Assert.Single(regions, r => r.Index == VfioUapi.VFIO_PCI_BAR0_REGION_INDEX);
            Assert.True(bar0.CanRead && bar0.CanWrite);
            var pattern = Enumerable.Range(0, 256).Select(i => (byte)(i ^ 0x5a)).ToArray();
            dev.WriteRegion(bar0.Index, 512, pattern);
            var back = new byte[256];
            dev.ReadRegion(bar0.Index, 512, back);
            Assert.Equal(pattern, back);
            // PCI_COMMAND through the config region.
            dev.WriteConfigUInt16(4, 0x0002);
            Assert.Equal(0x0002, dev.ReadConfigUInt16(4) & 0x0002);
        }
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void MigrationFlags_AreReported(string device)
    {
        HwEnv.Require(device);
        using var dev = VfioDevice.Open(device);
        var flags = dev.GetMigrationFlags();
        Assert.NotNull(flags);
        Assert.True(flags!.Value.HasFlag(MigrationFlags.StopCopy), $"{device}: flags {MigrationStateMachine.Describe(flags.Value)}");
        Assert.True(dev.SupportsFeature(VfioUapi.VFIO_DEVICE_FEATURE_MIGRATION));
        Assert.True(dev.SupportsFeature(VfioUapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, get: true, set: true));
        if (HwEnv.IsSim(device))
            Assert.True(flags.Value.HasFlag(MigrationFlags.P2P));
        Assert.Equal(MigrationState.Running, dev.GetMigrationState());
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void DmaLogging_StartReportStop_OrRefusedAsUnsupported(string device)
    {
        HwEnv.Require(device);
        using var dev = VfioDevice.Open(device);
        bool supported = dev.SupportsFeature(VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, get: false, set: true);
        if (!supported)
        {
            var e = Assert.Throws<VfioException>(() => dev.StartDmaLogging(4096, [(0UL, 1UL << 20)]));
            Assert.True(e.Errno is Libc.ENOTTY or Libc.EINVAL, e.Message);
            return;
        }
        const ulong length = 1UL << 30;
        ulong page = dev.StartDmaLogging(4096, [(0UL, length)]);
        try
        {
            Assert.True(page >= 4096 && ulong.IsPow2(page), $"page size {page}");
            var bitmap = new ulong[(length / page + 63) / 64];
            // Without the kernel's iova bitmap code (CONFIG_IOMMUFD_DRIVER) the core refuses every report before the driver.
            if (KernelConfig.IsSet("CONFIG_IOMMUFD_DRIVER") == false)
                Assert.Equal(Libc.EOPNOTSUPP, Assert.Throws<VfioException>(() => dev.ReportDmaLogging(0, length, page, bitmap)).Errno);
            else
                dev.ReportDmaLogging(0, length, page, bitmap);
        }
        finally
        {
            dev.StopDmaLogging();
        }
    }

    [Fact]
    public void Discovery_AndCliList_ShowTheConfiguredDevicesWithTheirFlags()
    {
        var devices = HwEnv.RequireSeveral(1);
        var found = VfioDiscovery.Enumerate();
        foreach (var d in HwEnv.AllDevices)
        {
            var entry = Assert.Single(found, f => f.Name == d);
            Assert.True(entry.IsMigratable, $"{d}: {entry.MigrationStatus}");
        }
        var output = new StringWriter();
        int code = Vfio.Cli.Program.BuildRoot().Parse(["list", "--json"])
            .Invoke(new InvocationConfiguration { Output = output, Error = new StringWriter() });
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(output.ToString());
        var names = doc.RootElement.EnumerateArray().Select(e => e.GetProperty("name").GetString()).ToList();
        Assert.Contains(devices[0], names);
        var info = new StringWriter();
        Assert.Equal(0, Vfio.Cli.Program.BuildRoot().Parse(["info", devices[0]])
            .Invoke(new InvocationConfiguration { Output = info, Error = new StringWriter() }));
        Assert.Contains("STOP_COPY", info.ToString());
    }
}
