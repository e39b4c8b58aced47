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

    /// <summary>Bad input: printed as one line, exit code 2 (<see cref="ExitCodes.Usage"/>).</summary>
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
        command.SetAction(r => Run(r, common, (options, factory, log, watch, cancel) =>
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
                        src.Add(OpenDevice(factory, $"{kind}:vf{i}"));
                        dst.Add(OpenDevice(dstFactory, $"{kind}:vf{i}"));
                    }
                }
                else
                {
                    var dstFactory = new DeviceFactory(factory.SimOptions, new SimulatedPf("sim-pf-dst", factory.Pf.ConcurrentLoads));
                    foreach (var p in pairs)
                    {
                        int eq = p.IndexOf('=');
                        if (eq <= 0 || eq == p.Length - 1) throw new UsageException($"--device for loopback takes SRC=DST pairs, not '{p}'");
                        src.Add(OpenDevice(factory, p[..eq]));
                        dst.Add(OpenDevice(dstFactory, p[(eq + 1)..]));
                    }
                }
                var report = Loopback.Run(src, dst, options, log, (s, d) => { watch(d); watch(s); }, cancel);
                return SimulatedRun.Annotate(report, src, dst, options.DowntimeLimit);
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
        command.SetAction(r => Run(r, common, (options, factory, log, watch, cancel) =>
        {
            var endpoint = Endpoints.Parse(r.GetValue(to)!, "--to", resolve: true);
            options = options with { Tls = common.Tls.ForDestination(options.Tls, r, r.GetValue(to)!) };
            var devices = OpenAll(r.GetValue(common.Device), factory);
            try
            {
                var source = new MigrationSource(devices, options, log);
                watch(source);
                var report = source.Run(endpoint, cancel);
                return SimulatedRun.Bound(report, devices, devices, options.DowntimeLimit);
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
        command.SetAction(r => Run(r, common, (options, factory, log, watch, cancel) =>
        {
            var endpoint = Endpoints.Parse(r.GetValue(listen)!, "--listen", resolve: false);
            common.Tls.CheckListen(r, endpoint, options.Tls);
            // Listening comes before the devices are opened: an address in use is bad input, and no device was touched.
            Socket listener;
            try { listener = Loopback.Listen(endpoint, Protocol.MaxChannels + 4); }
            catch (MigrationException e) { throw new UsageException($"--listen: {e.Message}"); }
            using (listener)
            {
                var devices = OpenAll(r.GetValue(common.Device), factory);
                try
                {
                    var destination = new MigrationDestination(devices, options, log);
                    watch(destination);
                    r.InvocationConfiguration.Output.WriteLine($"listening on {(IPEndPoint)listener.LocalEndPoint!}");
                    r.InvocationConfiguration.Output.Flush();
                    return SimulatedRun.Annotate(destination.Run(listener, cancel), devices, devices, options.DowntimeLimit);
                }
                finally { foreach (var d in devices) d.Dispose(); }
            }
        }));
        return command;
    }

    /// <summary>A device that cannot be found or opened is bad input: the run has not started, no device changed state.</summary>
    private static IMigrationDevice OpenDevice(DeviceFactory factory, string spec)
    {
        try { return factory.Open(spec); }
        catch (Exception e) when (e is MigrationException or VfioException or IOException or UnauthorizedAccessException)
        {
            throw new UsageException(e.Message);
        }
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
                devices.Add(OpenDevice(factory, s));
            }
            return devices;
        }
        catch
        {
            foreach (var d in devices) d.Dispose();
            throw;
        }
    }

    /// <summary>A command's run: gets the checked options, a log, a way to show each side it runs, and the signals' token.</summary>
    private delegate RunReport RunBody(MigrationOptions options, DeviceFactory factory, ILogger log, Action<MigrationSide> watch,
        CancellationToken cancel);

    private static int Run(ParseResult r, Common common, RunBody body)
    {
        var output = r.InvocationConfiguration.Output;
        var error = r.InvocationConfiguration.Error;
        // Log lines go to the console (plain lines when redirected; warnings only under the progress display).
        // When the command runs in-process with other writers (tests), there is no console logging, nor signal handling.
        bool console = ReferenceEquals(output, Console.Out);
        bool terminal = !Console.IsOutputRedirected && console;
        var sides = new List<MigrationSide>();
        ProgressDisplay? display = null;
        using var interruption = new Interruption(error, () => AtStake(sides), register: console);
        var loggerFactory = LoggerFactory.Create(b =>
        {
            if (console) b.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; });
            b.SetMinimumLevel(r.GetValue(common.Verbose) ? LogLevel.Debug : terminal ? LogLevel.Warning : LogLevel.Information);
        });
        ReportFile?[] files = [];
        PrecopyStatus? LiveStatus()
        {
            lock (sides) return sides.Select(s => s.Progress.Precopy).FirstOrDefault(p => p is not null);
        }
        try
        {
            RunReport report;
            try
            {
                var options = common.Options(r);
                var factory = common.Factory(r);
                files = ReportFile.OpenAll((r.GetValue(common.Json), "--json"), (r.GetValue(common.Trace), "--trace"),
                    (r.GetValue(common.Svg), "--svg"));
                var log = loggerFactory.CreateLogger("vfio-mig");
                report = body(options, factory, log, side =>
                {
                    lock (sides) sides.Add(side);
                    if (terminal && display is null)
                        display = new ProgressDisplay(side.Progress, LiveStatus, output);
                }, interruption.Token);
            }
            catch (UsageException e)
            {
                return Fail(e.Message, ExitCodes.Usage);
            }
            catch (MigrationException e)
            {
                return Fail(e.Message, ExitCodes.Failed);
            }
            catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException or VfioException or SocketException)
            {
                // Opening a device or resolving an address, before the run.
                return Fail(e.Message, ExitCodes.Usage);
            }
            display?.Dispose();
            loggerFactory.Dispose();
            if (interruption.Signal is string signal) report.Interrupted(signal);
            foreach (var line in report.SummaryLines()) output.WriteLine(line);
            ReportFile.WriteReport(report, files[0], files[1], files[2], error);
            return ExitCode(report, interruption, error);
        }
        finally
        {
            foreach (var f in files) f?.Dispose();
        }

        int Fail(string message, int code)
        {
            display?.Dispose();
            loggerFactory.Dispose();
            error.WriteLine($"vfio-mig: {message}");
            return code;
        }
    }

    /// <summary>The exit code says what the devices are left in (ExitCodes); the one-line error says why.</summary>
    private static int ExitCode(RunReport report, Interruption interruption, TextWriter error)
    {
        if (report.Outcome == MigrationOutcome.Unknown)
        {
            error.WriteLine($"vfio-mig: outcome unknown: the migration was committed, then {report.Error}. The source devices are "
                + "stopped with their state; if the destination did not take over, resume them with: vfio-mig resume "
                + string.Join(' ', report.Devices.Select(d => d.SourceName ?? d.Name)));
            return ExitCodes.OutcomeUnknown;
        }
        if (report.Ok)
        {
            if (report.Signal is not null)
                error.WriteLine($"vfio-mig: {report.Signal} came after the commit point: the migration completed");
            return report.Devices.All(d => d.Verified) ? ExitCodes.Ok : ExitCodes.Failed;
        }
        string left = report.Role switch
        {
            "source" => "source devices RUNNING",
            "destination" => "destination devices reset",
            _ => "source devices RUNNING, destination devices reset",
        };
        string device = report.FailedDevice is null ? "" : $" ({report.FailedDevice})";
        error.WriteLine(report.Failure?.Origin == FailureOrigin.Cancelled
            ? $"vfio-mig: migration {report.Error}: {left}"
            : $"vfio-mig: migration failed{device}: {report.Error}; {left}");
        return report.Signal is null ? ExitCodes.Failed : interruption.CancelledExitCode;
    }

    /// <summary>What the sides of this run still do with their devices, for a second or third signal.</summary>
    internal static Interruption.AtStake AtStake(List<MigrationSide> sides)
    {
        var doing = new List<string>();
        var risk = new List<string>();
        lock (sides)
        {
            foreach (var side in sides)
            {
                int n = side.Devices.Count;
                string Of(string role) => n == 1 ? $"the {role} device" : $"the {n} {role} devices";
                switch (side.Progress.Finishing)
                {
                    case FinishingStep.RestoringSources:
                        doing.Add($"putting {Of("source")} back to RUNNING");
                        risk.Add("the source devices may stay stopped, and a VF is reset when this process exits: their state may be lost");
                        break;
                    case FinishingStep.KeepingSourcesStopped:
                        doing.Add($"waiting for the threads of {Of("stopped source")} (outcome unknown: their state is kept)");
                        risk.Add("a VF is reset when this process exits: the state kept for `vfio-mig resume` may be lost");
                        break;
                    case FinishingStep.ResettingDestinations:
                        doing.Add($"resetting {Of("destination")}");
                        risk.Add("a destination device may be left half-loaded until it is reset");
                        break;
                    case FinishingStep.RunningDestinations:
                        doing.Add($"moving {Of("destination")} to RUNNING (the source committed: they must run here)");
                        risk.Add("the destination devices may never run while the source's stay stopped: their state may be lost");
                        break;
                }
            }
        }
        return doing.Count == 0 ? default : new(string.Join("; ", doing), string.Join("; ", risk));
    }

    /// <summary>
    /// One status line, redrawn in place, for transfers that last more than half a second: the live phase's status while it
    /// lasts (the source's), then the bytes each device has moved.
    /// </summary>
    private sealed class ProgressDisplay : IDisposable
    {
        private readonly MigrationProgress _p;
        private readonly Func<PrecopyStatus?> _live;
        private readonly TextWriter _out;
        private readonly Timer _timer;
        private readonly long _start = Environment.TickCount64;
        private bool _drawn;

        public ProgressDisplay(MigrationProgress p, Func<PrecopyStatus?> live, TextWriter output)
        {
            _p = p;
            _live = live;
            _out = output;
            _timer = new Timer(_ => Draw(), null, 500, 200);
        }

        private void Draw()
        {
            if (_live() is { } live)
            {
                Show(live.Describe());
                return;
            }
            long total = _p.Total, expected = _p.Expected.Sum();
            var parts = _p.Names.Select((n, i) =>
            {
                long e = _p.Expected[i], b = Volatile.Read(ref _p.Bytes[i]);
                return e > 0 ? $"{n} {Math.Min(100, b * 100 / e)}%" : $"{n} {b >> 20}MiB";
            });
            string line = string.Create(CultureInfo.InvariantCulture,
                $"{total / 1048576.0:0.0}/{expected / 1048576.0:0.0} MiB  {(Environment.TickCount64 - _start) / 1000.0:0.0}s  "
                    + $"{string.Join("  ", parts)}");
            Show(line);
        }

        private void Show(string line)
        {
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
