using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Vfio.Migration;

/// <summary>
/// The receiving side of a migration: its devices, in pairing order, and the options of its runs. Each <see cref="Run"/>
/// serves one session (<see cref="DestinationRun"/> holds its state).
/// </summary>
public sealed class MigrationDestination
{
    private readonly IReadOnlyList<IMigrationDevice> _devices;
    private readonly MigrationOptions _options;
    private readonly ILogger _log;

    public MigrationDestination(IReadOnlyList<IMigrationDevice> devices, MigrationOptions options, ILogger? logger = null)
    {
        options.Validate();
        if (devices.Count == 0 || devices.Count > Protocol.MaxDevices)
            throw new ArgumentException($"between 1 and {Protocol.MaxDevices} devices");
        _devices = devices;
        _options = options;
        _log = logger ?? NullLogger.Instance;
        Progress = new MigrationProgress(devices.Select(d => d.Name).ToArray(), new long[devices.Count]);
    }

    /// <summary>Bytes loaded into each device so far (Expected is filled from the device list), for a progress display.</summary>
    public MigrationProgress Progress { get; }

    /// <summary>The timeline of the run in progress (or the last one): its tracks grow while the run goes on.</summary>
    public RunTimeline Timeline { get; private set; } = new();

    /// <summary>Serves one migration session on the listening socket (the caller binds and listens).</summary>
    public RunReport Run(Socket listener, CancellationToken cancel = default)
    {
        var run = new DestinationRun(_devices, _options, _log, Progress);
        Timeline = run.Timeline;
        return run.Execute(listener, cancel);
    }
}
