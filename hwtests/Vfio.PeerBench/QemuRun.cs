using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace Vfio.PeerBench;

/// <summary>What one QEMU migration gave: the end-to-end figure from the traces, and QEMU's own account (query-migrate).</summary>
internal sealed record QemuResult(PeerTiming Timing, double? QemuDowntimeMs, double? QemuTotalMs);

/// <summary>
/// One migration by QEMU 10 of the mdev devices: a source QEMU with the source devices and a destination QEMU
/// (`-incoming defer`) with the destination devices, both tiny VMs (a firmware that halts at once, so the VMs cost no
/// CPU), driven over QMP with multifd and `channels` channels, each tracing vfio_* with timestamps into its own file.
/// </summary>
internal sealed class QemuRun(PeerOptions options, string firmware)
{
    public QemuResult Run(PeerMode mode, IReadOnlyList<string> sources, IReadOnlyList<string> destinations, string dir)
    {
        Directory.CreateDirectory(dir);
        // QMP sockets and traces on the guest's tmpfs: a 9p-shared results folder need not support Unix sockets, and a trace
        // line written through 9p costs QEMU's thread a round trip to the host
        string work = Directory.CreateTempSubdirectory("qemu-peer-").FullName;
        string srcTrace = Path.Combine(work, "src.trace"), dstTrace = Path.Combine(work, "dst.trace");
        var connect = TimeSpan.FromSeconds(60);
        try
        {
            using var dst = QemuProcess.Start("destination", options.Qemu,
                Args(destinations, Path.Combine(work, "dst.qmp"), dstTrace).Concat(["-incoming", "defer"]),
                Path.Combine(work, "dst.qmp"), connect);
            var srcArgs = Args(sources, Path.Combine(work, "src.qmp"), srcTrace);
            // A destination starts its VM after the load only if the source's was running, or if the source does not say
            // (no global state): stop-copy stops the source first, and its destination must start as vfio-mig's does.
            if (mode == PeerMode.StopCopy) srcArgs.AddRange(["-global", "migration.store-global-state=off"]);
            using var src = QemuProcess.Start("source", options.Qemu, srcArgs, Path.Combine(work, "src.qmp"), connect);
            var result = Migrate(mode, src, dst, sources, destinations, dir);
            File.WriteAllText(Path.Combine(dir, "query-migrate.json"), result);
            src.Quit(TimeSpan.FromSeconds(30));
            dst.Quit(TimeSpan.FromSeconds(30));
            var timing = QemuTrace.Measure(QemuTrace.ParseStateEvents(File.ReadLines(srcTrace)),
                QemuTrace.ParseStateEvents(File.ReadLines(dstTrace)), sources, destinations);
            var q = JsonNode.Parse(result)!;
            return new QemuResult(timing, Number(q["downtime"]), Number(q["total-time"]));
        }
        finally
        {
            foreach (var trace in new[] { srcTrace, dstTrace })
                if (File.Exists(trace)) File.Copy(trace, Path.Combine(dir, Path.GetFileName(trace)), overwrite: true);
            Directory.Delete(work, recursive: true);
        }
    }

    private static readonly string[] TraceEvents =
    [
        "vfio_migration_set_state", "vfio_migration_set_device_state", "vfio_save_setup", "vfio_save_complete_precopy_thread_*",
        "vfio_load_bufs_thread_*", "vfio_load_state_device_buffer_start", "vfio_load_state_device_buffer_end",
        "vfio_load_device_config_state_*",
    ];

    private static double? Number(JsonNode? n) => n is JsonValue v && v.TryGetValue(out double d) ? d : null;

    private List<string> Args(IReadOnlyList<string> devices, string qmp, string trace)
    {
        var a = new List<string>
        {
            "-machine", "q35,accel=tcg", "-cpu", "qemu64", "-smp", "1", "-m", "32M", "-nodefaults", "-no-user-config",
            "-display", "none", "-bios", firmware, "-qmp", $"unix:{qmp},server=on,wait=off",
            "-msg", "timestamp=on", "-D", trace,
        };
        // vfio_* events that happen once per device and run, not per buffer or per iteration: tracing each of a few hundred
        // buffers would slow QEMU's threads down on the measured path
        foreach (var e in TraceEvents) a.AddRange(["-trace", e]);
        foreach (var d in devices)
            a.AddRange(["-device", $"vfio-pci,sysfsdev=/sys/bus/mdev/devices/{d},x-migration-multifd-transfer=on,enable-migration=on"]);
        return a;
    }

    /// <summary>Runs the migration; returns the source's final query-migrate (JSON) once the destination runs.</summary>
    private string Migrate(PeerMode mode, QemuProcess src, QemuProcess dst, IReadOnlyList<string> sources,
                           IReadOnlyList<string> destinations, string dir)
    {
        // switchover-ack (over the return path): the source waits until the destination has loaded each device's initial
        // image (live only: with the VM stopped first there is no precopy, and nothing to acknowledge)
        var caps = new JsonArray { Cap("multifd") };
        if (mode == PeerMode.Live) { caps.Add(Cap("return-path")); caps.Add(Cap("switchover-ack")); }
        foreach (var p in new[] { dst, src })
        {
            p.Qmp.Execute("migrate-set-capabilities", new JsonObject { ["capabilities"] = caps.DeepClone() });
            var parameters = new JsonObject { ["multifd-channels"] = options.Channels };
            // QEMU switches over when the pending bytes fit downtime-limit at its bandwidth estimate, which stays near zero
            // with no RAM traffic (stop-copy) and at a few Mbit/s with precopy on the main channel only (live): it would never
            // switch over. In live mode switchover-ack still holds it until every initial image is loaded.
            if (p == src) parameters["avail-switchover-bandwidth"] = options.SwitchoverBandwidth;
            p.Qmp.Execute("migrate-set-parameters", parameters);
        }
        string uri = $"tcp:127.0.0.1:{FreePort()}";
        dst.Qmp.Execute("migrate-incoming", new JsonObject { ["uri"] = uri });
        if (mode == PeerMode.StopCopy)
        {
            // pipelined: the VM stops and the migration starts without a QMP round trip in between
            int stop = src.Qmp.Send("stop");
            int migrate = src.Qmp.Send("migrate", new JsonObject { ["uri"] = uri });
            src.Qmp.Receive("stop", stop);
            src.Qmp.Receive("migrate", migrate);
        }
        else
        {
            src.Qmp.Execute("migrate", new JsonObject { ["uri"] = uri });
        }
        var deadline = Stopwatch.StartNew();
        JsonObject status;
        while (true)
        {
            status = (JsonObject)src.Qmp.Execute("query-migrate")!;
            var s = status["status"]?.GetValue<string>();
            if (s == "completed") break;
            if (s is "failed" or "cancelled")
                throw new InvalidOperationException($"QEMU migration {s}: {status["error-desc"]} (source stderr: {src.Stderr})");
            if (deadline.Elapsed > options.Timeout)
                throw new TimeoutException($"QEMU migration not completed within {options.Timeout.TotalSeconds:0} s: {status.ToJsonString()}");
            Thread.Sleep(100);
        }
        while (true)
        {
            var st = (JsonObject)dst.Qmp.Execute("query-status")!;
            if (st["status"]?.GetValue<string>() == "running") break;
            var incoming = (JsonObject)dst.Qmp.Execute("query-migrate")!;
            if (incoming["status"]?.GetValue<string>() is "failed" or "cancelled")
                throw new InvalidOperationException($"QEMU incoming migration failed: {incoming["error-desc"]} (destination stderr: {dst.Stderr})");
            if (deadline.Elapsed > options.Timeout)
                throw new TimeoutException($"the destination QEMU is not running {options.Timeout.TotalSeconds:0} s after the migration started: "
                                           + st.ToJsonString());
            Thread.Sleep(100);
        }
        File.WriteAllText(Path.Combine(dir, "stderr.txt"), $"source: {src.Stderr}\ndestination: {dst.Stderr}\n");
        return status.ToJsonString();
    }

    private static JsonObject Cap(string name) => new() { ["capability"] = name, ["state"] = true };

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>A 64 KiB firmware of zeros whose reset vector (at 0xFFFF0) is `cli; hlt`: the VM halts for good at once.</summary>
    public static byte[] HaltingFirmware()
    {
        var fw = new byte[64 * 1024];
        fw[0xFFF0] = 0xFA; // cli
        fw[0xFFF1] = 0xF4; // hlt
        return fw;
    }
}
