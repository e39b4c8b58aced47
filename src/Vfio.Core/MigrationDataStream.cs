using Vfio.Interop;

namespace Vfio.Core;

public enum DataReadStatus
{
    /// <summary>Bytes were read.</summary>
    Data,
    /// <summary>read returned 0: the device has no more data in this session.</summary>
    EndOfStream,
    /// <summary>ENOMSG in PRE_COPY: a temporary end of data; more may come later.</summary>
    NoDataForNow,
}

public readonly record struct DataRead(int Bytes, DataReadStatus Status);

/// <summary>
/// The migration data fd returned by a state transition. It is a stream: only read(2)/write(2), never
/// pread/pwrite (ESPIPE). EINTR is retried; writes are completed even when the kernel takes them in parts.
/// </summary>
public sealed class MigrationDataStream : IDisposable
{
    private readonly FileDescriptorHandle _handle;
    private readonly string _owner;
    private readonly IDataFdSyscalls _sys;

    public MigrationDataStream(FileDescriptorHandle handle, string owner)
        : this(handle, owner, LibcDataFdSyscalls.Instance)
    {
    }

    /// <summary>Test seam: the read/write syscalls can be replaced to inject results (EINTR, short writes).</summary>
    internal MigrationDataStream(FileDescriptorHandle handle, string owner, IDataFdSyscalls syscalls)
    {
        _handle = handle;
        _owner = owner;
        _sys = syscalls;
    }

    /// <summary>The device this stream belongs to, used in error messages.</summary>
    public string Owner => _owner;

    public unsafe DataRead Read(Span<byte> buffer)
    {
        if (buffer.IsEmpty)
            throw new ArgumentException("read buffer is empty", nameof(buffer));
        // p: the caller's buffer, pinned by fixed for every read.
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint n = _sys.Read(_handle, p, (nuint)buffer.Length, out int errno);
                if (n > 0)
                    return new DataRead((int)n, DataReadStatus.Data);
                if (n == 0)
                    return new DataRead(0, DataReadStatus.EndOfStream);
                if (errno == Libc.EINTR)
                    continue;
                if (errno == Libc.ENOMSG)
                    return new DataRead(0, DataReadStatus.NoDataForNow);
                throw new VfioException($"read(migration data fd of {_owner})", errno);
            }
        }
    }

    /// <summary>
    /// Writes every byte, in order. Returns the number of write(2) calls it took, which tells how
    /// the kernel split the buffer (a device may load synchronously inside one of them).
    /// </summary>
    public unsafe int WriteAll(ReadOnlySpan<byte> data)
    {
        int calls = 0;
        // p: the caller's data, pinned by fixed for every write.
        fixed (byte* p = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = _sys.Write(_handle, p + done, (nuint)(data.Length - done), out int errno);
                calls++;
                if (n > 0)
                {
                    done += (int)n;
                    continue;
                }
                if (n == 0)
                    errno = Libc.EIO;
                if (errno == Libc.EINTR)
                    continue;
                throw new VfioException($"write(migration data fd of {_owner})", errno,
                    $"{done} of {data.Length} bytes written");
            }
        }
        return calls;
    }

    /// <summary>VFIO_MIG_GET_PRECOPY_INFO: bytes the device has ready in PRE_COPY.</summary>
    public unsafe (ulong InitialBytes, ulong DirtyBytes) GetPrecopyInfo()
    {
        var info = new VfioPrecopyInfo { Argsz = (uint)sizeof(VfioPrecopyInfo) };
        // &info: stack memory of this frame.
        if (Libc.Ioctl(_handle, VfioUapi.VFIO_MIG_GET_PRECOPY_INFO, &info) < 0)
            throw VfioException.FromLastError($"VFIO_MIG_GET_PRECOPY_INFO on {_owner}");
        return (info.InitialBytes, info.DirtyBytes);
    }

    /// <summary>
    /// Closes the fd; the device's state does not change (that takes a state transition). Later calls throw
    /// ObjectDisposedException.
    /// </summary>
    public void Dispose() => _handle.Dispose();
}

/// <summary>The syscalls a data fd stream makes; replaced in tests to inject errno results.</summary>
internal interface IDataFdSyscalls
{
    /// <summary>read(2): bytes read, 0 at end, or -1 with <paramref name="errno"/> set.</summary>
    unsafe nint Read(FileDescriptorHandle fd, byte* buffer, nuint count, out int errno);

    /// <summary>write(2): bytes written, or -1 with <paramref name="errno"/> set.</summary>
    unsafe nint Write(FileDescriptorHandle fd, byte* buffer, nuint count, out int errno);
}

internal sealed class LibcDataFdSyscalls : IDataFdSyscalls
{
    public static readonly LibcDataFdSyscalls Instance = new();

    public unsafe nint Read(FileDescriptorHandle fd, byte* buffer, nuint count, out int errno)
    {
        nint n = Libc.Read(fd, buffer, count);
        errno = n < 0 ? System.Runtime.InteropServices.Marshal.GetLastPInvokeError() : 0;
        return n;
    }

    public unsafe nint Write(FileDescriptorHandle fd, byte* buffer, nuint count, out int errno)
    {
        nint n = Libc.Write(fd, buffer, count);
        errno = n < 0 ? System.Runtime.InteropServices.Marshal.GetLastPInvokeError() : 0;
        return n;
    }
}
