// The tests share the configured devices (a VFIO group opens once): run them one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Vfio.HwTests;

/// <summary>
/// Which devices the hardware tests may use, from the environment:
///   VFIO_MIG_SIM_DEVICES  space-separated mdev UUIDs of the vfio_mig_sim module (set by hwtests/guest/run-in-guest.sh)
///   VFIO_HW_DEVICES       space-separated PCI addresses of real migratable VFs (e.g. mlx5 VFs on mlx5_vfio_pci)
/// The engine tests (EngineTests.cs) pair either list in order: 1st -> 2nd, 3rd -> 4th, ... (4 pairs need 8 devices).
/// Without them, or without /dev/vfio, every test skips and says why. In the QEMU guest with simulated devices:
///   hwtests/guest/run-in-guest.sh --devices 3 -- $PWD/hwtests/Vfio.HwTests/bin/Debug/net10.0/Vfio.HwTests
/// On a host with real VFs (as root): VFIO_HW_DEVICES="0000:af:00.2 0000:af:00.3" dotnet run --project hwtests/Vfio.HwTests
/// </summary>
public static class HwEnv
{
    public const string None = "(no device configured)";

    public static IReadOnlyList<string> SimDevices { get; } = Split("VFIO_MIG_SIM_DEVICES");

    public static IReadOnlyList<string> RealDevices { get; } = Split("VFIO_HW_DEVICES");

    public static IReadOnlyList<string> AllDevices { get; } = [.. SimDevices, .. RealDevices];

    public static bool IsSim(string name) => SimDevices.Contains(name);

    private static string[] Split(string variable) =>
        (Environment.GetEnvironmentVariable(variable) ?? "").Split([' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries);

    /// <summary>One row per configured device, or one placeholder row that makes the test skip.</summary>
    public static TheoryData<string> Devices()
    {
        var data = new TheoryData<string>();
        foreach (var d in AllDevices) data.Add(d);
        if (AllDevices.Count == 0) data.Add(None);
        return data;
    }

    private static string NoDevicesReason =>
        "no VFIO device configured: set VFIO_MIG_SIM_DEVICES (mdev UUIDs of vfio_mig_sim; hwtests/guest/run-in-guest.sh does) " +
        "or VFIO_HW_DEVICES (PCI addresses of migratable VFs bound to vfio-pci or a variant such as mlx5_vfio_pci)";

    /// <summary>Skips unless /dev/vfio exists and the row names a device.</summary>
    public static string Require(string device)
    {
        if (device == None || AllDevices.Count == 0)
            Assert.Skip(NoDevicesReason);
        RequireVfio();
        return device;
    }

    public static void RequireVfio()
    {
        if (!VfioHostPaths.Default.HasVfio)
            Assert.Skip("no /dev/vfio on this machine: these tests need a VFIO host or the QEMU guest of hwtests/guest/run-in-guest.sh");
        if (Vfio.Interop.Libc.GetEuid() != 0)
            Assert.Skip("not root: opening VFIO devices needs root");
    }

    /// <summary>At least <paramref name="count"/> devices of one kind (simulated ones first, else real ones).</summary>
    public static IReadOnlyList<string> RequireSeveral(int count)
    {
        if (AllDevices.Count == 0)
            Assert.Skip(NoDevicesReason);
        RequireVfio();
        var pool = SimDevices.Count >= count ? SimDevices : RealDevices;
        if (pool.Count < count)
            Assert.Skip($"this test needs {count} devices of one kind; configured: {SimDevices.Count} simulated, {RealDevices.Count} real");
        return pool.Take(count).ToList();
    }

    /// <summary>Reads a sysfs attribute of a simulated device (digest, mig_state, seed ...), null when absent.</summary>
    public static string? SimAttribute(string device, string attribute) =>
        VfioSysfs.ReadAttribute(Path.Combine(VfioHostPaths.Default.MdevDevicesDir, device, attribute));

    public static bool TryWriteSimAttribute(string device, string attribute, string value)
    {
        var path = Path.Combine(VfioHostPaths.Default.MdevDevicesDir, device, attribute);
        if (!File.Exists(path)) return false;
        try
        {
            File.WriteAllText(path, value);
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }
}

/// <summary>An opened device that is returned to RUNNING (by SET, else by reset) when the test ends.</summary>
public sealed class OpenDevice : IDisposable
{
    public OpenDevice(string name)
    {
        Name = name;
        Device = VfioDevice.Open(name);
        Flags = Device.GetMigrationFlags()
            ?? throw new InvalidOperationException($"{name} does not support migration; configure migratable devices only");
        if (Device.GetMigrationState() != MigrationState.Running)
            Restore();
    }

    public string Name { get; }

    public VfioDevice Device { get; }

    public MigrationFlags Flags { get; }

    public MigrationState State => Device.GetMigrationState();

    /// <summary>SET target, asserting the data fd appears exactly when the state model says it should.</summary>
    public MigrationDataStream? Go(MigrationState target)
    {
        var from = State;
        var stream = Device.SetMigrationState(target);
        Assert.Equal(target, State);
        bool expectFd = MigrationStateMachine.ReturnsDataFd(from, target, Flags);
        Assert.True(expectFd == (stream is not null),
            $"{Name}: {MigrationStateMachine.Name(from)} -> {MigrationStateMachine.Name(target)} returned {(stream is null ? "no" : "a")} data fd, "
            + $"expected {(expectFd ? "one" : "none")}");
        return stream;
    }

    /// <summary>Back to RUNNING: SET RUNNING, and VFIO_DEVICE_RESET when that fails (e.g. from ERROR).</summary>
    public void Restore()
    {
        try
        {
            if (Device.GetMigrationState() == MigrationState.Running) return;
            Device.SetMigrationState(MigrationState.Running)?.Dispose();
        }
        catch (VfioException)
        {
            Device.Reset();
        }
    }

    public void Dispose()
    {
        try { Restore(); }
        finally { Device.Dispose(); }
    }

    /// <summary>Reads a saving data fd to its end (EOF), returning every byte.</summary>
    public static byte[] ReadToEnd(MigrationDataStream stream)
    {
        var output = new MemoryStream();
        var buffer = new byte[1 << 20];
        int idle = 0;
        while (true)
        {
            var r = stream.Read(buffer);
            switch (r.Status)
            {
                case DataReadStatus.Data:
                    output.Write(buffer, 0, r.Bytes);
                    idle = 0;
                    break;
                case DataReadStatus.EndOfStream:
                    return output.ToArray();
                case DataReadStatus.NoDataForNow:
                    Assert.True(++idle < 1000, "the data fd kept saying ENOMSG");
                    Thread.Sleep(5);
                    break;
            }
        }
    }

    /// <summary>Reads a PRE_COPY data fd until the device has nothing more for now (ENOMSG).</summary>
    public static byte[] ReadAvailable(MigrationDataStream stream)
    {
        var output = new MemoryStream();
        var buffer = new byte[1 << 20];
        while (true)
        {
            var r = stream.Read(buffer);
            if (r.Status != DataReadStatus.Data)
                return output.ToArray();
            output.Write(buffer, 0, r.Bytes);
        }
    }
}
