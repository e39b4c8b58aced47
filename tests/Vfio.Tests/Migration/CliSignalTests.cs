using System.Net;
using System.Text.Json;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// `send` and `receive` as two processes of the built vfio-mig, with a proxy between them that holds the main channel
/// at one step of the sequence (docs/protocol.md sections 2 and 6): both processes then wait at a known step, one is
/// killed (SIGKILL) or signalled, the held message is delivered or lost, and each side's exit code, one-line error and
/// JSON outcome must be what the commit point says.
/// </summary>
public class CliSignalTests
{
    private const string Small = "--state-size=256KiB --buffer-size=32KiB --sim-record-size=48KiB --sim-load-rate=1GiB --channels 2 "
        + "--timeout 20";
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    /// <summary>A receive and a send process, the proxy holding the first message of a type in one direction.</summary>
    private sealed class Run : IDisposable
    {
        private readonly string _dir = Directory.CreateTempSubdirectory("vfio-mig-signal-").FullName;

        public Run(MessageType hold, bool toDestination)
        {
            Rx = CliProcess.Start($"receive --listen 127.0.0.1:0 --device sim:dst0 --device sim:dst1 {Small} --json {RxJson}");
            string listening = Rx.WaitForOutput(l => l.StartsWith("listening on ", StringComparison.Ordinal), Patience);
            Proxy = new FaultProxy(IPEndPoint.Parse(listening["listening on ".Length..].Trim())) { HoldMain = (hold, toDestination) };
            Tx = CliProcess.Start($"send --to {Proxy.Endpoint} --device sim:vf0 --device sim:vf1 {Small} --json {TxJson}");
            Assert.True(Proxy.Holding.Wait(Patience), $"the run never reached {hold}\nreceive {Rx.All}\nsend {Tx.All}");
        }

        public CliProcess Rx { get; }
        public CliProcess Tx { get; }
        public FaultProxy Proxy { get; }
        public string RxJson => Path.Combine(_dir, "rx.json");
        public string TxJson => Path.Combine(_dir, "tx.json");

        public void Dispose()
        {
            Tx.Dispose();
            Rx.Dispose();
            Proxy.Dispose();
            Directory.Delete(_dir, recursive: true);
        }
    }

    /// <summary>
    /// A side that ended by itself: its exit code, exactly one error line beside the lines that acknowledge a signal
    /// (containing <paramref name="error"/>; none when it succeeded without a signal) and its JSON report's outcome.
    /// </summary>
    private static void AssertSide(CliProcess p, string json, int code, string outcome, string? error, string? signal = null)
    {
        int exit = p.WaitForExit(Patience);
        Assert.True(exit == code, $"exit code {exit}, expected {code}\n{p.All}");
        Assert.DoesNotContain("   at ", p.All);
        var lines = p.StderrLines.Where(l => !l.Contains(": cancelling the migration", StringComparison.Ordinal)).ToArray();
        if (error is null) Assert.Empty(lines);
        else Assert.Contains(error, Assert.Single(lines));
        Assert.All(lines, l => Assert.StartsWith("vfio-mig: ", l));
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(outcome, root.GetProperty("outcome").GetString());
        Assert.Equal(outcome == "migrated" ? "ok" : "failed", root.GetProperty("result").GetString());
        if (signal is null) Assert.False(root.TryGetProperty("signal", out _));
        else Assert.Equal(signal, root.GetProperty("signal").GetString());
    }

    private static void AssertKilled(CliProcess p) => Assert.Equal(128 + 9, p.WaitForExit(Patience));

    [Theory]
    [InlineData("INT", 130)]
    [InlineData("TERM", 143)]
    [InlineData("HUP", 129)]
    public void A_signal_before_any_source_connects_cancels_receive(string signal, int code)
    {
        string json = Path.Combine(Path.GetTempPath(), $"vfio-mig-rx-{Guid.NewGuid():N}.json");
        try
        {
            using var rx = CliProcess.Start($"receive --listen 127.0.0.1:0 --device sim:dst0 {Small} --json {json}");
            rx.WaitForOutput(l => l.StartsWith("listening on ", StringComparison.Ordinal), Patience);
            rx.Signal(signal);
            AssertSide(rx, json, code, "rolled_back", $"migration cancelled by SIG{signal}: destination devices reset", "SIG" + signal);
            Assert.Contains($"vfio-mig: SIG{signal}: cancelling the migration", rx.Stderr);
        }
        finally { File.Delete(json); }
    }

    [Fact]
    public void Source_killed_after_the_device_list_the_destination_resets()
    {
        using var run = new Run(MessageType.Accept, toDestination: false);
        run.Tx.Signal("KILL");
        AssertKilled(run.Tx);
        AssertSide(run.Rx, run.RxJson, 1, "rolled_back", "main channel");
    }

    [Fact]
    public void Destination_interrupted_after_the_device_list_both_roll_back()
    {
        using var run = new Run(MessageType.Accept, toDestination: false);
        run.Rx.Signal("INT");
        AssertSide(run.Rx, run.RxJson, 130, "rolled_back", "migration cancelled by SIGINT: destination devices reset", "SIGINT");
        run.Proxy.Release(); // the Accept, then the destination's Error (or its closed listener, whichever the source meets first)
        AssertSide(run.Tx, run.TxJson, 1, "rolled_back", "; source devices RUNNING");
    }

    [Fact]
    public void Source_terminated_during_the_transfer_resumes_its_devices()
    {
        using var run = new Run(MessageType.DeviceDone, toDestination: true);
        run.Tx.WaitForOutput(l => l.Contains("switchover: 2 devices stopped", StringComparison.Ordinal), Patience);
        run.Tx.Signal("TERM");
        AssertSide(run.Tx, run.TxJson, 143, "rolled_back", "migration cancelled by SIGTERM: source devices RUNNING", "SIGTERM");
        Assert.Contains("2 source devices back to RUNNING", run.Tx.Stdout);
        run.Proxy.Release(); // the source's Error, or its closed data channels first
        AssertSide(run.Rx, run.RxJson, 1, "rolled_back", "; destination devices reset");
    }

    [Fact]
    public void Destination_killed_during_the_transfer_the_source_resumes()
    {
        using var run = new Run(MessageType.DeviceDone, toDestination: true);
        run.Rx.Signal("KILL");
        AssertKilled(run.Rx);
        run.Proxy.Release();
        AssertSide(run.Tx, run.TxJson, 1, "rolled_back", "source devices RUNNING");
        Assert.Contains("2 source devices back to RUNNING", run.Tx.Stdout);
    }

    [Fact]
    public void Destination_killed_after_the_source_committed_leaves_the_outcome_unknown()
    {
        using var run = new Run(MessageType.Commit, toDestination: true);
        run.Tx.WaitForOutput(l => l.Contains("committing", StringComparison.Ordinal), Patience);
        run.Rx.Signal("KILL");
        AssertKilled(run.Rx);
        AssertSide(run.Tx, run.TxJson, 3, "unknown", "outcome unknown: the migration was committed, then");
        Assert.Contains("vfio-mig resume sim:vf0 sim:vf1", run.Tx.Stderr);
        Assert.DoesNotContain("back to RUNNING", run.Tx.Stdout);
    }

    [Fact]
    public void Destination_killed_with_its_result_lost_the_source_resumes()
    {
        using var run = new Run(MessageType.Result, toDestination: false);
        run.Rx.Signal("KILL");
        AssertKilled(run.Rx);
        run.Proxy.Cut();
        AssertSide(run.Tx, run.TxJson, 1, "rolled_back", "source devices RUNNING");
    }

    [Fact]
    public void Source_interrupted_while_waiting_for_the_result_both_roll_back()
    {
        using var run = new Run(MessageType.Result, toDestination: false);
        run.Tx.Signal("INT");
        AssertSide(run.Tx, run.TxJson, 130, "rolled_back", "migration cancelled by SIGINT: source devices RUNNING", "SIGINT");
        AssertSide(run.Rx, run.RxJson, 1, "rolled_back", "source: cancelled; destination devices reset");
    }

    [Fact]
    public void Source_terminated_after_its_commit_keeps_its_devices_stopped_and_the_destination_runs()
    {
        using var run = new Run(MessageType.Commit, toDestination: true);
        run.Tx.WaitForOutput(l => l.Contains("committing", StringComparison.Ordinal), Patience);
        run.Tx.Signal("TERM");
        AssertSide(run.Tx, run.TxJson, 3, "unknown", "committed, then cancelled by SIGTERM", "SIGTERM");
        Assert.DoesNotContain("back to RUNNING", run.Tx.Stdout);
        run.Proxy.Release(); // the Commit, then the source's Error: the Commit decides
        AssertSide(run.Rx, run.RxJson, 0, "migrated", null);
    }

    [Fact]
    public void Source_killed_with_its_commit_lost_the_destination_resets()
    {
        using var run = new Run(MessageType.Commit, toDestination: true);
        run.Tx.Signal("KILL");
        AssertKilled(run.Tx);
        run.Proxy.Cut();
        AssertSide(run.Rx, run.RxJson, 1, "rolled_back", "destination devices reset");
    }

    [Fact]
    public void Destination_interrupted_before_the_commit_arrives_both_roll_back()
    {
        using var run = new Run(MessageType.Commit, toDestination: true);
        run.Rx.WaitForOutput(l => l.Contains("waiting for the source to commit", StringComparison.Ordinal), Patience);
        run.Rx.Signal("INT");
        AssertSide(run.Rx, run.RxJson, 130, "rolled_back", "migration cancelled by SIGINT: destination devices reset", "SIGINT");
        // The source committed; the destination's Error (sent after it stopped for good) says it did not take over.
        AssertSide(run.Tx, run.TxJson, 1, "rolled_back", "destination: cancelled; source devices RUNNING");
        Assert.Contains("2 source devices back to RUNNING", run.Tx.Stdout);
    }

    [Fact]
    public void Destination_terminated_after_its_devices_run_completes()
    {
        using var run = new Run(MessageType.Running, toDestination: false);
        run.Rx.WaitForOutput(l => l.Contains("commit received", StringComparison.Ordinal), Patience);
        run.Rx.Signal("TERM");
        AssertSide(run.Rx, run.RxJson, 0, "migrated", "SIGTERM came after the commit point: the migration completed", "SIGTERM");
        run.Proxy.Release();
        AssertSide(run.Tx, run.TxJson, 0, "migrated", null);
    }
}
