namespace Vfio.Cli;

/// <summary>
/// The exit codes of every command (README "Failure"). An orchestrator reads from them what the devices are left in, so a
/// code never depends on anything but the outcome: not on writing a report, and not on which side printed what.
/// </summary>
public static class ExitCodes
{
    /// <summary>Done: the migration completed (destination devices RUNNING, source devices stopped), or the command did its work.</summary>
    public const int Ok = 0;

    /// <summary>
    /// The command ran and failed: a migration rolled back (source devices RUNNING again, destination devices reset),
    /// list or info could not read the host, resume could not resume every device, a benchmark run failed.
    /// </summary>
    public const int Failed = 1;

    /// <summary>
    /// The command did not start: bad arguments, a device that cannot be found or opened, an output file that cannot be
    /// written, an address that cannot be listened on. No device changed state.
    /// </summary>
    public const int Usage = 2;

    /// <summary>
    /// The source committed and lost its destination: its devices are stopped with their state; resolve with
    /// `vfio-mig resume` once the destination is known not to run them.
    /// </summary>
    public const int OutcomeUnknown = 3;

    /// <summary>A third signal abandoned the run's cleanup: the devices are left as the last line said.</summary>
    public const int Abandoned = 4;

    /// <summary>
    /// Cancelled by a signal and rolled back, as <see cref="Failed"/>: 128 + the signal's number (130 SIGINT, 143 SIGTERM,
    /// 129 SIGHUP), the shell's convention for a process a signal ended.
    /// </summary>
    public static int Cancelled(int signalNumber) => 128 + signalNumber;
}
