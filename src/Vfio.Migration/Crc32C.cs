using System.Numerics;
using System.Runtime.InteropServices;

namespace Vfio.Migration;

/// <summary>
/// CRC32C (Castagnoli), as carried in data packets. System.IO.Hashing's Crc32 is the IEEE polynomial,
/// so this uses BitOperations.Crc32C, which the JIT turns into the SSE4.2 / ARMv8 CRC32C instruction.
/// </summary>
public static class Crc32C
{
    // Three independent lanes of Lane bytes each hide the crc32 instruction's 3-cycle latency; the lanes are
    // joined with "shift by Lane zero bytes", a linear map applied through four byte tables.
    private const int Lane = 4096;
    private static readonly uint[] s_shift = BuildShiftTables(Lane);

    public static uint Compute(ReadOnlySpan<byte> data) => ~Append(0xFFFF_FFFFu, data);

    /// <summary>Continues a raw (not inverted) CRC; start with 0xFFFFFFFF and invert the end result.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        while (data.Length >= 3 * Lane)
        {
            var w = MemoryMarshal.Cast<byte, ulong>(data[..(3 * Lane)]);
            uint a = crc, b = 0, c = 0;
            const int n = Lane / 8;
            for (int i = 0; i < n; i++)
            {
                a = BitOperations.Crc32C(a, w[i]);
                b = BitOperations.Crc32C(b, w[n + i]);
                c = BitOperations.Crc32C(c, w[2 * n + i]);
            }
            crc = Shift(Shift(a) ^ b) ^ c;
            data = data[(3 * Lane)..];
        }
        return AppendSimple(crc, data);
    }

    /// <summary>One lane, 8 bytes per step (also the reference the interleaved form is tested against).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static uint AppendSimple(uint crc, ReadOnlySpan<byte> data)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(data);
        foreach (ulong w in words)
            crc = BitOperations.Crc32C(crc, w);
        for (int i = words.Length * 8; i < data.Length; i++)
            crc = BitOperations.Crc32C(crc, data[i]);
        return crc;
    }

    /// <summary>The CRC register after feeding Lane zero bytes from register state <paramref name="crc"/>.</summary>
    private static uint Shift(uint crc)
    {
        var t = s_shift;
        return t[crc & 0xff] ^ t[256 + ((crc >> 8) & 0xff)] ^ t[512 + ((crc >> 16) & 0xff)] ^ t[768 + (crc >> 24)];
    }

    private static uint[] BuildShiftTables(int zeros)
    {
        // The shift is linear over GF(2): find the image of each of the 32 basis bits, then tabulate per byte.
        var basis = new uint[32];
        Span<byte> z = stackalloc byte[zeros];
        z.Clear();
        for (int bit = 0; bit < 32; bit++)
            basis[bit] = AppendSimple(1u << bit, z);
        var t = new uint[1024];
        for (int k = 0; k < 4; k++)
            for (int b = 0; b < 256; b++)
            {
                uint v = 0;
                for (int bit = 0; bit < 8; bit++)
                    if ((b & (1 << bit)) != 0) v ^= basis[8 * k + bit];
                t[256 * k + b] = v;
            }
        return t;
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
