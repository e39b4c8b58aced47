using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>The receiving side of a migration. Each <see cref="Run"/> serves one session (<see cref="DestinationRun"/> holds its state).</summary>
public sealed class MigrationDestination(IReadOnlyList<IMigrationDevice> devices, MigrationOptions options, ILogger? logger = null)
    : MigrationSide(devices, options, logger, new long[devices.Count])
{
    /// <summary>The timeline of the run in progress (or the last one): its tracks grow while the run goes on.</summary>
    public RunTimeline Timeline { get; private set; } = new();

    /// <summary>Serves one migration session on the listening socket (the caller binds and listens).</summary>
    public RunReport Run(Socket listener, CancellationToken cancel = default)
    {
        var run = new DestinationRun(this);
        Timeline = run.Timeline;
        return run.Execute(listener, cancel);
    }
}
