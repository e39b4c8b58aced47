using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Vfio.HwTests;

/// <summary>
/// `vfio-mig send` and `vfio-mig receive` as two processes over vfio_mig_sim pairs, one of them killed or signalled
/// while the destinations load (after the switchover, before any Result). Only real devices show whether the rollback
/// happened, so each case reads the module's sysfs afterwards: every source RUNNING with its state digest unchanged
/// (its state was not lost), every destination RUNNING, and the survivor's exit code and one-line error.
/// A destination load takes 2 s (the module's load delay), far longer than the start of a process under TCG takes to
/// notice the switchover line, so the fault always lands inside the downtime.
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
        string dll = Path.Combine(AppContext.BaseDirectory, "vfio-mig.dll");
        Assert.True(File.Exists(dll), dll);
        var common = new[] { "--channels", "2", "--timeout", "20" };

        using var rx = CliProcess.Start(dll, ["receive", "--listen", "127.0.0.1:0", .. pairs.SelectMany(p => new[] { "--device", p.Dst }),
            .. common]);
        string port = rx.WaitForLine("listening on 127.0.0.1:", ProcessLimit)["listening on 127.0.0.1:".Length..].Trim();
        using var tx = CliProcess.Start(dll, ["send", "--to", $"127.0.0.1:{port}", .. pairs.SelectMany(p => new[] { "--device", p.Src }),
            .. common]);
        tx.WaitForLine("switchover:", ProcessLimit);
        // The module's parent counts the loads in progress: the fault comes while a destination is inside one.
        var loading = Stopwatch.StartNew();
        while (SimKnobs.ReadParent("active_loads") == 0)
        {
            Assert.True(loading.Elapsed < ProcessLimit && !tx.HasExited && !rx.HasExited,
                $"no destination started loading\n{tx.Output}\n{rx.Output}");
            Thread.Sleep(20);
        }
        var (target, survivor) = victim == "source" ? (tx, rx) : (rx, tx);
        target.Signal(signal);

        int survivorCode = survivor.WaitForExit(ProcessLimit);
        int targetCode = target.WaitForExit(ProcessLimit);
        string ctx = $"\n--- send (exit {tx.ExitCode}):\n{tx.Output}\n--- receive (exit {rx.ExitCode}):\n{rx.Output}";

        // Neither side may call this a success, nor leave the outcome unknown: nothing was committed.
        Assert.True(survivorCode == 1, $"the surviving {(victim == "source" ? "destination" : "source")} exited {survivorCode}" + ctx);
        if (signal != "KILL")
        {
            Assert.True(targetCode is not (0 or 3), $"the signalled {victim} exited {targetCode}" + ctx);
            Assert.Contains("cancelled", target.Output, StringComparison.OrdinalIgnoreCase);
        }
        for (int i = 0; i < pairs.Count; i++)
        {
            var (src, dst) = pairs[i];
            Assert.True(SimKnobs.Read(src, "mig_state") == "RUNNING", $"source {src} is {SimKnobs.Read(src, "mig_state")}" + ctx);
            Assert.True(SimKnobs.Read(src, "digest") == setup.SourceDigests[i], $"source {src}: its state changed" + ctx);
            Assert.True(SimKnobs.Read(dst, "mig_state") == "RUNNING", $"destination {dst} is {SimKnobs.Read(dst, "mig_state")}" + ctx);
        }
    }

    /// <summary>A CLI process whose stdout and stderr are collected line by line as they come.</summary>
    private sealed class CliProcess : IDisposable
    {
        private readonly Process _process;
        private readonly StringBuilder _output = new();
        private readonly List<string> _lines = new();

        private CliProcess(Process process)
        {
            _process = process;
            process.OutputDataReceived += (_, e) => Add(e.Data);
            process.ErrorDataReceived += (_, e) => Add(e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }

        public string Output { get { lock (_lines) return _output.ToString(); } }

        public int ExitCode => _process.HasExited ? _process.ExitCode : -1;

        public static CliProcess Start(string dll, IEnumerable<string> args)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(dll);
            foreach (var a in args) psi.ArgumentList.Add(a);
            return new CliProcess(Process.Start(psi)!);
        }

        private void Add(string? line)
        {
            if (line is null) return;
            lock (_lines)
            {
                _lines.Add(line);
                _output.AppendLine(line);
                Monitor.PulseAll(_lines);
            }
        }

        /// <summary>The first line containing <paramref name="text"/>, once it has been printed.</summary>
        public string WaitForLine(string text, TimeSpan limit)
        {
            var deadline = DateTime.UtcNow + limit;
            while (true)
            {
                lock (_lines)
                {
                    if (Find(text) is { } found) return found;
                    Monitor.Wait(_lines, TimeSpan.FromMilliseconds(200));
                }
                if (_process.HasExited)
                {
                    _process.WaitForExit(); // the redirected output drained
                    string? last;
                    lock (_lines) last = Find(text);
                    Assert.True(last is not null, $"exited {_process.ExitCode} before printing '{text}':\n{Output}");
                    return last!;
                }
                Assert.True(DateTime.UtcNow < deadline, $"no line with '{text}' within {limit.TotalSeconds} s:\n{Output}");
            }
        }

        private string? Find(string text) => _lines.FirstOrDefault(l => l.Contains(text, StringComparison.Ordinal));

        public bool HasExited => _process.HasExited;

        public void Signal(string name)
        {
            if (name == "KILL") { _process.Kill(); return; }
            using var kill = Process.Start("kill", ["-" + name, _process.Id.ToString(CultureInfo.InvariantCulture)])!;
            kill.WaitForExit();
        }

        public int WaitForExit(TimeSpan limit)
        {
            Assert.True(_process.WaitForExit(limit), $"did not exit within {limit.TotalSeconds} s:\n{Output}");
            _process.WaitForExit(); // the redirected output drained
            return _process.ExitCode;
        }

        public void Dispose()
        {
            if (!_process.HasExited) _process.Kill(entireProcessTree: true);
            _process.Dispose();
        }
    }
}
