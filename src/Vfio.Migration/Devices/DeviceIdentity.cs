using System.Globalization;
using System.Text.RegularExpressions;

namespace Vfio.Migration;

/// <summary>
/// What the format of a device's migration stream depends on, as far as its host shows it: the driver that produces or
/// loads the stream, the release of the kernel that runs that driver, and the device's firmware version. A field the
/// host does not show is "" (unknown), and nothing is concluded from it.
/// </summary>
public readonly record struct DeviceIdentity(string Driver, string Kernel, string Firmware)
{
    /// <summary>A device that cannot tell.</summary>
    public static DeviceIdentity Unknown { get; } = new("", "", "");
}

public enum StreamVerdict
{
    /// <summary>Nothing known differs.</summary>
    Same,
    /// <summary>A version differs, but the combination is not known to be incompatible: a warning.</summary>
    Differs,
    /// <summary>The destination device is known not to load the source device's stream: refused before any device stops.</summary>
    Incompatible,
}

/// <summary>
/// Whether a destination device can load a source device's stream, judged from their identities before any device
/// stops (a mismatch found by the device itself would fail the run only inside the downtime). Refused: different
/// drivers; mlx5_vfio_pci on kernels on different sides of 6.2 or of 6.3, where its stream format changed. Any other
/// difference of kernel or firmware is a warning naming both versions. Unknown fields are not compared.
/// </summary>
public static partial class StreamCompatibility
{
    public const string Mlx5Driver = "mlx5_vfio_pci";

    /// <summary>The kernels at which mlx5_vfio_pci's stream format changed (6.2 added PRE_COPY; 6.3 the headed records of today).</summary>
    private static readonly (int Major, int Minor)[] s_mlx5FormatChanges = [(6, 2), (6, 3)];

    [GeneratedRegex(@"^(\d{1,4})\.(\d{1,4})(?!\d)")]
    private static partial Regex MajorMinor();

    /// <summary>The verdict and, unless Same, one line naming both sides' versions.</summary>
    public static (StreamVerdict Verdict, string? Reason) Check(DeviceIdentity source, DeviceIdentity destination)
    {
        if (Known(source.Driver) && Known(destination.Driver) && source.Driver != destination.Driver)
            return (StreamVerdict.Incompatible,
                $"source driver {source.Driver}, destination driver {destination.Driver}: one driver cannot load another's stream");
        string driver = Known(source.Driver) ? source.Driver : destination.Driver;
        if (driver == Mlx5Driver && Known(source.Kernel) && Known(destination.Kernel)
            && Mlx5Format(source.Kernel) is int s && Mlx5Format(destination.Kernel) is int d && s != d)
            return (StreamVerdict.Incompatible,
                $"source kernel {source.Kernel}, destination kernel {destination.Kernel}: "
                + $"{Mlx5Driver}'s stream format changed at kernels 6.2 and 6.3");
        var differences = new List<string>(2);
        if (Known(source.Kernel) && Known(destination.Kernel) && source.Kernel != destination.Kernel)
            differences.Add($"source kernel {source.Kernel}, destination kernel {destination.Kernel}");
        if (Known(source.Firmware) && Known(destination.Firmware) && source.Firmware != destination.Firmware)
            differences.Add($"source firmware {source.Firmware}, destination firmware {destination.Firmware}");
        return differences.Count == 0 ? (StreamVerdict.Same, null)
            : (StreamVerdict.Differs, string.Join("; ", differences) + " (not known to be incompatible)");
    }

    /// <summary>Which of mlx5_vfio_pci's stream formats a kernel release speaks (0: before 6.2, 1: 6.2, 2: 6.3 on); null if unparsable.</summary>
    private static int? Mlx5Format(string release)
    {
        var m = MajorMinor().Match(release);
        if (!m.Success) return null;
        var v = (int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture));
        return s_mlx5FormatChanges.Count(change => v.CompareTo(change) >= 0);
    }

    private static bool Known(string? field) => !string.IsNullOrEmpty(field);
}
