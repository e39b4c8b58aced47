using System.CommandLine;
using System.Net;
using Vfio.Migration;
using UsageException = Vfio.Cli.MigrationCommands.UsageException;

namespace Vfio.Cli;

/// <summary>
/// The mutual-TLS options of every command that migrates (send, receive, loopback, bench): PEM files as QEMU's x509
/// credentials or libvirt's migration TLS take them, and the name to pin. Defined once so that their names and checks
/// cannot drift apart. README.md (Security) says how to make the files.
/// </summary>
internal sealed class TlsOptionSet
{
    public readonly Option<string?> Cert = new("--tls-cert")
    {
        Description = "TLS: this side's certificate (PEM; the leaf first, then any intermediates)",
    };
    public readonly Option<string?> Key = new("--tls-key") { Description = "TLS: the private key of --tls-cert (PEM, unencrypted)" };
    public readonly Option<string?> Ca = new("--tls-ca")
    {
        Description = "TLS: the CA certificate(s) the peer's certificate must chain to (PEM); the system store is not used",
    };
    public readonly Option<string?> PeerName = new("--tls-peer-name")
    {
        Description = "TLS: the name (SAN DNS or IP, else CN) the peer's certificate must carry; default: send checks the host of "
            + "--to when it is a name, receive accepts any certificate --tls-ca signed",
    };
    public readonly Option<bool> Insecure = new("--insecure")
    {
        Description = "Listen on a non-loopback address without TLS (anyone who can connect can migrate into the devices)",
    };

    public void AddTo(Command c)
    {
        foreach (var o in new Option[] { Cert, Key, Ca, PeerName })
            c.Options.Add(o);
    }

    /// <summary>The TLS settings the options give, or null when none is given; a partial or unreadable set is a usage error.</summary>
    public TlsSettings? Settings(ParseResult r)
    {
        string? cert = r.GetValue(Cert), key = r.GetValue(Key), ca = r.GetValue(Ca), peer = r.GetValue(PeerName);
        if (cert is null && key is null && ca is null)
        {
            if (peer is not null) throw new UsageException("--tls-peer-name needs --tls-cert, --tls-key and --tls-ca");
            return null;
        }
        var missing = new[] { (cert, "--tls-cert"), (key, "--tls-key"), (ca, "--tls-ca") }.Where(x => x.Item1 is null).Select(x => x.Item2).ToList();
        if (missing.Count > 0)
            throw new UsageException($"TLS needs --tls-cert, --tls-key and --tls-ca together (missing {string.Join(", ", missing)})");
        try { return TlsSettings.FromPemFiles(cert!, key!, ca!, peer); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    /// <summary>
    /// send: without --tls-peer-name the destination's certificate must carry the host of --to when that is a name (as a
    /// browser checks it); an IP address is not checked (certificates for migration hosts rarely carry their addresses).
    /// </summary>
    public TlsSettings? ForDestination(TlsSettings? tls, ParseResult r, string to)
    {
        if (tls is null || r.GetValue(PeerName) is not null) return tls;
        string host = to[..Math.Max(0, to.LastIndexOf(':'))].Trim('[', ']');
        return host.Length == 0 || IPAddress.TryParse(host, out _) ? tls : tls.WithPeerName(host);
    }

    /// <summary>receive: a non-loopback address needs TLS, or --insecure to say that plaintext is meant.</summary>
    public void CheckListen(ParseResult r, IPEndPoint endpoint, TlsSettings? tls)
    {
        bool insecure = r.GetValue(Insecure);
        if (tls is not null && insecure) throw new UsageException("--insecure contradicts --tls-cert: give one or the other");
        if (tls is null && !insecure && !IPAddress.IsLoopback(endpoint.Address))
            throw new UsageException($"--listen {endpoint}: refusing to listen on a non-loopback address without TLS "
                + "(give --tls-cert, --tls-key and --tls-ca, or --insecure)");
    }
}
