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

    /// <summary>Test seam: <paramref name="sourceTarget"/> sends the source elsewhere than the destination's listener.</summary>
    internal static RunReport Run(IReadOnlyList<IMigrationDevice> sources, IReadOnlyList<IMigrationDevice> destinations,
        MigrationOptions options, ILogger? logger, Action<MigrationSource, MigrationDestination>? started,
        IPEndPoint? sourceTarget, CancellationToken cancel)
    {
        if (sources.Count != destinations.Count)
            throw new ArgumentException("as many destination devices as source devices");
        using var listener = Listen(new IPEndPoint(IPAddress.Loopback, 0), options.Channels + 4);
        var endpoint = (IPEndPoint)listener.LocalEndPoint!;
        var dst = new MigrationDestination(destinations, options with { AcceptTimeout = options.Timeout }, logger);
        var src = new MigrationSource(sources, options, logger);
        started?.Invoke(src, dst);
        RunReport? dreport = null;
        // If the source fails (e.g. cannot connect), the destination must not wait for it until its timeout.
        using var dcancel = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var dthread = new Thread(() =>
        {
            try { dreport = dst.Run(listener, dcancel.Token); }
            catch (Exception e) { dreport = new RunReport { Role = "destination", Error = e.Message }; }
        }) { IsBackground = true, Name = "dst coordinator" };
        dthread.Start();
        var sreport = src.Run(sourceTarget ?? endpoint, cancel);
        if (!sreport.Ok) dcancel.CancelAfter(TimeSpan.FromSeconds(2)); // time for the destination to notice on its own
        dthread.Join();
        var report = Merge(sreport, dreport!);
        report.DeviceBoundMs = DeviceBound.Compute(sources, destinations);
        return report;
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
            throw new MigrationException($"cannot listen on {endpoint}: {e.Message}");
        }
    }

    /// <summary>One report for the whole run: the destination's device figures, the source's stop time, both timelines.</summary>
    public static RunReport Merge(RunReport source, RunReport destination)
    {
        var timeline = new RunTimeline();
        timeline.Merge(source.Timeline);
        timeline.Merge(destination.Timeline);
        bool ok = source.Ok && destination.Ok;
        string? error = null, device = null;
        if (!ok)
        {
            // Prefer the side that detected the problem over the side that was told about it.
            bool dstOwn = !destination.Ok && destination.Error is not null && !destination.Error.StartsWith("source: ", StringComparison.Ordinal)
                && destination.Error is not ("aborted" or "cancelled") && !(source.Error?.StartsWith("connect to ", StringComparison.Ordinal) ?? false)
                && source.Error != "cancelled"; // a cancelled run is "cancelled", whatever the destination saw of the source's abort
            error = dstOwn ? destination.Error : source.Error ?? destination.Error;
            device = dstOwn ? destination.FailedDevice : source.FailedDevice ?? destination.FailedDevice;
        }
        var report = new RunReport
        {
            Role = "loopback", Mode = destination.Mode, Channels = source.Channels, BufferSize = source.BufferSize,
            Window = destination.Window, Timeline = timeline, Ok = ok, Error = error, FailedDevice = device,
            FirstStopUs = source.FirstStopUs, LastRunningUs = destination.LastRunningUs, LoadEndUs = destination.LoadEndUs,
            PoolBuffers = source.PoolBuffers + destination.PoolBuffers,
        };
        for (int i = 0; i < destination.Devices.Count; i++)
        {
            var d = destination.Devices[i];
            if (i < source.Devices.Count) d.SourceName = source.Devices[i].SourceName;
            if (!ok) d.Verified = false;
            report.Devices.Add(d);
        }
        return report;
    }
}
