using System.Runtime.InteropServices;

namespace Vfio.Cli;

/// <summary>
/// SIGINT, SIGTERM and SIGHUP during a migration command. The first cancels the run through its token: the engine then
/// rolls back, or, past a side's commit point, keeps what the commit requires (a committed source keeps its devices
/// stopped; a destination that received Commit still runs its devices), and the report is written as for any failure.
/// The second says what the side is still doing with its devices and what abandoning that would cost. The third
/// abandons it: one line names what is left undone and the process exits with <see cref="ExitCodes.Abandoned"/>. So no
/// signal can break the rules of a migration silently (only SIGKILL ends the process without a word).
/// The commands' actions are synchronous, and System.CommandLine handles termination (its ProcessTerminationTimeout)
/// for asynchronous actions only: without these registrations the runtime's default ends the process at once.
/// Threads and ownership: the runtime calls <see cref="Deliver"/> on a thread of its own; the count and the first
/// signal change under a lock; the command's thread reads <see cref="Signal"/> after the run.
/// </summary>
internal sealed class Interruption : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly List<PosixSignalRegistration> _registrations = [];
    private readonly TextWriter _error;
    private readonly Func<AtStake> _atStake;
    private readonly Action<int> _exit;
    private readonly object _lock = new();
    private int _count;
    private PosixSignal? _first;
    private bool _disposed;

    /// <summary>What a side still does with its devices (null when nothing is at stake), and what abandoning it costs.</summary>
    public readonly record struct AtStake(string? Doing, string? IfAbandoned);

    /// <param name="error">Where the lines go.</param>
    /// <param name="atStake">Asked at the second and third signal.</param>
    /// <param name="exit">Ends the process on the third signal (Environment.Exit; in-process callers give their own).</param>
    /// <param name="register">False: take no signal from the system (callers deliver them).</param>
    public Interruption(TextWriter error, Func<AtStake> atStake, Action<int>? exit = null, bool register = true)
    {
        _error = error;
        _atStake = atStake;
        _exit = exit ?? Environment.Exit;
        if (!register) return;
        foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP })
        {
            _registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true; // the run ends itself, in bounded time
                Deliver(context.Signal);
            }));
        }
    }

    public CancellationToken Token => _cts.Token;

    /// <summary>The first signal's name (SIGINT, SIGTERM, SIGHUP), or null if none came.</summary>
    public string? Signal { get { lock (_lock) return _first is { } s ? Name(s) : null; } }

    /// <summary>The exit code of a run the first signal cancelled (128 + its number).</summary>
    public int CancelledExitCode { get { lock (_lock) return ExitCodes.Cancelled(_first is { } s ? Number(s) : 0); } }

    internal void Deliver(PosixSignal signal)
    {
        int count;
        lock (_lock)
        {
            if (_disposed) return; // the command is over: nothing left to cancel
            _first ??= signal;
            count = ++_count;
        }
        string name = Name(signal);
        if (count == 1)
        {
            Write($"vfio-mig: {name}: cancelling the migration (signal again to see what it is waiting for)");
            lock (_lock) if (!_disposed) _cts.Cancel();
            return;
        }
        var stake = _atStake();
        if (stake.Doing is null)
        {
            Write($"vfio-mig: {name} again: finishing (no device is at stake)");
            if (count >= 3) _exit(ExitCodes.Abandoned);
            return;
        }
        if (count == 2)
        {
            Write($"vfio-mig: {name} again: still {stake.Doing}; a third signal abandons this ({stake.IfAbandoned})");
            return;
        }
        Write($"vfio-mig: {name}: abandoned while {stake.Doing}: {stake.IfAbandoned}");
        _exit(ExitCodes.Abandoned);
    }

    private void Write(string line)
    {
        lock (_error)
        {
            _error.WriteLine(line);
            _error.Flush();
        }
    }

    private static string Name(PosixSignal s) => s switch
    {
        PosixSignal.SIGINT => "SIGINT",
        PosixSignal.SIGTERM => "SIGTERM",
        PosixSignal.SIGHUP => "SIGHUP",
        _ => s.ToString(),
    };

    /// <summary>Linux's numbers (PosixSignal's own values are negative placeholders).</summary>
    private static int Number(PosixSignal s) => s switch
    {
        PosixSignal.SIGHUP => 1,
        PosixSignal.SIGINT => 2,
        PosixSignal.SIGTERM => 15,
        _ => 0,
    };

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        lock (_lock)
        {
            _disposed = true;
            _cts.Dispose();
        }
    }
}
