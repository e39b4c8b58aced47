using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Vfio.Migration;

/// <summary>Per-device figures of a run (destination side: the loader's view). Times in microseconds of MigrationClock.</summary>
public sealed class DeviceReport
{
    public required string Name { get; init; }
    public string? SourceName { get; set; }
    public long Bytes { get; set; }
    public int Buffers { get; set; }
    /// <summary>Time the loader waited for its next buffer (and for the source's completion message).</summary>
    public long WaitUs { get; set; }
    /// <summary>Time in write(2) into the resuming data fd, plus RESUMING->STOP (where a device finishes its last load).</summary>
    public long LoadUs { get; set; }
    /// <summary>Config state restore.</summary>
    public long ConfigUs { get; set; }
    public long StartUs { get; set; }
    public long EndUs { get; set; }
    /// <summary>When the device's first load began (0 if it never did): before it, the device waits for the engine.</summary>
    public long FirstLoadUs { get; set; }
    public long TotalUs => EndUs > StartUs ? EndUs - StartUs : 0;
    public bool Verified { get; set; }
    public string? Error { get; set; }
    /// <summary>Most bytes this device ever had queued at the destination (received, not yet loaded).</summary>
    public long MaxQueuedBytes { get; set; }
    public ulong Checksum { get; set; }
    public ulong? Digest { get; set; }
    /// <summary>Of <see cref="Bytes"/> and <see cref="Buffers"/>: what was read while the device still ran (PRE_COPY).</summary>
    public long PrecopyBytes { get; set; }
    public int PrecopyBuffers { get; set; }
    public long StopCopyBytes => Bytes - PrecopyBytes;
    /// <summary>Source: how many rounds of dirty data the device handed out in PRE_COPY.</summary>
    public int DirtyRounds { get; set; }
    /// <summary>Source: when the destination acknowledged the device's initial image (0: never).</summary>
    public long InitialAckedUs { get; set; }
    /// <summary>Destination: the digest check after the load (inside the downtime, a check real devices lack).</summary>
    public long VerifyUs { get; set; }
    /// <summary>Simulated devices: the load time the device's parameters imply for this stream (filled in by the caller that knows them).</summary>
    public double? SimLoadMs { get; set; }

    public string SummaryLine() => string.Create(CultureInfo.InvariantCulture,
        $"{Name} total loading time {TotalUs / 1000} ms, wait {WaitUs / 1000} ms load {LoadUs / 1000} ms "
        + $"({Bytes} bytes, {Buffers} buffers{(Verified ? ", verified" : Error is null ? "" : ", FAILED: " + Error)})");
}

/// <summary>What became of the devices.</summary>
public enum MigrationOutcome
{
    /// <summary>The destination's devices run with the state; the source's are stopped.</summary>
    Migrated,
    /// <summary>The run failed: the source's devices run again, the destination's were reset.</summary>
    RolledBack,
    /// <summary>
    /// The source committed and then lost the destination: its devices are stopped with their state intact, and the
    /// destination may or may not run them. An operator (or orchestrator) decides (`vfio-mig resume` on the source).
    /// </summary>
    Unknown,
}

/// <summary>The outcome of a run, as printed and as written by --json.</summary>
public sealed class RunReport
{
    public bool Ok { get; private set; }
    public MigrationOutcome Outcome { get; private set; } = MigrationOutcome.RolledBack;
    public required string Role { get; init; }
    public LoadingMode Mode { get; init; }
    public int Channels { get; init; }
    public int BufferSize { get; init; }
    public int Window { get; set; }
    /// <summary>What "verified" covers: the stream alone, or the device's digest too where it has one.</summary>
    public VerifyMode Verify { get; init; }
    public List<DeviceReport> Devices { get; init; } = new();
    /// <summary>Why the run failed (null when it succeeded), as a value: origin and device index.</summary>
    public RunFailure? Failure { get; private set; }
    /// <summary>The failure as one line for a person: the device by name, the peer's word marked as such.</summary>
    public string? Error { get; private set; }
    /// <summary>The name of the device the failure is about, on the side that reported it.</summary>
    public string? FailedDevice { get; private set; }
    /// <summary>The run had a live phase (precopy before the switchover).</summary>
    public bool Live { get; init; }
    /// <summary>When the devices entered PRE_COPY (source clock; 0: no live phase).</summary>
    public long PrecopyStartUs { get; set; }
    /// <summary>Live runs: whether precopy converged before the switchover, and why it switched over.</summary>
    public bool? Converged { get; set; }
    public string? ConvergedReason { get; set; }
    public double PrecopyMs => PrecopyStartUs > 0 && FirstStopUs > PrecopyStartUs ? (FirstStopUs - PrecopyStartUs) / 1000.0 : 0;
    /// <summary>First byte read to the last destination device RUNNING: the live phase and the downtime.</summary>
    public double TotalMs => PrecopyMs + DowntimeMs;
    /// <summary>First source device leaving RUNNING (source clock).</summary>
    public long FirstStopUs { get; set; }
    /// <summary>Last destination device reaching RUNNING (destination clock).</summary>
    public long LastRunningUs { get; set; }
    /// <summary>When the last device finished loading (destination clock).</summary>
    public long LoadEndUs { get; set; }
    public RunTimeline Timeline { get; init; } = new();
    public int PoolBuffers { get; set; }
    /// <summary>
    /// Runs whose devices are all simulated: the lower bound on downtime the simulator's parameters imply, in
    /// milliseconds (filled in by the caller that knows the devices); null otherwise. downtime / bound is the engine's
    /// overhead factor.
    /// </summary>
    public double? DeviceBoundMs { get; set; }
    /// <summary>
    /// Live runs whose devices are all simulated: the least total time (<see cref="TotalMs"/>) the simulator's parameters
    /// imply under the convergence rule, in milliseconds; null otherwise. The live counterpart of <see cref="DeviceBoundMs"/>.
    /// </summary>
    public double? TotalBoundMs { get; set; }

    /// <summary>The signal that interrupted this side (SIGINT, SIGTERM, SIGHUP), if one did; a run it cancelled says so.</summary>
    public string? Signal { get; private set; }

    /// <summary>Records that <paramref name="signal"/> interrupted this side: a failure that is the cancellation names it.</summary>
    public void Interrupted(string signal)
    {
        Signal = signal;
        if (Failure is { Origin: FailureOrigin.Cancelled } f)
        {
            Failure = f with { Message = $"{f.Message} by {signal}" };
            Error = Failure.Message;
        }
    }
    /// <summary>
    /// From the first source stop until every device was loading (the last device's first load), in milliseconds: the
    /// part of the downtime in which devices wait for the engine's pipeline to fill; null unless every device loaded.
    /// </summary>
    public double? AllLoadingMs => FirstStopUs > 0 && Devices.Count > 0 && Devices.All(d => d.FirstLoadUs > 0)
        ? (Devices.Max(d => d.FirstLoadUs) - FirstStopUs) / 1000.0
        : null;

    /// <summary>DowntimeMs / DeviceBoundMs, when both are known.</summary>
    public double? BoundRatio => DeviceBoundMs is > 0 && DowntimeMs > 0 ? DowntimeMs / DeviceBoundMs : null;

    /// <summary>TotalMs / TotalBoundMs, when both are known.</summary>
    public double? TotalBoundRatio => TotalBoundMs is > 0 && DowntimeMs > 0 ? TotalMs / TotalBoundMs : null;

    public long TotalBytes => Devices.Sum(d => d.Bytes);

    /// <summary>
    /// Sets the outcome: ok without a failure; otherwise the failure, its text (device names from
    /// <paramref name="deviceNames"/>, the peer called <paramref name="peerRole"/>), and no device verified.
    /// </summary>
    public void SetOutcome(RunFailure? failure, string peerRole, IReadOnlyList<string> deviceNames, bool outcomeUnknown = false)
    {
        Failure = failure;
        Ok = failure is null;
        Outcome = Ok ? MigrationOutcome.Migrated : outcomeUnknown ? MigrationOutcome.Unknown : MigrationOutcome.RolledBack;
        Error = failure?.Describe(deviceNames, peerRole);
        FailedDevice = failure?.Device is int i && i < deviceNames.Count ? deviceNames[i] : null;
        if (!Ok) foreach (var d in Devices) d.Verified = false;
    }

    /// <summary>Takes the outcome another report already described (one side's, in a merged report).</summary>
    public void CopyOutcome(RunReport from)
    {
        Failure = from.Failure;
        Ok = from.Ok;
        Outcome = from.Outcome;
        Error = from.Error;
        FailedDevice = from.FailedDevice;
        if (!Ok) foreach (var d in Devices) d.Verified = false;
    }
    public double DowntimeMs => Ok && LastRunningUs > FirstStopUs && FirstStopUs > 0 ? (LastRunningUs - FirstStopUs) / 1000.0 : 0;

    /// <summary>
    /// Megabits per second (10^6 bits): the stream bytes read after the switchover (all of them unless live) over the time
    /// from the first source stop to the last device loaded.
    /// </summary>
    public double ThroughputMbps =>
        LoadEndUs > FirstStopUs && FirstStopUs > 0 ? (TotalBytes - PrecopyBytesTotal) * 8.0 / (LoadEndUs - FirstStopUs) : 0;

    public string ModeName => Mode == LoadingMode.Coupled ? "coupled" : "decoupled";

    public IEnumerable<string> SummaryLines()
    {
        foreach (var d in Devices) yield return d.SummaryLine();
        if (Ok)
            yield return string.Create(CultureInfo.InvariantCulture,
                $"result ok: {Devices.Count} device{(Devices.Count == 1 ? "" : "s")}, {TotalBytes / 1048576.0:0.0} MiB, {DowntimeText()}, "
                + $"{Channels} channels, {ModeName} loading");
        else if (Outcome == MigrationOutcome.Unknown)
            yield return $"result UNKNOWN{(FailedDevice is null ? "" : $" (device {FailedDevice})")}: committed, then {Error}; "
                + "the source devices are stopped with their state";
        else
            yield return $"result FAILED{(FailedDevice is null ? "" : $" (device {FailedDevice})")}: {Error}";
    }

    /// <summary>
    /// Stop-copy only: the downtime, its bound, its throughput. Live: the live phase and the downtime each with the bytes
    /// they moved (a live run may move next to nothing in its downtime, where a bare "0 Mbit/s" would read as a fault).
    /// </summary>
    private string DowntimeText()
    {
        if (PrecopyStartUs == 0)
            return string.Create(CultureInfo.InvariantCulture, $"downtime {DowntimeMs:0} ms{BoundText()}, {ThroughputMbps:0} Mbit/s");
        long after = TotalBytes - PrecopyBytesTotal;
        return string.Create(CultureInfo.InvariantCulture,
            $"live {PrecopyMs:0} ms ({Moved(PrecopyBytesTotal, PrecopyMs > 0 ? PrecopyBytesTotal * 8.0 / (PrecopyMs * 1000) : 0)}"
            + $"{(Converged == false ? ", not converged" : "")}), downtime {DowntimeMs:0} ms ({Moved(after, ThroughputMbps)}){BoundText()}");
    }

    /// <summary>Bytes moved in a phase, with their rate once there are enough of them (a MiB) for it to mean something.</summary>
    private static string Moved(long bytes, double mbps) => bytes switch
    {
        >= 1 << 20 => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1048576.0:0.0} MiB at {mbps:0} Mbit/s"),
        >= 1 << 10 => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0:0.0} KiB"),
        _ => $"{bytes} bytes",
    };

    private long PrecopyBytesTotal => Devices.Sum(d => d.PrecopyBytes);

    private string BoundText() => DeviceBoundMs is double b
        ? string.Create(CultureInfo.InvariantCulture, $" (device bound {b:0} ms{(BoundRatio is double r ? $", x{r:0.000}" : "")})")
        : TotalBoundMs is double t
        ? string.Create(CultureInfo.InvariantCulture,
            $", total {TotalMs:0} ms (total bound {t:0} ms{(TotalBoundRatio is double q ? $", x{q:0.000}" : "")})")
        : "";

    public void WriteJson(Stream output)
    {
        using var j = new Utf8JsonWriter(output, new JsonWriterOptions { Indented = true });
        j.WriteStartObject();
        j.WriteString("result", Ok ? "ok" : "failed");
        j.WriteString("outcome", Outcome switch
        {
            MigrationOutcome.Migrated => "migrated",
            MigrationOutcome.Unknown => "unknown",
            _ => "rolled_back",
        });
        j.WriteString("mode", ModeName);
        j.WriteNumber("channels", Channels);
        j.WriteNumber("downtime_ms", Math.Round(DowntimeMs, 3));
        j.WriteNumber("precopy_ms", Math.Round(PrecopyMs, 3));
        j.WriteNumber("total_ms", Math.Round(TotalMs, 3));
        if (Converged is bool converged)
        {
            j.WriteBoolean("converged", converged);
            if (ConvergedReason is not null) j.WriteString("converged_reason", ConvergedReason);
        }
        j.WriteNumber("throughput_mbps", Math.Round(ThroughputMbps, 1));
        if (DeviceBoundMs is double bound) j.WriteNumber("device_bound_ms", Math.Round(bound, 3));
        if (BoundRatio is double ratio) j.WriteNumber("downtime_over_bound", Math.Round(ratio, 4));
        if (TotalBoundMs is double totalBound) j.WriteNumber("total_bound_ms", Math.Round(totalBound, 3));
        if (TotalBoundRatio is double totalRatio) j.WriteNumber("total_over_bound", Math.Round(totalRatio, 4));
        if (AllLoadingMs is double loading) j.WriteNumber("all_loading_ms", Math.Round(loading, 3));
        j.WriteString("role", Role);
        j.WriteNumber("buffer_size", BufferSize);
        j.WriteNumber("window", Window);
        j.WriteString("verify", Verify == VerifyMode.Stream ? "stream" : "digest");
        j.WriteNumber("total_bytes", TotalBytes);
        if (Error is not null) j.WriteString("error", Error);
        if (Signal is not null) j.WriteString("signal", Signal);
        if (FailedDevice is not null) j.WriteString("failed_device", FailedDevice);
        j.WriteNumber("first_stop_us", FirstStopUs);
        j.WriteNumber("last_running_us", LastRunningUs);
        j.WriteStartArray("devices");
        foreach (var d in Devices)
        {
            j.WriteStartObject();
            j.WriteString("name", d.Name);
            if (d.SourceName is not null) j.WriteString("source", d.SourceName);
            j.WriteNumber("bytes", d.Bytes);
            j.WriteNumber("buffers", d.Buffers);
            j.WriteNumber("wait_ms", Math.Round(d.WaitUs / 1000.0, 3));
            j.WriteNumber("load_ms", Math.Round(d.LoadUs / 1000.0, 3));
            j.WriteNumber("total_ms", Math.Round(d.TotalUs / 1000.0, 3));
            j.WriteBoolean("verified", d.Verified);
            j.WriteNumber("config_ms", Math.Round(d.ConfigUs / 1000.0, 3));
            j.WriteNumber("start_us", d.StartUs);
            j.WriteNumber("end_us", d.EndUs);
            if (d.FirstLoadUs > 0 && FirstStopUs > 0) j.WriteNumber("first_load_ms", Math.Round((d.FirstLoadUs - FirstStopUs) / 1000.0, 3));
            j.WriteNumber("max_queued_bytes", d.MaxQueuedBytes);
            j.WriteNumber("precopy_bytes", d.PrecopyBytes);
            j.WriteNumber("precopy_buffers", d.PrecopyBuffers);
            j.WriteNumber("stopcopy_bytes", d.StopCopyBytes);
            if (PrecopyStartUs > 0)
            {
                j.WriteNumber("dirty_rounds", d.DirtyRounds);
                if (d.InitialAckedUs > 0) j.WriteNumber("initial_acked_ms", Math.Round((d.InitialAckedUs - PrecopyStartUs) / 1000.0, 3));
            }
            if (d.Digest is not null) j.WriteNumber("verify_ms", Math.Round(d.VerifyUs / 1000.0, 3));
            if (d.SimLoadMs is double s) j.WriteNumber("sim_load_ms", Math.Round(s, 3));
            if (d.Error is not null) j.WriteString("error", d.Error);
            j.WriteEndObject();
        }
        j.WriteEndArray();
        j.WriteEndObject();
    }

    public string ToJson()
    {
        using var ms = new MemoryStream();
        WriteJson(ms);
        return Encoding.UTF8.GetString(ms.ToArray());
    }
}

/// <summary>Live counters for a progress display: bytes loaded per device at the destination, or sent at the source.</summary>
public sealed class MigrationProgress
{
    public MigrationProgress(IReadOnlyList<string> names, long[] expected)
    {
        Names = names;
        Expected = expected;
        Bytes = new long[names.Count];
    }

    public IReadOnlyList<string> Names { get; }
    public long[] Expected { get; }
    public long[] Bytes { get; }
    public long Total { get { long t = 0; for (int i = 0; i < Bytes.Length; i++) t += Volatile.Read(ref Bytes[i]); return t; } }

    /// <summary>The live phase's status while it lasts (the source's coordinator writes it; anyone may read it); else null.</summary>
    public PrecopyStatus? Precopy
    {
        get => Volatile.Read(ref _precopy);
        set => Volatile.Write(ref _precopy, value);
    }

    private PrecopyStatus? _precopy;

    /// <summary>
    /// What a side that is ending is busy with where its devices are at stake (its coordinator writes it; anyone may read
    /// it): what a person who interrupts the run again must know before abandoning it.
    /// </summary>
    public FinishingStep Finishing
    {
        get => (FinishingStep)Volatile.Read(ref _finishing);
        set => Volatile.Write(ref _finishing, (int)value);
    }

    private int _finishing;
}

/// <summary>A step of a side's ending during which its devices are at stake (see <see cref="MigrationProgress.Finishing"/>).</summary>
public enum FinishingStep
{
    None,
    /// <summary>The source failed before its commit: its devices go back to RUNNING once its threads let go of them.</summary>
    RestoringSources,
    /// <summary>The source failed after its commit: its devices stay stopped with their state while its threads end.</summary>
    KeepingSourcesStopped,
    /// <summary>The destination failed before it committed: it resets its devices and waits for its threads.</summary>
    ResettingDestinations,
    /// <summary>The destination received Commit: it moves its devices to RUNNING.</summary>
    RunningDestinations,
}
