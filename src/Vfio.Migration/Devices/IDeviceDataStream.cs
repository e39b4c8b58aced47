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
}

/// <summary>
/// A stream whose saved state already lies in memory: the engine sends it from there instead of reading a copy into
/// its own buffer (a device with no cost, which measures the transport alone).
/// </summary>
public interface IInPlaceDataStream : IDeviceDataStream
{
    /// <summary>The next bytes of the stream, at most <paramref name="max"/>, valid until the session ends; empty at the end.</summary>
    ReadOnlyMemory<byte> ReadInPlace(int max);
}
