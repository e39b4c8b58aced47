using System.Runtime.InteropServices;
using Vfio.Interop;

namespace Vfio.Core;

/// <summary>A failed kernel call: which operation, on what, and the errno the kernel returned.</summary>
public class VfioException : Exception
{
    public VfioException(string operation, int errno, string? detail = null)
        : base(Format(operation, errno, detail))
    {
        Operation = operation;
        Errno = errno;
    }

    /// <summary>The operation that failed, e.g. "VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE) on 0000:af:00.2".</summary>
    public string Operation { get; }

    /// <summary>The errno from the kernel (0 when the failure was detected in user space).</summary>
    public int Errno { get; }

    public string ErrnoName => ErrnoNames.Name(Errno);

    /// <summary>Throws for the last P/Invoke error of a call that returned -1.</summary>
    public static VfioException FromLastError(string operation, string? detail = null) =>
        new(operation, Marshal.GetLastPInvokeError(), detail);

    private static string Format(string operation, int errno, string? detail)
    {
        var core = errno == 0 ? operation : $"{operation} failed: {ErrnoNames.Describe(errno)}";
        return detail is null ? core : $"{core}: {detail}";
    }
}

/// <summary>Symbolic names of the errno values VFIO calls and sockets return.</summary>
public static class ErrnoNames
{
    /// <summary>An errno as a person reads it: its name and the C library's meaning, e.g. "ECONNRESET (Connection reset by peer)".</summary>
    public static string Describe(int errno) => $"{Name(errno)} ({Libc.ErrorMessage(errno)})";

    public static string Name(int errno) => errno switch
    {
        Libc.EPERM => "EPERM",
        Libc.ENOENT => "ENOENT",
        Libc.EINTR => "EINTR",
        Libc.EIO => "EIO",
        Libc.EBADF => "EBADF",
        Libc.EAGAIN => "EAGAIN",
        Libc.ENOMEM => "ENOMEM",
        Libc.EACCES => "EACCES",
        Libc.EFAULT => "EFAULT",
        Libc.EBUSY => "EBUSY",
        Libc.EEXIST => "EEXIST",
        Libc.ENODEV => "ENODEV",
        Libc.EINVAL => "EINVAL",
        Libc.ENOTTY => "ENOTTY",
        Libc.ESPIPE => "ESPIPE",
        Libc.EPIPE => "EPIPE",
        Libc.ENOMSG => "ENOMSG",
        Libc.EOPNOTSUPP => "EOPNOTSUPP",
        Libc.ENOSPC => "ENOSPC",
        Libc.EADDRINUSE => "EADDRINUSE",
        Libc.EADDRNOTAVAIL => "EADDRNOTAVAIL",
        Libc.ENETUNREACH => "ENETUNREACH",
        Libc.ECONNABORTED => "ECONNABORTED",
        Libc.ECONNRESET => "ECONNRESET",
        Libc.ENOTCONN => "ENOTCONN",
        Libc.ETIMEDOUT => "ETIMEDOUT",
        Libc.ECONNREFUSED => "ECONNREFUSED",
        Libc.EHOSTUNREACH => "EHOSTUNREACH",
        _ => $"errno {errno}",
    };
}
