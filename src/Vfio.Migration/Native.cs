using System.Runtime.InteropServices;

namespace Vfio.Migration;

/// <summary>The few socket calls the simulated device needs that Vfio.Interop does not carry.</summary>
internal static unsafe partial class Native
{
    public const int SOL_SOCKET = 1;
    public const int SO_SNDBUF = 7;
    public const int SO_RCVBUF = 8;
    public const int SHUT_RD = 0;
    public const int SHUT_WR = 1;
    public const int SHUT_RDWR = 2;

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    private static partial int SetSockOptRaw(int fd, int level, int name, int* value, uint length);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int GetSockOptRaw(int fd, int level, int name, int* value, uint* length);

    [LibraryImport("libc", EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    [LibraryImport("libc", EntryPoint = "nanosleep", SetLastError = true)]
    private static partial int NanoSleep(long* request, long* remaining);

    /// <summary>A short uninterruptible sleep with microsecond resolution (timer slack aside).</summary>
    public static void SleepMicroseconds(long us)
    {
        long* ts = stackalloc long[2];
        long* rem = stackalloc long[2];
        ts[0] = us / 1_000_000;
        ts[1] = us % 1_000_000 * 1000;
        while (NanoSleep(ts, rem) < 0 && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() == 4)
        {
            ts[0] = rem[0];
            ts[1] = rem[1];
        }
    }

    public static void SetSockOpt(int fd, int name, int value)
    {
        if (SetSockOptRaw(fd, SOL_SOCKET, name, &value, sizeof(int)) < 0)
            throw VfioException.FromLastError($"setsockopt({name})");
    }

    public static int GetSockOpt(int fd, int name)
    {
        int value = 0;
        uint length = sizeof(int);
        if (GetSockOptRaw(fd, SOL_SOCKET, name, &value, &length) < 0)
            throw VfioException.FromLastError($"getsockopt({name})");
        return value;
    }
}

/// <summary>memfd calls for the null device's in-memory state.</summary>
internal static unsafe partial class NativeMemfd
{
    public const uint MFD_CLOEXEC = 1;

    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MemfdCreate(string name, uint flags);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int Ftruncate(int fd, long length);
}
