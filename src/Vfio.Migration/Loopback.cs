using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Vfio.Migration;

/// <summary>Both sides in one process over loopback TCP: the destination on its own coordinator thread, the source on the caller's.</summary>
public static class Loopback
{
    public static RunReport Run(IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations,
        MigrationOptions options, ILogger? logger = null, Action<MigrationSource, MigrationDestination>? started = null,
        CancellationToken cancel = default) => Run(sources, destinations, options, logger, started, null, cancel);

    /// <summary>Test seam: <paramref name="route"/> tells the source where to connect, given the destination's listener.</summary>
    internal static RunReport Run(IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations,
        MigrationOptions options, ILogger? logger, Action<MigrationSource, MigrationDestination>? started,
        Func<IPEndPoint, IPEndPoint>? route, CancellationToken cancel)
    {
        if (sources.Count != destinations.Count)
            throw new ArgumentException("as many destination devices as source devices");
        using var listener = Listen(new IPEndPoint(IPAddress.Loopback, 0), options.Channels + 4);
        var endpoint = (IPEndPoint)listener.LocalEndPoint!;
        var dst = new MigrationDestination(destinations, options with { AcceptTimeout = options.Timeout }, logger);
        var src = new MigrationSource(sources, options, logger);
        started?.Invoke(src, dst);
        RunReport? dreport = null;
        Exception? dcrash = null;
        // If the source fails (e.g. cannot connect), the destination must not wait for it until its timeout.
        using var dcancel = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var dthread = new Thread(() =>
        {
            try { dreport = dst.Run(listener, dcancel.Token); }
            catch (Exception e) { dcrash = e; }
        }) { IsBackground = true, Name = "dst coordinator" };
        dthread.Start();
        var sreport = src.Run(route?.Invoke(endpoint) ?? endpoint, cancel);
        if (!sreport.Ok) dcancel.CancelAfter(TimeSpan.FromSeconds(2)); // time for the destination to notice on its own
        dthread.Join();
        if (dcrash is not null) throw new InvalidOperationException($"the destination crashed: {dcrash.Message}", dcrash);
        // One process sees both sides: a source that committed and lost its destination learns what the destination did.
        if (sreport.Outcome == MigrationOutcome.Unknown && !dreport!.Ok)
            foreach (var s in sources) s.SetState(MigrationState.Running)?.Dispose();
        return Merge(sreport, dreport!);
    }

    public static Socket Listen(IPEndPoint endpoint, int backlog)
    {
        var s = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            s.ReceiveBufferSize = Connection.SocketBufferBytes; // inherited by accepted sockets (window scaling)
            s.Bind(endpoint);
            s.Listen(backlog);
            return s;
        }
        catch (SocketException e)
        {
            s.Dispose();
            throw new MigrationException($"cannot listen on {endpoint}: {Connection.Describe(e)}");
        }
    }

    /// <summary>One report for the whole run: the destination's device figures, the source's stop time, both timelines.</summary>
    public static RunReport Merge(RunReport source, RunReport destination)
    {
        var timeline = new RunTimeline();
        timeline.Merge(source.Timeline);
        timeline.Merge(destination.Timeline);
        var report = new RunReport
        {
            Role = "loopback", Mode = destination.Mode, Channels = source.Channels, BufferSize = source.BufferSize,
            Window = destination.Window, Verify = destination.Verify, Timeline = timeline,
            FirstStopUs = source.FirstStopUs, LastRunningUs = destination.LastRunningUs, LoadEndUs = destination.LoadEndUs,
            PoolBuffers = source.PoolBuffers + destination.PoolBuffers,
            Live = source.Live, PrecopyStartUs = source.PrecopyStartUs, Converged = source.Converged, ConvergedReason = source.ConvergedReason,
        };
        for (int i = 0; i < destination.Devices.Count; i++)
        {
            var d = destination.Devices[i];
            if (i < source.Devices.Count)
                (d.SourceName, d.DirtyRounds, d.InitialAckedUs) = (source.Devices[i].SourceName, source.Devices[i].DirtyRounds,
                    source.Devices[i].InitialAckedUs);
            report.Devices.Add(d);
        }
        report.CopyOutcome(Witness(source, destination));
        return report;
    }

    /// <summary>
    /// Whose account to show. The destination's when its devices run (the source committed, whatever it saw since), or
    /// when the source committed and lost it (the destination's failure is why, and the sources were resumed). Otherwise
    /// a cancelled source means the caller cancelled; else the side that found the failure itself over one that lost its
    /// connection, over one that was told by its peer (the destination when both are alike: it sees the devices load).
    /// </summary>
    private static RunReport Witness(RunReport source, RunReport destination)
    {
        if (destination.Ok || source.Ok || source.Outcome == MigrationOutcome.Unknown) return destination;
        if (source.Failure!.Origin == FailureOrigin.Cancelled) return source;
        return Rank(source.Failure.Origin) > Rank(destination.Failure!.Origin) ? source : destination;
    }

    private static int Rank(FailureOrigin origin) => origin switch
    {
        FailureOrigin.Local => 3,
        FailureOrigin.Transport => 2,
        FailureOrigin.Peer => 1,
        _ => 0,
    };
}
