using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;

namespace Vfio.Bench;

/// <summary>
/// What TLS's cipher costs on this machine, per core: AES-128-GCM, the suite our TLS prefers, through .NET's AesGcm,
/// which calls the same libcrypto as SslStream does. With a plaintext run's CPU time it tells how close to plaintext any
/// TLS could come here: one that added nothing to the run but the cipher's work on every byte.
/// </summary>
public sealed record CipherCost(double EncryptBytesPerSecond, double DecryptBytesPerSecond)
{
    private const int BufferBytes = 1 << 20;

    /// <summary>Core-nanoseconds to encrypt one byte and to decrypt it again.</summary>
    public double NsPerByte => 1e9 / EncryptBytesPerSecond + 1e9 / DecryptBytesPerSecond;

    /// <summary>Encrypts, then decrypts, 1 MiB buffers for about <paramref name="each"/> each; null where AES-GCM is missing.</summary>
    public static CipherCost? Measure(TimeSpan each)
    {
        if (!AesGcm.IsSupported) return null;
        using var aes = new AesGcm(RandomNumberGenerator.GetBytes(16), tagSizeInBytes: 16);
        var plaintext = new byte[BufferBytes];
        RandomNumberGenerator.Fill(plaintext);
        var ciphertext = new byte[BufferBytes];
        var nonce = new byte[12];
        var tag = new byte[16];
        aes.Encrypt(nonce, plaintext, ciphertext, tag);

        long encrypted = 0;
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < each)
        {
            // A fresh nonce per record, as TLS uses its sequence number.
            BitConverter.TryWriteBytes(nonce, encrypted);
            aes.Encrypt(nonce, plaintext, ciphertext, tag);
            encrypted += BufferBytes;
        }
        double encryptRate = encrypted / clock.Elapsed.TotalSeconds;

        long decrypted = 0;
        clock.Restart();
        while (clock.Elapsed < each)
        {
            aes.Decrypt(nonce, ciphertext, tag, plaintext);
            decrypted += BufferBytes;
        }
        return new CipherCost(encryptRate, decrypted / clock.Elapsed.TotalSeconds);
    }

    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"AES-128-GCM on one core here: encrypt {EncryptBytesPerSecond / 1e9:0.00} GB/s, decrypt {DecryptBytesPerSecond / 1e9:0.00} GB/s "
        + $"({NsPerByte:0.000} ns of CPU per byte over TLS)");

    /// <summary>
    /// The best TLS-to-plaintext throughput ratio for a plaintext run that took <paramref name="wallMs"/> and used
    /// <paramref name="cpuMs"/> of CPU to move <paramref name="bytes"/>: over TLS the same run does the same work plus the
    /// cipher's on each byte, spread at best over every core. 1 when the cores have room for the cipher.
    /// </summary>
    public double CeilingRatio(double wallMs, double cpuMs, long bytes, int cores)
    {
        double leastTlsMs = (cpuMs + NsPerByte * bytes / 1e6) / cores;
        return leastTlsMs <= wallMs ? 1 : wallMs / leastTlsMs;
    }
}
