using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>Random wire faults: every run ends promptly, either verified or failed cleanly.</summary>
public class RandomFaultTests
{
    [Fact]
    public void Random_faults_never_hang_and_never_leave_devices_stopped()
    {
        var rng = new Random(int.TryParse(Environment.GetEnvironmentVariable("VFIO_MIG_FAULT_SEED"), out int seed) ? seed : 20241002);
        var kinds = new[] { WireFaultKind.CorruptPayload, WireFaultKind.Duplicate, WireFaultKind.Drop, WireFaultKind.Truncate };
        for (int run = 0; run < 12; run++)
        {
            int devices = rng.Next(1, 4);
            var fault = new WireFault(kinds[rng.Next(kinds.Length)], rng.Next(devices + 1), rng.Next(10));
            var mode = rng.Next(2) == 0 ? LoadingMode.Decoupled : LoadingMode.Coupled;
            var (src, dst) = TestDevices.Pairs(devices);
            var options = fault.Apply(TestDevices.Options(rng.Next(1, 5), mode, window: rng.Next(2, 6)) with { Timeout = TimeSpan.FromSeconds(2) });
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var report = Loopback.Run(src, dst, options, cancel: TestContext.Current.CancellationToken);
            string what = $"run {run}: {devices} devices, {options.Channels} channels, {mode}, window {options.Window}, {fault}: {report.Error}";
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(8), what + $" took {sw.Elapsed}");
            // A fault aimed past the device's buffers (or at a device that does not exist) changes nothing.
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

    [Fact]
    public void Random_faults_in_live_runs_never_hang_and_never_leave_devices_stopped()
    {
        // The same faults on live runs, where the first buffers go while the sources run and dirty their state: a
        // fault in the precopy stream fails the run as one in the stop-copy stream does, with every source running.
        var rng = new Random(int.TryParse(Environment.GetEnvironmentVariable("VFIO_MIG_FAULT_SEED"), out int seed) ? seed : 20261207);
        var kinds = new[] { WireFaultKind.CorruptPayload, WireFaultKind.Duplicate, WireFaultKind.Drop, WireFaultKind.Truncate };
        for (int run = 0; run < 12; run++)
        {
            int devices = rng.Next(1, 4);
            var fault = new WireFault(kinds[rng.Next(kinds.Length)], rng.Next(devices), rng.Next(8));
            var mode = rng.Next(2) == 0 ? LoadingMode.Decoupled : LoadingMode.Coupled;
            var (src, dst) = TestDevices.Pairs(devices);
            var options = fault.Apply(TestDevices.Options(rng.Next(1, 5), mode, window: rng.Next(2, 6)) with
            {
                Timeout = TimeSpan.FromSeconds(2), Precopy = PrecopyMode.On, DowntimeLimit = TimeSpan.FromSeconds(5),
            });
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var report = Loopback.Run(src, dst, options, cancel: TestContext.Current.CancellationToken);
            string what = $"run {run}: {devices} devices, {options.Channels} channels, {mode}, window {options.Window}, {fault}: {report.Error}";
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(8), what + $" took {sw.Elapsed}");
            // Every device has at least 8 data buffers, all read while it runs: each fault hits one of them.
            Assert.False(report.Ok, what);
            Assert.False(string.IsNullOrWhiteSpace(report.Error), what);
            Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
            Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
            Assert.All(report.Devices, d => Assert.False(d.Verified));
        }
    }
}
