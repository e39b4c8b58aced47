using Vfio.Migration;

namespace Vfio.Tests.Migration;

public class LoopbackTests
{
    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 2)]
    [InlineData(4, 6)]
    public void Migrates_simulated_devices_byte_exact(int devices, int channels)
    {
        var (src, dst) = TestDevices.Pairs(devices);
        var report = Loopback.Run(src, dst, TestDevices.Options(channels), cancel: TestContext.Current.CancellationToken);
        Assert.True(report.Ok, report.Error);
        Assert.Equal(devices, report.Devices.Count);
        Assert.All(report.Devices, d => Assert.True(d.Verified));
        TestDevices.AssertSameState(src, dst);
        Assert.All(src, s => Assert.Equal(MigrationState.Stop, s.GetState()));
    }
}
