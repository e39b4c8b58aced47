using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Vfio.Cli;

namespace Vfio.Tests.Migration;

/// <summary>vfio-mig loopback/send/receive: exit codes, one-line errors, the JSON report, two real processes.</summary>
public class CliTests
{
    private const string Small = "--state-size=256KiB --buffer-size=32KiB --sim-record-size=48KiB --sim-load-rate=1GiB";

    private static (int Code, string Out, string Err) Invoke(string args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(args.Split(' ', StringSplitOptions.RemoveEmptyEntries),
            new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void Loopback_with_simulated_devices_prints_the_seed_style_summary_and_writes_json()
    {
        string json = Path.Combine(Path.GetTempPath(), $"vfio-mig-{Guid.NewGuid():N}.json");
        try
        {
            var (code, stdout, stderr) = Invoke($"loopback --sim 3 --channels 2 {Small} --json {json}");
            Assert.True(code == 0, stderr + stdout);
            Assert.Matches(@"sim:vf0 total loading time \d+ ms, wait \d+ ms load \d+ ms", stdout);
            Assert.Contains("result ok: 3 devices", stdout);
            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            Assert.Equal("ok", doc.RootElement.GetProperty("result").GetString());
            Assert.Equal(2, doc.RootElement.GetProperty("channels").GetInt32());
            Assert.Equal(3, doc.RootElement.GetProperty("devices").GetArrayLength());
        }
        finally { File.Delete(json); }
    }

    [Theory]
    [InlineData("", "digest")]
    [InlineData("--verify stream", "stream")]
    public void Loopback_verify_says_what_verified_covers_and_stream_takes_no_digest(string option, string verify)
    {
        string json = Path.Combine(Path.GetTempPath(), $"vfio-mig-{Guid.NewGuid():N}.json");
        try
        {
            var (code, stdout, stderr) = Invoke($"loopback --sim 2 --channels 2 {Small} {option} --json {json}");
            Assert.True(code == 0, stderr + stdout);
            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            Assert.Equal(verify, doc.RootElement.GetProperty("verify").GetString());
            foreach (var d in doc.RootElement.GetProperty("devices").EnumerateArray())
            {
                Assert.True(d.GetProperty("verified").GetBoolean());
                // The digest check is the destination's verify_ms: there exactly when a digest was compared.
                Assert.Equal(verify == "digest", d.TryGetProperty("verify_ms", out _));
            }
        }
        finally { File.Delete(json); }
    }

    [Fact]
    public void Loopback_coupled_and_explicit_sim_pairs()
    {
        var (code, stdout, stderr) = Invoke($"loopback --device sim:a=sim:b --device sim:c=sim:d --loading coupled --channels 3 {Small}");
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("sim:b total loading time", stdout);
        Assert.Contains("coupled loading", stdout);
    }

    [Fact]
    public void Loopback_migrates_dirtying_simulated_and_null_devices_live()
    {
        var (code, stdout, stderr) = Invoke($"loopback --sim 2 --channels 2 {Small} --precopy on --sim-dirty-rate 8MiB");
        Assert.True(code == 0, stderr + stdout);
        // Each phase with what it moved: bytes, KiB, or MiB with their rate.
        const string moved = @"(\d+ bytes|[0-9.]+ KiB|[0-9.]+ MiB at \d+ Mbit/s)";
        Assert.Matches($@"result ok: 2 devices, [0-9.]+ MiB, live \d+ ms \({moved}\), downtime \d+ ms \({moved}\)", stdout);
        (code, stdout, stderr) = Invoke(
            "loopback --null --sim 2 --channels 2 --state-size 1MiB --buffer-size 64KiB --precopy on --sim-dirty-rate 64MiB");
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("live ", stdout);
    }

    [Theory]
    [InlineData("loopback --sim-dirty-rate lots", "--sim-dirty-rate")]
    [InlineData("loopback --state-size 12XB", "--state-size")]
    [InlineData("loopback --state-size 10", "--state-size")]
    [InlineData("loopback --buffer-size lots", "--buffer-size")]
    [InlineData("loopback --channels 0", "--channels")]
    [InlineData("loopback --loading sideways", "--loading")]
    [InlineData("loopback --window 1", "--window")]
    [InlineData("loopback --timeout 0.0001", "--timeout")]
    [InlineData("loopback --load-timeout 0", "--load-timeout")]
    [InlineData("loopback --verify everything", "--verify")]
    [InlineData("loopback --device sim:a", "SRC=DST")]
    [InlineData("loopback --sim 2 --device sim:a=sim:b", "either")]
    [InlineData("send --to nowhere --device sim:a", "ADDR:PORT")]
    [InlineData("send --to 127.0.0.1:99999 --device sim:a", "ADDR:PORT")]
    [InlineData("receive --listen 127.0.0.1:0", "--device")]
    [InlineData("receive --listen foo.example:5000 --device sim:a", "IP address")]
    [InlineData("send --to 127.0.0.1:5000 --device sim:", "sim:NAME")]
    [InlineData("send --to 127.0.0.1:5000 --device sim:a --device sim:a", "twice")]
    [InlineData("send --device sim:a", "--to")]
    [InlineData("loopback --bogus", "--bogus")]
    [InlineData("loopback --channels many", "many")]
    [InlineData("receive --listen 127.0.0.1:0 --device sim:a extra", "extra")]
    [InlineData("resume", "'resume'")]
    [InlineData("info", "'info'")]
    [InlineData("list --bogus", "--bogus")]
    [InlineData("bench --repeat x", "x")]
    [InlineData("bench --precopy sometimes", "sometimes")]
    [InlineData("migrate", "vfio-mig --help")]
    [InlineData("", "command")]
    [InlineData("loopback --sim 1 --json /proc/vfio-mig-x", "--json: cannot write /proc/vfio-mig-x")]
    [InlineData("loopback --sim 1 --json /tmp --trace /tmp/x", "--json: cannot write /tmp")]
    [InlineData("send --to 127.0.0.1:1 --device sim:a --trace /proc/vfio-mig-x", "--trace")]
    [InlineData("receive --listen 127.0.0.1:0 --device sim:a --svg /proc/vfio-mig-x", "--svg")]
    [InlineData("loopback --sim 1 --json a.json --svg ./a.json", "--svg and --json name the same file")]
    public void Bad_input_gives_one_line_and_exit_code_2(string args, string mention)
    {
        var (code, stdout, stderr) = Invoke(args);
        Assert.Equal(ExitCodes.Usage, code);
        Assert.DoesNotContain("listening on", stdout); // receive checks its files before it listens
        string line = stderr.Trim();
        Assert.DoesNotContain("\n", line);
        Assert.StartsWith("vfio-mig: ", line);
        Assert.Contains(mention, line);
        Assert.DoesNotContain("   at ", stderr + stdout);
    }

    [Fact]
    public void Unknown_real_device_is_a_one_line_error()
    {
        var (code, stdout, stderr) = Invoke("loopback --device 0000:ff:1f.7=sim:b");
        Assert.NotEqual(0, code);
        Assert.Equal(ExitCodes.Usage, code);
        Assert.StartsWith("vfio-mig: 0000:ff:1f.7", stderr.Trim());
        Assert.DoesNotContain("\n", stderr.Trim());
        Assert.DoesNotContain("   at ", stderr + stdout);
    }

    [Fact]
    public void Send_to_a_closed_port_fails_with_one_line()
    {
        using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        int port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        var (code, _, stderr) = Invoke($"send --to 127.0.0.1:{port} --device sim:a {Small} --timeout 2");
        Assert.Equal(ExitCodes.Failed, code);
        Assert.Contains("connect to 127.0.0.1", stderr);
        Assert.Contains("ECONNREFUSED (Connection refused)", stderr); // the errno by name and meaning
        Assert.DoesNotContain("   at ", stderr);
    }

    [Fact]
    public void A_report_that_cannot_be_written_after_the_run_warns_and_keeps_the_exit_code()
    {
        var (code, stdout, stderr) = Invoke($"loopback --sim 2 {Small} --json /dev/full --trace /dev/full");
        Assert.Equal(ExitCodes.Usage, code); // the same file twice is refused before the run
        Assert.Contains("name the same file", stderr);

        (code, stdout, stderr) = Invoke($"loopback --sim 2 {Small} --json /dev/full");
        Assert.True(code == ExitCodes.Ok, stderr + stdout);
        Assert.Contains("result ok: 2 devices", stdout);
        var line = Assert.Single(stderr.Trim().Split('\n'));
        Assert.StartsWith("vfio-mig: warning: --json: writing /dev/full failed (", line);
        Assert.Contains("the outcome and exit code stand", line);

        using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        int port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        (code, _, stderr) = Invoke($"send --to 127.0.0.1:{port} --device sim:a {Small} --timeout 2 --svg /dev/full");
        Assert.Equal(ExitCodes.Failed, code); // the failed run's code, not the report's
        var lines = stderr.Trim().Split('\n');
        Assert.Equal(2, lines.Length);
        Assert.Contains(lines, x => x.StartsWith("vfio-mig: warning: --svg", StringComparison.Ordinal));
        Assert.Contains(lines, x => x.Contains("ECONNREFUSED (Connection refused); source devices RUNNING", StringComparison.Ordinal));
    }

    [Fact]
    public void A_report_file_that_exists_is_replaced_and_one_created_for_a_run_that_never_started_is_removed()
    {
        string dir = Directory.CreateTempSubdirectory("vfio-mig-files-").FullName;
        try
        {
            string json = Path.Combine(dir, "run.json"), trace = Path.Combine(dir, "run.trace.json");
            File.WriteAllText(json, new string('x', 100_000));
            var (code, _, stderr) = Invoke($"loopback --sim 1 {Small} --json {json} --trace {trace}");
            Assert.True(code == 0, stderr);
            using (JsonDocument.Parse(File.ReadAllText(json))) { } // truncated and rewritten, not overwritten in place
            using (JsonDocument.Parse(File.ReadAllText(trace))) { }

            string fresh = Path.Combine(dir, "fresh.json");
            (code, _, _) = Invoke($"send --to 127.0.0.1:1 --device sim: --json {fresh}");
            Assert.Equal(ExitCodes.Usage, code);
            Assert.False(File.Exists(fresh));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void Resume_exits_0_when_every_device_runs_and_1_when_one_cannot_be_resumed()
    {
        var (code, stdout, stderr) = Invoke("resume sim:a sim:b");
        Assert.True(code == ExitCodes.Ok, stderr);
        Assert.Contains("sim:a: already RUNNING", stdout);
        (code, stdout, stderr) = Invoke("resume sim:a 0000:ff:1f.7");
        Assert.Equal(ExitCodes.Failed, code);
        Assert.Contains("sim:a: already RUNNING", stdout);
        Assert.StartsWith("vfio-mig: 0000:ff:1f.7", Assert.Single(stderr.Trim().Split('\n')));
    }

    /// <summary>send and receive as two separate processes of the built vfio-mig, over TCP.</summary>
    [Fact]
    public void Send_and_receive_as_two_processes()
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "vfio-mig.dll");
        Assert.True(File.Exists(dll), dll);
        string json = Path.Combine(Path.GetTempPath(), $"vfio-mig-rx-{Guid.NewGuid():N}.json");
        string sjson = Path.Combine(Path.GetTempPath(), $"vfio-mig-tx-{Guid.NewGuid():N}.json");
        string rtrace = Path.Combine(Path.GetTempPath(), $"vfio-mig-rx-{Guid.NewGuid():N}.trace.json");
        string ssvg = Path.Combine(Path.GetTempPath(), $"vfio-mig-tx-{Guid.NewGuid():N}.svg");
        using var rx = Start(dll, $"receive --listen 127.0.0.1:0 --device sim:dst0 --device sim:dst1 --channels 3 {Small} --json {json} --trace "
            + $"{rtrace} --timeout 20");
        try
        {
            string? first = rx.StandardOutput.ReadLine();
            Assert.NotNull(first);
            Assert.StartsWith("listening on 127.0.0.1:", first);
            string port = first!["listening on 127.0.0.1:".Length..].Trim();
            using var tx = Start(dll, $"send --to 127.0.0.1:{port} --device sim:vf0 --device sim:vf1 --channels 3 {Small} --json {sjson} --svg "
                + $"{ssvg} --timeout 20");
            string txOut = tx.StandardOutput.ReadToEnd() + tx.StandardError.ReadToEnd();
            Assert.True(tx.WaitForExit(60_000), "sender did not exit");
            string rxOut = rx.StandardOutput.ReadToEnd() + rx.StandardError.ReadToEnd();
            Assert.True(rx.WaitForExit(60_000), "receiver did not exit");
            Assert.True(tx.ExitCode == 0, "send: " + txOut);
            Assert.True(rx.ExitCode == 0, "receive: " + rxOut);
            Assert.Contains("sim:dst1 total loading time", rxOut);
            Assert.Contains("sim:dst1 total loading time", txOut); // the source prints the destination's figures
            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            Assert.Equal("ok", doc.RootElement.GetProperty("result").GetString());
            Assert.True(doc.RootElement.GetProperty("downtime_ms").GetDouble() > 0);
            Assert.All(doc.RootElement.GetProperty("devices").EnumerateArray(), d => Assert.True(d.GetProperty("verified").GetBoolean()));
            using var sdoc = JsonDocument.Parse(File.ReadAllText(sjson));
            Assert.Equal("ok", sdoc.RootElement.GetProperty("result").GetString());
            // Simulated devices offer PRE_COPY, so this runs live (the default): their state went before the switchover.
            Assert.All(doc.RootElement.GetProperty("devices").EnumerateArray(), d => Assert.True(d.GetProperty("precopy_bytes").GetInt64() > 0));
            // Each side writes the timeline it saw: the receiver its loaders and receive channels, the sender its save threads.
            string trace = File.ReadAllText(rtrace);
            Assert.Contains("dst loader sim:dst1", trace);
            Assert.Contains("dst channel 3 receive", trace);
            using (JsonDocument.Parse(trace)) { }
            string svg = File.ReadAllText(ssvg);
            Assert.Contains("src save sim:vf1", svg);
            Assert.Contains("downtime", svg);
        }
        finally
        {
            if (!rx.HasExited) rx.Kill();
            File.Delete(json);
            File.Delete(sjson);
            File.Delete(rtrace);
            File.Delete(ssvg);
        }
    }

    [Fact]
    public void Receive_fails_non_zero_when_the_source_sends_the_wrong_number_of_devices()
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "vfio-mig.dll");
        using var rx = Start(dll, $"receive --listen 127.0.0.1:0 --device sim:dst0 {Small} --timeout 10");
        try
        {
            string port = rx.StandardOutput.ReadLine()!["listening on 127.0.0.1:".Length..].Trim();
            using var tx = Start(dll, $"send --to 127.0.0.1:{port} --device sim:vf0 --device sim:vf1 {Small} --timeout 10");
            string txErr = tx.StandardError.ReadToEnd();
            Assert.True(tx.WaitForExit(30_000));
            string rxErr = rx.StandardError.ReadToEnd();
            Assert.True(rx.WaitForExit(30_000));
            Assert.Equal(1, tx.ExitCode);
            Assert.Equal(1, rx.ExitCode);
            Assert.Contains("2 devices", txErr);
            Assert.Contains("2 devices", rxErr);
        }
        finally
        {
            if (!rx.HasExited) rx.Kill();
        }
    }

    private static Process Start(string dll, string args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(dll);
        foreach (var a in args.Split(' ', StringSplitOptions.RemoveEmptyEntries)) psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }
}
