using System.Runtime.InteropServices;
using Vfio.Interop;

namespace Vfio;

/// <summary>Owns one Linux file descriptor (container, group, device, iommufd or migration data fd).</summary>
public sealed class FileDescriptorHandle : SafeHandle
{
    public FileDescriptorHandle(int fd, bool ownsHandle = true) : base(new IntPtr(-1), ownsHandle) => SetHandle(new IntPtr(fd));

    public override bool IsInvalid => handle.ToInt64() < 0;

    /// <summary>The raw descriptor, for ioctl/read/write while the caller holds a reference.</summary>
    public int Fd => (int)handle.ToInt64();

    protected override bool ReleaseHandle() => Libc.Close(Fd) == 0;
}
