using System.Diagnostics;
using System.Text.Json;

namespace Vfio.PeerBench;

/// <summary>What one vfio-mig run reported (--json): downtime_ms is its end-to-end figure, defined as the traces' is.</summary>
internal sealed record VfioMigResult(double DowntimeMs, double? TotalMs, double? PrecopyMs, string? Converged);

/// <summary>
/// One `vfio-mig loopback` of the device pairs, as a process of its own as QEMU's are, with `--verify stream`: QEMU checks
/// no state digest, and the module's costs more than a second inside the downtime under TCG.
/// </summary>
internal sealed class VfioMigRun(PeerOptions options)
{
    public VfioMigResult Run(PeerMode mode, IReadOnlyList<string> sources, IReadOnlyList<string> destinations, string dir)
    {
        Directory.CreateDirectory(dir);
        string json = Path.Combine(dir, "vfio-mig.json");
        var psi = new ProcessStartInfo(options.VfioMig) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("loopback");
        for (int i = 0; i < sources.Count; i++) { psi.ArgumentList.Add("--device"); psi.ArgumentList.Add($"{sources[i]}={destinations[i]}"); }
        foreach (var a in new[] { "--channels", options.Channels.ToString(System.Globalization.CultureInfo.InvariantCulture),
                                  "--precopy", mode == PeerMode.Live ? "on" : "off", "--verify", "stream", "--json", json,
                                  "--trace", Path.Combine(dir, "vfio-mig.trace.json") })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {options.VfioMig}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(options.Timeout))
        {
            p.Kill();
            p.WaitForExit();
            throw new TimeoutException($"vfio-mig did not finish within {options.Timeout.TotalSeconds:0} s");
        }
        File.WriteAllText(Path.Combine(dir, "vfio-mig.out"), stdout.Result + stderr.Result);
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"vfio-mig exited {p.ExitCode}: {LastLine(stderr.Result + stdout.Result)}");
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var r = doc.RootElement;
        return new VfioMigResult(r.GetProperty("downtime_ms").GetDouble(), Optional(r, "total_ms"), Optional(r, "precopy_ms"),
            r.TryGetProperty("converged", out var c) ? c.ToString() : null);
    }

    private static double? Optional(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;

    private static string LastLine(string s)
    {
        var lines = s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return lines.LastOrDefault(l => l.StartsWith("vfio-mig:", StringComparison.Ordinal)) ?? lines.LastOrDefault() ?? "(no output)";
    }
}
