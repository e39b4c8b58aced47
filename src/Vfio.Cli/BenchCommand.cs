using System.CommandLine;
using System.Globalization;
using Vfio.Bench;
using Vfio.Migration;
using UsageException = Vfio.Cli.MigrationCommands.UsageException;

namespace Vfio.Cli;

/// <summary>
/// `bench`: sweeps device counts, loading modes and channel counts, or (--precopy) live migrations against stop-copy only,
/// and checks the performance targets.
/// </summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var devices = new Option<string>("--devices") { Description = "Device counts to sweep, e.g. 1,2,4,8", DefaultValueFactory = _ => "1,2,4,8" };
        var loading = new Option<string>("--loading")
        {
            Description = "Loading modes to compare: decoupled,coupled",
            DefaultValueFactory = _ => "decoupled,coupled",
        };
        var channelSweep = new Option<string>("--channel-sweep")
        {
            Description = "Channel counts to sweep at 4 devices (decoupled), or 'none'",
            DefaultValueFactory = _ => "1,2,4,6,8",
        };
        var repeat = new Option<int>("--repeat") { Description = "Runs per scenario (the median is reported)", DefaultValueFactory = _ => 3 };
        var nullDevices = new Option<bool>("--null")
        {
            Description = "Devices with no cost and in-memory state: measure the transport alone, against iperf3",
        };
        var pairs = new Option<string[]>("--device") { Description = "Real device pairs SRC=DST to benchmark instead of simulated devices (repeat)" };
        var skipMemory = new Option<bool>("--skip-memory") { Description = "Skip the memory scenario (4 devices of 1 GiB)" };
        var memorySize = new Option<string>("--memory-state-size")
        {
            Description = "State per device in the memory scenario",
            DefaultValueFactory = _ => "1GiB",
        };
        var output = new Option<string>("--out")
        {
            Description = "Folder for bench.md, bench.csv and bench.svg",
            DefaultValueFactory = _ => "bench-results",
        };
        var json = new Option<string?>("--json") { Description = "Also write the results as JSON to this file" };
        var tls = new Option<bool>("--tls")
        {
            Description = "Run each decoupled scenario again over mutual TLS right after itself (throwaway certificates unless --tls-cert etc.)",
        };
        var dirtyRates = new Option<string>("--dirty-rates")
        {
            Description = "With --precopy: dirty rates per device to sweep, e.g. 0,16MiB,128MiB",
            DefaultValueFactory = _ => "0,16MiB,128MiB",
        };
        var tlsFiles = new TlsOptionSet();
        var shared = new MigrationOptionSet();
        // The channel sweep sets its own counts: --channels applies to the other sections only.
        shared.Channels.Description = "Data channels for the device-count sweep";
        // For bench, --precopy chooses the sweep: live migrations against stop-copy only (no value: on).
        shared.Precopy.Description = "Sweep live migrations (PRE_COPY) against stop-copy only instead: --devices of --state-size "
            + "(1GiB unless given), each stop-copy only and live at each of --dirty-rates (on, auto or no value; off: the other sweeps)";
        shared.Precopy.Arity = ArgumentArity.ZeroOrOne;
        shared.Precopy.DefaultValueFactory = _ => PrecopyMode.Off; // the other sweeps unless --precopy is given

        var command = new Command("bench",
            "Benchmark migrations: device counts 1,2,4,8, decoupled vs coupled loading, channel counts; writes Markdown, CSV, a chart and JSON");
        foreach (var o in new Option[]
            { devices, loading, channelSweep, repeat, nullDevices, pairs, skipMemory, memorySize, output, json, tls, dirtyRates })
            command.Options.Add(o);
        shared.AddTo(command);
        tlsFiles.AddTo(command);

        command.SetAction(r =>
        {
            var stdout = r.InvocationConfiguration.Output;
            var stderr = r.InvocationConfiguration.Error;
            try
            {
                var realPairs = (r.GetValue(pairs) ?? []).Select(ParsePair).ToList();
                bool isNull = r.GetValue(nullDevices);
                if (isNull && realPairs.Count > 0) throw new UsageException("give either --null or --device pairs, not both");
                var migration = shared.Options(r);
                var credentials = tlsFiles.Settings(r);
                if (credentials is not null && !r.GetValue(tls)) throw new UsageException("--tls-cert, --tls-key and --tls-ca need --tls for bench");
                bool precopy = migration.Precopy != PrecopyMode.Off || r.GetResult(shared.Precopy) is { Implicit: false, Tokens.Count: 0 };
                if (precopy && (isNull || realPairs.Count > 0 || r.GetValue(tls)))
                    throw new UsageException("--precopy sweeps simulated devices: not with --null, --device or --tls");
                var sim = shared.Simulation(r);
                // The precopy sweep's devices are 1 GiB unless --state-size says otherwise, and decoupled unless --loading does.
                if (precopy && r.GetResult(shared.StateSize) is null or { Implicit: true }) sim = sim with { StateSize = 1L << 30 };
                var modes = precopy && r.GetResult(loading) is null or { Implicit: true }
                    ? [LoadingMode.Decoupled] : ParseModes(r.GetValue(loading)!);
                var settings = new BenchSettings
                {
                    Kind = isNull ? BenchDeviceKind.Null : realPairs.Count > 0 ? BenchDeviceKind.Real : BenchDeviceKind.Simulated,
                    DeviceCounts = ParseList(r.GetValue(devices)!, "--devices", 1, Protocol.MaxDevices),
                    Modes = modes,
                    Channels = migration.Channels,
                    ChannelSweep = r.GetValue(channelSweep) is "none" or ""
                        ? []
                        : ParseList(r.GetValue(channelSweep)!, "--channel-sweep", 1, Protocol.MaxChannels),
                    Repeat = Positive(r.GetValue(repeat), "--repeat"),
                    Sim = sim,
                    PfConcurrency = shared.PfConcurrency(r),
                    RealPairs = realPairs,
                    Memory = !r.GetValue(skipMemory),
                    MemoryStateSize = Sizes.Parse(r.GetValue(memorySize)!, "--memory-state-size"),
                    Migration = migration,
                    Tls = r.GetValue(tls) ? credentials ?? ThrowawayCertificates.Create() : null,
                    Precopy = precopy,
                    DirtyRates = ParseRates(r.GetValue(dirtyRates)!),
                };
                // Output places are checked before the sweep, so a long run is never lost at its end.
                string dir = r.GetValue(output)!;
                try { Directory.CreateDirectory(dir); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
                {
                    throw new UsageException($"--out: cannot create {dir}: {e.Message}");
                }
                using var jsonFile = ReportFile.OpenAll((r.GetValue(json), "--json"))[0];

                var result = new BenchRunner(settings, stdout).Run("vfio-mig " + string.Join(' ', r.Tokens.Select(t => t.Value)));
                File.WriteAllText(Path.Combine(dir, "bench.md"), BenchWriters.Markdown(result));
                File.WriteAllText(Path.Combine(dir, "bench.csv"), BenchWriters.Csv(result));
                File.WriteAllText(Path.Combine(dir, "bench.svg"), BenchWriters.Chart(result));
                jsonFile?.TryWrite(f => BenchWriters.Json(result, f), stderr);
                foreach (var t in result.Targets)
                    stdout.WriteLine($"target {(t.Met ? "met" : "NOT met")}: {t.Name} ({t.Detail})");
                stdout.WriteLine($"wrote {Path.Combine(dir, "bench.md")}, bench.csv, bench.svg{(r.GetValue(json) is string p ? ", " + p : "")}");
                bool allVerified = result.Rows.All(row => row.AllVerified);
                if (!allVerified) stderr.WriteLine("vfio-mig: some benchmark runs failed: see the table");
                return allVerified ? ExitCodes.Ok : ExitCodes.Failed;
            }
            catch (UsageException e)
            {
                stderr.WriteLine($"vfio-mig: {e.Message}");
                return ExitCodes.Usage;
            }
            catch (Exception e) when (e is MigrationException or IOException or UnauthorizedAccessException or VfioException)
            {
                stderr.WriteLine($"vfio-mig: {e.Message}");
                return ExitCodes.Failed;
            }
        });
        return command;
    }

    internal static IReadOnlyList<int> ParseList(string text, string option, int min, int max)
    {
        var values = new List<int>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int v) || v < min || v > max)
                throw new UsageException($"{option}: '{part}' is not a whole number from {min} to {max}");
            if (!values.Contains(v)) values.Add(v);
        }
        if (values.Count == 0) throw new UsageException($"{option}: give at least one number, e.g. 1,2,4");
        return values;
    }

    private static List<double> ParseRates(string text)
    {
        var rates = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(t => (double)Sizes.Parse(t, "--dirty-rates", rate: true)).Distinct().ToList();
        return rates.Count > 0 ? rates : throw new UsageException("--dirty-rates: give at least one rate, e.g. 0,16MiB");
    }

    private static List<LoadingMode> ParseModes(string text) =>
        text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Distinct().Select(m => m switch
        {
            "decoupled" => LoadingMode.Decoupled,
            "coupled" => LoadingMode.Coupled,
            _ => throw new UsageException($"--loading: '{m}' is neither decoupled nor coupled"),
        }).ToList() is { Count: > 0 } modes ? modes : throw new UsageException("--loading: give decoupled, coupled or both");

    private static (string, string) ParsePair(string pair)
    {
        int eq = pair.IndexOf('=');
        if (eq <= 0 || eq == pair.Length - 1) throw new UsageException($"--device for bench takes SRC=DST pairs, not '{pair}'");
        return (pair[..eq], pair[(eq + 1)..]);
    }

    private static int Positive(int value, string option) =>
        value >= 1 ? value : throw new UsageException($"{option} must be at least 1");
}
