using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Vfio.PeerBench;

/// <summary>
/// The peer comparison: QEMU 10 and vfio-mig migrate the same mdev devices of our kernel module, one after the other,
/// in stop-copy and live mode, with 1, 2, 4 device pairs; each row gives both tools' end-to-end figure (first source
/// device leaving RUNNING to last destination device RUNNING), the module's own count of the loads, and a digest check.
/// Runs inside the guest tier: `./build.sh qemu-peer` boots the guest and runs this.
/// </summary>
internal static class Program
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private const string Usage =
        "usage: Vfio.PeerBench --vfio-mig PATH [--devices \"UUID...\"] [--counts 1,2,4] [--modes stop-copy,live] [--repeat N]\n"
        + "                      [--channels 6] [--qemu qemu-system-x86_64] [--out DIR] [--timeout S] [--switchover-bandwidth BYTES_PER_S]\n"
        + "Sources are the first half of --devices (default $VFIO_MIG_SIM_DEVICES), destinations the second half.";

    public static int Main(string[] args)
    {
        PeerOptions o;
        try { o = PeerOptions.Parse(args); }
        catch (ArgumentException e) { Console.Error.WriteLine($"Vfio.PeerBench: {e.Message}\n{Usage}"); return 2; }
        Directory.CreateDirectory(o.Out);
        string firmware = Path.Combine(o.Out, "halt.bin");
        File.WriteAllBytes(firmware, QemuRun.HaltingFirmware());
        string version = QemuVersion(o.Qemu);
        Console.WriteLine($"{version}; vfio-mig {o.VfioMig}; {o.Channels} channels; module: {ModuleParameters()}");
        if (QemuMajor(version) is not >= 10)
        {
            Console.Error.WriteLine($"Vfio.PeerBench: {version}: QEMU 10 or later is needed (the VFIO multifd device-state transfer)");
            return 2;
        }
        int half = o.Devices.Count / 2;
        var qemu = new QemuRun(o, firmware);
        var vfioMig = new VfioMigRun(o);
        var rows = new List<PeerRow>();
        foreach (var mode in o.Modes)
            foreach (int n in o.Counts)
                for (int rep = 0; rep < o.Repeat; rep++)
                {
                    var src = o.Devices.Take(n).ToList();
                    var dst = o.Devices.Skip(half).Take(n).ToList();
                    string dir = Path.Combine(o.Out, $"{PeerOptions.Name(mode)}-{n}-{rep + 1}");
                    // alternate which tool goes first, so that neither always runs on a guest the other just warmed
                    var order = rep % 2 == 0 ? new[] { "qemu", "vfio-mig" } : ["vfio-mig", "qemu"];
                    foreach (var tool in order)
                    {
                        var row = Measure(tool, mode, src, dst, Path.Combine(dir, tool), qemu, vfioMig);
                        rows.Add(row);
                        Console.WriteLine(row.Line());
                    }
                }
        File.WriteAllText(Path.Combine(o.Out, "rows.json"), JsonSerializer.Serialize(rows, Indented));
        string table = PeerTable.Markdown(rows, version, o.Channels, ModuleParameters());
        File.WriteAllText(Path.Combine(o.Out, "peer.md"), table);
        Console.WriteLine(table);
        return rows.All(r => r.Error is null) ? 0 : 1;
    }

    /// <summary>One migration by one tool, checked against the module: every destination's digest is its source's, every
    /// destination RUNNING, and the module's own load counters.</summary>
    private static PeerRow Measure(string tool, PeerMode mode, List<string> src, List<string> dst, string dir, QemuRun qemu, VfioMigRun vfioMig)
    {
        var sources = src.Select(u => new SimDevice(u)).ToList();
        var destinations = dst.Select(u => new SimDevice(u)).ToList();
        var row = new PeerRow { Tool = tool, Mode = PeerOptions.Name(mode), Devices = src.Count };
        try
        {
            foreach (var d in destinations) d.ResetCounters();
            if (tool == "qemu")
            {
                var r = qemu.Run(mode, src, dst, dir);
                row = row with
                {
                    EndToEndMs = r.Timing.EndToEndMs, FromStopCopyMs = r.Timing.FromStopCopyMs,
                    QemuDowntimeMs = r.QemuDowntimeMs, TotalMs = r.QemuTotalMs,
                };
            }
            else
            {
                var r = vfioMig.Run(mode, src, dst, dir);
                row = row with { EndToEndMs = r.DowntimeMs, TotalMs = r.TotalMs, PrecopyMs = r.PrecopyMs, Converged = r.Converged };
            }
            var loads = destinations.Select(d => d.Loads).ToList();
            row = row with { MaxDeviceLoadMs = loads.Max(l => l.LoadUs) / 1000.0, LoadedBytes = loads.Sum(l => l.Bytes) };
            for (int i = 0; i < src.Count; i++)
            {
                if (destinations[i].MigState != "RUNNING")
                    throw new InvalidOperationException($"destination {dst[i]} is {destinations[i].MigState} after the run, not RUNNING");
                if (destinations[i].Digest != sources[i].Digest)
                    throw new InvalidOperationException($"destination {dst[i]}'s digest differs from source {src[i]}'s after the run");
            }
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or QmpException or IOException or FormatException
                                       or JsonException or KeyNotFoundException)
        {
            row = row with { Error = e.Message };
        }
        return row;
    }

    /// <summary>The major version in `qemu-system-x86_64 --version`'s first line ("QEMU emulator version 10.0.2 (...)").</summary>
    internal static int? QemuMajor(string versionLine)
    {
        int at = versionLine.IndexOf("version ", StringComparison.Ordinal);
        if (at < 0) return null;
        var digits = versionLine[(at + 8)..].TakeWhile(char.IsAsciiDigit).ToArray();
        return int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int major) ? major : null;
    }

    private static string QemuVersion(string qemu)
    {
        try
        {
            var psi = new ProcessStartInfo(qemu, "--version") { RedirectStandardOutput = true, UseShellExecute = false };
            using var p = Process.Start(psi)!;
            string first = p.StandardOutput.ReadLine() ?? "";
            p.WaitForExit();
            return first.Trim();
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return $"{qemu}: {e.Message}";
        }
    }

    private static string ModuleParameters()
    {
        const string dir = "/sys/module/vfio_mig_sim/parameters";
        if (!Directory.Exists(dir)) return "vfio_mig_sim not loaded";
        var sb = new StringBuilder();
        foreach (var name in new[] { "state_size", "record_kib", "load_us_per_mib", "save_us_per_mib", "dirty_kib_per_s", "max_concurrent_loads" })
        {
            string path = Path.Combine(dir, name);
            if (File.Exists(path)) sb.Append(CultureInfo.InvariantCulture, $"{name}={File.ReadAllText(path).Trim()} ");
        }
        return sb.ToString().TrimEnd();
    }
}
