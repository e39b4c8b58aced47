using System.Runtime.InteropServices;

namespace Vfio.Interop;

/// <summary>
/// The few libc calls VFIO needs. Every call sets the last P/Invoke error so callers can keep errno. A descriptor that a
/// SafeHandle owns is passed as that handle: the generated marshaller holds a reference for the duration of the call,
/// so a concurrent Dispose cannot close the number (and let another open reuse it) while the kernel works on it.
/// </summary>
public static partial class Libc
{
    private const string Lib = "libc";

    public const int O_WRONLY = 0x1;
    public const int O_RDWR = 0x2;
    public const int O_CLOEXEC = 0x80000;

    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int E2BIG = 7;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EFAULT = 14;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int ENODEV = 19;
    public const int EINVAL = 22;
    public const int ENOTTY = 25;
    public const int ENOSPC = 28;
    public const int ESPIPE = 29;
    public const int EPIPE = 32;
    public const int ENOMSG = 42;
    public const int EOPNOTSUPP = 95;
    // Socket errors (asm-generic values, as on x86-64 and arm64): a peer lost mid-run is reported by these.
    public const int EADDRINUSE = 98;
    public const int EADDRNOTAVAIL = 99;
    public const int ENETUNREACH = 101;
    public const int ECONNABORTED = 103;
    public const int ECONNRESET = 104;
    public const int ENOTCONN = 107;
    public const int ETIMEDOUT = 110;
    public const int ECONNREFUSED = 111;
    public const int EHOSTUNREACH = 113;

    public const int AF_UNIX = 1;
    public const int SOCK_STREAM = 1;
    public const int SOCK_CLOEXEC = 0x80000;

    public const int PRIO_PROCESS = 0;

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    /// <summary>ioctl with a pointer argument; VFIO passes struct pointers.</summary>
    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static unsafe partial int Ioctl(SafeHandle fd, nuint request, void* arg);

    /// <summary>ioctl with an integer argument passed by value (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).</summary>
    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int IoctlValue(SafeHandle fd, nuint request, nint arg);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    public static unsafe partial nint Read(SafeHandle fd, void* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    public static unsafe partial nint Write(SafeHandle fd, void* buf, nuint count);

    /// <summary>writev(2): iov is an array of count {base, length} pairs.</summary>
    [LibraryImport(Lib, EntryPoint = "writev", SetLastError = true)]
    public static unsafe partial nint Writev(SafeHandle fd, nint* iov, int count);

    [LibraryImport(Lib, EntryPoint = "pread", SetLastError = true)]
    public static unsafe partial nint PRead(SafeHandle fd, void* buf, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "pwrite", SetLastError = true)]
    public static unsafe partial nint PWrite(SafeHandle fd, void* buf, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "pipe2", SetLastError = true)]
    public static unsafe partial int Pipe2(int* fds, int flags);

    [LibraryImport(Lib, EntryPoint = "socketpair", SetLastError = true)]
    public static unsafe partial int SocketPair(int domain, int type, int protocol, int* fds);

    /// <summary>nanosleep with a struct timespec as two longs {tv_sec, tv_nsec} (x86_64/arm64 layout).</summary>
    [LibraryImport(Lib, EntryPoint = "nanosleep", SetLastError = true)]
    public static unsafe partial int NanoSleep(long* request, long* remaining);

    [LibraryImport(Lib, EntryPoint = "gettid", SetLastError = true)]
    public static partial int GetTid();

    /// <summary>setpriority(2) with PRIO_PROCESS and a thread id sets that thread's nice value (Linux).</summary>
    [LibraryImport(Lib, EntryPoint = "setpriority", SetLastError = true)]
    public static partial int SetPriority(int which, uint who, int prio);

    [LibraryImport(Lib, EntryPoint = "geteuid", SetLastError = true)]
    public static partial uint GetEuid();

    /// <summary>
    /// The XSI strerror_r (fills the buffer, returns 0 or an errno), by the name both glibc and musl export it under:
    /// glibc's own strerror_r symbol is the GNU variant, which returns a char* that need not point into the buffer,
    /// while musl's is the XSI one, so no single signature for "strerror_r" is right on both.
    /// </summary>
    [LibraryImport(Lib, EntryPoint = "__xpg_strerror_r")]
    private static unsafe partial int StrErrorR(int errnum, byte* buf, nuint buflen);

    /// <summary>The C library's message for an errno (as strerror(3) gives it, but safe to call from any thread).</summary>
    public static unsafe string ErrorMessage(int errno)
    {
        // Longer than any message of glibc or musl; one that did not fit would come back cut short, still terminated.
        const int size = 256;
        byte* buffer = stackalloc byte[size];
        // buffer: stack memory of this frame. A failure is not an error here: for an unknown errno glibc returns EINVAL
        // but still writes "Unknown error N", the message strerror gives; an empty buffer falls back below.
        _ = StrErrorR(errno, buffer, size);
        var message = Marshal.PtrToStringUTF8((nint)buffer);
        return string.IsNullOrEmpty(message) ? $"errno {errno}" : message;
    }
}
