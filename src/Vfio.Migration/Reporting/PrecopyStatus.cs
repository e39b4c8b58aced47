using System.Globalization;

namespace Vfio.Migration;

/// <summary>
/// Where the live phase stands, as the source's coordinator last saw it (what QEMU's `info migrate` shows): bytes sent
/// while the devices run, the initial images still to go, the rate at which the devices dirty state (the dirty data they
/// handed out per second since their initial image), and the downtime a switchover now is estimated to cost.
/// </summary>
public sealed record PrecopyStatus(
    double ElapsedMs,
    long SentBytes,
    int AcknowledgedDevices,
    int Devices,
    long InitialLeftBytes,
    double DirtyBytesPerSecond,
    double? EstimatedDowntimeMs,
    double DowntimeLimitMs)
{
    /// <summary>
    /// One line, e.g. "precopy 3.2 s: sent 96.0 MiB, initial images 3/4 acked (12.0 MiB left), dirty 1.5 MiB/s, downtime
    /// est. 120 ms (limit 300 ms)".
    /// </summary>
    public string Describe()
    {
        var c = CultureInfo.InvariantCulture;
        string left = InitialLeftBytes > 0 ? string.Create(c, $" ({InitialLeftBytes / 1048576.0:0.0} MiB left)") : "";
        string estimate = EstimatedDowntimeMs is double e ? string.Create(c, $"{e:0} ms") : "-";
        return string.Create(c, $"precopy {ElapsedMs / 1000:0.0} s: sent {SentBytes / 1048576.0:0.0} MiB, initial images ")
            + string.Create(c, $"{AcknowledgedDevices}/{Devices} acked{left}, dirty {DirtyBytesPerSecond / 1048576.0:0.0} MiB/s, ")
            + string.Create(c, $"downtime est. {estimate} (limit {DowntimeLimitMs:0} ms)");
    }
}
