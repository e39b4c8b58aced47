using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Vfio.Migration;

/// <summary>
/// CRC32C (Castagnoli), as carried in data packets. System.IO.Hashing's Crc32 is the IEEE polynomial,
/// so this uses BitOperations.Crc32C, which the JIT turns into the SSE4.2 / ARMv8 CRC32C instruction, and, where
/// the CPU has 512-bit carry-less multiplication (VPCLMULQDQ with AVX-512), folds the data 256 bytes per step with it
/// first (about twice the rate of three interleaved crc32 lanes; docs/performance.md has the figures). Both sides of a
/// migration check every byte with it.
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
        if (Pclmulqdq.V512.IsSupported && data.Length >= FoldMinimum)
        {
            crc = Fold(crc, data, out int folded);
            data = data[folded..];
        }
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

    // Folding (Intel, "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ", for bit-reflected CRCs): a 128-bit
    // lane X of the message, D bits before data Y, is replaced by X.lo * K(D+32) ^ X.hi * K(D-32) ^ Y, where
    // K(n) = bit-reflect(x^n mod P) << 1; the result has the same CRC as the bytes it replaces. Four 512-bit registers
    // (sixteen lanes) fold 2048 bits ahead at a time, then into one lane, whose 16 bytes the crc32 instruction finishes.
    private const int FoldMinimum = 1024;
    private static readonly Vector512<ulong> s_fold2048 = Constants(2048);
    private static readonly Vector512<ulong> s_fold512 = Constants(512);
    private static readonly Vector128<ulong> s_fold128 = Constants(128).GetLower().GetLower();

    /// <summary>Folds all whole 16-byte lanes of <paramref name="data"/> (at least 1024 bytes); returns the CRC register after them.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static uint Fold(uint crc, ReadOnlySpan<byte> data, out int folded)
    {
        var w = MemoryMarshal.Cast<byte, Vector512<ulong>>(data);
        var x0 = w[0] ^ Vector512.CreateScalar((ulong)crc);
        Vector512<ulong> x1 = w[1], x2 = w[2], x3 = w[3];
        int i = 4;
        for (; i + 4 <= w.Length; i += 4)
        {
            x0 = Fold(x0, s_fold2048, w[i]);
            x1 = Fold(x1, s_fold2048, w[i + 1]);
            x2 = Fold(x2, s_fold2048, w[i + 2]);
            x3 = Fold(x3, s_fold2048, w[i + 3]);
        }
        x3 = Fold(Fold(Fold(x0, s_fold512, x1), s_fold512, x2), s_fold512, x3);
        for (; i < w.Length; i++) x3 = Fold(x3, s_fold512, w[i]);
        var k = s_fold128;
        var lane = Fold(Fold(Fold(x3.GetLower().GetLower(), k, x3.GetLower().GetUpper()), k, x3.GetUpper().GetLower()), k, x3.GetUpper().GetUpper());
        var rest = data[(w.Length * 64)..];
        var tail = MemoryMarshal.Cast<byte, Vector128<ulong>>(rest);
        foreach (var y in tail) lane = Fold(lane, k, y);
        folded = w.Length * 64 + tail.Length * 16;
        return BitOperations.Crc32C(BitOperations.Crc32C(0u, lane.GetElement(0)), lane.GetElement(1));
    }

    private static Vector512<ulong> Fold(Vector512<ulong> x, Vector512<ulong> k, Vector512<ulong> y) =>
        Pclmulqdq.V512.CarrylessMultiply(x, k, 0x00) ^ Pclmulqdq.V512.CarrylessMultiply(x, k, 0x11) ^ y;

    private static Vector128<ulong> Fold(Vector128<ulong> x, Vector128<ulong> k, Vector128<ulong> y) =>
        Pclmulqdq.CarrylessMultiply(x, k, 0x00) ^ Pclmulqdq.CarrylessMultiply(x, k, 0x11) ^ y;

    /// <summary>{K(D+32), K(D-32)} in every 128-bit lane, for folding across D bits.</summary>
    private static Vector512<ulong> Constants(int distance)
    {
        ulong lo = K(distance + 32), hi = K(distance - 32);
        return Vector512.Create(lo, hi, lo, hi, lo, hi, lo, hi);
    }

    private static ulong K(int n)
    {
        ulong r = 1; // x^n mod P, P = x^32 + 0x1EDC6F41 (CRC32C), by repeated multiplication by x
        for (int i = 0; i < n; i++)
        {
            r <<= 1;
            if ((r & (1UL << 32)) != 0) r ^= 0x1_1EDC_6F41UL;
        }
        return (ulong)ReverseBits((uint)r) << 1;
    }

    private static uint ReverseBits(uint v)
    {
        uint r = 0;
        for (int b = 0; b < 32; b++) r |= ((v >> b) & 1) << (31 - b);
        return r;
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
