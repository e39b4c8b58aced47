using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Vfio.Migration;

/// <summary>
/// What both sides of a migration are made of: their devices in pairing order, the options of their runs, a log, and
/// the progress a display reads.
/// </summary>
public abstract class MigrationSide
{
    private protected MigrationSide(IReadOnlyList<IMigrationDevice> devices, MigrationOptions options, ILogger? logger, long[] expectedBytes)
    {
        options.Validate();
        if (devices.Count == 0 || devices.Count > Protocol.MaxDevices)
            throw new ArgumentException($"between 1 and {Protocol.MaxDevices} devices");
        Devices = devices;
        Options = options;
        Log = logger ?? NullLogger.Instance;
        Progress = new MigrationProgress(devices.Select(d => d.Name).ToArray(), expectedBytes);
    }

    public IReadOnlyList<IMigrationDevice> Devices { get; }
    public MigrationOptions Options { get; }
    /// <summary>Bytes moved per device so far (read at the source, loaded at the destination), for a progress display.</summary>
    public MigrationProgress Progress { get; }
    internal ILogger Log { get; }
}
