using System.Text.Json;
using Vfio.Core;

namespace Vfio.Host;

/// <summary>devlink through the iproute2 tool, as an administrator runs it (its JSON output parsed).</summary>
internal sealed class DevlinkTool : IDevlink
{
    public string? EswitchMode(string pf)
    {
        var (code, output) = ProcessRunner.Run("devlink", ["-j", "dev", "eswitch", "show", $"pci/{pf}"]);
        return code == 0 ? ParseEswitchMode(output, pf) : null;
    }

    public void SetEswitchMode(string pf, string mode) => Check(["dev", "eswitch", "set", $"pci/{pf}", "mode", mode]);

    public (string Port, bool? Migratable)? VfPort(string pf, int vf)
    {
        var (code, output) = ProcessRunner.Run("devlink", ["-j", "port", "show"]);
        return code == 0 ? ParseVfPort(output, pf, vf) : null;
    }

    public bool? Migratable(string port)
    {
        var (code, output) = ProcessRunner.Run("devlink", ["-j", "port", "show", port]);
        return code == 0 ? ParseMigratable(output, port) : null;
    }

    public void SetMigratable(string port, bool enable) =>
        Check(["port", "function", "set", port, "migratable", enable ? "enable" : "disable"]);

    private static void Check(string[] args)
    {
        var (code, output) = ProcessRunner.Run("devlink", args);
        if (code != 0) throw new VfioException($"devlink {string.Join(' ', args)}", 0, $"exit code {code}: {output.Trim()}");
    }

    /// <summary>`devlink -j dev eswitch show pci/PF`: {"dev":{"pci/PF":{"mode":"legacy",...}}}.</summary>
    internal static string? ParseEswitchMode(string json, string pf)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.TryGetProperty("dev", out var dev) && dev.TryGetProperty($"pci/{pf}", out var d)
            && d.TryGetProperty("mode", out var mode) ? mode.GetString() : null;
    }

    /// <summary>`devlink -j port show`: the pcivf port of the PF whose vfnum is <paramref name="vf"/>, and its function's migratable.</summary>
    internal static (string Port, bool? Migratable)? ParseVfPort(string json, string pf, int vf)
    {
        using var doc = JsonDocument.Parse(json);
        if (!doc.RootElement.TryGetProperty("port", out var ports)) return null;
        foreach (var port in ports.EnumerateObject())
        {
            var p = port.Value;
            if (!port.Name.StartsWith($"pci/{pf}/", StringComparison.Ordinal)) continue;
            if (!(p.TryGetProperty("flavour", out var f) && f.GetString() == "pcivf")) continue;
            if (!(p.TryGetProperty("vfnum", out var n) && n.TryGetInt32(out int number) && number == vf)) continue;
            return (port.Name, MigratableOf(p));
        }
        return null;
    }

    /// <summary>`devlink -j port show pci/PF/N`: its function's migratable flag.</summary>
    internal static bool? ParseMigratable(string json, string port)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.TryGetProperty("port", out var ports) && ports.TryGetProperty(port, out var p) ? MigratableOf(p) : null;
    }

    private static bool? MigratableOf(JsonElement port) =>
        port.TryGetProperty("function", out var fn) && fn.TryGetProperty("migratable", out var m) ? m.GetString() == "enable" : null;
}
