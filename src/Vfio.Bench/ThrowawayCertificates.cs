using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Vfio.Migration;

namespace Vfio.Bench;

/// <summary>
/// TLS credentials for one benchmark (`bench --tls`), made in memory and never written: a CA and one certificate it
/// signed, for both ends (server and client use), pinned by name. ECDSA P-256, as a test pair made with openssl would be.
/// </summary>
public static class ThrowawayCertificates
{
    public const string Name = "vfio-mig-bench";

    public static TlsSettings Create()
    {
        var now = DateTimeOffset.UtcNow;
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=vfio-mig bench CA", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign, true));
        caRequest.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(caRequest.PublicKey, false));
        var ca = caRequest.CreateSelfSigned(now.AddHours(-1), now.AddDays(1));

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={Name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new("1.3.6.1.5.5.7.3.1"), new("1.3.6.1.5.5.7.3.2")], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(Name);
        request.CertificateExtensions.Add(san.Build());
        using var signed = request.Create(ca, now.AddHours(-1), now.AddDays(1), RandomNumberGenerator.GetBytes(16));
        return new TlsSettings(signed.CopyWithPrivateKey(key), [], [ca], Name);
    }
}
