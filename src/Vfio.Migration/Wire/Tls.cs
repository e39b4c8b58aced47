using System.Globalization;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Vfio.Migration;

/// <summary>
/// Mutual TLS 1.3 on every connection (docs/protocol.md section 1a): this side's certificate and key, the authorities
/// the peer's certificate must chain to (custom root trust: never the system store, no revocation or download fetch),
/// and optionally the name the peer's certificate must carry (SAN DNS or IP, else its CN). Without a name, any
/// certificate that chains to the authorities is accepted. Immutable once made; the handshakes of several connections
/// use it at once.
/// </summary>
public sealed class TlsSettings
{
    private static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1");
    private static readonly Oid ClientAuth = new("1.3.6.1.5.5.7.3.2");
    /// <summary>AES-128-GCM first: OpenSSL's default puts AES-256-GCM first, which costs 40% more rounds per byte (Windows: its own).</summary>
    private static readonly CipherSuitesPolicy? Ciphers = OperatingSystem.IsWindows() ? null : new(
        [TlsCipherSuite.TLS_AES_128_GCM_SHA256, TlsCipherSuite.TLS_AES_256_GCM_SHA384, TlsCipherSuite.TLS_CHACHA20_POLY1305_SHA256]);
    private readonly SslStreamCertificateContext _context;
    private readonly X509Certificate2Collection _intermediates;
    private readonly X509Certificate2Collection _authorities;

    /// <param name="certificate">This side's certificate, with its private key.</param>
    /// <param name="intermediates">Certificates sent along with it, between it and the authority (may be empty).</param>
    /// <param name="authorities">The certificates the peer's must chain to.</param>
    /// <param name="peerName">The name the peer's certificate must carry, or null for any the authorities signed.</param>
    public TlsSettings(X509Certificate2 certificate, X509Certificate2Collection intermediates, X509Certificate2Collection authorities,
        string? peerName)
    {
        ArgumentNullException.ThrowIfNull(certificate);
        ArgumentNullException.ThrowIfNull(authorities);
        if (!certificate.HasPrivateKey) throw new ArgumentException("the TLS certificate has no private key");
        if (authorities.Count == 0) throw new ArgumentException("--tls-ca: no certificate authority");
        Certificate = certificate;
        _intermediates = intermediates ?? [];
        _authorities = authorities;
        PeerName = string.IsNullOrEmpty(peerName) ? null : peerName;
        _context = SslStreamCertificateContext.Create(certificate, _intermediates, offline: true);
    }

    public X509Certificate2 Certificate { get; }
    /// <summary>The name the peer's certificate must carry (SAN DNS or IP, else CN); null: any certificate the authorities signed.</summary>
    public string? PeerName { get; }

    /// <summary>The same credentials, checking the peer's certificate for <paramref name="peerName"/> (null: no name check).</summary>
    public TlsSettings WithPeerName(string? peerName) => new(Certificate, _intermediates, _authorities, peerName);

    /// <summary>
    /// Reads PEM files as QEMU's x509 credentials or libvirt's migration TLS take them: a certificate (the leaf first,
    /// then any intermediates), its unencrypted private key (PKCS#8, RSA or EC), and the authorities to trust.
    /// Each failure is one line naming the option and the file.
    /// </summary>
    public static TlsSettings FromPemFiles(string certificateFile, string keyFile, string authorityFile, string? peerName)
    {
        var chain = ReadCertificates(certificateFile, "--tls-cert");
        var authorities = ReadCertificates(authorityFile, "--tls-ca");
        string key = ReadText(keyFile, "--tls-key");
        X509Certificate2 leaf;
        try { leaf = X509Certificate2.CreateFromPem(chain[0].ExportCertificatePem(), key); }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            throw new ArgumentException(e.Message.Contains("does not match", StringComparison.OrdinalIgnoreCase)
                ? $"--tls-key: the key in {keyFile} does not belong to the certificate in {certificateFile}"
                : $"--tls-key: {keyFile} holds no unencrypted private key in PEM (PKCS#8, RSA or EC): {e.Message}");
        }
        var intermediates = new X509Certificate2Collection();
        for (int i = 1; i < chain.Count; i++) intermediates.Add(chain[i]);
        return new TlsSettings(leaf, intermediates, authorities, peerName);
    }

    private static string ReadText(string file, string option)
    {
        try { return File.ReadAllText(file); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new ArgumentException($"{option}: cannot read {file}: {e.Message}");
        }
    }

    private static X509Certificate2Collection ReadCertificates(string file, string option)
    {
        string text = ReadText(file, option);
        var certificates = new X509Certificate2Collection();
        try { certificates.ImportFromPem(text); }
        catch (CryptographicException e) { throw new ArgumentException($"{option}: {file} is not a valid PEM certificate: {e.Message}"); }
        if (certificates.Count == 0) throw new ArgumentException($"{option}: {file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
        return certificates;
    }

    internal SslClientAuthenticationOptions ClientOptions(PeerCheck check) => new()
    {
        TargetHost = PeerName ?? "",
        ClientCertificateContext = _context,
        EnabledSslProtocols = SslProtocols.Tls13,
        CipherSuitesPolicy = Ciphers,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        CertificateChainPolicy = ChainPolicy(ServerAuth),
        RemoteCertificateValidationCallback = check.Validate,
        AllowRenegotiation = false,
        AllowTlsResume = false,
    };

    internal SslServerAuthenticationOptions ServerOptions(PeerCheck check) => new()
    {
        ServerCertificateContext = _context,
        ClientCertificateRequired = true,
        EnabledSslProtocols = SslProtocols.Tls13,
        CipherSuitesPolicy = Ciphers,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        CertificateChainPolicy = ChainPolicy(ClientAuth),
        RemoteCertificateValidationCallback = check.Validate,
        AllowRenegotiation = false,
        AllowTlsResume = false,
    };

    private X509ChainPolicy ChainPolicy(Oid usage)
    {
        var policy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
            DisableCertificateDownloads = true,
            VerificationTimeIgnored = false,
        };
        policy.CustomTrustStore.AddRange(_authorities);
        policy.ApplicationPolicy.Add(usage);
        return policy;
    }
}

/// <summary>
/// Checks one handshake's peer certificate (SslStream built its chain with the custom root trust of
/// <see cref="TlsSettings"/>) and keeps why it refused it, for a one-line error. Used by the handshaking thread only.
/// </summary>
internal sealed class PeerCheck(string? peerName, string peerRole)
{
    /// <summary>Why the peer's certificate was refused; null while none was.</summary>
    public string? Refusal { get; private set; }

    public bool Validate(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        if (certificate is not X509Certificate2 cert)
        {
            Refusal = $"the {peerRole} sent no certificate";
            return false;
        }
        if ((errors & SslPolicyErrors.RemoteCertificateChainErrors) != 0)
        {
            Refusal = Describe(cert, chain);
            return false;
        }
        // Names are checked here, not by SslStream (whose check follows the target host), on both sides alike.
        if (peerName is not null && !cert.MatchesHostname(peerName, allowWildcards: true, allowCommonName: true))
        {
            Refusal = $"the {peerRole}'s certificate ({cert.Subject}) is not issued to {peerName} (--tls-peer-name)";
            return false;
        }
        return true;
    }

    private string Describe(X509Certificate2 cert, X509Chain? chain)
    {
        var status = chain?.ChainStatus.Select(s => s.Status).Aggregate(X509ChainStatusFlags.NoError, (a, b) => a | b)
            ?? X509ChainStatusFlags.NoError;
        if ((status & (X509ChainStatusFlags.UntrustedRoot | X509ChainStatusFlags.PartialChain)) != 0)
            return $"the {peerRole}'s certificate ({cert.Subject}, issued by {cert.Issuer}) is not signed by --tls-ca";
        if ((status & X509ChainStatusFlags.NotTimeValid) != 0)
            return string.Create(CultureInfo.InvariantCulture, $"the {peerRole}'s certificate ({cert.Subject}) is not valid now (valid from "
                + $"{cert.NotBefore.ToUniversalTime():u} to {cert.NotAfter.ToUniversalTime():u})");
        if ((status & X509ChainStatusFlags.NotValidForUsage) != 0)
            return $"the {peerRole}'s certificate ({cert.Subject}) is not for this use (its extended key usage)";
        string what = chain is null ? "no chain" : string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()));
        return $"the {peerRole}'s certificate ({cert.Subject}) is refused: {what}";
    }
}
