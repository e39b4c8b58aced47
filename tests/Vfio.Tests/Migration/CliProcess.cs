using System.Diagnostics;

namespace Vfio.Tests.Migration;

/// <summary>
/// One process of the built vfio-mig, its output read line by line as it comes, so that a test acts when the process
/// reached a step (a line it printed) and signals or kills it. Started through env(1) with the default handling of
/// SIGINT, SIGTERM and SIGHUP, since a test runner started in the background may pass them on ignored.
/// Threads: the Process class's reader threads add lines under the lock; the test thread waits on it.
/// </summary>
internal sealed class CliProcess : IDisposable
{
    private readonly Process _process;
    private readonly List<string> _out = [];
    private readonly List<string> _err = [];
    private readonly object _lock = new();
    private int _streamsOpen = 2;

    private CliProcess(string args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "vfio-mig.dll");
        var psi = new ProcessStartInfo("env") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--default-signal=INT,TERM,HUP", "dotnet", dll }) psi.ArgumentList.Add(a);
        foreach (var a in args.Split(' ', StringSplitOptions.RemoveEmptyEntries)) psi.ArgumentList.Add(a);
        _process = new Process { StartInfo = psi };
        _process.OutputDataReceived += (_, e) => Add(_out, e.Data);
        _process.ErrorDataReceived += (_, e) => Add(_err, e.Data);
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public static CliProcess Start(string args) => new(args);

    public int Id => _process.Id;

    public string Stdout { get { lock (_lock) return string.Join('\n', _out); } }
    public string Stderr { get { lock (_lock) return string.Join('\n', _err); } }
    public string[] StderrLines { get { lock (_lock) return [.. _err]; } }
    public string All => $"stdout:\n{Stdout}\nstderr:\n{Stderr}";

    private void Add(List<string> lines, string? line)
    {
        lock (_lock)
        {
            if (line is null) _streamsOpen--;
            else lines.Add(line);
            Monitor.PulseAll(_lock);
        }
    }

    public bool HasExited => _process.HasExited;

    /// <summary>The first stdout line (output and log) that matches, waiting for it up to <paramref name="timeout"/>.</summary>
    public string WaitForOutput(Func<string, bool> match, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        lock (_lock)
        {
            while (true)
            {
                if (_out.FirstOrDefault(match) is string line) return line;
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero || _streamsOpen == 0)
                    throw new TimeoutException($"no such line (exited: {_process.HasExited})\n{All}");
                Monitor.Wait(_lock, left);
            }
        }
    }

    /// <summary>Sends a signal (INT, TERM, HUP, KILL) with kill(1).</summary>
    public void Signal(string name)
    {
        using var kill = Process.Start("kill", ["-" + name, _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!;
        kill.WaitForExit();
        Assert.Equal(0, kill.ExitCode);
    }

    /// <summary>Waits for the process to end and for its output to be read; its exit code (128 + N when signal N killed it).</summary>
    public int WaitForExit(TimeSpan timeout)
    {
        Assert.True(_process.WaitForExit(timeout), $"vfio-mig did not exit within {timeout.TotalSeconds} s\n{All}");
        _process.WaitForExit(); // the output readers finish
        return _process.ExitCode;
    }

    public void Dispose()
    {
        try { if (!_process.HasExited) _process.Kill(); }
        catch (InvalidOperationException) { }
        _process.Dispose();
    }
}
