using Vfio.PeerBench;

namespace Vfio.Tests.PeerBench;

public class QemuTraceTests
{
    private const string Src = "8b9c1d2e-0000-4000-8000-000000000001";
    private const string Dst = "8b9c1d2e-0000-4000-8000-000000000005";

    // The lines QEMU 10.0.2 wrote (-trace 'vfio_*' -msg timestamp=on -D FILE) for one stop-copy migration of one device.
    private static readonly string[] SourceTrace =
    [
        $"2211@1796625000.100000:vfio_migration_realize  ({Src})",
        $"2211@1796625000.200000:vfio_migration_set_state  ({Src}) new state RUNNING_P2P, recover state ERROR",
        $"2211@1796625000.200100:vfio_migration_set_device_state  ({Src}) state RUNNING_P2P",
        $"2211@1796625000.200200:vfio_migration_set_state  ({Src}) new state RUNNING, recover state ERROR",
        $"2211@1796625000.200300:vfio_migration_set_device_state  ({Src}) state RUNNING",
        $"2211@1796625001.000050:vfio_migration_set_state  ({Src}) new state RUNNING_P2P, recover state ERROR",
        $"2211@1796625001.000090:vfio_migration_set_device_state  ({Src}) state RUNNING_P2P",
        $"2211@1796625001.000200:vfio_migration_set_state  ({Src}) new state STOP, recover state ERROR",
        $"2211@1796625001.000300:vfio_migration_set_device_state  ({Src}) state STOP",
        "2026-12-07T06:30:01.000400Z qemu-system-x86_64: warning: vfio " + Src + ": Could not enable error recovery for the device",
        $"2214@1796625001.010000:vfio_migration_set_state  ({Src}) new state STOP_COPY, recover state STOP",
        $"2214@1796625001.010500:vfio_migration_set_device_state  ({Src}) state STOP_COPY",
        $"2214@1796625001.300000:vfio_migration_set_state  ({Src}) new state STOP, recover state ERROR",
        $"2214@1796625001.300100:vfio_migration_set_device_state  ({Src}) state STOP",
    ];

    private static readonly string[] DestinationTrace =
    [
        $"2305@1796625000.500000:vfio_migration_set_state  ({Dst}) new state RESUMING, recover state ERROR",
        $"2305@1796625000.500400:vfio_migration_set_device_state  ({Dst}) state RESUMING",
        $"2309@1796625001.150000:vfio_load_state_device_data  ({Dst}) size 8392928 ret 0",
        $"2305@1796625001.400000:vfio_migration_set_state  ({Dst}) new state STOP, recover state ERROR",
        $"2305@1796625001.400100:vfio_migration_set_device_state  ({Dst}) state STOP",
        $"2305@1796625001.400200:vfio_migration_set_state  ({Dst}) new state RUNNING_P2P, recover state ERROR",
        $"2305@1796625001.400300:vfio_migration_set_device_state  ({Dst}) state RUNNING_P2P",
        $"2305@1796625001.410000:vfio_migration_set_state  ({Dst}) new state RUNNING, recover state ERROR",
        $"2305@1796625001.412345:vfio_migration_set_device_state  ({Dst}) state RUNNING",
    ];

    [Fact]
    public void State_events_are_read_with_their_time_and_whether_they_are_a_request()
    {
        var events = QemuTrace.ParseStateEvents(SourceTrace);
        Assert.Equal(12, events.Count);
        Assert.Equal(new VfioStateEvent(1796625000_200000, Src, "RUNNING_P2P", Requested: true, Line: 2), events[0]);
        Assert.Equal(new VfioStateEvent(1796625001_010500, Src, "STOP_COPY", Requested: false, Line: 12), events[9]);
    }

    [Fact]
    public void The_end_to_end_figure_runs_from_the_stop_request_before_stop_copy_to_the_last_destination_running()
    {
        var t = QemuTrace.Measure(QemuTrace.ParseStateEvents(SourceTrace), QemuTrace.ParseStateEvents(DestinationTrace), [Src], [Dst]);
        Assert.Equal(1796625001_000050, t.FirstSourceStopUs);
        Assert.Equal(1796625001_412345, t.LastDestinationRunningUs);
        Assert.Equal(412.295, t.EndToEndMs, 3);
        Assert.Equal(401.845, t.FromStopCopyMs, 3);
    }

    [Fact]
    public void The_last_of_several_devices_counts_at_each_end()
    {
        const string src2 = "src-two", dst2 = "dst-two";
        string[] source = [.. SourceTrace,
            $"2215@1796625000.900000:vfio_migration_set_state  ({src2}) new state PRE_COPY_P2P, recover state PRE_COPY",
            $"2215@1796625001.020000:vfio_migration_set_device_state  ({src2}) state STOP_COPY"];
        string[] destination = [.. DestinationTrace,
            $"2306@1796625000.600000:vfio_migration_set_device_state  ({dst2}) state RESUMING",
            $"2306@1796625001.500000:vfio_migration_set_device_state  ({dst2}) state RUNNING"];
        var t = QemuTrace.Measure(QemuTrace.ParseStateEvents(source), QemuTrace.ParseStateEvents(destination), [Src, src2], [Dst, dst2]);
        Assert.Equal(600.0, t.EndToEndMs, 3);
    }

    [Fact]
    public void A_trace_that_does_not_show_a_completed_migration_is_refused_naming_the_device()
    {
        var src = QemuTrace.ParseStateEvents(SourceTrace);
        var dst = QemuTrace.ParseStateEvents(DestinationTrace.Where(l => !l.EndsWith("state RUNNING", StringComparison.Ordinal)));
        Assert.Equal($"destination device {Dst}: the trace never shows it RUNNING after RESUMING",
            Assert.Throws<FormatException>(() => QemuTrace.Measure(src, dst, [Src], [Dst])).Message);
        Assert.Equal("source device other: the trace never shows it in STOP_COPY",
            Assert.Throws<FormatException>(() => QemuTrace.Measure(src, QemuTrace.ParseStateEvents(DestinationTrace), ["other"], [Dst])).Message);
        // a destination that ran before the source stopped: the traces were not taken on one clock
        var early = QemuTrace.ParseStateEvents(DestinationTrace.Select(l => l.Replace("@1796625001.", "@1796624001.", StringComparison.Ordinal)));
        Assert.Contains("do not share a clock", Assert.Throws<FormatException>(() => QemuTrace.Measure(src, early, [Src], [Dst])).Message);
    }

    [Fact]
    public void A_state_event_without_a_timestamp_or_with_other_arguments_is_an_error_not_a_skip()
    {
        Assert.Contains("is -msg timestamp=on given?", Assert.Throws<FormatException>(() =>
            QemuTrace.ParseStateEvents([$"vfio_migration_set_state  ({Src}) new state STOP, recover state ERROR"])).Message);
        Assert.StartsWith("trace line 2: unexpected arguments of vfio_migration_set_device_state", Assert.Throws<FormatException>(() =>
            QemuTrace.ParseStateEvents(["", $"1@1.000001:vfio_migration_set_device_state  ({Src}) new state 3"])).Message);
    }

    [Fact]
    public void The_qemu_version_line_gives_the_major_version()
    {
        Assert.Equal(10, Vfio.PeerBench.Program.QemuMajor("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"));
        Assert.Equal(7, Vfio.PeerBench.Program.QemuMajor("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"));
        Assert.Null(Vfio.PeerBench.Program.QemuMajor("qemu-system-x86_64: No such file or directory"));
    }

    [Fact]
    public void The_firmware_halts_at_the_reset_vector()
    {
        var fw = QemuRun.HaltingFirmware();
        Assert.Equal(64 * 1024, fw.Length);
        Assert.Equal(new byte[] { 0xFA, 0xF4 }, fw[0xFFF0..0xFFF2]); // cli; hlt at 0xFFFF0, the last 16 bytes of the BIOS
        Assert.Equal(2, fw.Count(b => b != 0));
    }

    [Fact]
    public void The_table_gives_medians_of_the_successful_runs_and_lists_failures()
    {
        PeerRow Row(string tool, double ms, string? error = null) =>
            new() { Tool = tool, Mode = "live", Devices = 2, EndToEndMs = ms, MaxDeviceLoadMs = 200, Error = error };
        var table = PeerTable.Markdown(
            [Row("vfio-mig", 300), Row("vfio-mig", 100), Row("vfio-mig", 200), Row("qemu", 400), Row("qemu", 9999, "QEMU migration failed: x")],
            "QEMU emulator version 10.0.2", 6, "load_us_per_mib=25000");
        Assert.Contains("| live | 2 | 200.0 | 400.0 | 0.50 | - | - | 200.0 / 200.0 | 3/3 + 1/2 |", table);
        Assert.Contains("- live, 2 devices, qemu: QEMU migration failed: x", table);
    }
}
