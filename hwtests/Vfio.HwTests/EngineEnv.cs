using System.Globalization;
using System.Text.Json;

namespace Vfio.HwTests;

/// <summary>Which kind of device the engine tests migrate between.</summary>
public enum PairKind
{
    /// <summary>vfio_mig_sim mdev instances (VFIO_MIG_SIM_DEVICES), paired in order: 1st -> 2nd, 3rd -> 4th, ...</summary>
    Sim,
    /// <summary>Real migratable VFs (VFIO_HW_DEVICES), paired the same way.</summary>
    Vf,
}

/// <summary>Source/destination pairs for the engine's end-to-end tests, and the skips when there are not enough.</summary>
public static class EngineEnv
{
    public static IReadOnlyList<(string Src, string Dst)> Pairs(IReadOnlyList<string> devices) =>
        Enumerable.Range(0, devices.Count / 2).Select(i => (devices[2 * i], devices[2 * i + 1])).ToList();

    /// <summary><paramref name="count"/> pairs of one kind, or a skip that says what is missing.</summary>
    public static IReadOnlyList<(string Src, string Dst)> RequirePairs(PairKind kind, int count)
    {
        if (kind == PairKind.Sim)
        {
            if (HwEnv.SimDevices.Count == 0)
                Assert.Skip("no vfio_mig_sim devices: VFIO_MIG_SIM_DEVICES is not set (hwtests/guest/run-in-guest.sh sets it in its QEMU guest)");
            HwEnv.RequireVfio();
            if (HwEnv.SimDevices.Count < 2 * count)
                Assert.Skip($"{count} pairs need {2 * count} vfio_mig_sim devices; VFIO_MIG_SIM_DEVICES names {HwEnv.SimDevices.Count} "
                            + $"(run-in-guest.sh --devices {2 * count})");
            return Pairs(HwEnv.SimDevices).Take(count).ToList();
        }
        if (HwEnv.RealDevices.Count == 0)
            Assert.Skip("no real VFs: set VFIO_HW_DEVICES to PCI addresses of migratable VFs on a VFIO driver, as consecutive " +
                        "source/destination pairs (\"SRC1 DST1 SRC2 DST2 ...\")");
        HwEnv.RequireVfio();
        if (HwEnv.RealDevices.Count < 2 * count)
            Assert.Skip($"{count} pairs need {2 * count} real VFs; VFIO_HW_DEVICES names {HwEnv.RealDevices.Count}");
        return Pairs(HwEnv.RealDevices).Take(count).ToList();
    }
}

/// <summary>
/// The vfio_mig_sim module's sysfs, for the engine tests: per-device knobs set for a test and restored afterwards
/// (state_size, seed, load_us_per_mib; restoring state_size and seed regenerates the state the device had), counters,
/// the parent's concurrency limit and peak.
/// </summary>
public sealed class SimKnobs : IDisposable
{
    private readonly List<(string Path, string Value)> _saved = new();

    public static string DevicePath(string device) => Path.Combine(VfioHostPaths.Default.MdevDevicesDir, device);

    public static string ParentPath =>
        Environment.GetEnvironmentVariable("VFIO_MIG_SIM_PARENT") is { Length: > 0 } p ? p : "/sys/class/vfio_mig_sim/vfio_mig_sim";

    public static string Read(string device, string attribute) =>
        VfioSysfs.ReadAttribute(Path.Combine(DevicePath(device), attribute))
        ?? throw new InvalidOperationException($"{device}: sysfs attribute '{attribute}' is missing");

    public static long ReadLong(string device, string attribute) => ParseLong(Read(device, attribute), attribute);

    public static void Write(string device, string attribute, string value) => WritePath(Path.Combine(DevicePath(device), attribute), value);

    public static long ReadParent(string attribute) =>
        ParseLong(VfioSysfs.ReadAttribute(Path.Combine(ParentPath, attribute))
                  ?? throw new InvalidOperationException($"parent sysfs attribute '{attribute}' is missing under {ParentPath}"), attribute);

    public static void WriteParent(string attribute, string value) => WritePath(Path.Combine(ParentPath, attribute), value);

    private static long ParseLong(string text, string what)
    {
        text = text.Trim();
        return text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? (long)ulong.Parse(text.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture)
            : long.Parse(text, CultureInfo.InvariantCulture);
    }

    private static void WritePath(string path, string value)
    {
        try
        {
            File.WriteAllText(path, value);
        }
        catch (IOException e)
        {
            throw new InvalidOperationException($"writing '{value}' to {path}: {e.Message}", e);
        }
    }

    public const string ModuleParameters = "/sys/module/vfio_mig_sim/parameters";

    /// <summary>Remembers the attribute's value (first time only) and writes a new one.</summary>
    public void Set(string device, string attribute, string value) => SetPath(Path.Combine(DevicePath(device), attribute), value);

    /// <summary>A writable module parameter (max_state_size, state_size ...), restored on Dispose.</summary>
    public void SetModuleParameter(string name, string value) => SetPath(Path.Combine(ModuleParameters, name), value);

    private void SetPath(string path, string value)
    {
        Keep(path);
        WritePath(path, value);
    }

    private void Keep(string path)
    {
        if (!_saved.Any(s => s.Path == path))
            _saved.Add((path, VfioSysfs.ReadAttribute(path) ?? throw new InvalidOperationException($"{path} is missing")));
    }

    /// <summary>Remembers a device's state (size and seed) so that Dispose regenerates it, e.g. before a migration overwrites it.</summary>
    public void KeepState(string device)
    {
        Keep(Path.Combine(DevicePath(device), "state_size"));
        Keep(Path.Combine(DevicePath(device), "seed"));
    }

    /// <summary>
    /// Restores module parameters first (max_state_size bounds the sizes), then device attributes with state_size
    /// before seed, so the seed regenerates the original content at the original size.
    /// </summary>
    public void Dispose()
    {
        var errors = new List<string>();
        var order = _saved.OrderBy(s =>
            s.Path.StartsWith(ModuleParameters, StringComparison.Ordinal) ? 0 : Path.GetFileName(s.Path) == "seed" ? 2 : 1);
        foreach (var (path, value) in order)
        {
            try { WritePath(path, value); }
            catch (Exception e) { errors.Add(e.Message); }
        }
        _saved.Clear();
        if (errors.Count > 0)
            throw new InvalidOperationException("restoring vfio_mig_sim attributes failed: " + string.Join("; ", errors));
    }
}

/// <summary>The parts of `vfio-mig ... --json` the tests read, by the names the report writes.</summary>
public sealed record JsonRun(string Result, string Mode, int Channels, double DowntimeMs, IReadOnlyList<JsonDevice> Devices, string Raw)
{
    public static JsonRun Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        var devices = r.GetProperty("devices").EnumerateArray().Select(d => new JsonDevice(
            d.GetProperty("name").GetString()!,
            d.TryGetProperty("source", out var s) ? s.GetString() : null,
            d.GetProperty("bytes").GetInt64(),
            d.GetProperty("buffers").GetInt32(),
            d.GetProperty("wait_ms").GetDouble(),
            d.GetProperty("load_ms").GetDouble(),
            d.GetProperty("total_ms").GetDouble(),
            d.GetProperty("verified").GetBoolean())).ToList();
        return new JsonRun(r.GetProperty("result").GetString()!, r.GetProperty("mode").GetString()!, r.GetProperty("channels").GetInt32(),
            r.GetProperty("downtime_ms").GetDouble(), devices, json);
    }
}

public sealed record JsonDevice(string Name, string? Source, long Bytes, int Buffers, double WaitMs, double LoadMs, double TotalMs, bool Verified);
