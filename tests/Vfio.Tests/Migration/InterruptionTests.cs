using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Vfio.Cli;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// What a second and a third signal do (the two-process tests cannot hold a side in its cleanup: the simulated devices
/// let go at once), what each cleanup step tells a person, and errnos that reach a person by name and meaning.
/// </summary>
public class InterruptionTests
{
    private static List<MigrationSide> Sides(out MigrationSource source, out MigrationDestination destination)
    {
        var options = new MigrationOptions();
        source = new MigrationSource([new SimulatedDevice("sim:a"), new SimulatedDevice("sim:b")], options);
        destination = new MigrationDestination([new SimulatedDevice("sim:c")], options);
        return [destination, source];
    }

    [Fact]
    public void The_first_signal_cancels_the_second_says_what_is_at_stake_and_the_third_abandons_it()
    {
        var sides = Sides(out var source, out _);
        var error = new StringWriter();
        var exits = new List<int>();
        using var interruption = new Interruption(error, () => MigrationCommands.AtStake(sides), exits.Add, register: false);
        Assert.Null(interruption.Signal);

        interruption.Deliver(PosixSignal.SIGTERM);
        Assert.True(interruption.Token.IsCancellationRequested);
        Assert.Equal("SIGTERM", interruption.Signal);
        Assert.Equal(143, interruption.CancelledExitCode);
        Assert.Equal("vfio-mig: SIGTERM: cancelling the migration (signal again to see what it is waiting for)", Lines(error)[0]);

        source.Progress.Finishing = FinishingStep.RestoringSources;
        interruption.Deliver(PosixSignal.SIGINT);
        Assert.Empty(exits); // a second signal never ends the process
        Assert.Equal("vfio-mig: SIGINT again: still putting the 2 source devices back to RUNNING; a third signal abandons this (the "
            + "source devices may stay stopped, and a VF is reset when this process exits: their state may be lost)", Lines(error)[1]);

        interruption.Deliver(PosixSignal.SIGINT);
        Assert.Equal([ExitCodes.Abandoned], exits);
        Assert.StartsWith("vfio-mig: SIGINT: abandoned while putting the 2 source devices back to RUNNING: the source devices may stay",
            Lines(error)[2]);
        Assert.Equal("SIGTERM", interruption.Signal); // the first signal is the one that cancelled the run
    }

    [Fact]
    public void With_nothing_at_stake_a_third_signal_ends_the_process_at_once()
    {
        var sides = Sides(out _, out _);
        var error = new StringWriter();
        var exits = new List<int>();
        using var interruption = new Interruption(error, () => MigrationCommands.AtStake(sides), exits.Add, register: false);
        interruption.Deliver(PosixSignal.SIGHUP);
        Assert.Equal(129, interruption.CancelledExitCode);
        interruption.Deliver(PosixSignal.SIGHUP);
        Assert.Equal("vfio-mig: SIGHUP again: finishing (no device is at stake)", Lines(error)[1]);
        Assert.Empty(exits);
        interruption.Deliver(PosixSignal.SIGHUP);
        Assert.Equal([ExitCodes.Abandoned], exits);
    }

    [Theory]
    [InlineData(FinishingStep.KeepingSourcesStopped, "waiting for the threads of the 2 stopped source devices (outcome unknown",
        "the state kept for `vfio-mig resume` may be lost")]
    [InlineData(FinishingStep.RunningDestinations, "moving the destination device to RUNNING (the source committed",
        "the destination devices may never run while the source's stay stopped")]
    [InlineData(FinishingStep.ResettingDestinations, "resetting the destination device", "half-loaded")]
    public void Each_cleanup_step_says_what_it_does_and_what_abandoning_it_costs(FinishingStep step, string doing, string risk)
    {
        var sides = Sides(out var source, out var destination);
        (step is FinishingStep.KeepingSourcesStopped ? source.Progress : destination.Progress).Finishing = step;
        var stake = MigrationCommands.AtStake(sides);
        Assert.StartsWith(doing, stake.Doing);
        Assert.Contains(risk, stake.IfAbandoned);
        Assert.Null(MigrationCommands.AtStake(Sides(out _, out _)).Doing);
    }

    [Fact]
    public void A_connection_reset_by_the_peer_is_named_with_its_meaning()
    {
        Assert.Equal("ECONNRESET (Connection reset by peer)", ErrnoNames.Describe(104));
        Assert.Equal("ECONNREFUSED (Connection refused)", ErrnoNames.Describe(111));
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 1);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        using var accepted = listener.Accept();
        client.LingerState = new LingerOption(true, 0);
        client.Close(); // a reset

        var e = Assert.Throws<SocketException>(() => accepted.Receive(new byte[16]));
        Assert.Equal("ECONNRESET (Connection reset by peer)", Connection.Describe(e));
    }

    [Fact]
    public void A_send_into_a_reset_connection_names_the_errno()
    {
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 1);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        using var connection = new Connection(listener.Accept(), TimeSpan.FromSeconds(5), "data channel 1");
        client.LingerState = new LingerOption(true, 0);
        client.Close();
        var payload = new byte[1 << 20];
        var e = Assert.Throws<TransportException>(() =>
        {
            for (int i = 0; i < 64; i++) connection.WritePacket(new byte[24], payload);
        });
        Assert.Matches(@"^data channel 1: send failed: E[A-Z]+ \([A-Z][a-z ]+\)$", e.Message);
        Assert.DoesNotContain("errno", e.Message);
    }

    private static string[] Lines(StringWriter w) => w.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
