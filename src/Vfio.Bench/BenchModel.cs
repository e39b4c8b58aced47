using Vfio.Migration;

namespace Vfio.Bench;

/// <summary>What kind of device a sweep migrates.</summary>
public enum BenchDeviceKind
{
    /// <summary>Simulated mlx5-like VFs (sim:).</summary>
    Simulated,
    /// <summary>Devices with no cost and in-memory state (null:): the transport alone.</summary>
    Null,
    /// <summary>Real VFIO device pairs named on the command line.</summary>
    Real,
}

/// <summary>
/// One configuration of a sweep. <paramref name="DirtyRate"/>: a live migration (PRE_COPY) of devices that dirty this many
/// bytes per second while they run; null: stop-copy only.
/// </summary>
public sealed record BenchScenario(string Section, int Devices, int Channels, LoadingMode Loading, long StateSize, bool Tls = false,
    double? DirtyRate = null)
{
    /// <summary>The loading mode, "+tls" when every connection runs TLS (the row right after its plaintext twin).</summary>
    public string ModeName => (Loading == LoadingMode.Coupled ? "coupled" : "decoupled") + (Tls ? "+tls" : "");
    public bool Live => DirtyRate is not null;
}

/// <summary>What one migration took: its wall time, and the CPU time of both sides (one process) over it, on so many cores.</summary>
public sealed record RunCost(double WallMs, double CpuMs, int Cores);

/// <summary>Per-device figures of the representative (median-downtime) run of a scenario.</summary>
public sealed record BenchDevice(string Name, double WaitMs, double LoadMs, double TotalMs);

/// <summary>The outcome of a scenario over its repeats.</summary>
public sealed record BenchRow
{
    public required BenchScenario Scenario { get; init; }
    public required int Runs { get; init; }
    public required bool AllVerified { get; init; }
    public string? Error { get; init; }
    public double DowntimeMedianMs { get; init; }
    public double DowntimeMinMs { get; init; }
    public double? DeviceBoundMs { get; init; }
    /// <summary>The median run's time from the first stop until every device was loading.</summary>
    public double? AllLoadingMs { get; init; }
    public double ThroughputMbps { get; init; }
    public double MeanWaitMs { get; init; }
    public double MeanLoadMs { get; init; }
    public long? PeakRssBytes { get; init; }
    /// <summary>The median run's wall and CPU time.</summary>
    public RunCost? Cost { get; init; }
    /// <summary>The median run's stream bytes.</summary>
    public long MovedBytes { get; init; }
    public double? IperfMbps { get; init; }
    public string? IperfWhy { get; init; }
    public IReadOnlyList<BenchDevice> PerDevice { get; init; } = [];
    /// <summary>Median over the runs of the total time (live: first device in PRE_COPY to last device running; else the downtime).</summary>
    public double TotalMedianMs { get; init; }
    /// <summary>The bound on the total time: live, the simulator's total bound; stop-copy only, the device bound.</summary>
    public double? TotalBoundMs { get; init; }
    /// <summary>Live: the median over the runs of the precopy phase, in milliseconds (at most the median total).</summary>
    public double PrecopyMs { get; init; }
    /// <summary>The median run's stream bytes beyond the devices' state (sent twice or more: dirtied after they were sent).</summary>
    public long ResentBytes { get; init; }
    /// <summary>Live: whether every run converged (null: not live); the median run's reason.</summary>
    public bool? Converged { get; init; }
    public string? ConvergedReason { get; init; }
    /// <summary>Live: the median run's dirty rounds, the mean over its devices.</summary>
    public double DirtyRounds { get; init; }

    /// <summary>Median total time over its bound.</summary>
    public double? TotalBoundRatio => TotalBoundMs is > 0 && TotalMedianMs > 0 ? TotalMedianMs / TotalBoundMs : null;

    /// <summary>Median downtime over the device bound: the engine's overhead as a factor (1.00 = none).</summary>
    public double? BoundRatio => DeviceBoundMs is > 0 ? DowntimeMedianMs / DeviceBoundMs : null;

    /// <summary>Our transport's throughput as a fraction of iperf3's with the same number of streams.</summary>
    public double? IperfRatio => IperfMbps is > 0 ? ThroughputMbps / IperfMbps : null;
}

/// <summary>A pass/fail line for one of the targets the benchmark checks.</summary>
public sealed record BenchTarget(string Name, bool Met, string Detail);

public sealed record BenchResult(
    BenchDeviceKind Kind,
    IReadOnlyList<BenchRow> Rows,
    IReadOnlyList<BenchTarget> Targets,
    string Machine,
    string Command,
    CipherCost? Cipher = null);
