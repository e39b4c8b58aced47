using Microsoft.Extensions.Logging;
using Vfio.Migration;
using Vfio.Tests.Core;

namespace Vfio.Tests.Migration;

/// <summary>
/// Devices whose streams cannot match are refused before any device stops (docs/protocol.md section 2a): the rule over a
/// table of version pairs, what a real device reads from sysfs, and a loopback run refused or warned about.
/// </summary>
public class DeviceIdentityTests
{
    private static DeviceIdentity Mlx(string kernel, string firmware = "28.39.1002") => new("mlx5_vfio_pci", kernel, firmware);

    public static TheoryData<string, string, string, string, string, string, StreamVerdict> Pairs => new()
    {
        // driver, kernel, firmware of the source; the same of the destination; the verdict
        { "mlx5_vfio_pci", "6.12.95-amd64", "28.39.1002", "mlx5_vfio_pci", "6.12.95-amd64", "28.39.1002", StreamVerdict.Same },
        { "mlx5_vfio_pci", "6.3.0", "28.39.1002", "mlx5_vfio_pci", "6.12.95-amd64", "28.39.1002", StreamVerdict.Differs },
        { "mlx5_vfio_pci", "6.1.0-18-amd64", "", "mlx5_vfio_pci", "6.1.76", "", StreamVerdict.Differs },
        { "mlx5_vfio_pci", "6.1.0-18-amd64", "", "mlx5_vfio_pci", "6.2.0", "", StreamVerdict.Incompatible },
        { "mlx5_vfio_pci", "6.2.16", "", "mlx5_vfio_pci", "6.3.0", "", StreamVerdict.Incompatible },
        { "mlx5_vfio_pci", "6.12.95-amd64", "", "mlx5_vfio_pci", "6.1.0-18-amd64", "", StreamVerdict.Incompatible },
        { "mlx5_vfio_pci", "6.2.0", "", "mlx5_vfio_pci", "6.2.16-rc3", "", StreamVerdict.Differs },
        { "mlx5_vfio_pci", "5.19.0", "", "mlx5_vfio_pci", "6.1.0", "", StreamVerdict.Differs },
        { "mlx5_vfio_pci", "6.20.1", "", "mlx5_vfio_pci", "6.3.1", "", StreamVerdict.Differs }, // 6.20 is not 6.2
        { "mlx5_vfio_pci", "7.0.0", "", "mlx5_vfio_pci", "6.2.9", "", StreamVerdict.Incompatible },
        { "mlx5_vfio_pci", "6.8.0", "28.39.1002", "mlx5_vfio_pci", "6.8.0", "22.31.1014", StreamVerdict.Differs },
        { "mlx5_vfio_pci", "6.8.0", "", "mlx5_vfio_pci", "6.8.0", "22.31.1014", StreamVerdict.Same },
        { "mlx5_vfio_pci", "", "", "mlx5_vfio_pci", "6.1.0", "", StreamVerdict.Same },
        { "mlx5_vfio_pci", "weird", "", "mlx5_vfio_pci", "6.3.0", "", StreamVerdict.Differs },
        { "mlx5_vfio_pci", "6.8.0", "", "hisi_acc_vfio_pci", "6.8.0", "", StreamVerdict.Incompatible },
        { "mlx5_vfio_pci", "6.8.0", "", "vfio-pci", "6.8.0", "", StreamVerdict.Incompatible },
        { "", "6.1.0", "", "mlx5_vfio_pci", "6.3.0", "", StreamVerdict.Incompatible }, // the driver one side knows
        { "", "", "", "mlx5_vfio_pci", "6.3.0", "1", StreamVerdict.Same },
        { "hisi_acc_vfio_pci", "6.1.0", "", "hisi_acc_vfio_pci", "6.3.0", "", StreamVerdict.Differs },
        { "vfio-mig-sim", "simulated", "sim-stream-2", "vfio-mig-sim", "simulated", "sim-stream-2", StreamVerdict.Same },
        { "vfio-mig-sim", "simulated", "sim-stream-2", "vfio-mig-null", "simulated", "", StreamVerdict.Incompatible },
    };

    [Theory]
    [MemberData(nameof(Pairs))]
    public void The_rule_refuses_what_is_known_to_be_incompatible_and_warns_where_versions_only_differ(
        string srcDriver, string srcKernel, string srcFirmware, string dstDriver, string dstKernel, string dstFirmware, StreamVerdict expected)
    {
        var source = new DeviceIdentity(srcDriver, srcKernel, srcFirmware);
        var destination = new DeviceIdentity(dstDriver, dstKernel, dstFirmware);
        var (verdict, reason) = StreamCompatibility.Check(source, destination);
        Assert.Equal(expected, verdict);
        if (verdict == StreamVerdict.Same)
        {
            Assert.Null(reason);
            return;
        }
        // One line that names both sides' versions of what differs.
        Assert.DoesNotContain('\n', reason!);
        if (srcDriver.Length > 0 && dstDriver.Length > 0 && srcDriver != dstDriver)
            Assert.Contains($"source driver {srcDriver}, destination driver {dstDriver}", reason);
        else if (srcKernel != dstKernel)
            Assert.Contains($"source kernel {srcKernel}, destination kernel {dstKernel}", reason);
        if (verdict == StreamVerdict.Differs && srcFirmware.Length > 0 && dstFirmware.Length > 0 && srcFirmware != dstFirmware)
            Assert.Contains($"source firmware {srcFirmware}, destination firmware {dstFirmware}", reason);
    }

    [Fact]
    public void A_real_device_reports_its_driver_the_kernel_and_the_firmware_of_its_pf()
    {
        using var fake = new FakeSysfs();
        // The VF's PF (bound to mlx5_core, with mlx5_ib loaded) publishes the adapter's firmware on its RDMA device.
        const string pf = "0000:af:00.0";
        fake.AddPci(pf, "mlx5_core", 76, null);
        var sysfs = fake.Paths.SysfsRoot;
        var pfDir = Path.Combine(sysfs, "devices", "pci0000:00", pf);
        Directory.CreateDirectory(Path.Combine(pfDir, "infiniband", "mlx5_1"));
        File.WriteAllText(Path.Combine(pfDir, "infiniband", "mlx5_1", "fw_ver"), "28.39.1002\n");
        File.CreateSymbolicLink(Path.Combine(sysfs, "devices", "pci0000:00", FakeSysfs.MlxVf, "physfn"), $"../{pf}");

        var vf = VfioSysfs.Resolve(FakeSysfs.MlxVf, fake.Paths);
        Assert.Equal(new DeviceIdentity("mlx5_vfio_pci", "6.12.95-amd64", "28.39.1002"), RealDeviceAdapter.Identify(vf, "6.12.95-amd64"));
        // A function with an RDMA device of its own reports that one's.
        Assert.Equal("28.39.1002", RealDeviceAdapter.Identify(VfioSysfs.Resolve(pf, fake.Paths), "6.1.0").Firmware);
        // No RDMA device anywhere: the firmware is unknown; an mdev's driver is its mdev type.
        Assert.Equal(new DeviceIdentity("vfio-pci", "6.1.0", ""),
            RealDeviceAdapter.Identify(VfioSysfs.Resolve(FakeSysfs.VfioPciNoCdev, fake.Paths), "6.1.0"));
        Assert.Equal(new DeviceIdentity("mvsim-1", "6.1.0", ""), RealDeviceAdapter.Identify(VfioSysfs.Resolve(FakeSysfs.Mdev, fake.Paths), "6.1.0"));
    }

    [Fact]
    public void A_stream_the_destination_cannot_load_is_refused_before_any_device_stops()
    {
        var (src, dst) = TestDevices.Pairs(2);
        var report = Loopback.Run([src[0], new FaultyDevice(src[1], identity: Mlx("6.1.0-18-amd64"))],
            [dst[0], new FaultyDevice(dst[1], identity: Mlx("6.12.95-amd64"))], TestDevices.Options(2),
            cancel: TestContext.Current.CancellationToken);
        Assert.False(report.Ok);
        Assert.Equal((FailureOrigin.Local, (int?)1), (report.Failure!.Origin, report.Failure.Device));
        Assert.Equal("sim:dst1: cannot load the stream of source device sim:vf1: source kernel 6.1.0-18-amd64, destination kernel "
            + "6.12.95-amd64: mlx5_vfio_pci's stream format changed at kernels 6.2 and 6.3", report.Error);
        Assert.Equal(0, report.FirstStopUs); // the source never stopped a device
        Assert.Equal(0, report.PoolBuffers);
        Assert.All(src, s => Assert.Equal(MigrationState.Running, s.GetState()));
        Assert.All(dst, d => Assert.Equal(MigrationState.Running, d.GetState()));
    }

    [Fact]
    public void Firmware_that_only_differs_is_a_warning_naming_both_versions_and_the_migration_goes_on()
    {
        var (src, dst) = TestDevices.Pairs(1);
        var log = new CapturingLogger();
        var report = Loopback.Run([new FaultyDevice(src[0], identity: Mlx("6.8.0", "28.39.1002"))],
            [new FaultyDevice(dst[0], identity: Mlx("6.8.0", "22.31.1014"))], TestDevices.Options(2), log,
            cancel: TestContext.Current.CancellationToken);
        Assert.True(report.Ok, report.Error);
        TestDevices.AssertSameState(src, dst);
        var warning = Assert.Single(log.Lines, l => l.Level == LogLevel.Warning);
        Assert.Equal("sim:dst0: source device sim:vf0: source firmware 28.39.1002, destination firmware 22.31.1014 "
            + "(not known to be incompatible)", warning.Text);
    }

    [Fact]
    public void Simulated_devices_migrate_without_a_warning()
    {
        var (src, dst) = TestDevices.Pairs(1);
        var log = new CapturingLogger();
        var report = Loopback.Run(src, dst, TestDevices.Options(1), log, cancel: TestContext.Current.CancellationToken);
        Assert.True(report.Ok, report.Error);
        Assert.Equal(SimulatedDevice.SimulatedIdentity, ((IMigrationDevice)src[0]).Identity);
        Assert.DoesNotContain(log.Lines, l => l.Level >= LogLevel.Warning);
    }

    [Fact]
    public void A_simulated_stream_is_not_loaded_into_a_null_device()
    {
        var (src, _) = TestDevices.Pairs(1);
        using var sink = new NullDevice("null:vf0", 256 << 10);
        var report = Loopback.Run(src, [sink], TestDevices.Options(1), cancel: TestContext.Current.CancellationToken);
        Assert.False(report.Ok);
        Assert.Equal("null:vf0: cannot load the stream of source device sim:vf0: source driver vfio-mig-sim, destination driver "
            + "vfio-mig-null: one driver cannot load another's stream", report.Error);
        Assert.Equal(0, report.FirstStopUs);
    }
}
