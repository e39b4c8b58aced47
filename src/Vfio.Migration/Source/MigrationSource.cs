using System.Net;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>The sending side of a migration. Each <see cref="Run"/> is one session (<see cref="SourceRun"/> holds its state).</summary>
public sealed class MigrationSource(IReadOnlyList<IMigrationDevice> devices, MigrationOptions options, ILogger? logger = null)
    : MigrationSide(devices, options, logger, devices.Select(d => (long)(d.StopCopySizeEstimate() ?? 0)).ToArray())
{
    /// <summary>Migrates every device to the destination listening at <paramref name="destination"/>.</summary>
    public RunReport Run(IPEndPoint destination, CancellationToken cancel = default) => new SourceRun(this).Execute(destination, cancel);
}
