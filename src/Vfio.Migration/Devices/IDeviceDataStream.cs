namespace Vfio.Migration;

/// <summary>
/// A device's migration data stream as the engine uses it: the kernel's data fd of a real device
/// (<see cref="RealDeviceAdapter"/>), or a software device serving its session in-process. Same contract as the fd's
/// read(2)/write(2): a stream, in order, no offsets. Failures throw VfioException with an errno. Disposing it ends the
/// engine's use of the stream; the device's state does not change (that takes a state transition).
/// </summary>
public interface IDeviceDataStream : IDisposable
{
    /// <summary>Reads what the device has ready, at most <paramref name="buffer"/>'s length.</summary>
    DataRead Read(Span<byte> buffer);

    /// <summary>Writes every byte, in order (a device may load synchronously inside the call).</summary>
    void WriteAll(ReadOnlySpan<byte> data);

    /// <summary>
    /// VFIO_MIG_GET_PRECOPY_INFO, on a stream opened by RUNNING->PRE_COPY while the device is in PRE_COPY(_P2P): bytes
    /// of the initial image not yet read, and bytes dirtied since. As on mlx5, data dirtied since the last call becomes
    /// readable only once this call is made (it starts the next incremental save): until then a read in PRE_COPY
    /// returns <see cref="DataReadStatus.NoDataForNow"/> once the initial image is read. Outside PRE_COPY it fails
    /// (EINVAL).
    /// </summary>
    PrecopyInfo GetPrecopyInfo() => throw new VfioException("VFIO_MIG_GET_PRECOPY_INFO", Vfio.Interop.Libc.EINVAL, "the stream has no PRE_COPY");
}

/// <summary>The answer of VFIO_MIG_GET_PRECOPY_INFO.</summary>
public readonly record struct PrecopyInfo(ulong InitialBytes, ulong DirtyBytes);

/// <summary>
/// A stream whose saved state already lies in memory: the engine sends it from there instead of reading a copy into
/// its own buffer (a device with no cost, which measures the transport alone).
/// </summary>
public interface IInPlaceDataStream : IDeviceDataStream
{
    /// <summary>
    /// The next bytes of the stream, at most <paramref name="max"/>, valid until the session ends. Empty tells no errno
    /// apart: in PRE_COPY the engine takes it as nothing for now (ENOMSG: it asks for the precopy info and reads again),
    /// after it as the end. So a stream opened by PRE_COPY must end only after the device went to STOP_COPY.
    /// </summary>
    ReadOnlyMemory<byte> ReadInPlace(int max);
}
