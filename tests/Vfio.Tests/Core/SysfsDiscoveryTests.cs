using Vfio.Interop;

namespace Vfio.Tests.Core;

public class SysfsDiscoveryTests
{
    [Fact]
    public void Enumerate_FindsVfioPciVariantsAndMdevs_AndSkipsOtherDrivers()
    {
        using var fake = new FakeSysfs();
        var devices = VfioSysfs.EnumerateVfioDevices(fake.Paths);
        Assert.Equal(new[] { FakeSysfs.VfioPciNoCdev, FakeSysfs.MlxVf, FakeSysfs.Mdev }, devices.Select(d => d.Name));

        var mlx = devices.Single(d => d.Name == FakeSysfs.MlxVf);
        Assert.Equal(VfioDeviceKind.Pci, mlx.Kind);
        Assert.Equal("mlx5_vfio_pci", mlx.Driver);
        Assert.Equal(77, mlx.IommuGroup);
        Assert.Equal("vfio3", mlx.CdevName);
        Assert.True(mlx.IsVfioBound);

        var plain = devices.Single(d => d.Name == FakeSysfs.VfioPciNoCdev);
        Assert.Equal("vfio-pci", plain.Driver);
        Assert.Equal(40, plain.IommuGroup);
        Assert.Null(plain.CdevName);

        var mdev = devices.Single(d => d.Name == FakeSysfs.Mdev);
        Assert.Equal(VfioDeviceKind.Mdev, mdev.Kind);
        Assert.Equal(12, mdev.IommuGroup);
        Assert.Equal("mvsim0", mdev.Parent);
        Assert.Equal("mvsim-1", mdev.MdevType);
        Assert.Equal("vfio9", mdev.CdevName);
        Assert.Equal("0123abcd", VfioSysfs.ReadAttribute(Path.Combine(mdev.SysfsPath, "digest")));
        Assert.Null(VfioSysfs.ReadAttribute(Path.Combine(mdev.SysfsPath, "absent")));
    }

    [Fact]
    public void Enumerate_OnAnEmptyOrMissingTree_IsEmpty()
    {
        var root = Path.Combine(Path.GetTempPath(), "vfio-empty-" + Guid.NewGuid().ToString("N"));
        Assert.Empty(VfioSysfs.EnumerateVfioDevices(VfioHostPaths.UnderRoot(root)));
        Assert.Empty(VfioDiscovery.Enumerate(VfioHostPaths.UnderRoot(root)));
    }

    [Theory]
    [InlineData("0000:AF:00.2", "0000:af:00.2")]
    [InlineData("af:00.2", "0000:af:00.2")]
    [InlineData(" 0000:af:00.2 ", "0000:af:00.2")]
    public void PciAddresses_AreNormalized(string input, string expected)
    {
        Assert.True(VfioSysfs.TryNormalizePciAddress(input, out var bdf));
        Assert.Equal(expected, bdf);
    }

    [Theory]
    [InlineData("0000:af:00.8")]
    [InlineData("af:00")]
    [InlineData("vfio0")]
    public void NonAddresses_AreRejected(string input) => Assert.False(VfioSysfs.TryNormalizePciAddress(input, out _));

    [Fact]
    public void Resolve_ByShortAddressAndUuid()
    {
        using var fake = new FakeSysfs();
        Assert.Equal(FakeSysfs.MlxVf, VfioSysfs.Resolve("af:00.2", fake.Paths).Name);
        Assert.Equal(FakeSysfs.Mdev, VfioSysfs.Resolve(FakeSysfs.Mdev.ToUpperInvariant(), fake.Paths).Name);
    }

    [Fact]
    public void Resolve_MissingDevice_SaysSoWithEnoent()
    {
        using var fake = new FakeSysfs();
        var e = Assert.Throws<VfioException>(() => VfioSysfs.Resolve("0000:01:00.0", fake.Paths));
        Assert.Equal(Libc.ENOENT, e.Errno);
        Assert.Contains("no PCI device 0000:01:00.0", e.Message);
        var m = Assert.Throws<VfioException>(() => VfioSysfs.Resolve("00000000-0000-0000-0000-000000000000", fake.Paths));
        Assert.Contains("no mdev device", m.Message);
        var bad = Assert.Throws<VfioException>(() => VfioSysfs.Resolve("eth0", fake.Paths));
        Assert.Contains("not a device name", bad.Message);
    }

    [Fact]
    public void Open_DeviceBoundToTheWrongDriver_NamesTheDriverAndTheRightOnes()
    {
        using var fake = new FakeSysfs();
        fake.CreateDevVfio();
        var e = Assert.Throws<VfioException>(() => VfioDevice.Open(FakeSysfs.MlxVfCore, fake.Paths));
        Assert.Contains("bound to driver mlx5_core", e.Message);
        Assert.Contains("vfio-pci", e.Message);
        Assert.Contains("mlx5_vfio_pci", e.Message);
        var u = Assert.Throws<VfioException>(() => VfioDevice.Open(FakeSysfs.Unbound, fake.Paths));
        Assert.Contains("not bound to any driver", u.Message);
    }

    [Fact]
    public void Open_WithoutDevVfio_SaysSo()
    {
        using var fake = new FakeSysfs();
        var e = Assert.Throws<VfioException>(() => VfioDevice.Open(FakeSysfs.MlxVf, fake.Paths));
        Assert.Contains($"no {fake.Paths.VfioDir}", e.Message);
        Assert.Equal(Libc.ENOENT, e.Errno);
        Assert.Throws<VfioException>(() => VfioContainer.Open(fake.Paths));
        Assert.Throws<VfioException>(() => VfioGroup.Open(77, fake.Paths));
    }

    [Fact]
    public void Open_WithoutTheGroupNode_ExplainsTheGroup()
    {
        using var fake = new FakeSysfs();
        fake.CreateDevVfio();
        var e = Assert.Throws<VfioException>(() => VfioDevice.Open(FakeSysfs.MlxVf, fake.Paths));
        Assert.Contains("IOMMU group 77", e.Message);
        Assert.Contains("/dev/vfio/77", e.Message);
    }

    [Fact]
    public void Open_CdevModeWithoutIommufd_SaysSo()
    {
        using var fake = new FakeSysfs();
        fake.CreateDevVfio();
        var e = Assert.Throws<VfioException>(() => VfioDevice.Open(FakeSysfs.MlxVf, fake.Paths, VfioOpenMode.Cdev));
        Assert.Contains("no /dev/iommu", e.Message);
        var n = Assert.Throws<VfioException>(() => VfioDevice.Open(FakeSysfs.VfioPciNoCdev, fake.Paths, VfioOpenMode.Cdev));
        Assert.Contains("no vfio-dev node", n.Message);
    }

    [Fact]
    public void GroupNotViable_NamesTheDevicesInTheWay()
    {
        using var fake = new FakeSysfs();
        var message = VfioGroup.NotViableMessage(77, fake.Paths);
        Assert.Contains("IOMMU group 77 is not viable", message);
        Assert.Contains($"{FakeSysfs.NetDev} (driver virtio-pci)", message);
        Assert.DoesNotContain(FakeSysfs.MlxVf + " (", message);
    }

    [Fact]
    public void Discovery_ListsDevicesThatCannotBeOpened_WithTheReason()
    {
        using var fake = new FakeSysfs();
        var unprobed = VfioDiscovery.Enumerate(fake.Paths);
        Assert.Equal(3, unprobed.Count);
        Assert.All(unprobed, d => Assert.Null(d.MigrationFlags));
        Assert.All(unprobed, d => Assert.StartsWith("unknown: no ", d.MigrationStatus));

        fake.CreateDevVfio();
        var probed = VfioDiscovery.Enumerate(fake.Paths);
        Assert.All(probed, d => Assert.False(d.IsMigratable));
        Assert.Contains("IOMMU group 77", probed.Single(d => d.Name == FakeSysfs.MlxVf).MigrationStatus);

        var quick = VfioDiscovery.Enumerate(fake.Paths, probeMigration: false);
        Assert.All(quick, d => Assert.Equal("not probed", d.MigrationStatus));
    }
}
