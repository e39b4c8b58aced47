using System.Runtime.InteropServices;
using Vfio.Interop;

namespace Vfio.Core;

/// <summary>Owns one Linux file descriptor (container, group, device, iommufd or migration data fd).</summary>
public sealed class FileDescriptorHandle : SafeHandle
{
    public FileDescriptorHandle(int fd, bool ownsHandle = true) : base(new IntPtr(-1), ownsHandle) => SetHandle(new IntPtr(fd));

    public override bool IsInvalid => handle.ToInt64() < 0;

    /// <summary>The raw descriptor number: it names this descriptor only while a reference is held (see <see cref="BorrowedFd"/>).</summary>
    public int Fd => (int)handle.ToInt64();

    protected override bool ReleaseHandle() => Libc.Close(Fd) == 0;
}

/// <summary>
/// A descriptor number written into memory the kernel reads (an fd field of an ioctl argument), where no SafeHandle
/// parameter keeps it open: a reference on its handle is held until <see cref="Dispose"/>, so a concurrent Dispose
/// cannot close the number and let another open reuse it while the kernel looks it up.
/// </summary>
internal readonly ref struct BorrowedFd
{
    private readonly FileDescriptorHandle _handle;

    public BorrowedFd(FileDescriptorHandle handle)
    {
        bool added = false;
        // A closed handle throws ObjectDisposedException here; otherwise added is always set, so Dispose has a reference to release.
        handle.DangerousAddRef(ref added);
        _handle = handle;
    }

    public int Fd => _handle.Fd;

    public void Dispose() => _handle.DangerousRelease();
}
