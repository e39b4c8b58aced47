using System.Reflection;
using System.Runtime.CompilerServices;

namespace Vfio.Migration;

/// <summary>
/// Compiles the data path's methods before the downtime starts: otherwise the JIT compiles each one the first time a
/// thread runs it, inside the downtime, which measurably delays the first buffer (milliseconds on 2 busy cores).
/// Once per process; the source calls it before quiescing, the destination before accepting the device list.
/// </summary>
internal static class Warmup
{
    private static readonly object s_lock = new();
    private static bool s_done;

    private static readonly Type[] s_types =
    [
        typeof(MigrationSource), typeof(MigrationDestination), typeof(DeviceSink), typeof(Connection), typeof(NextIdleScheduler),
        typeof(CreditGate), typeof(RunControl), typeof(Crc32C), typeof(StreamChecksum), typeof(PacketHeader), typeof(BufferPool),
        typeof(TimelineTrack), typeof(MigrationClock), typeof(SimulatedDevice), typeof(SimulatedPf), typeof(SimStream),
        typeof(SimStreamGenerator), typeof(SimStreamParser), typeof(NullDevice), typeof(SoftwareTransitions), typeof(MigrationDataStream),
        typeof(System.IO.Hashing.XxHash3),
    ];

    public static void Prepare()
    {
        lock (s_lock) // a second caller (the other side, in loopback) waits until it is done
        {
            if (s_done) return;
            foreach (var type in s_types)
                PrepareType(type);
            s_done = true;
        }
    }

    private static void PrepareType(Type type)
    {
        if (type.ContainsGenericParameters) return;
        const BindingFlags all = BindingFlags.DeclaredOnly | BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic;
        foreach (var m in type.GetMethods(all).Cast<MethodBase>().Concat(type.GetConstructors(all)))
        {
            if (m.IsAbstract || m.ContainsGenericParameters || m.GetMethodBody() is null) continue;
            try { RuntimeHelpers.PrepareMethod(m.MethodHandle); }
            catch (Exception) { /* not preparable (e.g. generic context): it is compiled on first use */ }
        }
        foreach (var nested in type.GetNestedTypes(BindingFlags.Public | BindingFlags.NonPublic))
            PrepareType(nested);
    }
}
