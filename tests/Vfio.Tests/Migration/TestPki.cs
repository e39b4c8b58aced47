using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// Test certificates made here (CertificateRequest, ECDSA P-256) and written as PEM files to a temporary folder: a CA;
/// "dst" (DNS dst.test, IP 127.0.0.1) and "src" (DNS src.test) signed by it; "rogue", signed by another CA; "expired"
/// and "wrong" (DNS elsewhere.test), signed by the CA. Every leaf may serve either end (server and client use), so that
/// one pair serves both sides of a loopback run.
/// </summary>
internal sealed class TestPki : IDisposable
{
    private static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1");
    private static readonly Oid ClientAuth = new("1.3.6.1.5.5.7.3.2");

    public TestPki()
    {
        Directory.CreateDirectory(Folder);
        var now = DateTimeOffset.UtcNow;
        using var ca = Authority("vfio-mig test CA", now);
        using var other = Authority("some other CA", now);
        File.WriteAllText(Path.Combine(Folder, "ca.pem"), ca.ExportCertificatePem());
        File.WriteAllText(Path.Combine(Folder, "other-ca.pem"), other.ExportCertificatePem());
        Write("dst", Leaf("dst.test", ca, now.AddDays(-1), now.AddDays(30), "dst.test", IPAddress.Loopback));
        Write("src", Leaf("src.test", ca, now.AddDays(-1), now.AddDays(30), "src.test"));
        Write("rogue", Leaf("dst.test", other, now.AddDays(-1), now.AddDays(30), "dst.test", IPAddress.Loopback));
        Write("expired", Leaf("dst.test", ca, now.AddDays(-30), now.AddDays(-1), "dst.test", IPAddress.Loopback));
        Write("wrong", Leaf("elsewhere.test", ca, now.AddDays(-1), now.AddDays(30), "elsewhere.test"));
    }

    public string Folder { get; } = Path.Combine(Path.GetTempPath(), $"vfio-mig-pki-{Guid.NewGuid():N}");
    public string Ca => Path.Combine(Folder, "ca.pem");
    public string OtherCa => Path.Combine(Folder, "other-ca.pem");
    public string Cert(string name) => Path.Combine(Folder, $"{name}.pem");
    public string Key(string name) => Path.Combine(Folder, $"{name}.key");

    /// <summary>Settings from the PEM files, as the command line reads them.</summary>
    public TlsSettings Settings(string name, string? peerName = null, string? ca = null) =>
        TlsSettings.FromPemFiles(Cert(name), Key(name), ca ?? Ca, peerName);

    /// <summary>The options of the CLI that name this pair's files.</summary>
    public string Options(string name, string? peerName = null) =>
        $"--tls-cert {Cert(name)} --tls-key {Key(name)} --tls-ca {Ca}" + (peerName is null ? "" : $" --tls-peer-name {peerName}");

    private void Write(string name, X509Certificate2 cert)
    {
        using (cert)
        using (var key = cert.GetECDsaPrivateKey()!)
        {
            File.WriteAllText(Cert(name), cert.ExportCertificatePem());
            File.WriteAllText(Key(name), key.ExportPkcs8PrivateKeyPem());
        }
    }

    private static X509Certificate2 Authority(string name, DateTimeOffset now)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        return request.CreateSelfSigned(now.AddDays(-60), now.AddDays(60));
    }

    private static X509Certificate2 Leaf(string cn, X509Certificate2 ca, DateTimeOffset notBefore, DateTimeOffset notAfter, string dns,
        IPAddress? ip = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={cn}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([ServerAuth, ClientAuth], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(dns);
        if (ip is not null) san.AddIpAddress(ip);
        request.CertificateExtensions.Add(san.Build());
        using var cert = request.Create(ca, notBefore, notAfter, RandomNumberGenerator.GetBytes(16));
        return cert.CopyWithPrivateKey(key);
    }

    public void Dispose()
    {
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
    }
}
