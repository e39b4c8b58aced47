using System.Globalization;

namespace Vfio.PeerBench;

/// <summary>The sysfs view of one of our kernel module's mdev devices (native/vfio-mig-sim/README.md): its state digest,
/// migration state and load counters, the module's own account of a migration that neither tool can colour.</summary>
internal sealed class SimDevice(string uuid, string mdevDir = "/sys/bus/mdev/devices")
{
    public string Uuid { get; } = uuid;
    public string SysfsPath => Path.Combine(mdevDir, Uuid);

    public string Read(string attribute)
    {
        try { return File.ReadAllText(Path.Combine(SysfsPath, attribute)).Trim(); }
        catch (IOException e) { throw new IOException($"{Uuid}: reading {attribute}: {e.Message}", e); }
        catch (UnauthorizedAccessException e) { throw new IOException($"{Uuid}: reading {attribute}: {e.Message}", e); }
    }

    public long ReadLong(string attribute) =>
        long.TryParse(Read(attribute), NumberStyles.Integer, CultureInfo.InvariantCulture, out long v)
            ? v : throw new IOException($"{Uuid}: {attribute} is not a number: '{Read(attribute)}'");

    public string Digest => Read("digest");
    public string MigState => Read("mig_state");

    public void ResetCounters() => File.WriteAllText(Path.Combine(SysfsPath, "reset_counters"), "1");

    /// <summary>What the module counted for this device's loads since <see cref="ResetCounters"/>.</summary>
    public LoadCounters Loads => new(ReadLong("loads"), ReadLong("bytes_loaded"), ReadLong("load_us_total"));
}

internal readonly record struct LoadCounters(long Loads, long Bytes, long LoadUs);
