using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>Mutual TLS: a run over it, and every way a peer's certificate (or its absence) is refused, in bounded time.</summary>
public sealed class TlsTests : IDisposable
{
    private readonly TestPki _pki = new();

    public void Dispose() => _pki.Dispose();

    [Fact]
    public void A_loopback_migration_over_tls_verifies_and_every_connection_is_encrypted()
    {
        var (src, dst) = TestDevices.Pairs(3);
        var tls = _pki.Settings("dst", peerName: "dst.test");
        var options = TestDevices.Options(3) with { Tls = tls };
        using var relay = new RecordingRelay();
        var report = SimulatedRun.Annotate(Loopback.Run(src, dst, options, null, null, relay.To, TestContext.Current.CancellationToken),
            src, dst, options.DowntimeLimit);
        Assert.True(report.Ok, report.Error);
        Assert.All(report.Devices, d => Assert.True(d.Verified));
        TestDevices.AssertSameState(src, dst);
        // The main channel and 3 data channels, each a TLS handshake record (0x16, version 3.x) from its first byte.
        var starts = relay.Starts;
        Assert.Equal(4, starts.Count);
        Assert.All(starts, b => Assert.Equal((byte)0x16, b[0]));
        Assert.All(starts, b => Assert.Equal((byte)0x03, b[1]));
    }

    [Fact]
    public void A_source_whose_certificate_another_ca_signed_is_refused_before_any_device_is_touched_and_a_real_source_then_migrates()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var watched = dst.Select(d => new WatchedDevice(d)).ToArray();
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var (thread, result) = StartDestination(listener, watched, TestDevices.Options(2) with { Tls = _pki.Settings("dst") });

        var sw = Stopwatch.StartNew();
        var refused = new MigrationSource(src, TestDevices.Options(2) with { Tls = _pki.Settings("rogue") })
            .Run(ep, TestContext.Current.CancellationToken);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(8), $"took {sw.Elapsed}");
        Assert.False(refused.Ok);
        Assert.Contains("TLS", refused.Error);
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        Assert.All(watched, d => Assert.Equal(0, d.Calls));

        var real = new MigrationSource(src, TestDevices.Options(2) with { Tls = _pki.Settings("src") })
            .Run(ep, TestContext.Current.CancellationToken);
        Assert.True(thread.Join(TimeSpan.FromSeconds(20)));
        Assert.True(real.Ok, real.Error);
        Assert.True(result.Report!.Ok, result.Report.Error);
        TestDevices.AssertSameState(src, dst);
    }

    [Fact]
    public void A_client_without_a_certificate_is_refused_and_the_destination_keeps_waiting()
    {
        var (src, dst) = TestDevices.Pairs(1);
        var watched = dst.Select(d => new WatchedDevice(d)).ToArray();
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var ep = (IPEndPoint)listener.LocalEndPoint!;
        var (thread, result) = StartDestination(listener, watched, TestDevices.Options(1) with { Tls = _pki.Settings("dst") });

        using (var client = new TcpClient())
        {
            client.Connect(ep);
            client.ReceiveTimeout = 10_000;
            // The destination's certificate is checked against the test CA; what is missing is this side's.
            using var ssl = new SslStream(client.GetStream(), false);
            var sw = Stopwatch.StartNew();
            // TLS 1.3: the server's refusal of a missing client certificate may come at the handshake or at the first read.
            var failure = Record.Exception(() =>
            {
                ssl.AuthenticateAsClient(new SslClientAuthenticationOptions
                {
                    TargetHost = "dst.test",
                    EnabledSslProtocols = SslProtocols.Tls13,
                    CertificateChainPolicy = TrustOnly(_pki.Ca),
                });
                var hs = new byte[Protocol.HandshakeSize];
                new Handshake(0, 42, 1).Write(hs);
                ssl.Write(hs);
                if (ssl.Read(new byte[Protocol.HandshakeReplySize]) == 0) throw new IOException("closed");
            });
            Assert.True(failure is IOException or AuthenticationException, failure?.ToString() ?? "the destination answered");
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(8), $"took {sw.Elapsed}");
        }
        Assert.Equal(0, watched[0].Calls);

        var real = new MigrationSource(src, TestDevices.Options(1) with { Tls = _pki.Settings("src") })
            .Run(ep, TestContext.Current.CancellationToken);
        Assert.True(thread.Join(TimeSpan.FromSeconds(20)));
        Assert.True(real.Ok, real.Error);
        Assert.True(result.Report!.Ok, result.Report.Error);
    }

    [Theory]
    [InlineData("src", "dst", "elsewhere.test", null, "not issued to elsewhere.test")] // the source pins a name the destination lacks
    [InlineData("wrong", "dst", null, "src.test", "")]                              // the destination pins the source's name
    [InlineData("src", "rogue", null, null, "not signed by --tls-ca")]              // the destination's certificate: another CA
    [InlineData("src", "expired", null, null, "not valid now")]                     // the destination's certificate expired
    [InlineData("expired", "dst", null, null, "")]                                  // the source's certificate expired
    public void A_certificate_the_peer_must_refuse_fails_the_source_in_bounded_time_and_no_device_changes(string sourceCert,
        string destinationCert, string? sourcePin, string? destinationPin, string mention)
    {
        var (src, dst) = TestDevices.Pairs(1);
        var watched = dst.Select(d => new WatchedDevice(d)).ToArray();
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var options = TestDevices.Options(1) with { AcceptTimeout = TimeSpan.FromSeconds(2) };
        var (thread, result) = StartDestination(listener, watched, options with { Tls = _pki.Settings(destinationCert, destinationPin) });
        var sw = Stopwatch.StartNew();
        var report = new MigrationSource(src, options with { Tls = _pki.Settings(sourceCert, sourcePin) })
            .Run((IPEndPoint)listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(8), $"took {sw.Elapsed}");
        TestContext.Current.TestOutputHelper?.WriteLine($"source: {report.Error}");
        Assert.False(report.Ok);
        Assert.StartsWith("main channel: TLS: ", report.Error);
        Assert.Contains(mention, report.Error);
        Assert.DoesNotContain("\n", report.Error);
        Assert.Equal(MigrationState.Running, src[0].GetState());
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
        Assert.Contains("timed out waiting for a source", result.Report!.Error); // the refused source never became the session
        Assert.Equal(0, watched[0].Calls);
    }

    [Theory]
    [InlineData(false, true, "does the destination require TLS?")]
    [InlineData(true, false, "main channel: TLS: ")]
    public void Plaintext_against_tls_is_refused_cleanly_both_ways(bool sourceTls, bool destinationTls, string mention)
    {
        var (src, dst) = TestDevices.Pairs(1);
        var watched = dst.Select(d => new WatchedDevice(d)).ToArray();
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        var options = TestDevices.Options(1) with { AcceptTimeout = TimeSpan.FromSeconds(2) };
        var (thread, _) = StartDestination(listener, watched, options with { Tls = destinationTls ? _pki.Settings("dst") : null });
        var sw = Stopwatch.StartNew();
        var report = new MigrationSource(src, options with { Tls = sourceTls ? _pki.Settings("src") : null })
            .Run((IPEndPoint)listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(8), $"took {sw.Elapsed}");
        TestContext.Current.TestOutputHelper?.WriteLine($"source: {report.Error}");
        Assert.False(report.Ok);
        Assert.Contains(mention, report.Error);
        Assert.Equal(MigrationState.Running, src[0].GetState());
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
        Assert.Equal(0, watched[0].Calls);
    }

    [Fact]
    public void A_silent_peer_over_tls_times_out()
    {
        // A "destination" that completes TLS and our handshake, then says nothing: the TLS read must time out.
        var (src, _) = TestDevices.Pairs(1);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 4);
        var server = _pki.Settings("dst");
        var t = new Thread(() =>
        {
            using var c = Accept(listener, server);
            Thread.Sleep(4000);
        }) { IsBackground = true };
        t.Start();
        var sw = Stopwatch.StartNew();
        var report = new MigrationSource(src, TestDevices.Options(1) with { Timeout = TimeSpan.FromSeconds(1), Tls = _pki.Settings("src") })
            .Run((IPEndPoint)listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        Assert.False(report.Ok);
        Assert.Contains("timeout", report.Error, StringComparison.OrdinalIgnoreCase);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(3.5), $"took {sw.Elapsed}");
        Assert.Equal(MigrationState.Running, src[0].GetState());
    }

    [Fact]
    public void A_peer_that_stops_reading_over_tls_fails_the_write_at_the_timeout()
    {
        // A "destination" that accepts over TLS, grants a large window and sends heartbeats, but never reads its data
        // channel: once the socket buffers are full, the source's TLS write must give up after --timeout. The source
        // takes the window up to its own --window: 32 MiB in flight is more than the socket buffers hold.
        using var source = new NullDevice("null:vf0", 256L << 20);
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 4);
        var server = _pki.Settings("dst");
        using var done = new ManualResetEventSlim();
        var t = new Thread(() =>
        {
            using var main = Accept(listener, server);
            var channel = new MainChannel(main, "source");
            channel.Expect<DeviceListMessage>("before its device list");
            channel.Send(new AcceptMessage(256, ["null:dst0"]));
            using var data = Accept(listener, server);
            try
            {
                while (!done.Wait(200)) channel.Send(new HeartbeatMessage());
            }
            catch (MigrationException) { /* the source gave up and closed */ }
        }) { IsBackground = true };
        t.Start();
        var sw = Stopwatch.StartNew();
        var options = TestDevices.Options(1, buffer: 1 << 20) with { Timeout = TimeSpan.FromSeconds(1), Window = 32, Tls = _pki.Settings("src") };
        var report = new MigrationSource([source], options).Run((IPEndPoint)listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        done.Set();
        Assert.False(report.Ok);
        Assert.Contains("stopped reading for longer than the timeout", report.Error);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(8), $"took {sw.Elapsed}");
        Assert.Equal(MigrationState.Running, source.GetState());
        Assert.True(t.Join(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void A_failure_mid_run_over_tls_aborts_every_connection_promptly()
    {
        // The quiesce fails on the source while every TLS channel is open and the destination's threads block in TLS reads.
        var (src, dst) = TestDevices.Pairs(2);
        var options = TestDevices.Options(2) with { Timeout = TimeSpan.FromSeconds(20), Tls = _pki.Settings("dst") };
        var sw = Stopwatch.StartNew();
        var report = Loopback.Run([src[0], new FaultyDevice(src[1], refuseStop: true)], dst, options,
            cancel: TestContext.Current.CancellationToken);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"took {sw.Elapsed}");
        Assert.False(report.Ok);
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
    }

    /// <summary>One connection of a hand-made destination: TLS, then our handshake answered ok.</summary>
    private static Connection Accept(Socket listener, TlsSettings tls)
    {
        var c = new Connection(listener.Accept(), TimeSpan.FromSeconds(10), "test peer") { ReceiveTimeout = TimeSpan.FromSeconds(10) };
        c.SecureAsServer(tls);
        var hs = new byte[Protocol.HandshakeSize];
        c.ReadExact(hs);
        var reply = new byte[Protocol.HandshakeReplySize];
        new HandshakeReply(HandshakeStatus.Ok, Handshake.Read(hs).SessionId).Write(reply);
        c.WriteAll(reply);
        return c;
    }

    [Theory]
    [InlineData("cert", "--tls-cert")]
    [InlineData("key", "--tls-key")]
    [InlineData("ca", "--tls-ca")]
    public void Unreadable_or_mismatched_pem_files_are_one_line_errors_naming_the_option(string broken, string option)
    {
        string garbage = Path.Combine(_pki.Folder, "garbage.pem");
        File.WriteAllText(garbage, "not a PEM file\n");
        var e = Assert.Throws<ArgumentException>(() => TlsSettings.FromPemFiles(
            broken == "cert" ? garbage : _pki.Cert("src"), broken == "key" ? garbage : _pki.Key("src"), broken == "ca" ? garbage : _pki.Ca, null));
        Assert.StartsWith(option, e.Message);
        var mismatch = Assert.Throws<ArgumentException>(() => TlsSettings.FromPemFiles(_pki.Cert("src"), _pki.Key("dst"), _pki.Ca, null));
        Assert.Contains("does not belong", mismatch.Message);
        var missing = Assert.Throws<ArgumentException>(
            () => TlsSettings.FromPemFiles(_pki.Cert("src"), _pki.Key("src"), "/nonexistent/ca.pem", null));
        Assert.StartsWith("--tls-ca: cannot read", missing.Message);
    }

    private static System.Security.Cryptography.X509Certificates.X509ChainPolicy TrustOnly(string caFile)
    {
        var policy = new System.Security.Cryptography.X509Certificates.X509ChainPolicy
        {
            TrustMode = System.Security.Cryptography.X509Certificates.X509ChainTrustMode.CustomRootTrust,
            RevocationMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck,
        };
        policy.CustomTrustStore.ImportFromPemFile(caFile);
        return policy;
    }

    internal sealed class DestinationResult
    {
        public RunReport? Report;
    }

    internal static (Thread Thread, DestinationResult Result) StartDestination(Socket listener, IMigrationDevice[] devices,
        MigrationOptions options)
    {
        var result = new DestinationResult();
        var destination = new MigrationDestination(devices, options);
        var t = new Thread(() => result.Report = destination.Run(listener)) { IsBackground = true, Name = "test destination" };
        t.Start();
        return (t, result);
    }

    /// <summary>Forwards each connection to the destination and keeps its first bytes from the source.</summary>
    private sealed class RecordingRelay : IDisposable
    {
        private readonly Socket _listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        private readonly List<byte[]> _starts = [];
        private readonly List<Socket> _sockets = [];
        private IPEndPoint? _target;

        public List<byte[]> Starts { get { lock (_starts) return [.. _starts]; } }

        public IPEndPoint To(IPEndPoint target)
        {
            _target = target;
            new Thread(Accept) { IsBackground = true }.Start();
            return (IPEndPoint)_listener.LocalEndPoint!;
        }

        private void Accept()
        {
            try
            {
                while (true)
                {
                    var client = _listener.Accept();
                    var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                    server.Connect(_target!);
                    lock (_sockets) _sockets.AddRange([client, server]);
                    new Thread(() => Pump(client, server, record: true)) { IsBackground = true }.Start();
                    new Thread(() => Pump(server, client, record: false)) { IsBackground = true }.Start();
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }

        private void Pump(Socket from, Socket to, bool record)
        {
            var b = new byte[64 << 10];
            bool first = record;
            try
            {
                while (true)
                {
                    int n = from.Receive(b);
                    if (n == 0) break;
                    if (first)
                    {
                        lock (_starts) _starts.Add(b[..Math.Min(n, 8)]);
                        first = false;
                    }
                    to.Send(b.AsSpan(0, n));
                }
                to.Shutdown(SocketShutdown.Send);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }

        public void Dispose()
        {
            _listener.Dispose();
            lock (_sockets) foreach (var s in _sockets) s.Dispose();
        }
    }
}

/// <summary>Counts every call that could change a device (state changes, resets): a refused peer must cause none.</summary>
internal sealed class WatchedDevice(IMigrationDevice inner) : IMigrationDevice
{
    private int _calls;
    public int Calls => Volatile.Read(ref _calls);
    public string Name => inner.Name;
    public MigrationFlags Flags => inner.Flags;
    public MigrationState GetState() => inner.GetState();
    public ulong? StopCopySizeEstimate() => inner.StopCopySizeEstimate();
    public byte[] SaveConfig() => inner.SaveConfig();
    public ulong? StateDigest() => inner.StateDigest();
    public IEnumerable<Type> DataPathTypes => inner.DataPathTypes;
    public void Dispose() => inner.Dispose();

    public void RestoreConfig(ReadOnlySpan<byte> config)
    {
        Interlocked.Increment(ref _calls);
        inner.RestoreConfig(config);
    }

    public void Reset()
    {
        Interlocked.Increment(ref _calls);
        inner.Reset();
    }

    public IDeviceDataStream? SetState(MigrationState target)
    {
        Interlocked.Increment(ref _calls);
        return inner.SetState(target);
    }
}
