using System.IO.Compression;
using Vfio.Interop;

namespace Vfio.HwTests;

/// <summary>
/// The object model's DMA logging (VfioDevice.StartDmaLogging, ReportDmaLogging, StopDmaLogging) against the vfio_mig_sim
/// module, which logs its own writes to IOVA space (the sysfs dma_write knob stands for the device's DMA) by mlx5's rules:
/// the page size it chose comes back, a second start is refused, the core's range checks apply, closing the device ends
/// logging, and a report reads and clears. A report needs the kernel's iova_bitmap (CONFIG_IOMMUFD_DRIVER): without it
/// (Debian's 6.12) the core answers EOPNOTSUPP before any driver is asked, so what a report gives is asserted as the
/// running kernel's config says.
/// </summary>
public class DmaLoggingTests
{
    private const ulong Page = 4096;
    private const ulong MiB = 1 << 20;

    private static string SimDevice()
    {
        var device = HwEnv.RequireSeveral(1)[0];
        if (!HwEnv.IsSim(device))
            Assert.Skip($"{device} is a real device: these tests drive the vfio_mig_sim module's DMA through its sysfs");
        return device;
    }

    private static string Logging(string device) => SimKnobs.Read(device, "dma_logging");

    private static int Errno(Action action) => Assert.Throws<VfioException>(action).Errno;

    [Fact]
    public void Features_AreOffered()
    {
        using var dev = VfioDevice.Open(SimDevice());
        Assert.True(dev.SupportsFeature(VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, get: false, set: true));
        Assert.True(dev.SupportsFeature(VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, get: false, set: true));
        Assert.True(dev.SupportsFeature(VfioUapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, get: true, set: false));
    }

    [Fact]
    public void Start_GivesThePageSize_RefusesASecondStart_AndStopEndsIt()
    {
        string device = SimDevice();
        using var dev = VfioDevice.Open(device);
        Assert.Equal("off", Logging(device));
        Assert.Equal(Page, dev.StartDmaLogging(Page, [(0UL, MiB), (16 * MiB, 2 * MiB)]));
        Assert.Equal($"page_size {Page} ranges 2 dirty 0", Logging(device));
        Assert.Equal(Libc.EINVAL, Errno(() => dev.StartDmaLogging(Page, [(64 * MiB, MiB)])));
        Assert.Equal($"page_size {Page} ranges 2 dirty 0", Logging(device)); // the first tracker is untouched
        dev.StopDmaLogging();
        Assert.Equal("off", Logging(device));
        Assert.Equal(Page, dev.StartDmaLogging(Page, [(64 * MiB, MiB)]));
        dev.StopDmaLogging();
        dev.StopDmaLogging(); // stopping what is stopped is no error, as on mlx5
    }

    /// <summary>The module tracks at most 2^22 pages a device: a larger span gets larger pages, and the caller must use them.</summary>
    [Fact]
    public void Start_RaisesThePageSize_ForRangesTooLargeToTrackAtTheOneAsked()
    {
        string device = SimDevice();
        using var dev = VfioDevice.Open(device);
        ulong page = dev.StartDmaLogging(Page, [(0UL, 1UL << 40)]);
        try
        {
            Assert.Equal(1UL << 18, page); // 1 TiB in 2^22 pages
            Assert.Equal($"page_size {page} ranges 1 dirty 0", Logging(device));
        }
        finally
        {
            dev.StopDmaLogging();
        }
    }

    [Fact]
    public void Start_RefusesWhatTheCoreOrTheDeviceCannotTake_AndStaysOff()
    {
        string device = SimDevice();
        using var dev = VfioDevice.Open(device);
        Assert.Equal(Libc.EINVAL, Errno(() => dev.StartDmaLogging(Page, [(0UL, 2 * MiB), (MiB, 2 * MiB)])));  // overlapping
        Assert.Equal(Libc.EINVAL, Errno(() => dev.StartDmaLogging(Page, [(100UL, MiB)])));                    // not page aligned
        Assert.Equal(Libc.EINVAL, Errno(() => dev.StartDmaLogging(1000, [(0UL, MiB)])));                      // not a power of 2
        var many = Enumerable.Range(0, 257).Select(i => ((ulong)i * 2 * MiB, MiB)).ToList();
        Assert.Equal(Libc.E2BIG, Errno(() => dev.StartDmaLogging(Page, many)));                               // the core's 256
        Assert.Throws<ArgumentException>(() => dev.StartDmaLogging(Page, []));
        Assert.Equal("off", Logging(device));
        Assert.Equal(Page, dev.StartDmaLogging(Page, many.Take(256).ToList()));
        Assert.Equal($"page_size {Page} ranges 256 dirty 0", Logging(device));
        dev.StopDmaLogging();
    }

    [Fact]
    public void Closing_TheDevice_EndsLogging()
    {
        string device = SimDevice();
        using (var dev = VfioDevice.Open(device))
            dev.StartDmaLogging(Page, [(0UL, MiB)]);
        Assert.Equal("off", Logging(device));
        using var again = VfioDevice.Open(device);
        Assert.Equal(Page, again.StartDmaLogging(Page, [(0UL, MiB)]));
        again.StopDmaLogging();
    }

    /// <summary>
    /// Pages the device writes in a logged range are dirty until a report reads them; writes outside every range, or
    /// before the start, are not. Where the kernel can report (CONFIG_IOMMUFD_DRIVER) the report shows exactly those
    /// pages and a second one nothing; where it cannot, it fails with EOPNOTSUPP and the device keeps them.
    /// </summary>
    [Fact]
    public void DeviceWrites_AreLogged_AndAReportReadsAndClearsThem()
    {
        string device = SimDevice();
        using var dev = VfioDevice.Open(device);
        SimKnobs.Write(device, "dma_write", $"{MiB} {Page}");               // before the start: not logged
        dev.StartDmaLogging(Page, [(MiB, MiB)]);
        try
        {
            long written = SimKnobs.ReadLong(device, "dma_pages_written");
            SimKnobs.Write(device, "dma_write", $"{MiB + Page} {2 * Page}"); // pages 1 and 2 of the range
            SimKnobs.Write(device, "dma_write", $"0 {Page}");                // outside
            SimKnobs.Write(device, "dma_write", $"{2 * MiB - 100} 200");     // the last page, and beyond the range
            Assert.Equal(written + 5, SimKnobs.ReadLong(device, "dma_pages_written"));
            Assert.Equal($"page_size {Page} ranges 1 dirty 3", Logging(device));

            var bitmap = new ulong[4];
            bool? canReport = KernelConfig.IsSet("CONFIG_IOMMUFD_DRIVER");
            if (canReport == false)
            {
                Assert.Equal(Libc.EOPNOTSUPP, Errno(() => dev.ReportDmaLogging(MiB, MiB, Page, bitmap)));
                Assert.Equal($"page_size {Page} ranges 1 dirty 3", Logging(device)); // the driver was not asked
                return;
            }
            if (canReport is null)
                Assert.Skip("the running kernel's config is not found (VFIO_MIG_SIM_KCONFIG, /boot, /proc/config.gz): "
                            + "whether a report can work here is unknown");
            dev.ReportDmaLogging(MiB, MiB, Page, bitmap);
            Assert.Equal([0b110UL, 0UL, 0UL, 1UL << 63], bitmap);
            Assert.Equal($"page_size {Page} ranges 1 dirty 0", Logging(device));
            Array.Clear(bitmap);
            dev.ReportDmaLogging(MiB, MiB, Page, bitmap);
            Assert.All(bitmap, w => Assert.Equal(0UL, w));
        }
        finally
        {
            dev.StopDmaLogging();
        }
    }

    [Fact]
    public void A_StoppedDevice_DoesNotWrite()
    {
        string device = SimDevice();
        using var d = new OpenDevice(device);
        d.Device.StartDmaLogging(Page, [(0UL, MiB)]);
        try
        {
            d.Go(MigrationState.Stop);
            var e = Assert.Throws<InvalidOperationException>(() => SimKnobs.Write(device, "dma_write", $"0 {Page}"));
            Assert.Contains("busy", e.Message, StringComparison.OrdinalIgnoreCase);
            Assert.Equal($"page_size {Page} ranges 1 dirty 0", Logging(device));
        }
        finally
        {
            d.Device.StopDmaLogging();
        }
    }
}

/// <summary>The running kernel's build config, where it can be found.</summary>
public static class KernelConfig
{
    private static readonly Lazy<string[]?> Lines = new(Load);

    /// <summary>
    /// Whether the option is y or m; null when no config of the running kernel is found: VFIO_MIG_SIM_KCONFIG (the QEMU
    /// guest's harness points it at the guest kernel's), /boot/config-RELEASE, /proc/config.gz.
    /// </summary>
    public static bool? IsSet(string option) =>
        Lines.Value is { } lines ? lines.Any(l => l == option + "=y" || l == option + "=m") : null;

    private static string[]? Load()
    {
        string release = File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        foreach (var path in new[] { Environment.GetEnvironmentVariable("VFIO_MIG_SIM_KCONFIG"), $"/boot/config-{release}" })
            if (!string.IsNullOrEmpty(path) && File.Exists(path))
                return File.ReadAllLines(path);
        if (!File.Exists("/proc/config.gz")) return null;
        using var gz = new GZipStream(File.OpenRead("/proc/config.gz"), CompressionMode.Decompress);
        return new StreamReader(gz).ReadToEnd().Split('\n');
    }
}
