using Vfio.Interop;

namespace Vfio.Tests.Core;

public class FileDescriptorHandleTests
{
    [Fact]
    public void BorrowedFd_KeepsTheDescriptorOpenAcrossDispose_UntilReleased()
    {
        var path = Path.GetTempFileName();
        try
        {
            int fd = Libc.Open(path, Libc.O_RDWR | Libc.O_CLOEXEC);
            Assert.True(fd >= 0);
            // What the number refers to now: another test may reuse the number once it is closed, never for this file.
            string? Target() => new FileInfo($"/proc/self/fd/{fd}").LinkTarget;
            var handle = new FileDescriptorHandle(fd);
            var borrowed = new BorrowedFd(handle);
            Assert.Equal(fd, borrowed.Fd);
            handle.Dispose();
            Assert.Equal(path, Target());
            borrowed.Dispose();
            Assert.NotEqual(path, Target());
            Assert.Throws<ObjectDisposedException>(() => new BorrowedFd(handle).Dispose());
        }
        finally
        {
            File.Delete(path);
        }
    }
}
