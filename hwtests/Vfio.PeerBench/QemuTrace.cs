using System.Globalization;
using System.Text.RegularExpressions;

namespace Vfio.PeerBench;

/// <summary>
/// One VFIO migration state event from QEMU's trace: <see cref="Requested"/> when QEMU asks for a state
/// (vfio_migration_set_state, traced before the ioctl), else the state the device reached (vfio_migration_set_device_state,
/// traced after the ioctl returned).
/// </summary>
internal readonly record struct VfioStateEvent(long TimeUs, string Device, string State, bool Requested, int Line);

/// <summary>
/// QEMU's `-trace 'vfio_*'` output with `-msg timestamp=on` (the log trace backend): each event is a line
/// `TID@SECONDS.MICROSECONDS:EVENT ARGS`, the time from gettimeofday(2), so traces of several processes on one host share
/// a clock. Only the migration state events are read; other lines (other events, QEMU's warnings) are skipped.
/// </summary>
internal static partial class QemuTrace
{
    [GeneratedRegex(@"^\d+@(?<s>\d+)\.(?<us>\d{6}):(?<event>vfio_migration_set_state|vfio_migration_set_device_state) (?<args>.*)$")]
    private static partial Regex EventLine();

    [GeneratedRegex(@"^\s*\((?<dev>[^)]+)\) new state (?<state>[A-Z_0-9]+), recover state [A-Z_0-9]+$")]
    private static partial Regex SetStateArgs();

    [GeneratedRegex(@"^\s*\((?<dev>[^)]+)\) state (?<state>[A-Z_0-9]+)$")]
    private static partial Regex DeviceStateArgs();

    public static List<VfioStateEvent> ParseStateEvents(IEnumerable<string> lines)
    {
        var events = new List<VfioStateEvent>();
        int n = 0;
        foreach (var line in lines)
        {
            n++;
            var m = EventLine().Match(line);
            if (!m.Success)
            {
                if (line.StartsWith("vfio_migration_set_", StringComparison.Ordinal)
                    || line.Contains(":vfio_migration_set_", StringComparison.Ordinal))
                    throw new FormatException($"trace line {n}: a state event without a TID@SECONDS.MICROSECONDS stamp "
                                              + $"(is -msg timestamp=on given?): {line}");
                continue;
            }
            bool requested = m.Groups["event"].Value == "vfio_migration_set_state";
            var a = (requested ? SetStateArgs() : DeviceStateArgs()).Match(m.Groups["args"].Value);
            if (!a.Success) throw new FormatException($"trace line {n}: unexpected arguments of {m.Groups["event"].Value}: {line}");
            long us = long.Parse(m.Groups["s"].Value, CultureInfo.InvariantCulture) * 1_000_000
                      + long.Parse(m.Groups["us"].Value, CultureInfo.InvariantCulture);
            events.Add(new VfioStateEvent(us, a.Groups["dev"].Value, a.Groups["state"].Value, requested, n));
        }
        return events;
    }

    /// <summary>States in which a device no longer runs: the downtime has begun once a source device is asked for one.</summary>
    private static readonly HashSet<string> Stopped = ["RUNNING_P2P", "PRE_COPY_P2P", "STOP", "STOP_COPY"];

    /// <summary>
    /// The end-to-end figure, as vfio-mig's downtime is defined: from the first request that takes a source device out
    /// of RUNNING/PRE_COPY on its way to STOP_COPY to the last destination device reaching RUNNING after it loaded
    /// (RESUMING before it).
    /// Every device must show both ends, else the trace does not describe a completed migration and this throws.
    /// </summary>
    public static PeerTiming Measure(IReadOnlyList<VfioStateEvent> source, IReadOnlyList<VfioStateEvent> destination,
                                     IReadOnlyList<string> sourceDevices, IReadOnlyList<string> destinationDevices)
    {
        long firstStop = long.MaxValue, firstStopCopy = long.MaxValue;
        foreach (var dev in sourceDevices)
        {
            var copy = source.FirstOrDefault(e => e.Device == dev && !e.Requested && e.State == "STOP_COPY");
            if (copy.Device is null) throw new FormatException($"source device {dev}: the trace never shows it in STOP_COPY");
            // the stop that led to STOP_COPY: QEMU also passes through RUNNING_P2P when its VM starts, before the migration
            var ran = source.LastOrDefault(e => e.Device == dev && !e.Requested && e.State is "RUNNING" or "PRE_COPY" && e.Line < copy.Line);
            var stop = source.FirstOrDefault(e => e.Device == dev && e.Requested && Stopped.Contains(e.State) && e.Line > ran.Line
                                                  && e.Line < copy.Line);
            if (stop.Device is null) throw new FormatException($"source device {dev}: the trace never asks it to stop before STOP_COPY");
            firstStop = Math.Min(firstStop, stop.TimeUs);
            firstStopCopy = Math.Min(firstStopCopy, copy.TimeUs);
        }
        long lastRunning = long.MinValue;
        foreach (var dev in destinationDevices)
        {
            var resuming = destination.FirstOrDefault(e => e.Device == dev && !e.Requested && e.State == "RESUMING");
            if (resuming.Device is null) throw new FormatException($"destination device {dev}: the trace never shows it in RESUMING");
            var running = destination.LastOrDefault(e => e.Device == dev && !e.Requested && e.State == "RUNNING" && e.Line > resuming.Line);
            if (running.Device is null) throw new FormatException($"destination device {dev}: the trace never shows it RUNNING after RESUMING");
            lastRunning = Math.Max(lastRunning, running.TimeUs);
        }
        if (lastRunning < firstStop)
            throw new FormatException("the last destination device runs before the first source device stopped: the traces do not share a clock");
        return new PeerTiming(firstStop, firstStopCopy, lastRunning);
    }
}

/// <summary>Times (µs, wall clock) that the traces give for one migration.</summary>
internal sealed record PeerTiming(long FirstSourceStopUs, long FirstSourceStopCopyUs, long LastDestinationRunningUs)
{
    /// <summary>First source device leaving RUNNING/PRE_COPY to last destination device RUNNING.</summary>
    public double EndToEndMs => (LastDestinationRunningUs - FirstSourceStopUs) / 1000.0;

    /// <summary>From the first source device in STOP_COPY to the last destination RUNNING: the end-to-end without the quiesce.</summary>
    public double FromStopCopyMs => (LastDestinationRunningUs - FirstSourceStopCopyUs) / 1000.0;
}
