using System.CommandLine;
using Vfio.Cli;

namespace Vfio.Tests.Migration;

/// <summary>The TLS options of vfio-mig: a run over them, and each misuse as a one-line usage error (exit 2).</summary>
public sealed class TlsCliTests : IDisposable
{
    private const string Small = "--state-size=256KiB --buffer-size=32KiB --sim-record-size=48KiB --sim-load-rate=1GiB";
    private readonly TestPki _pki = new();

    public void Dispose() => _pki.Dispose();

    private static (int Code, string Out, string Err) Invoke(string args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.BuildRoot().Parse(args.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void Loopback_over_tls_succeeds()
    {
        var (code, stdout, stderr) = Invoke($"loopback --sim 2 --channels 2 {Small} {_pki.Options("dst", peerName: "dst.test")}");
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("result ok: 2 devices", stdout);
    }

    [Fact]
    public void Loopback_with_a_pinned_name_the_certificate_lacks_fails()
    {
        var (code, stdout, stderr) = Invoke($"loopback --sim 1 --channels 1 {Small} {_pki.Options("dst", peerName: "nowhere.test")}");
        Assert.Equal(1, code);
        Assert.Contains("not issued to nowhere.test", stderr + stdout);
    }

    [Theory]
    [InlineData("localhost", 1, "not issued to localhost")] // a name: the destination's certificate (dst.test, 127.0.0.1) must carry it
    [InlineData("127.0.0.1", 0, "result ok")]               // an address: not checked
    public void Send_checks_the_host_of_to_only_when_it_is_a_name(string host, int expected, string mention)
    {
        var (_, dst) = TestDevices.Pairs(1);
        using var listener = Vfio.Migration.Loopback.Listen(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0), 16);
        int port = ((System.Net.IPEndPoint)listener.LocalEndPoint!).Port;
        var options = TestDevices.Options(1) with { AcceptTimeout = TimeSpan.FromSeconds(5), Tls = _pki.Settings("dst") };
        var (thread, _) = TlsTests.StartDestination(listener, dst, options);
        var (code, stdout, stderr) = Invoke($"send --to {host}:{port} --device sim:vf0 --channels 1 {Small} {_pki.Options("src")}");
        Assert.True(code == expected, stderr + stdout);
        Assert.Contains(mention, stderr + stdout);
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
    }

    [Theory]
    [InlineData("missing-key", "missing --tls-key")]
    [InlineData("missing-ca", "missing --tls-ca")]
    [InlineData("peer-alone", "--tls-peer-name needs")]
    [InlineData("garbage-cert", "--tls-cert")]
    [InlineData("absent-key", "--tls-key: cannot read")]
    [InlineData("wrong-key", "does not belong")]
    [InlineData("plain-any", "--insecure")]
    [InlineData("insecure-and-tls", "--insecure contradicts")]
    public void Misused_tls_options_are_one_line_usage_errors(string what, string mention)
    {
        string garbage = Path.Combine(_pki.Folder, "garbage.pem");
        File.WriteAllText(garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
        string src = $"--tls-cert {_pki.Cert("src")}", key = $"--tls-key {_pki.Key("src")}", ca = $"--tls-ca {_pki.Ca}";
        string args = what switch
        {
            "missing-key" => $"loopback {src} {ca}",
            "missing-ca" => $"send --to 127.0.0.1:9 --device sim:a {src} {key}",
            "peer-alone" => "loopback --tls-peer-name dst.test",
            "garbage-cert" => $"loopback --tls-cert {garbage} {key} {ca}",
            "absent-key" => $"loopback {src} --tls-key {_pki.Folder}/none.key {ca}",
            "wrong-key" => $"loopback {src} --tls-key {_pki.Key("dst")} {ca}",
            "plain-any" => "receive --listen 0.0.0.0:0 --device sim:a",
            _ => $"receive --listen 0.0.0.0:0 --device sim:a --insecure {src} {key} {ca}",
        };
        var (code, stdout, stderr) = Invoke(args);
        Assert.Equal(2, code);
        string line = stderr.Trim();
        Assert.DoesNotContain("\n", line);
        Assert.StartsWith("vfio-mig: ", line);
        Assert.Contains(mention, line);
        Assert.DoesNotContain("   at ", stderr + stdout);
    }

    [Theory]
    [InlineData("receive --listen 0.0.0.0:0 --insecure --device sim:")]
    [InlineData("receive --listen 127.0.0.1:0 --device sim:")]
    public void Plaintext_on_loopback_or_with_insecure_passes_the_tls_rule(string args)
    {
        // The run stops at the next check (an empty simulated device name), past the TLS rule.
        var (code, _, stderr) = Invoke(args);
        Assert.NotEqual(0, code);
        Assert.DoesNotContain("--insecure", stderr);
        Assert.Contains("sim:NAME", stderr);
    }
}
