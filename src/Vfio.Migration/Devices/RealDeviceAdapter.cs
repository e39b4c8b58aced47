namespace Vfio.Migration;

/// <summary>The engine's view of a real VFIO device, through the object model in Vfio.Core.</summary>
public static class RealDeviceAdapter
{
    public static IMigrationDevice Open(string spec)
    {
        throw new MigrationException($"{spec}: real VFIO devices are not available in this build yet (use sim:NAME)");
    }
}
