using Vfio.Interop;

namespace Vfio.Migration;

/// <summary>Sleeps and thread priorities the engine and the simulated device need, over the raw calls of <see cref="Libc"/>.</summary>
internal static unsafe class Native
{
    /// <summary>A short uninterruptible sleep with microsecond resolution (timer slack aside).</summary>
    public static void SleepMicroseconds(long us)
    {
        long* ts = stackalloc long[2];
        long* rem = stackalloc long[2];
        ts[0] = us / 1_000_000;
        ts[1] = us % 1_000_000 * 1000;
        while (Libc.NanoSleep(ts, rem) < 0 && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() == Libc.EINTR)
        {
            ts[0] = rem[0];
            ts[1] = rem[1];
        }
    }

    /// <summary>
    /// Raises the calling thread's scheduling priority (nice -10) so that, when it wakes, it preempts the threads that
    /// move bulk data: for a thread that keeps a device busy, a few milliseconds in the run queue are device time
    /// lost. Needs CAP_SYS_NICE (the tool runs as root); without it the thread keeps its priority. True if raised.
    /// </summary>
    public static bool FavourCurrentThread() => Libc.SetPriority(Libc.PRIO_PROCESS, (uint)Libc.GetTid(), -10) == 0;
}
