using System.Diagnostics;

namespace Vfio.PeerBench;

/// <summary>
/// One QEMU process of a peer run, with its QMP connection. Its stderr is kept (the last lines) for the error a failed
/// run reports. Threads: the caller owns the process and the QMP client; the Process class's reader thread adds stderr
/// lines under the lock.
/// </summary>
internal sealed class QemuProcess : IDisposable
{
    private const int KeptLines = 50;
    private readonly Process _process;
    private readonly Queue<string> _stderr = new();
    private readonly Lock _lock = new();

    public QmpClient Qmp { get; }
    public string Name { get; }

    private QemuProcess(string name, string qemu, IEnumerable<string> args, string qmpSocket, TimeSpan timeout)
    {
        Name = name;
        var psi = new ProcessStartInfo(qemu) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        _process = new Process { StartInfo = psi };
        _process.ErrorDataReceived += (_, e) => Keep(e.Data);
        _process.OutputDataReceived += (_, e) => Keep(e.Data);
        try { _process.Start(); }
        catch (System.ComponentModel.Win32Exception e) { throw new InvalidOperationException($"{name}: cannot start {qemu}: {e.Message}", e); }
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();
        try
        {
            Qmp = QmpClient.Connect(qmpSocket, timeout, () => _process.HasExited ? $"{name} QEMU exited with {_process.ExitCode}: {Stderr}" : null);
        }
        catch
        {
            Kill();
            _process.Dispose();
            throw;
        }
    }

    public static QemuProcess Start(string name, string qemu, IEnumerable<string> args, string qmpSocket, TimeSpan timeout) =>
        new(name, qemu, args, qmpSocket, timeout);

    private void Keep(string? line)
    {
        if (line is null) return;
        lock (_lock)
        {
            _stderr.Enqueue(line);
            if (_stderr.Count > KeptLines) _stderr.Dequeue();
        }
    }

    public string Stderr { get { lock (_lock) return string.Join(" | ", _stderr); } }

    /// <summary>Asks QEMU to quit and waits for it (its trace is complete only then); kills it after the timeout.</summary>
    public void Quit(TimeSpan timeout)
    {
        if (!_process.HasExited)
        {
            try { Qmp.Execute("quit"); }
            catch (QmpException) { } // QEMU may close the socket before its reply: the exit below is what counts
        }
        if (!_process.WaitForExit(timeout)) Kill();
        _process.WaitForExit();
    }

    private void Kill()
    {
        try { if (!_process.HasExited) _process.Kill(); }
        catch (InvalidOperationException) { } // it exited meanwhile
    }

    public void Dispose()
    {
        Kill();
        Qmp?.Dispose();
        _process.Dispose();
    }
}
