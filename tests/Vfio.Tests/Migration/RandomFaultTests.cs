using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>Random wire faults: every run ends promptly, either verified or failed cleanly.</summary>
public class RandomFaultTests
{
    [Theory]
    // Stop-copy: a fault may aim past a device's buffers, or at a device that does not exist, and change nothing.
    [InlineData(false, 20241002)]
    // Live: the first buffers go while the sources run and dirty their state; every fault hits one of them, and fails
    // the run as one in the stop-copy stream does, with every source running.
    [InlineData(true, 20261207)]
    public void Random_faults_never_hang_and_never_leave_devices_stopped(bool live, int defaultSeed)
    {
        var rng = new Random(int.TryParse(Environment.GetEnvironmentVariable("VFIO_MIG_FAULT_SEED"), out int seed) ? seed : defaultSeed);
        var kinds = new[] { WireFaultKind.CorruptPayload, WireFaultKind.Duplicate, WireFaultKind.Drop, WireFaultKind.Truncate };
        for (int run = 0; run < 12; run++)
        {
            int devices = rng.Next(1, 4);
            // Each device has at least 8 data buffers, all of them read while it runs when live.
            var fault = live
                ? new WireFault(kinds[rng.Next(kinds.Length)], rng.Next(devices), rng.Next(8))
                : new WireFault(kinds[rng.Next(kinds.Length)], rng.Next(devices + 1), rng.Next(10));
            var mode = rng.Next(2) == 0 ? LoadingMode.Decoupled : LoadingMode.Coupled;
            var (src, dst) = TestDevices.Pairs(devices);
            var options = fault.Apply(TestDevices.Options(rng.Next(1, 5), mode, window: rng.Next(2, 6)) with { Timeout = TimeSpan.FromSeconds(2) });
            if (live) options = options with { Precopy = PrecopyMode.On, DowntimeLimit = TimeSpan.FromSeconds(5) };
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var report = Loopback.Run(src, dst, options, cancel: TestContext.Current.CancellationToken);
            string what = $"run {run}: {devices} devices, {options.Channels} channels, {mode}, window {options.Window}, {fault}: {report.Error}";
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(8), what + $" took {sw.Elapsed}");
            bool hit = fault.Device < devices && fault.Buffer <= 8;
            Assert.True(report.Ok == !hit, what);
            if (report.Ok)
            {
                TestDevices.AssertSameState(src, dst);
                continue;
            }
            Assert.False(string.IsNullOrWhiteSpace(report.Error), what);
            Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
            Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
            Assert.All(report.Devices, d => Assert.False(d.Verified));
        }
    }
}
