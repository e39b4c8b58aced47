using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// What simulated devices know about a run that the engine does not: the bound their parameters imply, and the load time
/// each was charged.
/// </summary>
public static class SimulatedRun
{
    /// <summary>
    /// Fills in <see cref="RunReport.DeviceBoundMs"/> (when every device is simulated) and, for each verified device
    /// loaded into a simulated device, <see cref="DeviceReport.SimLoadMs"/>. A side alone passes its devices for both.
    /// </summary>
    public static RunReport Annotate(RunReport report, IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations)
    {
        report.DeviceBoundMs = DeviceBound.Compute(sources, destinations);
        for (int i = 0; i < Math.Min(report.Devices.Count, destinations.Count); i++)
            if (destinations[i] is SimulatedDevice sim && report.Devices[i].Verified)
                report.Devices[i].SimLoadMs = sim.LastLoadSeconds * 1000;
        return report;
    }
}
