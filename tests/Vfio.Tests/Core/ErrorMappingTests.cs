using Vfio.Interop;

namespace Vfio.Tests.Core;

public class ErrorMappingTests
{
    [Fact]
    public void Exception_KeepsOperationErrnoAndMessage()
    {
        var e = new VfioException("VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE STOP_COPY) on 0000:af:00.2", Libc.EINVAL, "the device is now in STOP");
        Assert.Equal(Libc.EINVAL, e.Errno);
        Assert.Equal("EINVAL", e.ErrnoName);
        Assert.Equal("VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE STOP_COPY) on 0000:af:00.2", e.Operation);
        Assert.Equal(
            "VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE STOP_COPY) on 0000:af:00.2 failed: EINVAL (Invalid argument): the device is now in STOP",
            e.Message);
    }

    [Fact]
    public void Exception_WithoutErrno_IsJustTheOperationAndDetail()
    {
        var e = new VfioException("open 0000:af:00.2", 0, "it must be bound to vfio-pci");
        Assert.Equal("open 0000:af:00.2: it must be bound to vfio-pci", e.Message);
    }

    [Fact]
    public void FromLastError_TakesTheErrnoOfTheFailedCall()
    {
        Assert.Equal(-1, Libc.Close(-1));
        var e = VfioException.FromLastError("close(-1)");
        Assert.Equal(Libc.EBADF, e.Errno);
        Assert.Contains("EBADF", e.Message);
        Assert.Contains("Bad file descriptor", e.Message);
    }

    [Fact]
    public void ErrorMessage_IsTheCLibrarysText_AlsoForAnUnknownErrno()
    {
        Assert.Equal("Bad file descriptor", Libc.ErrorMessage(Libc.EBADF));
        Assert.Equal("No such device", Libc.ErrorMessage(Libc.ENODEV));
        // glibc's text; musl would say "No error information".
        Assert.Equal("Unknown error 1234", Libc.ErrorMessage(1234));
    }

    [Theory]
    [InlineData(Libc.EPERM, "EPERM")]
    [InlineData(Libc.EBUSY, "EBUSY")]
    [InlineData(Libc.ENODEV, "ENODEV")]
    [InlineData(Libc.ENOTTY, "ENOTTY")]
    [InlineData(Libc.ENOMSG, "ENOMSG")]
    [InlineData(Libc.ESPIPE, "ESPIPE")]
    [InlineData(1234, "errno 1234")]
    public void ErrnoNames_AreSymbolic(int errno, string name) => Assert.Equal(name, ErrnoNames.Name(errno));

    [Fact]
    public void OpenErrors_SayPlainlyWhatIsWrong()
    {
        using var fake = new FakeSysfs();
        var noVfio = DeviceNodes.OpenError("/dev/vfio/7", "IOMMU group 7", Libc.ENOENT, fake.Paths);
        Assert.Contains("no ", noVfio.Message);
        Assert.Contains("VFIO is not available", noVfio.Message);

        fake.CreateDevVfio();
        var busy = DeviceNodes.OpenError("/dev/vfio/7", "IOMMU group 7", Libc.EBUSY, fake.Paths);
        Assert.Equal(Libc.EBUSY, busy.Errno);
        Assert.Contains("IOMMU group 7 is busy", busy.Message);
        Assert.Contains("open /dev/vfio/7 failed: EBUSY", busy.Message);

        var denied = DeviceNodes.OpenError("/dev/vfio/7", "IOMMU group 7", Libc.EACCES, fake.Paths);
        Assert.Contains(Libc.GetEuid() == 0 ? "although running as root" : "not root", denied.Message);

        var missing = DeviceNodes.OpenError("/dev/vfio/7", "IOMMU group 7", Libc.ENOENT, fake.Paths);
        Assert.Contains("has no device node", missing.Message);
    }

    [Fact]
    public void FeatureNotSupported_IsEnottyOrEinval()
    {
        Assert.True(VfioDevice.IsNotSupported(Libc.ENOTTY));
        Assert.True(VfioDevice.IsNotSupported(Libc.EINVAL));
        Assert.False(VfioDevice.IsNotSupported(Libc.EBUSY));
    }

    [Fact]
    public void Open_ARegularFileAsAGroup_ReportsTheIoctlErrno()
    {
        // A fake group node is a regular file: the group ioctls fail with ENOTTY, named after the ioctl.
        using var fake = new FakeSysfs();
        fake.CreateDevVfio();
        File.WriteAllText(fake.Paths.GroupNode(77), "");
        File.WriteAllText(fake.Paths.ContainerNode, "");
        var e = Assert.Throws<VfioException>(() => VfioDevice.Open(FakeSysfs.MlxVf, fake.Paths));
        Assert.Equal(Libc.ENOTTY, e.Errno);
        Assert.Contains("VFIO_GET_API_VERSION", e.Message);
    }

    [Fact]
    public void Iommufd_OnARegularFile_ReportsEachIoctlWithItsErrno_AndRefusesUseAfterDispose()
    {
        // No iommufd needed (the test guest's kernel has none): a regular file in place of /dev/iommu opens, and its
        // ioctls fail with ENOTTY, which shows a failure keeps the kernel's errno and names the ioctl and its argument.
        using var fake = new FakeSysfs();
        Directory.CreateDirectory(fake.Paths.DevRoot);
        File.WriteAllText(fake.Paths.IommufdNode, "");
        var iommufd = Iommufd.Open(fake.Paths);

        var destroy = Assert.Throws<VfioException>(() => iommufd.Destroy(5));
        Assert.Equal(Libc.ENOTTY, destroy.Errno);
        Assert.Equal("IOMMU_DESTROY(5)", destroy.Operation);
        Assert.Equal("IOMMU_DESTROY(5) failed: ENOTTY (Inappropriate ioctl for device)", destroy.Message);

        var alloc = Assert.Throws<VfioException>(() => iommufd.AllocIoas());
        Assert.Equal(Libc.ENOTTY, alloc.Errno);
        Assert.Equal("IOMMU_IOAS_ALLOC", alloc.Operation);

        iommufd.Dispose();
        Assert.Throws<ObjectDisposedException>(() => iommufd.Destroy(5));
    }
}
