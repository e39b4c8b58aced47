using Vfio.Migration;

namespace Vfio.Tests.Migration;

internal static class TestDevices
{
    /// <summary>Small, fast simulated devices: the suite must stay quick on 2 cores.</summary>
    public static SimulatedDeviceOptions Fast(long size = 256 << 10) => new()
    {
        StateSize = size,
        RecordDataSize = 48 << 10,
        LoadBytesPerSecond = 1L << 30,
    };

    public static (SimulatedDevice[] Src, SimulatedDevice[] Dst) Pairs(int n, SimulatedDeviceOptions? options = null,
        Func<int, SimulatedDeviceOptions>? perDevice = null)
    {
        var srcPf = new SimulatedPf("src-pf");
        var dstPf = new SimulatedPf("dst-pf");
        var src = Enumerable.Range(0, n).Select(i => new SimulatedDevice($"sim:vf{i}", perDevice?.Invoke(i) ?? options ?? Fast(), srcPf)).ToArray();
        var dst = Enumerable.Range(0, n).Select(i => new SimulatedDevice($"sim:dst{i}", perDevice?.Invoke(i) ?? options ?? Fast(), dstPf)).ToArray();
        return (src, dst);
    }

    /// <summary>
    /// A run's options for the tests of the stop-copy engine (transport, loading, faults): stop-copy only, whatever the
    /// devices offer. The live phase's tests ask for it (PrecopyTests).
    /// </summary>
    public static MigrationOptions Options(int channels, LoadingMode mode = LoadingMode.Decoupled, int buffer = 32 << 10, int window = 4) => new()
    {
        Channels = channels,
        BufferSize = buffer,
        Loading = mode,
        Window = window,
        Timeout = TimeSpan.FromSeconds(20),
        Precopy = PrecopyMode.Off,
    };

    /// <summary>A loopback migration, with what the simulated devices know added to its report (the device bound, load times).</summary>
    public static RunReport Migrate(IMigrationDevice[] src, IMigrationDevice[] dst, MigrationOptions options) =>
        SimulatedRun.Annotate(Loopback.Run(src, dst, options, cancel: TestContext.Current.CancellationToken), src, dst, options.DowntimeLimit);

    /// <summary>After a failed run: every source runs again, every destination was reset (running, its own state, not a partial one).</summary>
    public static void AssertRolledBackDevices(IEnumerable<IMigrationDevice> src, SimulatedDevice[] dst)
    {
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        foreach (var d in dst)
        {
            Assert.Equal(MigrationState.Running, d.GetState());
            Assert.Equal(new SimulatedDevice(d.Name, d.Options).StateDigest(), d.StateDigest());
        }
    }

    /// <summary>Byte-exact: every destination device holds the state its source had (stream digest and config).</summary>
    public static void AssertSameState(SimulatedDevice[] src, SimulatedDevice[] dst)
    {
        for (int i = 0; i < src.Length; i++)
        {
            Assert.Equal(MigrationState.Running, dst[i].GetState());
            Assert.Equal(src[i].StateDigest(), dst[i].StateDigest());
            Assert.Equal(src[i].SaveConfig(), dst[i].SaveConfig());
        }
    }
}
