using System.Reflection;
using System.Runtime.CompilerServices;

namespace Vfio.Migration;

/// <summary>
/// Compiles the data path's methods before the downtime starts: otherwise the JIT compiles each one the first time a
/// thread runs it, inside the downtime, which measurably delays the first buffer (milliseconds on 2 busy cores).
/// The source calls it before quiescing, the destination before accepting a source.
/// </summary>
internal static class Warmup
{
    private static readonly object s_lock = new();
    private static readonly HashSet<Type> s_prepared = [];

    private static readonly Type[] s_engineTypes =
    [
        typeof(SourceRun), typeof(DestinationRun), typeof(DeviceSaver), typeof(ChannelSender), typeof(ChannelReceiver), typeof(DeviceSink),
        typeof(MainChannel), typeof(Connection), typeof(NextIdleScheduler), typeof(CreditGate), typeof(RunControl), typeof(Crc32C),
        typeof(StreamChecksum), typeof(PacketHeader), typeof(BufferPool), typeof(TimelineTrack), typeof(MigrationClock),
        typeof(MigrationDataStream), typeof(System.IO.Hashing.XxHash3),
    ];

    /// <summary>Compiles the engine's data path and that of <paramref name="devices"/> (each type once per process).</summary>
    public static void Prepare(IEnumerable<IMigrationDevice> devices)
    {
        lock (s_lock) // a second caller (the other side, in loopback) waits until it is done
        {
            foreach (var type in s_engineTypes.Concat(devices.SelectMany(d => d.DataPathTypes)))
                if (s_prepared.Add(type)) PrepareType(type);
        }
    }

    private static void PrepareType(Type type)
    {
        if (type.ContainsGenericParameters) return;
        const BindingFlags all =
            BindingFlags.DeclaredOnly | BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic;
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
