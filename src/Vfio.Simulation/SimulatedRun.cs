using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// What simulated devices know about a run that the engine does not: the bound their parameters imply, and the load time
/// each was charged.
/// </summary>
public static class SimulatedRun
{
    /// <summary>
    /// Fills in the bound (<see cref="Bound"/>) and, for each verified device loaded into a simulated device,
    /// <see cref="DeviceReport.SimLoadMs"/>. A side alone passes its devices for both.
    /// </summary>
    public static RunReport Annotate(RunReport report, IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations,
        TimeSpan downtimeLimit)
    {
        Bound(report, sources, destinations, downtimeLimit);
        for (int i = 0; i < Math.Min(report.Devices.Count, destinations.Count); i++)
            if (destinations[i] is SimulatedDevice sim && report.Devices[i].Verified)
                report.Devices[i].SimLoadMs = sim.LastLoadSeconds * 1000;
        return report;
    }

    /// <summary>
    /// Fills in, when every device is simulated, <see cref="RunReport.DeviceBoundMs"/> for a run without a live phase (the
    /// bound on its downtime) or <see cref="RunReport.TotalBoundMs"/> for a live one whose report knows when precopy began
    /// (the bound on its total time, under <paramref name="downtimeLimit"/>); a live phase has no downtime bound.
    /// </summary>
    public static RunReport Bound(RunReport report, IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations,
        TimeSpan downtimeLimit)
    {
        if (!report.Live) report.DeviceBoundMs = DeviceBound.Compute(sources, destinations);
        else if (report.PrecopyStartUs > 0) report.TotalBoundMs = LiveBound.Compute(sources, destinations, downtimeLimit);
        return report;
    }
}
