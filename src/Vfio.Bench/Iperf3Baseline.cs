using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace Vfio.Bench;

/// <summary>
/// What iperf3 moves over loopback with a given number of parallel TCP streams: the ceiling our transport
/// is compared with, measured on the same machine in the same run.
/// </summary>
public static class Iperf3Baseline
{
    public const string Binary = "iperf3";

    /// <summary>Megabits per second received, or an explanation of why iperf3 could not be measured.</summary>
    /// <param name="streams">Parallel TCP streams (iperf3 -P), as many as the run's data channels.</param>
    /// <param name="bytes">Bytes to move over all streams (iperf3 -n): the same as the run it is compared with, so
    /// that both last about as long and amortise their start alike.</param>
    public static (double? Mbps, string? Why) Measure(int streams, long bytes)
    {
        int port = FreePort();
        using var server = Start($"-s -1 -p {port} -B 127.0.0.1", out string? why);
        if (server is null) return (null, why);
        server.BeginOutputReadLine();
        try
        {
            if (!WaitListening(port, TimeSpan.FromSeconds(5)))
                return (null, "iperf3 -s did not start listening");
            var args = string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"-c 127.0.0.1 -p {port} -P {streams} -n {bytes} -J");
            using var client = Start(args, out why);
            if (client is null) return (null, why);
            var json = client.StandardOutput.ReadToEndAsync();
            if (!client.WaitForExit(TimeSpan.FromSeconds(30 + bytes / 100e6)))
            {
                client.Kill();
                return (null, "iperf3 -c did not finish");
            }
            return Parse(json.Result);
        }
        finally
        {
            if (!server.WaitForExit(TimeSpan.FromSeconds(5))) server.Kill();
        }
    }

    /// <summary>Reads end.sum_received.bits_per_second from iperf3's JSON (-J) output.</summary>
    internal static (double? Mbps, string? Why) Parse(string json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            if (doc.RootElement.TryGetProperty("error", out var error))
                return (null, $"iperf3: {error.GetString()}");
            double bps = doc.RootElement.GetProperty("end").GetProperty("sum_received").GetProperty("bits_per_second").GetDouble();
            return (bps / 1e6, null);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            return (null, $"iperf3 printed no usable JSON: {e.Message}");
        }
    }

    private static Process? Start(string args, out string? why)
    {
        try
        {
            var p = Process.Start(new ProcessStartInfo(Binary, args)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            });
            why = p is null ? "iperf3 did not start" : null;
            // Drain stderr (and, for the server, its report lines) so a full pipe never stalls iperf3.
            p?.BeginErrorReadLine();
            return p;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            why = $"iperf3 is not installed ({e.Message}); apt-get install iperf3";
            return null;
        }
    }

    private static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }

    private static bool WaitListening(int port, TimeSpan limit)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < limit)
        {
            // A probe connection would be taken by `iperf3 -s -1` as its one client, so look at the listen table instead.
            if (IsListening(port)) return true;
            Thread.Sleep(20);
        }
        return false;
    }

    private static bool IsListening(int port) =>
        System.Net.NetworkInformation.IPGlobalProperties.GetIPGlobalProperties().GetActiveTcpListeners().Any(e => e.Port == port);
}
