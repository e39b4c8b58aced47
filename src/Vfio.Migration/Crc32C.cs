using System.Numerics;
using System.Runtime.InteropServices;

namespace Vfio.Migration;

/// <summary>
/// CRC32C (Castagnoli), as carried in data packets. System.IO.Hashing's Crc32 is the IEEE polynomial,
/// so this uses BitOperations.Crc32C, which the JIT turns into the SSE4.2 / ARMv8 CRC32C instruction.
/// </summary>
public static class Crc32C
{
    public static uint Compute(ReadOnlySpan<byte> data) => ~Append(0xFFFF_FFFFu, data);

    /// <summary>Continues a raw (not inverted) CRC; start with 0xFFFFFFFF and invert the end result.</summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(data);
        foreach (ulong w in words)
            crc = BitOperations.Crc32C(crc, w);
        for (int i = words.Length * 8; i < data.Length; i++)
            crc = BitOperations.Crc32C(crc, data[i]);
        return crc;
    }
}

/// <summary>
/// The per-device stream checksum carried in the completion message: XxHash3 over (u32 index, u32 length, u32 CRC32C)
/// of every data buffer in index order. Each buffer's bytes are covered by its CRC32C (checked on receipt), so this
/// detects missing, extra, reordered or altered buffers without another pass over the data.
/// </summary>
public static class StreamChecksum
{
    public static void Append(System.IO.Hashing.XxHash3 hash, uint index, int length, uint crc)
    {
        Span<byte> b = stackalloc byte[12];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(b, index);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(b[4..], (uint)length);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(b[8..], crc);
        hash.Append(b);
    }
}
