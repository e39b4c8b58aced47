using System.Runtime.InteropServices;
using Vfio.Interop;

namespace Vfio.Core;

/// <summary>Opening the VFIO device nodes (container, group, cdev, iommufd), with plain-language errors when that fails.</summary>
internal static class DeviceNodes
{
    /// <summary>Opens a VFIO node read-write and close-on-exec; failures become plain-language <see cref="VfioException"/>s.</summary>
    public static FileDescriptorHandle OpenNode(string path, string what, VfioHostPaths paths)
    {
        int fd = Libc.Open(path, Libc.O_RDWR | Libc.O_CLOEXEC);
        if (fd >= 0)
            return new FileDescriptorHandle(fd);
        throw OpenError(path, what, Marshal.GetLastPInvokeError(), paths);
    }

    public static VfioException OpenError(string path, string what, int errno, VfioHostPaths paths)
    {
        var op = $"open {path}";
        return errno switch
        {
            Libc.ENOENT when !paths.HasVfio => NoVfio(paths),
            Libc.ENOENT => new VfioException(op, errno, $"{what} has no device node"),
            Libc.EACCES or Libc.EPERM when Libc.GetEuid() != 0 =>
                new VfioException(op, errno, $"not root: opening {what} needs root (run as root)"),
            Libc.EACCES or Libc.EPERM =>
                new VfioException(op, errno,
                    $"permission denied opening {what} although running as root (a security module or device cgroup refuses it)"),
            Libc.EBUSY => new VfioException(op, errno, $"{what} is busy: it is already open (by another process such as QEMU, or by this one)"),
            _ => new VfioException(op, errno, $"cannot open {what}"),
        };
    }

    public static VfioException NoVfio(VfioHostPaths paths) =>
        new($"open {paths.VfioDir}", Libc.ENOENT,
            $"no {paths.VfioDir} on this host: VFIO is not available "
            + "(load the vfio-pci module; a device must be bound to vfio-pci or a variant driver)");
}
