using System.Net;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Vfio.Migration;

/// <summary>
/// The sending side of a migration: its devices, in pairing order, and the options of its runs. Each <see cref="Run"/>
/// is one session (<see cref="SourceRun"/> holds its state).
/// </summary>
public sealed class MigrationSource
{
    private readonly IReadOnlyList<IMigrationDevice> _devices;
    private readonly MigrationOptions _options;
    private readonly ILogger _log;

    public MigrationSource(IReadOnlyList<IMigrationDevice> devices, MigrationOptions options, ILogger? logger = null)
    {
        options.Validate();
        if (devices.Count == 0 || devices.Count > Protocol.MaxDevices)
            throw new ArgumentException($"between 1 and {Protocol.MaxDevices} devices");
        _devices = devices;
        _options = options;
        _log = logger ?? NullLogger.Instance;
        Progress = new MigrationProgress(devices.Select(d => d.Name).ToArray(),
            devices.Select(d => (long)(d.StopCopySizeEstimate() ?? 0)).ToArray());
    }

    /// <summary>Bytes read from each device so far (for a progress display).</summary>
    public MigrationProgress Progress { get; }

    /// <summary>Migrates every device to the destination listening at <paramref name="destination"/>.</summary>
    public RunReport Run(IPEndPoint destination, CancellationToken cancel = default) =>
        new SourceRun(_devices, _options, _log, Progress).Execute(destination, cancel);
}
