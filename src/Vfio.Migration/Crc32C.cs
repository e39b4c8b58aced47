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
