using System.Globalization;

namespace Vfio.Bench;

/// <summary>
/// The process's peak resident set size (VmHWM), which the kernel lets a process reset by writing 5 to
/// /proc/self/clear_refs, so each scenario of a sweep gets its own peak.
/// </summary>
public static class PeakRss
{
    public static void Reset()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (IOException) { } // kernels before 4.0 or without procfs: the peak then spans the whole process
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Peak RSS in bytes since the last reset, or null where /proc does not tell.</summary>
    public static long? ReadBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
            {
                if (!line.StartsWith("VmHWM:", StringComparison.Ordinal)) continue;
                var kb = line["VmHWM:".Length..].Trim().Split(' ')[0];
                return long.Parse(kb, CultureInfo.InvariantCulture) * 1024;
            }
        }
        catch (IOException) { }
        return null;
    }
}
