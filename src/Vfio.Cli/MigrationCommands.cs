using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Vfio.Migration;

namespace Vfio.Cli;

/// <summary>`send`, `receive` and `loopback`: migrate device state over a main channel and N data channels.</summary>
public static class MigrationCommands
{
    /// <summary>The options of send, receive and loopback: the shared ones that shape a run, and those of a single run.</summary>
    private sealed class Common
    {
        public readonly MigrationOptionSet Shared = new();
        public readonly TlsOptionSet Tls = new();
        public readonly Option<string[]> Device = new("--device")
        {
            Description = "A device: PCI address, mdev UUID, sim:NAME (simulated) or null:NAME (no cost: the transport alone) " +
                          "(repeat for several; order pairs source and destination)",
            AllowMultipleArgumentsPerToken = false,
        };
        public readonly Option<string> Loading = new("--loading")
        {
            Description = "decoupled (a loading thread per device) or coupled (receive threads load)",
            DefaultValueFactory = _ => "decoupled",
        };
        public readonly Option<string?> Json = new("--json") { Description = "Write the report as JSON to this file" };
        public readonly Option<string?> Trace = new("--trace")
        {
            Description = "Write the run's timeline as Chrome trace-event JSON (opens in Perfetto, ui.perfetto.dev) to this file",
        };
        public readonly Option<string?> Svg = new("--svg") { Description = "Write the run's timeline as a self-contained SVG picture to this file" };
        public readonly Option<bool> Verbose = new("--verbose") { Description = "Debug log lines" };

        public void AddTo(Command c)
        {
            c.Options.Add(Device);
            c.Options.Add(Loading);
            Shared.AddTo(c);
            Tls.AddTo(c);
            foreach (var o in new Option[] { Json, Trace, Svg, Verbose })
                c.Options.Add(o);
        }

        public MigrationOptions Options(ParseResult r)
        {
            string loading = r.GetValue(Loading) ?? "decoupled";
            var mode = loading switch
            {
                "decoupled" => LoadingMode.Decoupled,
                "coupled" => LoadingMode.Coupled,
                _ => throw new UsageException($"--loading must be decoupled or coupled, not '{loading}'"),
            };
            return Shared.Options(r) with { Loading = mode, Tls = Tls.Settings(r) };
        }

        public DeviceFactory Factory(ParseResult r) => new(Shared.Simulation(r), new SimulatedPf("sim-pf", Shared.PfConcurrency(r)));
    }

    /// <summary>Bad input: printed as one line, exit code 2.</summary>
    public sealed class UsageException(string message) : Exception(message);

    public static IEnumerable<Command> Create()
    {
        yield return CreateLoopback();
        yield return CreateSend();
        yield return CreateReceive();
    }

    private static Command CreateLoopback()
    {
        var common = new Common();
        var sim = new Option<int?>("--sim") { Description = "Migrate N simulated VFs (sim:vf0..) to N simulated VFs" };
        var nullDevices = new Option<bool>("--null") { Description = "Use devices with no cost (null:vf0..; --sim N sets how many, 4 by default): "
            + "measures the transport alone; --state-size sets their state" };
        var command = new Command("loopback", "Migrate devices within this process over loopback TCP (default: --sim 4 --channels 6); --device "
            + "SRC=DST pairs real devices");
        common.AddTo(command);
        command.Options.Add(sim);
        command.Options.Add(nullDevices);
        command.SetAction(r => Run(r, common, (options, factory, log, progress) =>
        {
            var pairs = r.GetValue(common.Device) ?? Array.Empty<string>();
            int? n = r.GetValue(sim);
            bool useNull = r.GetValue(nullDevices);
            if (pairs.Length > 0 && n is not null) throw new UsageException("give either --sim N or --device SRC=DST pairs, not both");
            if (pairs.Length > 0 && useNull) throw new UsageException("give either --null or --device SRC=DST pairs, not both");
            if (pairs.Length == 0)
            {
                n ??= 4;
                if (n < 1 || n > Protocol.MaxDevices) throw new UsageException($"--sim must be between 1 and {Protocol.MaxDevices}");
                if (useNull) log.LogDebug("null devices: {Count} x {Bytes} bytes", n, factory.SimOptions.StateSize);
                if (r.GetResult(common.Shared.Channels) is null) options = options with { Channels = 6 };
            }
            var src = new List<IMigrationDevice>();
            var dst = new List<IMigrationDevice>();
            try
            {
                if (pairs.Length == 0)
                {
                    var dstFactory = new DeviceFactory(factory.SimOptions, new SimulatedPf("sim-pf-dst", factory.Pf.ConcurrentLoads));
                    string kind = useNull ? "null" : "sim";
                    for (int i = 0; i < n; i++)
                    {
                        src.Add(factory.Open($"{kind}:vf{i}"));
                        dst.Add(dstFactory.Open($"{kind}:vf{i}"));
                    }
                }
                else
                {
                    var dstFactory = new DeviceFactory(factory.SimOptions, new SimulatedPf("sim-pf-dst", factory.Pf.ConcurrentLoads));
                    foreach (var p in pairs)
                    {
                        int eq = p.IndexOf('=');
                        if (eq <= 0 || eq == p.Length - 1) throw new UsageException($"--device for loopback takes SRC=DST pairs, not '{p}'");
                        src.Add(factory.Open(p[..eq]));
                        dst.Add(dstFactory.Open(p[(eq + 1)..]));
                    }
                }
                return SimulatedRun.Annotate(Loopback.Run(src, dst, options, log, (s, d) => progress(d.Progress)), src, dst);
            }
            finally
            {
                foreach (var d in src.Concat(dst)) d.Dispose();
            }
        }));
        return command;
    }

    private static Command CreateSend()
    {
        var common = new Common();
        var to = new Option<string>("--to") { Description = "Destination ADDR:PORT (where vfio-mig receive listens)", Required = true };
        var command = new Command("send", "Migrate devices to a destination running `vfio-mig receive`");
        common.AddTo(command);
        command.Options.Add(to);
        command.SetAction(r => Run(r, common, (options, factory, log, progress) =>
        {
            var endpoint = Endpoints.Parse(r.GetValue(to)!, "--to", resolve: true);
            options = options with { Tls = common.Tls.ForDestination(options.Tls, r, r.GetValue(to)!) };
            var devices = OpenAll(r.GetValue(common.Device), factory);
            try
            {
                var source = new MigrationSource(devices, options, log);
                progress(source.Progress);
                var report = source.Run(endpoint);
                report.DeviceBoundMs = DeviceBound.Compute(devices);
                return report;
            }
            finally { foreach (var d in devices) d.Dispose(); }
        }));
        return command;
    }

    private static Command CreateReceive()
    {
        var common = new Common();
        var listen = new Option<string>("--listen") { Description = "ADDR:PORT to listen on (port 0 picks one and prints it)", Required = true };
        var command = new Command("receive", "Receive a migration from `vfio-mig send` into the given devices");
        common.AddTo(command);
        command.Options.Add(listen);
        command.Options.Add(common.Tls.Insecure);
        command.SetAction(r => Run(r, common, (options, factory, log, progress) =>
        {
            var endpoint = Endpoints.Parse(r.GetValue(listen)!, "--listen", resolve: false);
            common.Tls.CheckListen(r, endpoint, options.Tls);
            var devices = OpenAll(r.GetValue(common.Device), factory);
            try
            {
                using var listener = Loopback.Listen(endpoint, Protocol.MaxChannels + 4);
                var bound = (IPEndPoint)listener.LocalEndPoint!;
                r.InvocationConfiguration.Output.WriteLine($"listening on {bound}");
                r.InvocationConfiguration.Output.Flush();
                var destination = new MigrationDestination(devices, options, log);
                progress(destination.Progress);
                return SimulatedRun.Annotate(destination.Run(listener), devices, devices);
            }
            finally { foreach (var d in devices) d.Dispose(); }
        }));
        return command;
    }

    private static List<IMigrationDevice> OpenAll(string[]? specs, DeviceFactory factory)
    {
        if (specs is null || specs.Length == 0) throw new UsageException("at least one --device is required");
        var devices = new List<IMigrationDevice>();
        try
        {
            foreach (var s in specs)
            {
                if (string.IsNullOrWhiteSpace(s)) throw new UsageException("empty --device");
                if (devices.Any(d => d.Name == s)) throw new UsageException($"device {s} given twice");
                devices.Add(factory.Open(s));
            }
            return devices;
        }
        catch
        {
            foreach (var d in devices) d.Dispose();
            throw;
        }
    }

    private delegate RunReport RunBody(MigrationOptions options, DeviceFactory factory, ILogger log, Action<MigrationProgress> progress);

    private static int Run(ParseResult r, Common common, RunBody body)
    {
        var output = r.InvocationConfiguration.Output;
        var error = r.InvocationConfiguration.Error;
        bool terminal = !Console.IsOutputRedirected && ReferenceEquals(output, Console.Out);
        RunReport report;
        ProgressDisplay? display = null;
        // Log lines go to the console (plain lines when redirected; warnings only under the progress display).
        // When the command runs in-process with other writers (tests), there is no console logging.
        bool console = ReferenceEquals(output, Console.Out);
        var loggerFactory = LoggerFactory.Create(b =>
        {
            if (console) b.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; });
            b.SetMinimumLevel(r.GetValue(common.Verbose) ? LogLevel.Debug : terminal ? LogLevel.Warning : LogLevel.Information);
        });
        try
        {
            var options = common.Options(r);
            var factory = common.Factory(r);
            string? json = r.GetValue(common.Json);
            string? trace = r.GetValue(common.Trace);
            string? svg = r.GetValue(common.Svg);
            if (json is not null) CheckWritable(json, "--json");
            if (trace is not null) CheckWritable(trace, "--trace");
            if (svg is not null) CheckWritable(svg, "--svg");
            var log = loggerFactory.CreateLogger("vfio-mig");
            report = body(options, factory, log, p => { if (terminal) display = new ProgressDisplay(p, output); });
            display?.Dispose();
            loggerFactory.Dispose();
            foreach (var line in report.SummaryLines()) output.WriteLine(line);
            if (json is not null)
            {
                using var f = File.Create(json);
                report.WriteJson(f);
            }
            // The timeline is written for failed runs too: it shows how far each device got.
            if (trace is not null || svg is not null)
            {
                var timeline = TimelineExport.ToReportsTimeline(report);
                if (trace is not null)
                {
                    using var f = File.Create(trace);
                    Vfio.Reports.ChromeTrace.Write(timeline, f);
                }
                if (svg is not null) File.WriteAllText(svg, Vfio.Reports.SvgTimeline.Render(timeline));
            }
        }
        catch (UsageException e)
        {
            display?.Dispose();
            loggerFactory.Dispose();
            error.WriteLine($"vfio-mig: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is MigrationException or ArgumentException or IOException or UnauthorizedAccessException or VfioException
            or SocketException)
        {
            display?.Dispose();
            loggerFactory.Dispose();
            error.WriteLine($"vfio-mig: {e.Message}");
            return e is MigrationException ? 1 : 2;
        }
        if (report.Outcome == MigrationOutcome.Unknown)
        {
            error.WriteLine($"vfio-mig: outcome unknown: the migration was committed, then {report.Error}. The source devices are "
                + "stopped with their state; if the destination did not take over, resume them with: vfio-mig resume "
                + string.Join(' ', report.Devices.Select(d => d.SourceName ?? d.Name)));
            return ResumeCommand.OutcomeUnknownExitCode;
        }
        if (!report.Ok)
        {
            error.WriteLine($"vfio-mig: migration failed{(report.FailedDevice is null ? "" : $" ({report.FailedDevice})")}: {report.Error}");
            return 1;
        }
        return report.Devices.All(d => d.Verified) ? 0 : 1;
    }

    private static void CheckWritable(string path, string option)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null && !Directory.Exists(dir)) throw new UsageException($"{option}: directory {dir} does not exist");
    }

    /// <summary>One status line, redrawn in place, for transfers that last more than half a second.</summary>
    private sealed class ProgressDisplay : IDisposable
    {
        private readonly MigrationProgress _p;
        private readonly TextWriter _out;
        private readonly Timer _timer;
        private readonly long _start = Environment.TickCount64;
        private bool _drawn;

        public ProgressDisplay(MigrationProgress p, TextWriter output)
        {
            _p = p;
            _out = output;
            _timer = new Timer(_ => Draw(), null, 500, 200);
        }

        private void Draw()
        {
            long total = _p.Total, expected = _p.Expected.Sum();
            var parts = _p.Names.Select((n, i) =>
            {
                long e = _p.Expected[i], b = Volatile.Read(ref _p.Bytes[i]);
                return e > 0 ? $"{n} {Math.Min(100, b * 100 / e)}%" : $"{n} {b >> 20}MiB";
            });
            string line = string.Create(CultureInfo.InvariantCulture,
                $"{total / 1048576.0:0.0}/{expected / 1048576.0:0.0} MiB  {(Environment.TickCount64 - _start) / 1000.0:0.0}s  "
                    + $"{string.Join("  ", parts)}");
            if (line.Length > 150) line = line[..150];
            lock (_out) { _out.Write("\r" + line + "\u001b[K"); _out.Flush(); _drawn = true; }
        }

        public void Dispose()
        {
            _timer.Dispose();
            lock (_out) if (_drawn) { _out.Write("\r\u001b[K"); _out.Flush(); }
        }
    }
}

/// <summary>Sizes with units: 4096, 64KiB, 64MiB, 1GiB (binary), 64K/M/G (binary), 64KB/MB/GB (decimal); rates may end in /s.</summary>
public static class Sizes
{
    public static long Parse(string text, string option, bool rate = false)
    {
        string s = text.Trim();
        if (rate && s.EndsWith("/s", StringComparison.OrdinalIgnoreCase)) s = s[..^2];
        int i = 0;
        while (i < s.Length && (char.IsDigit(s[i]) || s[i] == '.')) i++;
        if (i == 0 || !double.TryParse(s[..i], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double value))
            throw new MigrationCommands.UsageException($"{option}: '{text}' is not a size (examples: 4096, 64KiB, 64MiB, 1GiB)");
        double mult = s[i..].Trim().ToUpperInvariant() switch
        {
            "" or "B" => 1,
            "K" or "KIB" => 1L << 10,
            "M" or "MIB" => 1L << 20,
            "G" or "GIB" => 1L << 30,
            "T" or "TIB" => 1L << 40,
            "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            _ => throw new MigrationCommands.UsageException($"{option}: unknown unit in '{text}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB)"),
        };
        double bytes = value * mult;
        if (bytes > (double)(1L << 50)) throw new MigrationCommands.UsageException($"{option}: '{text}' is too large");
        return (long)bytes;
    }
}

/// <summary>ADDR:PORT parsing with one-line errors.</summary>
public static class Endpoints
{
    public static IPEndPoint Parse(string text, string option, bool resolve)
    {
        if (IPEndPoint.TryParse(text, out var ep) && text.Contains(':') && (text.LastIndexOf(':') > text.LastIndexOf(']')))
            return ep;
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port > 65535)
            throw new MigrationCommands.UsageException($"{option}: '{text}' is not ADDR:PORT");
        string host = text[..colon];
        if (!resolve && host is not ("localhost" or "*"))
            throw new MigrationCommands.UsageException($"{option}: '{host}' is not an IP address");
        if (host == "*") return new IPEndPoint(IPAddress.Any, port);
        try
        {
            var addresses = Dns.GetHostAddresses(host);
            var a = addresses.FirstOrDefault(x => x.AddressFamily == AddressFamily.InterNetwork) ?? addresses.FirstOrDefault()
                ?? throw new MigrationCommands.UsageException($"{option}: '{host}' has no address");
            return new IPEndPoint(a, port);
        }
        catch (SocketException e)
        {
            throw new MigrationCommands.UsageException($"{option}: cannot resolve '{host}': {e.Message}");
        }
    }
}
