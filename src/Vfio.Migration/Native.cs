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
