using System.CommandLine;
using Vfio.Migration;
using UsageException = Vfio.Cli.MigrationCommands.UsageException;

namespace Vfio.Cli;

/// <summary>
/// The options that shape a migration run, the transport's and the simulated devices', defined once for every command
/// that migrates (loopback, send, receive, bench) so that their names, defaults and checks cannot drift apart.
/// </summary>
internal sealed class MigrationOptionSet
{
    public readonly Option<int> Channels = new("--channels")
    {
        Description = "Data channels (TCP connections besides the main channel); receive: the most it accepts",
        DefaultValueFactory = _ => 6,
    };
    public readonly Option<string> BufferSize = new("--buffer-size")
    {
        Description = "Bytes per data buffer read from a device, e.g. 1MiB; receive: the largest it accepts",
        DefaultValueFactory = _ => "1MiB",
    };
    public readonly Option<int> Window = new("--window")
    {
        Description = "Buffers per device in flight (credits): receive grants it, send keeps at most it",
        DefaultValueFactory = _ => MigrationOptions.DefaultWindow,
    };
    public readonly Option<double> Timeout = new("--timeout")
    {
        Description = "Seconds a silent peer, or a device that makes no progress after the switchover, is tolerated",
        DefaultValueFactory = _ => 30,
    };
    public readonly Option<double> LoadTimeout = new("--load-timeout")
    {
        Description = "Seconds one call into a device (a load, a save read, leaving RESUMING) may take",
        DefaultValueFactory = _ => 60,
    };
    public readonly Option<PrecopyMode> Precopy = new("--precopy")
    {
        Description = "Live phase (PRE_COPY) before the switchover: auto (default: when every device has it), on, off",
        DefaultValueFactory = _ => PrecopyMode.Auto,
    };
    public readonly Option<double> DowntimeLimit = new("--downtime-limit")
    {
        Description = "Milliseconds: switch over once the remainder is estimated to move and load within this",
        DefaultValueFactory = _ => 300,
    };
    public readonly Option<double> PrecopyTimeout = new("--precopy-timeout")
    {
        Description = "Seconds precopy may take to converge before --precopy-timeout-action",
        DefaultValueFactory = _ => 60,
    };
    public readonly Option<PrecopyTimeoutAction> PrecopyTimeoutAction = new("--precopy-timeout-action")
    {
        Description = "When precopy has not converged in time: switchover (anyway, with a warning) or abort (devices back to RUNNING)",
        DefaultValueFactory = _ => Vfio.Migration.PrecopyTimeoutAction.Switchover,
    };
    public readonly Option<VerifyMode> Verify = new("--verify")
    {
        Description = "What verifies each device besides the stream's byte count and checksum: digest (its state digest too, "
            + "where it has one: simulated devices, the kernel module; inside the downtime) or stream (the stream alone, as real devices)",
        DefaultValueFactory = _ => VerifyMode.Digest,
    };
    public readonly Option<string> StateSize = new("--state-size")
    {
        Description = "Simulated devices: state (stream) size, e.g. 64MiB",
        DefaultValueFactory = _ => "64MiB",
    };
    public readonly Option<string> LoadRate = new("--sim-load-rate")
    {
        Description = "Simulated devices: load rate per second, e.g. 320MiB (0 = free)",
        DefaultValueFactory = _ => "320MiB",
    };
    public readonly Option<string> SaveRate = new("--sim-save-rate")
    {
        Description = "Simulated devices: save rate per second (0 = unlimited)",
        DefaultValueFactory = _ => "0",
    };
    public readonly Option<int> PfLimit = new("--sim-pf-concurrency")
    {
        Description = "Simulated devices: concurrent loads the shared PF allows",
        DefaultValueFactory = _ => SimulatedPf.DefaultConcurrentLoads,
    };
    public readonly Option<string> RecordSize = new("--sim-record-size")
    {
        Description = "Simulated devices: data bytes per firmware record (the unit of a load)",
        DefaultValueFactory = _ => "4MiB",
    };
    public readonly Option<string> DirtyRate = new("--sim-dirty-rate")
    {
        Description = "Simulated and null devices: bytes of state dirtied per second while they run in PRE_COPY (0 = none)",
        DefaultValueFactory = _ => "16MiB",
    };

    public void AddTo(Command c)
    {
        foreach (var o in new Option[] { Channels, BufferSize, Window, Timeout, LoadTimeout, Precopy, DowntimeLimit, PrecopyTimeout,
            PrecopyTimeoutAction, Verify, StateSize, LoadRate, SaveRate, PfLimit, RecordSize, DirtyRate })
            c.Options.Add(o);
    }

    /// <summary>The transport's options, checked; the loading mode is left at its default for the command to set.</summary>
    public MigrationOptions Options(ParseResult r)
    {
        // Socket timeouts count whole milliseconds, and 0 means none: a shorter timeout would silently become no timeout.
        double timeout = r.GetValue(Timeout), loadTimeout = r.GetValue(LoadTimeout);
        if (!(timeout >= 0.001 && timeout < 86400)) throw new UsageException("--timeout must be between 0.001 and 86400 seconds");
        if (!(loadTimeout >= 0.001 && loadTimeout < 86400)) throw new UsageException("--load-timeout must be between 0.001 and 86400 seconds");
        double downtimeLimit = r.GetValue(DowntimeLimit), precopyTimeout = r.GetValue(PrecopyTimeout);
        if (!(downtimeLimit >= 1 && downtimeLimit < 3_600_000)) throw new UsageException("--downtime-limit must be between 1 and 3600000 ms");
        if (!(precopyTimeout >= 0.001 && precopyTimeout < 86400))
            throw new UsageException("--precopy-timeout must be between 0.001 and 86400 seconds");
        long buffer = Sizes.Parse(r.GetValue(BufferSize)!, "--buffer-size");
        var o = new MigrationOptions
        {
            Channels = r.GetValue(Channels),
            BufferSize = buffer > int.MaxValue ? int.MaxValue : (int)buffer,
            Window = r.GetValue(Window),
            Timeout = TimeSpan.FromSeconds(timeout),
            LoadTimeout = TimeSpan.FromSeconds(loadTimeout),
            Precopy = r.GetValue(Precopy),
            DowntimeLimit = TimeSpan.FromMilliseconds(downtimeLimit),
            PrecopyTimeout = TimeSpan.FromSeconds(precopyTimeout),
            PrecopyTimeoutAction = r.GetValue(PrecopyTimeoutAction),
            Verify = r.GetValue(Verify),
        };
        try { o.Validate(); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
        return o;
    }

    /// <summary>The simulated devices' parameters, checked.</summary>
    public SimulatedDeviceOptions Simulation(ParseResult r)
    {
        long record = Sizes.Parse(r.GetValue(RecordSize)!, "--sim-record-size");
        if (record < 1 || record > 64 << 20) throw new UsageException("--sim-record-size must be between 1 byte and 64MiB");
        var sim = new SimulatedDeviceOptions
        {
            StateSize = Sizes.Parse(r.GetValue(StateSize)!, "--state-size"),
            LoadBytesPerSecond = Sizes.Parse(r.GetValue(LoadRate)!, "--sim-load-rate", rate: true),
            SaveBytesPerSecond = Sizes.Parse(r.GetValue(SaveRate)!, "--sim-save-rate", rate: true),
            RecordDataSize = (int)record,
            DirtyBytesPerSecond = Sizes.Parse(r.GetValue(DirtyRate)!, "--sim-dirty-rate", rate: true),
        };
        if (sim.StateSize < SimStream.MinStateSize || sim.StateSize > SimStream.MaxStateSize)
            throw new UsageException($"--state-size must be between {SimStream.MinStateSize} bytes and 1TiB");
        return sim;
    }

    /// <summary>Concurrent loads a simulated PF allows, checked.</summary>
    public int PfConcurrency(ParseResult r)
    {
        int pf = r.GetValue(PfLimit);
        if (pf < 1) throw new UsageException("--sim-pf-concurrency must be at least 1");
        return pf;
    }
}
