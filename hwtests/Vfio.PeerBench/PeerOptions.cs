using System.Globalization;

namespace Vfio.PeerBench;

/// <summary>A migration mode both tools run: stop-copy (the source VM / devices stopped first) or live (PRE_COPY first).</summary>
internal enum PeerMode { StopCopy, Live }

/// <summary>The command line of the peer bench (Program.Usage lists it).</summary>
internal sealed record PeerOptions
{
    public required IReadOnlyList<string> Devices { get; init; }
    public IReadOnlyList<int> Counts { get; init; } = [1, 2, 4];
    public IReadOnlyList<PeerMode> Modes { get; init; } = [PeerMode.StopCopy, PeerMode.Live];
    public int Repeat { get; init; } = 1;
    public int Channels { get; init; } = 6;
    public string Qemu { get; init; } = "qemu-system-x86_64";
    public required string VfioMig { get; init; }
    public required string Out { get; init; }
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(180);
    /// <summary>QEMU's avail-switchover-bandwidth (bytes/s), instead of its own estimate, which never lets it switch over here.</summary>
    public long SwitchoverBandwidth { get; init; } = 1L << 30;

    public static PeerOptions Parse(string[] args)
    {
        string? devices = Environment.GetEnvironmentVariable("VFIO_MIG_SIM_DEVICES"), vfioMig = null, output = null;
        var o = new PeerOptions { Devices = [], VfioMig = "", Out = "" };
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} wants a value");
            switch (args[i])
            {
                case "--devices": devices = Value(); break;
                case "--counts": o = o with { Counts = Ints(Value(), "--counts") }; break;
                case "--modes": o = o with { Modes = Value().Split(',').Select(ParseMode).ToList() }; break;
                case "--repeat": o = o with { Repeat = Ints(Value(), "--repeat").Single() }; break;
                case "--channels": o = o with { Channels = Ints(Value(), "--channels").Single() }; break;
                case "--qemu": o = o with { Qemu = Value() }; break;
                case "--vfio-mig": vfioMig = Value(); break;
                case "--out": output = Value(); break;
                case "--timeout": o = o with { Timeout = TimeSpan.FromSeconds(Ints(Value(), "--timeout").Single()) }; break;
                case "--switchover-bandwidth": o = o with { SwitchoverBandwidth = Ints(Value(), "--switchover-bandwidth").Single() }; break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        var list = (devices ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries);
        int need = 2 * o.Counts.Max();
        if (list.Length < need)
            throw new ArgumentException(
                $"{o.Counts.Max()} device pairs need {need} mdev devices; --devices (or VFIO_MIG_SIM_DEVICES) names {list.Length}");
        if (vfioMig is null) throw new ArgumentException("--vfio-mig PATH (the vfio-mig executable) is required");
        output ??= Path.Combine(Environment.GetEnvironmentVariable("VFIO_MIG_SIM_RESULTS") ?? ".", "qemu-peer");
        return o with { Devices = list, VfioMig = vfioMig, Out = output };
    }

    private static PeerMode ParseMode(string s) => s switch
    {
        "stop-copy" => PeerMode.StopCopy,
        "live" => PeerMode.Live,
        _ => throw new ArgumentException($"--modes: '{s}' is neither stop-copy nor live"),
    };

    private static List<int> Ints(string s, string option)
    {
        var r = new List<int>();
        foreach (var p in s.Split(','))
            r.Add(int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v > 0
                ? v : throw new ArgumentException($"{option}: '{p}' is not a positive number"));
        return r;
    }

    public static string Name(PeerMode m) => m == PeerMode.StopCopy ? "stop-copy" : "live";
}
