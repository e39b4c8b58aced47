namespace Vfio.Migration;

/// <summary>Turns a device argument into a device: "sim:NAME" is simulated, anything else a real VFIO device.</summary>
public sealed class DeviceFactory
{
    public DeviceFactory(SimulatedDeviceOptions? simOptions = null, SimulatedPf? pf = null)
    {
        SimOptions = simOptions ?? new SimulatedDeviceOptions();
        Pf = pf ?? new SimulatedPf();
    }

    public SimulatedDeviceOptions SimOptions { get; }
    public SimulatedPf Pf { get; }

    public static bool IsSimulated(string spec) => spec.StartsWith("sim:", StringComparison.Ordinal);

    public IMigrationDevice Open(string spec)
    {
        if (IsSimulated(spec))
        {
            if (spec.Length == 4) throw new MigrationException("sim: needs a name (sim:NAME)");
            return new SimulatedDevice(spec, SimOptions, Pf);
        }
        return RealDeviceAdapter.Open(spec);
    }
}
