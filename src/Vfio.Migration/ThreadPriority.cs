using Vfio.Interop;

namespace Vfio.Migration;

/// <summary>Thread priorities for the threads that keep a device busy.</summary>
internal static class ThreadPriority
{
    /// <summary>
    /// Raises the calling thread's scheduling priority (nice -10) so that, when it wakes, it preempts the threads that
    /// move bulk data: for a thread that keeps a device busy, a few milliseconds in the run queue are device time
    /// lost. Needs CAP_SYS_NICE (the tool runs as root); without it the thread keeps its priority. True if raised.
    /// </summary>
    public static bool FavourCurrentThread() => Libc.SetPriority(Libc.PRIO_PROCESS, (uint)Libc.GetTid(), -10) == 0;
}
