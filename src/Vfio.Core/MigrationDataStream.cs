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
/// The far end of a data stream that is not a kernel fd: a simulated device serving its session in-process, on the
/// caller's thread. Same contract as the fd's read(2)/write(2); failures throw VfioException with an errno.
/// </summary>
public interface IDataStreamEndpoint
{
    DataRead Read(Span<byte> buffer);

    /// <summary>Takes some of <paramref name="data"/> (at least one byte) and returns how much.</summary>
    int Write(ReadOnlySpan<byte> data);
}

/// <summary>
/// An endpoint whose saved state already lies in memory: the engine may send it from there instead of reading a copy
/// into its own buffer (a device with no cost, to measure the transport alone).
/// </summary>
public interface IInPlaceDataEndpoint : IDataStreamEndpoint
{
    /// <summary>The next bytes of the stream, at most <paramref name="max"/>, valid until the session ends; empty at the end.</summary>
    ReadOnlyMemory<byte> ReadInPlace(int max);
}

/// <summary>
/// The migration data fd returned by a state transition. It is a stream: only read(2)/write(2), never
/// pread/pwrite (ESPIPE). EINTR is retried; writes are completed even when the kernel takes them in parts.
/// Simulated devices give a stream over an in-process endpoint instead of an fd, so that the simulator costs no
/// kernel copies on the machine whose engine it is used to measure.
/// </summary>
public sealed class MigrationDataStream : IDisposable
{
    private readonly FileDescriptorHandle? _handle;
    private readonly IDataStreamEndpoint? _endpoint;
    private readonly string _owner;
    private readonly IDataFdSyscalls _sys;
    private bool _disposed;

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

    public MigrationDataStream(IDataStreamEndpoint endpoint, string owner)
    {
        _endpoint = endpoint;
        _owner = owner;
        _sys = LibcDataFdSyscalls.Instance;
    }

    /// <summary>The device (or simulated device) this stream belongs to, used in error messages.</summary>
    public string Owner => _owner;

    /// <summary>True when <see cref="ReadInPlace"/> may be used instead of Read.</summary>
    public bool CanReadInPlace => _endpoint is IInPlaceDataEndpoint;

    /// <summary>The next bytes without copying them (see <see cref="IInPlaceDataEndpoint"/>); empty at the end of the stream.</summary>
    public ReadOnlyMemory<byte> ReadInPlace(int max)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_endpoint is not IInPlaceDataEndpoint inPlace)
            throw new InvalidOperationException($"the data stream of {_owner} cannot be read in place");
        return inPlace.ReadInPlace(max);
    }

    public unsafe DataRead Read(Span<byte> buffer)
    {
        if (buffer.IsEmpty)
            throw new ArgumentException("read buffer is empty", nameof(buffer));
        if (_endpoint is not null)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _endpoint.Read(buffer);
        }
        // p: the caller's buffer, pinned by fixed for every read.
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint n = _sys.Read(_handle!, p, (nuint)buffer.Length, out int errno);
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
        if (_endpoint is not null)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            int writes = 0;
            for (int done = 0; done < data.Length; writes++)
                done += _endpoint.Write(data[done..]);
            return writes;
        }
        int calls = 0;
        // p: the caller's data, pinned by fixed for every write.
        fixed (byte* p = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = _sys.Write(_handle!, p + done, (nuint)(data.Length - done), out int errno);
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
        if (_endpoint is not null)
            throw new VfioException($"VFIO_MIG_GET_PRECOPY_INFO on {_owner}", Libc.ENOTTY, "the simulated device has no PRE_COPY");
        var info = new VfioPrecopyInfo { Argsz = (uint)sizeof(VfioPrecopyInfo) };
        // &info: stack memory of this frame.
        if (Libc.Ioctl(_handle!, VfioUapi.VFIO_MIG_GET_PRECOPY_INFO, &info) < 0)
            throw VfioException.FromLastError($"VFIO_MIG_GET_PRECOPY_INFO on {_owner}");
        return (info.InitialBytes, info.DirtyBytes);
    }

    /// <summary>Closes the fd (an endpoint's session goes on: like a data fd, closing it does not change the device's state).</summary>
    public void Dispose()
    {
        _disposed = true;
        _handle?.Dispose();
    }
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
