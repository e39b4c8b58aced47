using Vfio.Interop;

namespace Vfio.Simulation;

/// <summary>Sleeps shorter and more exact than a millisecond timer allows: a simulated load ends when the model says.</summary>
internal static class PreciseSleep
{
    /// <summary>An uninterruptible nanosleep with microsecond resolution (timer slack aside), resumed after signals.</summary>
    public static unsafe void Microseconds(long us)
    {
        // Both timespecs live on this frame's stack for the whole call.
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
}
