using Vfio.Migration;

namespace Vfio.Simulation;

/// <summary>
/// Turns a device argument into a device: "sim:NAME" is simulated, "null:NAME" a device with no cost (the transport
/// alone; its state is <see cref="SimulatedDeviceOptions.StateSize"/> bytes, dirtied in PRE_COPY at
/// <see cref="SimulatedDeviceOptions.DirtyBytesPerSecond"/>), anything else a real VFIO device.
/// </summary>
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
    public static bool IsNull(string spec) => spec.StartsWith("null:", StringComparison.Ordinal);

    public IMigrationDevice Open(string spec)
    {
        if (IsSimulated(spec))
        {
            if (spec.Length == 4) throw new MigrationException("sim: needs a name (sim:NAME)");
            return new SimulatedDevice(spec, SimOptions, Pf);
        }
        if (IsNull(spec))
        {
            if (spec.Length == 5) throw new MigrationException("null: needs a name (null:NAME)");
            return new NullDevice(spec, SimOptions.StateSize, SimOptions.DirtyBytesPerSecond);
        }
        return RealDeviceAdapter.Open(spec);
    }
}
