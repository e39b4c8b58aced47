using System.Diagnostics;
using Vfio.Tests.Migration;

namespace Vfio.HwTests;

/// <summary>
/// `vfio-mig send` and `vfio-mig receive` as two processes over vfio_mig_sim pairs, one of them killed or signalled
/// while the destinations load (after the switchover, before any Result). Only real devices show whether the rollback
/// happened, so each case reads the module's sysfs afterwards: every source RUNNING with its state digest unchanged
/// (its state was not lost), every destination RUNNING, and the survivor's exit code and one-line error.
/// A destination load takes 2 s (the module's load delay), far longer than the start of a process under TCG takes to
/// notice the switchover line, so the fault always lands inside the downtime.
/// The module's reset on open and close is off here: the processes open the devices themselves and close them when they
/// exit, so a reset would replace the sources' prepared state at the start and drop it at the end, before the test can
/// read it (on a real VF, too, a state survives only while a process holds the device: docs/protocol.md).
/// </summary>
public class ProcessFailureTests
{
    private const long StateBytes = 1 << 20;
    private const int SlowUsPerMib = 2_000_000;
    private static readonly TimeSpan ProcessLimit = TimeSpan.FromMinutes(3); // JIT under TCG is slow; a hang still ends the test

    public static TheoryData<string, string> Faults() => new()
    {
        { "destination", "KILL" },
        { "destination", "TERM" },
        { "source", "KILL" },
        { "source", "TERM" },
        { "destination", "INT" },
    };

    [Theory]
    [MemberData(nameof(Faults))]
    public void A_side_killed_or_signalled_during_the_load_leaves_every_source_running_with_its_state(string victim, string signal)
    {
        var pairs = EngineEnv.RequirePairs(PairKind.Sim, 2);
        using var setup = new EngineSetup(PairKind.Sim, pairs, StateBytes, SlowUsPerMib);
        using var noReset = EngineTests.NoResetOnOpenClose(PairKind.Sim);
        string common = "--channels 2 --timeout 20 --precopy off"; // the fault must land in a stop-copy load
        using var rx = CliProcess.Start($"receive --listen 127.0.0.1:0 {string.Join(' ', pairs.Select(p => "--device " + p.Dst))} {common}");
        string port = rx.WaitForOutput(l => l.StartsWith("listening on 127.0.0.1:", StringComparison.Ordinal), ProcessLimit)
            ["listening on 127.0.0.1:".Length..].Trim();
        using var tx = CliProcess.Start($"send --to 127.0.0.1:{port} {string.Join(' ', pairs.Select(p => "--device " + p.Src))} {common}");
        try
        {
            tx.WaitForOutput(l => l.Contains("switchover:", StringComparison.Ordinal), ProcessLimit);
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"{e.Message}\n--- receive:\n{rx.All}", e); // why the destination ended it
        }
        // The module's parent counts the loads in progress: the fault comes while a destination is inside one.
        var loading = Stopwatch.StartNew();
        while (SimKnobs.ReadParent("active_loads") == 0)
        {
            Assert.True(loading.Elapsed < ProcessLimit && !tx.HasExited && !rx.HasExited,
                $"no destination started loading\n{tx.All}\n{rx.All}");
            Thread.Sleep(20);
        }
        var (target, survivor) = victim == "source" ? (tx, rx) : (rx, tx);
        target.Signal(signal);

        int survivorCode = survivor.WaitForExit(ProcessLimit);
        int targetCode = target.WaitForExit(ProcessLimit);
        string ctx = $"\n--- send:\n{tx.All}\n--- receive:\n{rx.All}";

        // Neither side may call this a success, nor leave the outcome unknown: nothing was committed.
        Assert.True(survivorCode == 1, $"the surviving {(victim == "source" ? "destination" : "source")} exited {survivorCode}" + ctx);
        Assert.StartsWith("vfio-mig: ", Assert.Single(survivor.StderrLines));
        if (signal != "KILL")
        {
            int expected = signal == "INT" ? 130 : 143; // 128 + the signal: cancelled and rolled back
            Assert.True(targetCode == expected, $"the signalled {victim} exited {targetCode}, not {expected}" + ctx);
            Assert.Contains("cancelled", target.Stderr, StringComparison.OrdinalIgnoreCase);
        }
        for (int i = 0; i < pairs.Count; i++)
        {
            var (src, dst) = pairs[i];
            Assert.True(SimKnobs.Read(src, "mig_state") == "RUNNING", $"source {src} is {SimKnobs.Read(src, "mig_state")}" + ctx);
            Assert.True(SimKnobs.Read(src, "digest") == setup.SourceDigests[i], $"source {src}: its state changed" + ctx);
            Assert.True(SimKnobs.Read(dst, "mig_state") == "RUNNING", $"destination {dst} is {SimKnobs.Read(dst, "mig_state")}" + ctx);
        }
    }
}
